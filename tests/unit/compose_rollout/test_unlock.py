"""playbooks/unlock.yml's tasks (compose_app entry point break_lock), run by ansible-playbook on this
machine against a real lock directory: the holder is shown first, a lock whose holder looks alive is
refused unless forced, a dead one is removed."""

import json
import os
import shutil
import subprocess
import time

import pytest
import yaml
from conftest import REPO


@pytest.fixture
def unlock(tmp_path):
    playbook = tmp_path / "unlock.yml"
    play = {
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": False,
        "tasks": [
            {
                "name": "unlock",
                "ansible.builtin.include_role": {"name": "berth.stack.compose_app", "tasks_from": "break_lock"},
            }
        ],
    }
    playbook.write_text(yaml.safe_dump([play]))

    def run(*extra):
        argv = [shutil.which("ansible-playbook"), str(playbook), "-e", "compose_app_name=crtestlock"]
        argv += ["-e", f"compose_app_root={tmp_path}", *extra]
        env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(REPO / ".ansible" / "collections")}
        env.update(ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_STDOUT_CALLBACK="ansible.posix.json")
        completed = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=120, check=False)
        tasks = json.loads(completed.stdout)["plays"][0]["tasks"]
        return [task["hosts"]["localhost"] for task in tasks]

    return run


def make_lock(root, heartbeat_age, rollout_pid=None):
    lock = root / "crtestlock" / "deploy.lock"
    lock.mkdir(parents=True)
    owner = {"purpose": "deploy of release r7", "controller": "ctl", "pid": 4242, "since": "2026-01-01T00:00:00Z"}
    (lock / "owner").write_text(json.dumps(owner) + "\n")
    (lock / "heartbeat").write_text("{}\n")
    then = time.time() - heartbeat_age
    os.utime(lock / "heartbeat", (then, then))
    if rollout_pid:
        (lock / "rollout.pid").write_text(f"{rollout_pid}\n")
    return lock


def shown(results):
    return next(result["msg"] for result in results if "is held by" in str(result.get("msg", "")))


def test_a_lock_whose_holder_is_gone_is_shown_then_removed(unlock, tmp_path):
    lock = make_lock(tmp_path, heartbeat_age=120)
    results = unlock()
    assert "deploy of release r7" in shown(results) and "heartbeat 1" in shown(results)
    assert not any(result.get("failed") for result in results)
    assert not lock.exists()


def test_a_live_holder_is_refused_unless_forced(unlock, tmp_path):
    lock = make_lock(tmp_path, heartbeat_age=120, rollout_pid=os.getpid())
    results = unlock()
    assert results[-1]["failed"]
    assert "looks alive" in results[-1]["msg"] and "host-side rollout running" in results[-1]["msg"]
    assert lock.exists()
    results = unlock("-e", "compose_app_unlock_force=true")
    assert not any(result.get("failed") for result in results)
    assert not lock.exists()


def test_a_fresh_heartbeat_is_refused(unlock, tmp_path):
    lock = make_lock(tmp_path, heartbeat_age=-30)  # in the future: surely fresh when the play reads it
    assert unlock()[-1]["failed"]
    assert lock.exists()


def test_no_lock_changes_nothing(unlock):
    results = unlock()
    assert not any(result.get("failed") or result.get("changed") for result in results)
