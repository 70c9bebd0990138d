"""The harness's payload-sharing callback (tests/harness/callback_plugins/berth_shared_payloads.py), with
real ansible-playbook runs on this machine: two runs build each module's payload once between them."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
CALLBACKS = REPO / "tests" / "harness" / "callback_plugins"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
PLAYBOOK = """\
- name: Two modules and an assertion on what they returned
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Ping
      ansible.builtin.ping:
      register: pong
    - name: Stat the root directory
      ansible.builtin.stat:
        path: /
      register: root
    - name: Both modules ran
      ansible.builtin.assert:
        that: [pong.ping == 'pong', root.stat.isdir]
"""
PAYLOADS = ("ansible.modules.ping-ZIP_DEFLATED-none", "ansible.modules.stat-ZIP_DEFLATED-none")


def run_playbook(tmp_path, shared=None):
    playbook = tmp_path / "playbook.yml"
    playbook.write_text(PLAYBOOK)
    (tmp_path / "local").mkdir(exist_ok=True)
    env = {key: value for key, value in os.environ.items() if key != "BERTH_ANSIBALLZ_CACHE"}
    env.update(ANSIBLE_CALLBACK_PLUGINS=str(CALLBACKS), ANSIBLE_LOCAL_TEMP=str(tmp_path / "local"))
    if shared is not None:
        env["BERTH_ANSIBALLZ_CACHE"] = str(shared)
    argv = [str(ANSIBLE_PLAYBOOK), "-i", "localhost,", "-c", "local", str(playbook)]
    argv += ["-e", f"ansible_python_interpreter={sys.executable}"]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok=3" in result.stdout, result.stdout


def test_two_runs_build_each_payload_once_in_the_shared_directory(tmp_path):
    shared = tmp_path / "payloads"
    run_playbook(tmp_path, shared)
    built = {name: (shared / name).stat() for name in PAYLOADS}
    run_playbook(tmp_path, shared)
    again = {name: (shared / name).stat() for name in PAYLOADS}
    # The second run read the first run's payloads: the same files, not written again.
    assert {name: (stat.st_ino, stat.st_mtime_ns) for name, stat in again.items()} == {
        name: (stat.st_ino, stat.st_mtime_ns) for name, stat in built.items()
    }
    # Each run removed its own temporary directory, and only the link to the shared one with it.
    assert list((tmp_path / "local").iterdir()) == []
    assert sorted(path.name for path in shared.iterdir() if not path.name.endswith(".lock")) == sorted(PAYLOADS)


def test_without_the_variable_a_run_keeps_its_payloads_to_itself(tmp_path):
    run_playbook(tmp_path)
    assert list((tmp_path / "local").iterdir()) == []
    assert not (tmp_path / "payloads").exists()
