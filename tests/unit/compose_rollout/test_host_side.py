"""The detached host-side step on its own, with real processes: it returns the work's outcome to a
living caller, and when the caller dies first it finishes alone, keeps the outcome and releases the
lock it ran under (but not a lock someone else took since)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from ansible_collections.berth.stack.plugins.module_utils import _host_side as host_side
from conftest import REPO, wait_for

CALLER = textwrap.dedent(
    """
    import json, sys, time
    sys.path.insert(0, {collections!r})
    from ansible_collections.berth.stack.plugins.module_utils import _host_side as host_side

    def work():
        time.sleep({seconds})
        return {{"changed": True, "msg": "done"}}

    print(json.dumps(host_side.run_detached(work, {state_dir!r}, {lock_dir!r}, 3.0)), flush=True)
    """
)


@pytest.fixture
def lock(tmp_path):
    lock_dir = tmp_path / "deploy.lock"
    lock_dir.mkdir()
    (lock_dir / "owner").write_text(json.dumps({"purpose": "test", "controller": "elsewhere", "pid": 1}) + "\n")
    return lock_dir


def caller(tmp_path, lock_dir, seconds):
    script = CALLER.format(
        collections=str(REPO / ".ansible" / "collections"),
        seconds=seconds,
        state_dir=str(tmp_path / "state"),
        lock_dir=str(lock_dir),
    )
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)


def test_a_living_caller_gets_the_outcome_and_the_lock_stays(tmp_path, lock):
    process = caller(tmp_path, lock, 2)
    out, _err = process.communicate(timeout=30)
    assert json.loads(out) == {"changed": True, "msg": "done"}
    assert lock.exists()
    # The caller wrote the heartbeat while it waited, and cleaned up after itself.
    assert host_side.heartbeat_age(str(lock)) < 5
    assert not (lock / "rollout.pid").exists()
    assert sorted(os.listdir(tmp_path / "state")) == []


def test_a_caller_that_dies_leaves_the_work_to_finish_and_the_lock_released(tmp_path, lock):
    process = caller(tmp_path, lock, 3)
    assert wait_for((lock / "rollout.pid").exists, timeout=10)
    worker = int((lock / "rollout.pid").read_text())
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    assert host_side.pid_alive(worker)
    assert wait_for(lambda: not lock.exists(), timeout=20)
    outcome = json.loads((tmp_path / "state" / "last-rollout.json").read_text())
    assert outcome == {"changed": True, "msg": "done"}


def test_a_lock_taken_by_someone_else_meanwhile_is_left_alone(tmp_path, lock):
    process = caller(tmp_path, lock, 3)
    assert wait_for((lock / "rollout.pid").exists, timeout=10)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    (lock / "owner").write_text(json.dumps({"purpose": "another deploy"}) + "\n")
    assert wait_for((tmp_path / "state" / "last-rollout.json").exists, timeout=20)
    time.sleep(0.5)
    assert json.loads((lock / "owner").read_text()) == {"purpose": "another deploy"}


def test_a_dead_controller_on_this_host_is_noticed():
    gone = subprocess.Popen(["true"])
    gone.wait()
    owner = {"controller": os.uname().nodename, "pid": gone.pid}
    assert "controller process" in host_side.controller_gone(os.getppid(), owner)
    assert host_side.controller_gone(os.getppid(), {**owner, "pid": os.getpid()}) is None
    assert "parent" in host_side.controller_gone(os.getppid() + 1, owner)
