"""compose_rollout's check mode, diff mode and history pruning on the real engine: what the compose_app
scenario proved through nested ``ansible-playbook --check`` runs, asserted here on the returned plan,
on the bytes of state.json and the upstream files, and on the containers themselves."""

import pytest
from conftest import APP, NGINX_PORT, PORTS, container_snapshot

COLORS = ("blue", "green")


@pytest.fixture
def host(nginx, workdir):
    """What a rollout may change: state.json, every upstream file and color marker (bytes) and both colors'
    containers."""

    def snapshot():
        state = workdir / "state" / "state.json"
        return {
            "state": state.read_bytes() if state.exists() else None,
            "upstreams": {path.name: path.read_bytes() for path in sorted(nginx.upstreams.iterdir())},
            "containers": {color: container_snapshot(f"{APP}-{color}") for color in ("blue", "green")},
        }

    return snapshot


def test_check_mode_of_the_serving_release_plans_nothing_and_changes_nothing(rollout, release, baseline, host):
    baseline("r1")
    before = host()
    result = rollout(release("r1", "v1"), "r1", check=True, diff=True)
    assert not result.get("failed"), result.get("msg")
    assert result["changed"] is False
    assert result["plan"]["steps"] == []
    assert [(item["changed"], item["switch"]) for item in result["plan"]["upstreams"]] == [(False, False)] * 2
    assert result["diff"] == []
    assert result["color"] == "blue"
    assert host() == before


def test_check_mode_of_a_new_release_returns_the_plan_and_changes_nothing(
    rollout, release, baseline, host, nginx, workdir
):
    baseline("r1")
    before = host()
    result = rollout(release("r30", "v2"), "r30", check=True, diff=True)
    assert not result.get("failed"), result.get("msg")
    assert result["changed"] is True
    assert (result["color"], result["previous"]) == ("green", {"color": "blue", "release": "r1"})
    backend, frontend = (str(nginx.upstreams / f"{APP}_{name}.conf") for name in ("backend", "frontend"))
    assert result["plan"] == {
        "color": "green",
        "project": f"{APP}-green",
        "order": ["backend", "worker", "frontend"],
        "upstreams": [
            {
                "name": f"{APP}_backend",
                "group": f"{APP}_backend__green",
                "path": backend,
                "ports": [PORTS["backend"]["green"]],
                "changed": False,
                "switch": True,
            },
            {
                "name": f"{APP}_frontend",
                "group": f"{APP}_frontend__green",
                "path": frontend,
                "ports": [PORTS["frontend"]["green"]],
                "changed": False,
                "switch": True,
            },
        ],
        "steps": [
            "upstream groups unchanged, no reload (nginx -t, nginx -T)",
            f"start and gate {APP}-green: backend, worker, frontend",
            f"switch {APP}_backend, {APP}_frontend to green by the color markers (nginx -T, rename; no reload)",
            f"probe through nginx at http://127.0.0.1:{NGINX_PORT}",
            f"watch {APP}-green for 2 s, {APP}-blue kept running; switch back at a failure",
            f"record r30 as active in {workdir / 'state' / 'state.json'}",
            f"drain (at least 1 s after the switch), then stop {APP}-blue",
        ],
    }
    assert result["gates"] == []
    assert "start_and_gate" not in result["timings"]
    # Only reading commands ran: compose config, and no up, stop or nginx command.
    assert all(" config " in command for command in result["commands"]), result["commands"]
    # The diff shows the markers that move: the blue ones go, green ones appear.
    diff = {item["before_header"]: item for item in result["diff"]}
    assert sorted(diff) == sorted(
        str(nginx.upstreams / f"{APP}_{name}.{color}")
        for name in ("backend", "frontend")
        for color in ("blue", "green")
    )
    blue = diff[str(nginx.upstreams / f"{APP}_backend.blue")]
    assert (blue["before"], blue["after"]) == (before["upstreams"][f"{APP}_backend.blue"].decode(), "")
    green = diff[str(nginx.upstreams / f"{APP}_backend.green")]
    assert green["before"] == "" and f"{APP}_backend__green" in green["after"]
    assert host() == before


def test_diff_mode_shows_the_marker_switch_and_history_beyond_keep_releases_is_pruned(
    rollout, release, baseline, nginx, state_file
):
    baseline("r2", exact=True)
    markers = [
        nginx.upstreams / f"{name}.{color}"
        for name in (f"{APP}_backend", f"{APP}_frontend")
        for color in ("blue", "green")
    ]
    files = {path: path.read_text() if path.exists() else "" for path in markers}
    result = rollout(release("r31", "v1"), "r31", diff=True, keep_releases=2)
    assert not result.get("failed"), result.get("msg")
    assert result["changed"] is True
    assert [item["release"] for item in result["pruned_releases"]] == ["r1"]
    assert result["pruned_releases"][0]["color"] == "blue"
    assert [item["release"] for item in result["history"]] == ["r31", "r2"]
    assert [item["release"] for item in state_file()["releases"]] == ["r31", "r2"]
    # The diff is what happened to the markers: each one that moved, before and after.
    assert {item["before_header"]: (item["before"], item["after"]) for item in result["diff"]} == {
        str(path): (files[path], path.read_text() if path.exists() else "") for path in markers
    }
