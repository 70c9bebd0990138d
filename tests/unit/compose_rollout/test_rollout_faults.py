"""compose_rollout when the world disagrees with it: an upstreams directory nginx does not read, a
site that does not choose by the color markers, a changed env file under the same release id, a
state.json that lags nginx, markers that cannot be put back while switching back, and Docker commands
failing after the switch.

Shares the engine, nginx and state with test_rollout.py. Each test asks for a serving release
(``serving``, which keeps whatever serves when it fits) and works from whichever color that is; it
checks what nginx answers, which containers run, the upstream files and state.json.
"""

import json
import os
import shutil
import threading
import time

import pytest
import yaml
from ansible_collections.berth.stack.plugins.module_utils import _nginx_upstream as upstreams
from conftest import (
    API,
    APP,
    PLACEHOLDER_PORT,
    PORTS,
    KeepAliveLoop,
    container_states,
    http_get,
    inspect_service,
    served_version,
    sh,
    wait_for,
)

PLACEHOLDER_URL = f"http://127.0.0.1:{PLACEHOLDER_PORT}"


def other(color):
    return "green" if color == "blue" else "blue"


def backend_upstream_port(nginx):
    return nginx.serving_ports(f"{APP}_backend")[0]


def test_an_upstreams_dir_nginx_does_not_read_is_caught_before_the_reload(
    rollout, release, workdir, state_file, serving
):
    serving()
    before = state_file()
    live, version = before["active"]["color"], served_version()
    unread = workdir / "upstreams-nginx-never-reads"
    unread.mkdir()
    result = rollout(release("r8", "v1"), "r8", upstreams_dir=str(unread))
    assert result["failed"]
    assert f"upstreams_dir={str(unread)!r} must be the directory nginx includes" in result["msg"]
    assert f"nginx does not read {unread}/{APP}_backend.conf" in result["msg"]
    assert list(unread.iterdir()) == []
    # Traffic never moved and the live color still runs.
    assert served_version() == version
    assert container_states(f"{APP}-{live}")["backend"] == "running"
    # The new color was never started (nginx is checked first), or is stopped again.
    assert wait_for(lambda: container_states(f"{APP}-{other(live)}").get("backend") in (None, "exited"))
    assert state_file() == before


def test_a_site_that_does_not_choose_by_the_markers_is_refused_before_the_new_color_starts(
    rollout, release, nginx, state_file, serving
):
    """nginx -T must show a server testing every marker: a marker nobody tests would switch nothing, and the
    rollout would then stop the color that still serves. Here the test command checks a configuration
    whose site proxies to the old single groups, as a site written before the markers existed."""
    serving()
    before = state_file()
    live, version = before["active"]["color"], served_version()
    snapshot = {path.name: path.read_text() for path in nginx.upstreams.iterdir()}
    old_site = nginx.prefix / "old-site.conf"
    old_site.write_text(
        nginx.conf.read_text()
        .replace("proxy_pass http://$berth_upstream_", "proxy_pass http://")
        .replace("if (-f", "if ($host = nowhere) { } #")
    )
    test_command = ["nginx", "-p", str(nginx.prefix), "-c", str(old_site), "-t", "-q"]
    result = rollout(release("r13", "v1"), "r13", nginx_test_command=test_command)
    assert result["failed"]
    assert "shows no server that tests the color markers" in result["msg"]
    assert f"{nginx.upstreams}/{APP}_backend.blue" in result["msg"]
    assert "traffic untouched" in result["msg"]
    assert {path.name: path.read_text() for path in nginx.upstreams.iterdir()} == snapshot
    assert served_version() == version
    assert container_states(f"{APP}-{other(live)}").get("backend") in (None, "exited")
    assert state_file() == before


