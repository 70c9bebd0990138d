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

import json
import uuid
from pathlib import Path

import pytest
import yaml
from awx_harness import BIN, TEST_VAULT_PASSWORD, copy_project, run, tool_env

RELEASE = "2.0.1"


def write_private_data_dir(pdd: Path, host: str, secrets: dict, vault_password: str) -> None:
    copy_project(pdd / "project")
    group_vars = pdd / "inventory" / "group_vars" / "all"
    group_vars.mkdir(parents=True)
    (pdd / "inventory" / "hosts.yml").write_text(
        yaml.safe_dump(
            {
                "docker_hosts": {
                    "hosts": {
                        host: {
                            "ansible_connection": "community.docker.docker",
                            "ansible_python_interpreter": "/usr/bin/python3",
                        }
                    }
                }
            }
        )
    )
    # The product definition every environment shares, as the project has it.
    (group_vars / "product.yml").symlink_to("../../../project/inventories/shared/product.yml")
    # This environment's values; the registry is the shared file's SET: value, so it is replaced at the
    # docker_hosts group, which takes precedence over the files in group_vars/all.
    (group_vars / "main.yml").write_text(
        yaml.safe_dump({"product_domains": ["shop.awxtest.invalid"], "product_tls": {"source": "self_signed"}})
    )
    (pdd / "inventory" / "group_vars" / "docker_hosts.yml").write_text(
        yaml.safe_dump({"product_image_registry": "registry.awxtest.invalid/shop"})
    )
    vault = group_vars / "vault.yml"
    vault.write_text(yaml.safe_dump(secrets))
    password_file = pdd / "vault-password-for-encrypting"
    password_file.write_text(TEST_VAULT_PASSWORD)
    encrypt = run([str(BIN / "ansible-vault"), "encrypt", "--vault-password-file", str(password_file), str(vault)])
    assert encrypt.returncode == 0, encrypt.stderr
    password_file.unlink()
    assert vault.read_text().startswith("$ANSIBLE_VAULT;1.1;AES256")

    env = pdd / "env"
    env.mkdir()
    (env / "extravars").write_text(
        json.dumps({"product_release": RELEASE, "awx_job_id": 1, "awx_job_template_name": "staging preflight"})
    )
    (env / "passwords").write_text(json.dumps({r"^Vault password:\s*?$": vault_password}))
    (env / "cmdline").write_text("--ask-vault-pass")
    # AWX's own collections path replaces ansible.cfg's: what requirements.yml installed, then the defaults.
    awx_collections = [f"{pdd}/requirements_collections", "~/.ansible/collections", "/usr/share/ansible/collections"]
    (env / "envvars").write_text(json.dumps({"ANSIBLE_COLLECTIONS_PATH": ":".join(awx_collections)}))


def run_job(pdd: Path):
    result = run(
        [str(BIN / "ansible-runner"), "run", str(pdd), "--playbook", "playbooks/preflight.yml", "--ident", "job1"],
        env=tool_env(),
    )
    artifacts = pdd / "artifacts" / "job1"
    assert (artifacts / "status").exists(), result.stdout[-3000:] + result.stderr[-3000:]
    events = [json.loads(path.read_text()) for path in (artifacts / "job_events").glob("*.json")]
    events.sort(key=lambda event: event["counter"])
    stream = "".join(path.read_text() for path in (artifacts / "job_events").glob("*.json"))
    stdout = (artifacts / "stdout").read_text()
    return (artifacts / "status").read_text().strip(), events, stream + stdout, stdout


@pytest.fixture
def secrets():
    token = uuid.uuid4().hex
    return {"vault_product_db_password": f"db-{token}", "vault_product_secret_key": f"key-{token}"}


def ok_tasks(events):
    return {event["event_data"]["task"]: event for event in events if event["event"] == "runner_on_ok"}


def test_preflight_job_succeeds_with_the_vault_credential(test_host, tmp_path, secrets):
    pdd = tmp_path / "job"
    write_private_data_dir(pdd, test_host, secrets, TEST_VAULT_PASSWORD)
    status, events, everything, stdout = run_job(pdd)

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
    write_private_data_dir(pdd, test_host, secrets, "not-the-vault-password")
    status, events, everything, stdout = run_job(pdd)

    assert status == "failed"
    assert "Decryption failed" in stdout, stdout[-4000:]
    assert not [event for event in events if event["event"] == "runner_on_ok" and event["event_data"].get("role")]
    for secret in [*secrets.values(), TEST_VAULT_PASSWORD]:
        assert secret not in everything
