"""compose_rollout's check_unchanged on the real engine and nginx: the one look at the host with which
the compose_app role ends a deploy that has nothing to do. Each answer is asserted with its reason, and
each way the host can differ from the last complete deploy (inputs, release, lock, upstream file,
color marker, stopped container, missing data service) turns the answer into "something to do"."""

import json
import subprocess

import pytest
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible_collections.berth.stack.plugins.module_utils import _rollout_apply as rollout_apply
from ansible_collections.berth.stack.plugins.module_utils import _rollout_plan as planning
from conftest import APP, PORTS, module_args, port, sh, wait_for

# What `docker inspect` says of a container that serves: healthy, or running without a HEALTHCHECK.
HEALTHY = ("healthy", "running")


@pytest.fixture(scope="module")
def recorded(rollout, release, baseline, workdir):
    """r1 serves and fingerprint.json records it with fingerprint f1; returns the file's path. The tests
    that change the host put it back, so the module's tests share one rollout."""
    baseline("r1")
    path = workdir / "state" / "fingerprint.json"
    path.unlink(missing_ok=True)
    result = rollout(release("r1", "v1"), "r1", fingerprint="f1")
    assert not result.get("failed"), result.get("msg")
    assert result["changed"] is False
    return path


@pytest.fixture(scope="module")
def ask(release, nginx, workdir):
    """check_unchanged's answer from the module's own function, with the parameters AnsibleModule would
    give it (the argument spec's defaults filled in) and Docker's real CLI: one ansible-playbook run
    (the test below) proves the module returns the same."""

    def run(release_id="r1", version="v1", **overrides):
        args = {**module_args(nginx, workdir, release(release_id, version), release_id), "check_unchanged": True}
        params = ArgumentSpecValidator(planning.ARGUMENT_SPEC).validate({**args, **overrides}).validated_parameters
        commands = []
        result = rollout_apply.unchanged(params, rollout_apply.traced(command_runner, commands))
        assert result["changed"] is False
        return dict(result, commands=commands)

    return run


def command_runner(argv, env=None):
    completed = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60, env=env)
    return completed.returncode, completed.stdout, completed.stderr


def test_a_rollout_of_the_serving_release_records_its_fingerprint_but_check_mode_does_not(
    rollout, release, baseline, workdir
):
    baseline("r1")
    path = workdir / "state" / "fingerprint.json"
    path.unlink(missing_ok=True)
    checked = rollout(release("r1", "v1"), "r1", check=True, fingerprint="f1")
    assert checked["changed"] is False
    assert not path.exists()
    result = rollout(release("r1", "v1"), "r1", fingerprint="f1")
    assert result["changed"] is False
    assert json.loads(path.read_text()) == {"release": "r1", "fingerprint": "f1"}


def test_the_same_release_and_fingerprint_on_a_healthy_host_has_nothing_to_do(recorded, ask, rollout, release, workdir):
    before = {path.name: path.read_bytes() for path in (workdir / "state").iterdir()}
    direct = ask(fingerprint="f1", data_services=["db"])
    assert direct["unchanged"] is True, direct
    assert direct["unchanged_reason"] is None
    assert direct["color"] == "blue"
    # Files and one `docker ps` (and inspect) per project: no compose, no nginx command.
    assert [command.split()[:2] for command in direct["commands"]] == [["docker", "ps"], ["docker", "inspect"]] * 2
    # The module says the same, in check mode too.
    for check in (False, True):
        result = rollout(
            release("r1", "v1"), "r1", check=check, check_unchanged=True, fingerprint="f1", data_services=["db"]
        )
        assert not result.get("failed"), result.get("msg")
        assert (result["changed"], result["unchanged"], result["unchanged_reason"]) == (False, True, None)
        assert "plan" not in result
    assert {path.name: path.read_bytes() for path in (workdir / "state").iterdir()} == before


def test_other_inputs_or_another_release_have_something_to_do(recorded, ask):
    other = ask(fingerprint="f2")
    assert other["unchanged"] is False
    assert other["unchanged_reason"] == (
        "the inputs of this deploy differ from those of the last complete deploy of release r1"
    )
    missing = ask()
    assert missing["unchanged"] is False
    newer = ask("r2", "v2", fingerprint="f1")
    assert newer["unchanged"] is False
    assert newer["unchanged_reason"] == "release r2 does not serve yet (serving: r1)"


def test_a_held_lock_or_a_missing_data_service_has_something_to_do(recorded, ask, workdir):
    lock = workdir / "deploy.lock"
    lock.mkdir()
    try:
        locked = ask(fingerprint="f1", lock_dir=str(lock))
    finally:
        lock.rmdir()
    assert locked["unchanged"] is False
    assert locked["unchanged_reason"] == f"another deploy holds the lock {lock}"
    absent = ask(fingerprint="f1", data_services=["db", "cache"])
    assert absent["unchanged"] is False
    assert absent["unchanged_reason"] == f"a container of {APP}-data is not running and healthy, or missing"


def test_an_upstream_file_or_marker_that_points_elsewhere_has_something_to_do(recorded, ask, nginx):
    path = nginx.upstreams / f"{APP}_frontend.conf"
    content = path.read_text()
    path.write_text(content.replace(f"127.0.0.1:{PORTS['frontend']['blue']}", f"127.0.0.1:{port(18219)}"))
    try:
        changed = ask(fingerprint="f1")
    finally:
        path.write_text(content)
    assert changed["unchanged"] is False
    assert changed["unchanged_reason"] == f"the upstream files of {APP}_frontend do not hold the groups of release r1"
    marker = nginx.upstreams / f"{APP}_frontend.blue"
    saved = marker.read_text()
    marker.unlink()
    try:
        switched = ask(fingerprint="f1")
    finally:
        marker.write_text(saved)
    assert switched["unchanged"] is False
    assert switched["unchanged_reason"] == (
        f"the color markers of {APP}_frontend do not select color blue of release r1"
    )


def test_a_stopped_container_of_the_serving_color_has_something_to_do(recorded, ask):
    container = f"{APP}-blue-worker-1"
    sh("docker", "stop", "--timeout", "2", container)
    try:
        result = ask(fingerprint="f1")
    finally:
        sh("docker", "start", container)
        state = "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}"
        assert wait_for(lambda: sh("docker", "inspect", "--format", state, container).stdout.strip() in HEALTHY, 30)
    assert result["unchanged"] is False
    assert result["unchanged_reason"] == f"a container of {APP}-blue is not running and healthy, or missing"
    assert ask(fingerprint="f1")["unchanged"] is True