def test_a_host_with_the_single_group_files_of_earlier_rollouts_keeps_serving_through_its_first_rollout(
    rollout, release, nginx, state_file, serving
):
    """The upgrade path: files as rollouts wrote them before the color markers (one group, the live color's
    ports) and no marker, with the new sites, which then send each upstream to that one group."""
    serving("v1")
    live = state_file()["active"]["color"]
    for name, service in ((f"{APP}_backend", "backend"), (f"{APP}_frontend", "frontend")):
        legacy = upstreams.render_upstream(name, [PORTS[service][live]], 16, f"color {live}, release r1")
        (nginx.upstreams / f"{name}.conf").write_text(legacy)
        for color in ("blue", "green"):
            (nginx.upstreams / f"{name}.{color}").unlink(missing_ok=True)
    # Until the old worker exits it may take the loop's connections and answer them from the previous
    # configuration, whose plain group is the placeholder (503): a busy machine once showed 15 such answers.
    nginx.reload()
    assert wait_for(
        lambda: http_get(API) == (200, http_get(f"http://127.0.0.1:{PORTS['backend'][live]}/api/health")[1])
    )
    with KeepAliveLoop() as loop:
        first = rollout(release("r14", "v2"), "r14")
    print(f"first rollout: {loop.summary()}; timings: {first['timings']}; failed: {loop.failed[:5]}")
    assert not first.get("failed"), first.get("msg")
    # The files gain both colors' groups, and nginx reloads once, before the new color starts.
    assert [(item["changed"], item["switch"]) for item in first["plan"]["upstreams"]] == [(True, True)] * 2
    assert loop.failed == []
    assert loop.versions == ["v1", "v2"]
    assert nginx.selected(f"{APP}_backend") == other(live)
    assert upstreams.upstream_ports(
        upstreams.upstream_blocks((nginx.upstreams / f"{APP}_backend.conf").read_text())[f"{APP}_backend"]
    ) == [PORTS["backend"][live]]
    # From then on, no reload and no retried request.
    with KeepAliveLoop() as loop:
        second = rollout(release("r1", "v1"), "r1")
    print(f"second rollout: {loop.summary()}; timings: {second['timings']}")
    assert not second.get("failed"), second.get("msg")
    assert [item["changed"] for item in second["plan"]["upstreams"]] == [False, False]
    assert loop.failed == [] and loop.retried == []
    assert loop.versions == ["v2", "v1"]


def test_a_changed_env_file_under_a_recorded_release_id_is_refused(rollout, release, state_file, serving):
    serving()
    secret = {"backend": {"env_file": ["backend.env"]}}
    first = rollout(release("r9", "v1", secret, {"backend.env": "CRTEST_SECRET=first\n"}), "r9")
    assert not first.get("failed"), first.get("msg")
    before = state_file()
    again = rollout(release("r9", "v1", secret, {"backend.env": "CRTEST_SECRET=second\n"}), "r9")
    assert again["failed"]
    assert "release='r9' is recorded in" in again["msg"]
    assert "deploy the change under a new release id" in again["msg"]
    assert "second" not in again["msg"]
    assert again["commands"] == [command for command in again["commands"] if " config " in command]
    assert state_file() == before
    backend = inspect_service(f"{APP}-{first['color']}", "backend")
    assert "CRTEST_SECRET=first" in backend["Config"]["Env"]
    assert served_version() == "v1"
    # Put back as recorded, the release is left alone.
    assert rollout(release("r9", "v1", secret, {"backend.env": "CRTEST_SECRET=first\n"}), "r9")["changed"] is False


def test_the_live_color_comes_from_the_upstream_files_when_state_json_lags(
    rollout, release, workdir, state_file, serving
):
    """A rollout interrupted between its switch and its record left state.json naming the old color."""
    serving("v1")
    path = workdir / "state" / "state.json"
    saved = path.read_text()
    live = state_file()["active"]["color"]
    lagging = json.loads(saved)
    lagging["active"]["color"] = other(live)
    path.write_text(json.dumps(lagging))
    try:
        failures = []
        result = rollout(release("r10", "v3"), "r10")
        # A request loop would only tell when the outage happened; what serves afterwards is the proof.
        for _attempt in range(20):
            status, _body = http_get(API)
            failures += [status] if status != 200 else []
    finally:
        path.write_text(saved)
    assert result["failed"]
    assert f"on color {other(live)}" in result["msg"]
    assert "traffic untouched" in result["msg"]
    assert any(f"send traffic to color {live}" in warning for warning in result["warnings"])
    assert failures == []
    assert served_version() == "v1"
    assert container_states(f"{APP}-{live}")["backend"] == "running"


