"""Helpers for running berth.stack the way AWX does: a project copy, the tools of the virtualenv, a test host."""

import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"
HARNESS = REPO / "tests" / "harness"
# The password the committed inventories/*/group_vars/all/vault.yml files are encrypted with.
TEST_VAULT_PASSWORD = (REPO / "tests" / "fixtures" / "vault-password").read_text().strip()
HOST_IMAGE = "berth/debian13-systemd:latest"
APT_CACHE = "/var/cache/berth-test/apt"


def run(argv, **kwargs):
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=600, **kwargs)


def tool_env(**extra):
    """The virtualenv's tools first on PATH, no colours, and no collections path or config from the Makefile:
    ansible reads the ansible.cfg of the directory it runs in, as it does in a clone and in AWX."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}
    for name in ("ANSIBLE_COLLECTIONS_PATH", "ANSIBLE_CONFIG"):
        env.pop(name, None)
    return {**env, **extra}


def copy_project(destination: Path) -> None:
    """What an AWX project sync checks out: the files git tracks (and new unignored ones), links kept as links."""
    files = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO)
    assert files.returncode == 0, files.stderr
    destination.mkdir(parents=True)
    copy = subprocess.run(
        ["rsync", "-a", "--from0", "--files-from=-", "--ignore-missing-args", "./", f"{destination}/"],
        input=files.stdout,
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert copy.returncode == 0, copy.stderr


def harness_playbook(tmp_path: Path, tasks_file: str, variables: dict) -> subprocess.CompletedProcess:
    playbook = tmp_path / f"{Path(tasks_file).stem}-play.yml"
    playbook.write_text(
        json.dumps(
            [
                {
                    "name": f"Run {tasks_file}",
                    "hosts": "localhost",
                    "connection": "local",
                    "gather_facts": False,
                    "tasks": [{"ansible.builtin.include_tasks": str(HARNESS / tasks_file), "vars": variables}],
                }
            ]
        )
    )
    # The docker modules run on this machine, with the virtualenv's Python and its docker SDK.
    interpreter = f"ansible_python_interpreter={BIN / 'python'}"
    command = [str(BIN / "ansible-playbook"), "-i", "localhost,", "-e", interpreter, str(playbook)]
    return run(command, env=tool_env(), cwd=REPO)
