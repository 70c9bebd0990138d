"""compose_rollout's check mode, diff mode and history pruning on the real engine: what the compose_app
scenario proved through nested ``ansible-playbook --check`` runs, asserted here on the returned plan,
on the bytes of state.json and the upstream files, and on the containers themselves."""

import pytest
from conftest import APP, PORTS, container_snapshot


@pytest.fixture
def host(nginx, workdir):
    """What a rollout may change: state.json, every upstream file (bytes) and both colors' containers."""

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
    assert [item["changed"] for item in result["plan"]["upstreams"]] == [False, False]
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
    backend, frontend = (str(nginx.upstreams / f"crtest_{name}.conf") for name in ("backend", "frontend"))
    assert result["plan"] == {
        "color": "green",
        "project": f"{APP}-green",
        "order": ["backend", "worker", "frontend"],
        "upstreams": [
            {"name": "crtest_backend", "path": backend, "ports": [PORTS["backend"]["green"]], "changed": True},
            {"name": "crtest_frontend", "path": frontend, "ports": [PORTS["frontend"]["green"]], "changed": True},
        ],
        "steps": [
            f"start and gate {APP}-green: backend, worker, frontend",
            "switch upstreams to green: crtest_backend, crtest_frontend (nginx -t, nginx -T, reload)",
            "probe through nginx at http://127.0.0.1:18250",
            f"watch {APP}-green for 2 s, {APP}-blue kept running; switch back at a failure",
            f"record r30 as active in {workdir / 'state' / 'state.json'}",
            f"drain (at least 1 s after the switch), then stop {APP}-blue",
        ],
    }
    assert result["gates"] == []
    assert "start_and_gate" not in result["timings"]
    # Only reading commands ran: compose config, and no up, stop or nginx command.
    assert all(" config " in command for command in result["commands"]), result["commands"]
    diff = {item["before_header"]: item for item in result["diff"]}
    assert diff[backend]["before"] == before["upstreams"]["crtest_backend.conf"].decode()
    assert "server 127.0.0.1:18220 max_fails=0;" in diff[backend]["after"]
    assert "release r30" in diff[backend]["after"]
    assert host() == before


def test_diff_mode_shows_the_upstream_change_and_history_beyond_keep_releases_is_pruned(
    rollout, release, baseline, nginx, state_file
):
    baseline("r2", exact=True)
    files = {name: (nginx.upstreams / f"{name}.conf").read_text() for name in ("crtest_backend", "crtest_frontend")}
    result = rollout(release("r31", "v1"), "r31", diff=True, keep_releases=2)
    assert not result.get("failed"), result.get("msg")
    assert result["changed"] is True
    assert [item["release"] for item in result["pruned_releases"]] == ["r1"]
    assert result["pruned_releases"][0]["color"] == "blue"
    assert [item["release"] for item in result["history"]] == ["r31", "r2"]
    assert [item["release"] for item in state_file()["releases"]] == ["r31", "r2"]
    assert {item["before_header"]: (item["before"], item["after"]) for item in result["diff"]} == {
        str(nginx.upstreams / f"{name}.conf"): (files[name], (nginx.upstreams / f"{name}.conf").read_text())
        for name in files
    }
