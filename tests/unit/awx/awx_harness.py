"""Helpers for running berth.stack the way AWX does: a project copy, the tools of the virtualenv, a test host."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
HARNESS = REPO / "tests" / "harness"
if str(HARNESS) not in sys.path:
    sys.path.insert(0, str(HARNESS))

# The project's AWX job runner, shared with the Molecule scenario that deploys through it.
from awx_job import BIN, TEST_VAULT_PASSWORD, copy_project, run, tool_env  # noqa: E402

__all__ = ["BIN", "TEST_VAULT_PASSWORD", "copy_project", "run", "tool_env"]
HOST_IMAGE = "berth/debian13-systemd:latest"
APT_CACHE = "/var/cache/berth-test/apt"


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
