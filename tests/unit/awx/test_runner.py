"""playbooks/preflight.yml as an AWX job runs it: ansible-runner over an AWX-style private data dir.

AWX copies the synced project to <private data dir>/project, writes the inventory, env/extravars
(the survey's answers), env/passwords (the vault credential answers the "Vault password:" prompt of
--ask-vault-pass) and env/envvars (its own collections path, which replaces ansible.cfg's), runs
ansible-playbook through ansible-runner in project/, and stores the job events. These tests do the
same against a Debian 13 systemd container reached through the Docker connection, so they prove:
the collection resolves from the project itself (collections/ next to the playbooks), a
vault-encrypted file decrypts through env/passwords, extra vars arrive, the events AWX records
(runner_on_ok, playbook_on_stats) come out, and no secret is in them. They do not deploy: the roles'
own tests (Molecule) do that on the same kind of host.
"""

import uuid
from pathlib import Path

import pytest
from awx_harness import TEST_VAULT_PASSWORD
from awx_job import run_job, write_private_data_dir

RELEASE = "2.0.1"
PROJECT_PREFLIGHT = "playbooks/preflight.yml"


def write_job(pdd: Path, host: str, secrets: dict, vault_answer: str) -> None:
    write_private_data_dir(
        pdd,
        {
            "hosts": {
                "docker_hosts": {
                    host: {
                        "ansible_connection": "community.docker.docker",
                        "ansible_python_interpreter": "/usr/bin/python3",
                    }
                }
            },
            # The product definition every environment shares, as the project has it.
            "group_vars_links": {"all/product.yml": "inventories/shared/product.yml"},
            # This environment's values; the registry is the shared file's SET: value, so it is replaced
            # at the docker_hosts group, which takes precedence over the files in group_vars/all.
            "group_vars": {
                "all/main.yml": {"product_domains": ["shop.awxtest.invalid"], "product_tls": {"source": "self_signed"}},
                "docker_hosts.yml": {"product_image_registry": "registry.awxtest.invalid/shop"},
            },
            "vault": secrets,
            "vault_answer": vault_answer,
            "extravars": {"product_release": RELEASE, "awx_job_id": 1, "awx_job_template_name": "staging preflight"},
        },
    )


@pytest.fixture
def secrets():
    token = uuid.uuid4().hex
    return {"vault_product_db_password": f"db-{token}", "vault_product_secret_key": f"key-{token}"}


def ok_tasks(events):
    return {event["event_data"]["task"]: event for event in events if event["event"] == "runner_on_ok"}


def test_preflight_job_succeeds_with_the_vault_credential(test_host, tmp_path, secrets):
    pdd = tmp_path / "job"
    write_job(pdd, test_host, secrets, TEST_VAULT_PASSWORD)
    status, events, everything, stdout = run_job(pdd, PROJECT_PREFLIGHT)

    assert status == "successful", stdout[-4000:]
    ok = ok_tasks(events)
    # The survey's answer (env/extravars) reached the play.
    assert "The release to deploy is given" in ok
    # The secrets decrypted (env/passwords) and are not the CHANGE-ME placeholders.
    assert "No value is left at its example" in ok
    # The roles came from the project's own collections/ link, not from an installed copy.
    role_tasks = [event for event in ok.values() if event["event_data"].get("role") == "compose_app"]
    assert role_tasks, sorted(ok)
    task_path = role_tasks[0]["event_data"]["task_path"]
    project_collection = pdd / "project" / "playbooks" / "collections" / "ansible_collections" / "berth" / "stack"
    assert task_path.startswith(f"{project_collection}/roles/compose_app/"), task_path
    stats = [event for event in events if event["event"] == "playbook_on_stats"]
    assert len(stats) == 1
    assert stats[0]["event_data"]["ok"][test_host] >= 4
    assert stats[0]["event_data"]["failures"] == {}
    assert stats[0]["event_data"]["dark"] == {}
    for secret in [*secrets.values(), TEST_VAULT_PASSWORD]:
        assert secret not in everything


def test_preflight_job_fails_on_a_wrong_vault_password_and_shows_no_secret(test_host, tmp_path, secrets):
    pdd = tmp_path / "job"
    write_job(pdd, test_host, secrets, "not-the-vault-password")
    status, events, everything, stdout = run_job(pdd, PROJECT_PREFLIGHT)

    assert status == "failed"
    assert "Decryption failed" in stdout, stdout[-4000:]
    assert not [event for event in events if event["event"] == "runner_on_ok" and event["event_data"].get("role")]
    for secret in [*secrets.values(), TEST_VAULT_PASSWORD]:
        assert secret not in everything


def test_the_machine_credentials_key_is_handed_to_ansible_runner_readable_by_its_owner_only(tmp_path):
    """AWX passes a machine credential's private key to ansible-runner as env/ssh_key, which runner adds to
    an ssh-agent for the job (compose_app's scenario connects its deploy and rollback jobs that way)."""
    key = tmp_path / "id_ed25519"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nnot a real key\n-----END OPENSSH PRIVATE KEY-----\n")
    pdd = tmp_path / "job"
    write_private_data_dir(pdd, {"hosts": {"docker_hosts": {"host": {}}}, "ssh_key": str(key)})

    assert (pdd / "env" / "ssh_key").read_text() == key.read_text()
    assert (pdd / "env" / "ssh_key").stat().st_mode & 0o777 == 0o600


def test_a_job_without_a_machine_credential_has_no_key(tmp_path):
    pdd = tmp_path / "job"
    write_private_data_dir(pdd, {"hosts": {"docker_hosts": {"host": {}}}})

    assert not (pdd / "env" / "ssh_key").exists()
