"""`ansible-galaxy collection build` gives a tarball that installs and works from the installed copy."""

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"


def run(argv, **kwargs):
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300, **kwargs)


def isolated_env(install_path, config_dir):
    """Only the installed copy on the collections path, and none of the checkout's ansible.cfg.

    The checkout's ansible.cfg puts the checkout itself on the collections path, where
    ansible-galaxy would find berth.stack "already installed" and the tests would use the checkout.
    """
    config = config_dir / "ansible.cfg"
    config.write_text("[defaults]\n")
    return {
        **os.environ,
        "ANSIBLE_COLLECTIONS_PATH": str(install_path),
        "ANSIBLE_CONFIG": str(config),
        "ANSIBLE_NOCOLOR": "1",
    }


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """Build the collection, install the tarball into an empty collections path."""
    work = tmp_path_factory.mktemp("collection")
    install_path = work / "installed"
    env = isolated_env(install_path, work)
    build = run([str(BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(work), str(REPO)], env=env)
    assert build.returncode == 0, build.stderr
    version = yaml.safe_load((REPO / "galaxy.yml").read_text())["version"]
    tarball = work / f"berth-stack-{version}.tar.gz"
    assert tarball.exists(), build.stdout
    # --no-deps: the dependencies come from the `ansible` bundle on the Python path, not from Galaxy.
    install = run(
        [str(BIN / "ansible-galaxy"), "collection", "install", "--no-deps", "-p", str(install_path), str(tarball)],
        env=env,
    )
    assert install.returncode == 0, install.stderr
    assert (install_path / "ansible_collections" / "berth" / "stack" / "MANIFEST.json").exists(), install.stdout
    return tarball, install_path


def test_tarball_leaves_out_test_output_caches_and_the_virtualenv(installed):
    tarball = installed[0]
    with tarfile.open(tarball) as archive:
        names = archive.getnames()
    assert "galaxy.yml" not in names  # ansible-galaxy turns it into MANIFEST.json
    assert "MANIFEST.json" in names
    assert any(name.startswith("roles/docker_host/") for name in names)
    for unwanted in (".venv/", ".ansible/", ".git/", "tests/output/", ".ci/"):
        assert not any(name.startswith(unwanted) for name in names), unwanted
    # The links that make a clone find the collection (collections/ansible_collections/berth/stack -> ../../..,
    # playbooks/collections -> ../collections) would loop inside an installed copy.
    assert not any(name == "collections" or name.startswith("collections/") for name in names)
    assert not any(name.startswith("playbooks/collections") for name in names)
    assert "playbooks/awx/job_templates.yml" in names
    # ansible-builder reads these from an installed collection when it builds someone else's EE.
    assert {"requirements.txt", "bindep.txt"} <= set(names)
    assert not any("__pycache__" in name for name in names)


def test_installed_copy_validates_role_arguments(installed, tmp_path):
    """The role loads from the installed path (not the checkout) and rejects bad input by name."""
    install_path = installed[1]
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        "- hosts: localhost\n"
        "  gather_facts: false\n"
        "  roles:\n"
        "    - role: berth.stack.docker_host\n"
        "      vars:\n"
        "        docker_host_users: not-a-list-of-users\n"
        "        docker_host_source: nowhere\n"
    )
    env = {**isolated_env(install_path, tmp_path), "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json"}
    command = [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(playbook)]
    result = run(command, env=env, cwd=tmp_path)
    assert result.returncode != 0
    tasks = json.loads(result.stdout)["plays"][0]["tasks"]
    validation = tasks[0]["hosts"]["localhost"]
    assert tasks[0]["task"]["name"].startswith("berth.stack.docker_host : Validating arguments against arg spec 'main'")
    assert validation["failed"] is True
    assert validation["validate_args_context"]["path"] == str(
        install_path / "ansible_collections" / "berth" / "stack" / "roles" / "docker_host"
    )
    assert "docker_host_source" in validation["msg"]


def test_ansible_doc_reads_the_installed_role(installed, tmp_path):
    install_path = installed[1]
    env = isolated_env(install_path, tmp_path)
    result = run([str(BIN / "ansible-doc"), "-t", "role", "berth.stack.docker_host"], env=env)
    assert result.returncode == 0, result.stderr
    assert "docker_host_daemon_options" in result.stdout