def test_a_failed_switch_back_leaves_traffic_on_the_new_color_and_records_it(
    rollout, release, nginx, state_file, serving
):
    serving("v1")  # the watcher below tells the switch by v2 appearing
    live = state_file()["active"]["color"]
    new = other(live)
    # The marker the switch removed and the switch back would put again: a directory there, which
    # rename() cannot replace, makes the switch back fail for real (and nginx's -f test is false for it).
    blocked = nginx.upstreams / f"{APP}_backend.{live}"

    def block_the_marker_once_traffic_moved():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status, body = http_get(API, timeout=1)
            if status == 200 and json.loads(body)["version"] == "v2":
                blocked.mkdir()
                (blocked / "keep").write_text("")
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=block_the_marker_once_traffic_moved, daemon=True)
    watcher.start()
    try:
        # Probes through the placeholder server answer 503, so the module switches back.
        result = rollout(release("r11", "v2"), "r11", nginx_url=PLACEHOLDER_URL)
    finally:
        watcher.join()
        if blocked.is_dir():
            shutil.rmtree(blocked)
    assert result["failed"]
    assert f"traffic is still on color {new} (release r11)" in result["msg"]
    assert "switching back failed (color markers:" in result["msg"]
    assert "nginx gate failed for service 'backend'" in result["msg"]
    assert served_version() == "v2"
    assert container_states(f"{APP}-{new}")["backend"] == "running"
    assert backend_upstream_port(nginx) == PORTS["backend"][new]
    assert nginx.selected(f"{APP}_backend") == nginx.selected(f"{APP}_frontend") == new
    assert state_file()["active"] == {**state_file()["active"], "color": new, "release": "r11"}


@pytest.fixture
def failing_docker(tmp_path):
    """FAKE docker CLI, for Docker failures the real engine cannot be made to produce on demand: a
    `docker` first on PATH that fails when its arguments start with the given words and runs the
    real docker otherwise. Returns the environment for ansible-playbook."""
    real = shutil.which("docker")
    fake = tmp_path / "docker"

    def environment(failing_arguments):
        fake.write_text(
            "#!/bin/sh\n"
            f'case "$*" in "{failing_arguments}"*) echo "fake docker failure: $*" >&2; exit 1;; esac\n'
            f'exec {real} "$@"\n'
        )
        fake.chmod(0o755)
        return {"PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}

    return environment


def test_docker_failing_after_the_switch_fails_cleanly_with_state_agreeing_with_nginx(
    rollout, release, nginx, state_file, failing_docker, serving
):
    serving(avoid=("r12",))
    live = state_file()["active"]["color"]
    new = other(live)
    environment = failing_docker(f"compose --project-name {APP}-{live} stop")
    result = rollout(release("r12", "v1"), "r12", environment=environment)
    assert result["failed"]
    assert "Traceback" not in json.dumps(result)
    assert f"release r12 serves on color {new} and is recorded as active" in result["msg"]
    assert "fake docker failure" in result["msg"]
    assert served_version() == "v1"
    assert backend_upstream_port(nginx) == PORTS["backend"][new]
    assert state_file()["active"] == {**state_file()["active"], "color": new, "release": "r12"}


def test_docker_failing_while_checking_the_serving_release_fails_cleanly(rollout, release, state_file, failing_docker):
    serving = rollout(release("r12", "v1"), "r12")
    assert not serving.get("failed"), serving.get("msg")
    before = state_file()
    result = rollout(release("r12", "v1"), "r12", environment=failing_docker("ps "))
    assert result["failed"]
    assert "Traceback" not in json.dumps(result)
    assert f"could not tell whether color {before['active']['color']} still serves release r12" in result["msg"]
    assert state_file() == before


def test_an_app_with_no_service_behind_nginx_leaves_nginx_untouched(rollout, release, workdir, nginx):
    """A workers-only app: nothing to switch, so nginx is neither tested nor reloaded. Both nginx
    commands are `false` here: running either would fail the rollout."""
    upstream_files = {path.name: path.read_text() for path in nginx.upstreams.iterdir()}
    directory = release("workers-1", "v1")
    compose = yaml.safe_load((directory / "compose.yaml").read_text())
    compose["services"] = {"worker": compose["services"]["worker"]}
    (directory / "compose.yaml").write_text(yaml.safe_dump(compose))
    try:
        result = rollout(
            directory,
            "workers-1",
            app="crworkers",
            state_dir=str(workdir / "state-crworkers"),
            nginx_test_command=["false"],
            nginx_reload_command=["false"],
            services=[{"name": "worker", "health_timeout": 30}],
        )
        assert not result.get("failed"), result.get("msg")
        assert result["changed"]
        assert "false" not in result["commands"]
        assert "no service behind nginx: nginx untouched" in result["plan"]["steps"]
        assert container_states("crworkers-blue") == {"worker": "running"}
        assert {path.name: path.read_text() for path in nginx.upstreams.iterdir()} == upstream_files
    finally:
        sh("docker", "compose", "--project-name", "crworkers-blue", "down", "--timeout", "2", check=False)
        # Its image keeper too: the session's clean-up removes only the crtest app's keepers.
        keepers = sh("docker", "ps", "--all", "--quiet", "--filter", "label=berth.keep.app=crworkers", check=False)
        if keepers.stdout.split():
            sh("docker", "rm", "--force", *keepers.stdout.split(), check=False)
