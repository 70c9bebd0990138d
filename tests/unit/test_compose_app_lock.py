"""compose_app's deploy lock as a deploy takes and releases it (roles/compose_app/tasks/lock.yml and
unlock.yml, the role's own tasks, on this machine's files): while one deploy holds it, a second is
refused after its lock timeout with a message naming the lock and its holder, and a third with a longer
timeout waits, then takes the lock as soon as the first releases it. The Molecule scenario refuses a
deploy while the AWX deploy job holds the lock on a test host; the wait lives here, where it needs no
second full deploy."""

import json
import subprocess
import time

from role_tasks import REPO, role_tasks_command, run_role_tasks

APP = "locktest"


def lock_variables(tmp_path, release, timeout):
    return {
        "compose_app_name": APP,
        "compose_app_root": str(tmp_path / "srv"),
        "compose_app_lock_timeout": timeout,
        "__compose_app_lock_purpose": f"deploy of release {release}",
    }


def run_dir(tmp_path, name):
    directory = tmp_path / name
    directory.mkdir()
    return directory


def owner(tmp_path):
    return json.loads((tmp_path / "srv" / APP / "deploy.lock" / "owner").read_text())


def test_a_held_lock_refuses_after_the_timeout_and_a_waiting_deploy_takes_it_once_released(tmp_path):
    lock_dir = tmp_path / "srv" / APP / "deploy.lock"
    first = run_role_tasks(run_dir(tmp_path, "first"), "lock.yml", lock_variables(tmp_path, "v2", 2))
    assert first.returncode == 0, first.stdout[-3000:]
    assert owner(tmp_path)["purpose"] == "deploy of release v2"

    refused = run_role_tasks(run_dir(tmp_path, "refused"), "lock.yml", lock_variables(tmp_path, "v1", 2))
    assert refused.returncode != 0
    assert f"another deploy of {APP} holds the lock {lock_dir}" in refused.stdout
    assert "deploy of release v2" in refused.stdout
    assert "waited 2 s" in refused.stdout
    assert owner(tmp_path)["purpose"] == "deploy of release v2"

    argv, env = role_tasks_command(run_dir(tmp_path, "waiting"), "lock.yml", lock_variables(tmp_path, "v1", 120))
    log = tmp_path / "waiting.log"
    with log.open("w") as out:
        waiting = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO, text=True)
    try:
        # Released only once the waiting deploy has found the lock held and started retrying.
        deadline = time.monotonic() + 120
        while "FAILED - RETRYING" not in log.read_text() and time.monotonic() < deadline:
            assert waiting.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        assert "FAILED - RETRYING" in log.read_text()
        assert owner(tmp_path)["purpose"] == "deploy of release v2"
        held = {**lock_variables(tmp_path, "v2", 2), "__compose_app_lock_held": True}
        released = run_role_tasks(run_dir(tmp_path, "release"), "unlock.yml", held)
        assert released.returncode == 0, released.stdout[-3000:]
        assert waiting.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert owner(tmp_path)["purpose"] == "deploy of release v1"
