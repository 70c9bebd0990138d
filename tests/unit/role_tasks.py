"""Run one task file of a berth.stack role on this machine, the way the role runs it: ansible-playbook
with include_role tasks_from, so the role's defaults and vars are the real ones, against the local
Docker engine. For role steps that a unit test can prove without a whole test host."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run_role_tasks(tmp_path: Path, tasks_from: str, variables: dict, **options):
    """ansible-playbook's completed process (options: see role_tasks_command)."""
    argv, env = role_tasks_command(tmp_path, tasks_from, variables, **options)
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=300, check=False)


def role_tasks_command(
    tmp_path: Path,
    tasks_from: str,
    variables: dict,
    after: list | None = None,
    role="berth.stack.compose_app",
    check=False,
    path=(),
):
    """(argv, env) of the ansible-playbook run that includes ``role``'s ``tasks_from`` with ``variables`` as
    play variables, then runs the ``after`` tasks; the playbook and inventory are written to ``tmp_path``.
    ``path``: directories put first on PATH (a host's pg_dump)."""
    play = {
        "name": f"Run {role}'s {tasks_from}",
        "hosts": "localhost",
        "gather_facts": False,
        # Play variables, not the include's: the tasks after the role read them too.
        "vars": variables,
        "tasks": [
            {
                "name": f"Run {tasks_from}",
                "ansible.builtin.include_role": {
                    "name": role,
                    "tasks_from": tasks_from,
                    "public": True,
                },
            },
            *(after or []),
        ],
    }
    playbook = tmp_path / "play.yml"
    playbook.write_text(json.dumps([play]))
    inventory = tmp_path / "inventory.json"
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inventory.write_text(json.dumps({"all": {"hosts": {"localhost": local}}}))
    env = {
        **os.environ,
        "PATH": ":".join([str(BIN), *map(str, path), os.environ["PATH"]]),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
    }
    argv = [str(BIN / "ansible-playbook"), "-i", str(inventory), str(playbook), *(["--check"] if check else [])]
    return argv, env
