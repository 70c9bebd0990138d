"""compose_rollout's plan, computed from parameters and observations given as dicts: no Docker, no files."""

import pytest
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible_collections.berth.stack.plugins.module_utils import _nginx_upstream as upstreams
from ansible_collections.berth.stack.plugins.module_utils import _rollout_apply as applying
from ansible_collections.berth.stack.plugins.module_utils import _rollout_plan as planning

UPSTREAMS = "/etc/nginx/berth/upstreams"
BACKEND_CONF = f"{UPSTREAMS}/demo_backend.conf"
FRONTEND_CONF = f"{UPSTREAMS}/demo_frontend.conf"
PLACEHOLDER = "upstream demo_backend {\n    server 127.0.0.1:18251 max_fails=0;\n}\n"
SERVICES = [
    {"name": "backend", "container_port": 8000, "ports": {"blue": 18210, "green": 18220}, "probes": [{"path": "/api"}]},
    {"name": "worker", "image": "berth/demo-worker:v1"},
    {"name": "frontend", "upstream": "demo_frontend", "ports": {"blue": 18211, "green": 18221}, "replicas": 2},
]


def params(**changes):
    """Module parameters as AnsibleModule hands them over, defaults filled."""
    raw = {"app": "demo", "release": "r2", "release_dir": "/srv/berth/demo/releases/r2", "services": SERVICES}
    outcome = ArgumentSpecValidator(planning.ARGUMENT_SPEC).validate({**raw, **changes})
    assert outcome.error_messages == []
    return outcome.validated_parameters


def marker(name, color):
    return f"{UPSTREAMS}/{name}.{color}"


def legacy_file(name, ports):
    """An upstream file as rollouts wrote it before the color markers: one group, the live color's ports."""
    return upstreams.render_upstream(name, ports, 16, "Managed by berth.stack.compose_rollout: release r1")


def state(color, release, sha="digest-1", history=None):
    releases = [{"release": release, "color": color, "release_sha256": sha}, *(history or [])]
    return {"app": "demo", "active": {"color": color, "release": release}, "releases": releases}


def observed(state_=None, files=None, sha="digest-1", compose=("backend", "worker", "frontend", "cache")):
    return {
        "state": state_ or {"app": "demo", "active": None, "releases": []},
        "upstream_files": files or {BACKEND_CONF: None, FRONTEND_CONF: None},
        "release_sha256": sha,
        "compose_services": list(compose),
    }


def placeholders():
    """The upstream files as the nginx role writes them before any deploy, with no marker."""
    return {BACKEND_CONF: PLACEHOLDER, FRONTEND_CONF: PLACEHOLDER.replace("demo_backend", "demo_frontend")}


def written(plan, files=None):
    """The files as apply() leaves them once the plan's switch is done: upstream files and markers."""
    files = dict(files or {})
    for item in plan["upstreams"]:
        files[item["path"]] = item["content"]
        files.update({path: change["after"] for path, change in item["markers"].items()})
    return files


def serving_files(color):
    """The files after a first deploy to blue, then (for green) a rollout to green."""
    files = written(planning.plan_rollout(params(release="r0"), observed(files=placeholders())))
    if color == "green":
        files = written(planning.plan_rollout(params(release="r1"), observed(state("blue", "r0"), files)), files)
    return files


def test_first_deploy_plans_blue_with_every_upstream_and_the_listed_order_first():
    plan = planning.plan_rollout(params(), observed())
    public = planning.public_plan(plan)
    assert (public["color"], public["project"]) == ("blue", "demo-blue")
    assert public["order"] == ["backend", "worker", "frontend", "cache"]
    assert public["upstreams"] == [
        {
            "name": "demo_backend",
            "group": "demo_backend__blue",
            "path": BACKEND_CONF,
            "ports": [18210],
            "changed": True,
            "switch": True,
        },
        {
            "name": "demo_frontend",
            "group": "demo_frontend__blue",
            "path": FRONTEND_CONF,
            "ports": [18211, 18212],
            "changed": True,
            "switch": True,
        },
    ]
    assert public["steps"] == [
        "write the upstream groups of demo_backend, demo_frontend, traffic not moved (nginx -t, nginx -T, reload)",
        "start and gate demo-blue: backend, worker, frontend, cache",
        "switch demo_backend, demo_frontend to blue by the color markers (nginx -T, rename; no reload)",
        "probe through nginx at http://127.0.0.1",
        "watch demo-blue for 30 s; switch back at a failure",
        "record r2 as active in /srv/berth/demo/state.json",
    ]
    assert plan["previous"] == {"color": None, "release": None}
    assert plan["serving"] is False
    assert plan["environment"] == {
        "BERTH_COLOR": "blue",
        "BERTH_PORT_BACKEND": "18210",
        "BERTH_PORT_FRONTEND": "18211-18212",
    }
    # A compose service nobody listed starts last with the spec's defaults.
    assert plan["services"][-1] == {**plan["services"][-1], "name": "cache", "health_timeout": 120, "probes": []}


@pytest.mark.parametrize(
    ("active", "files", "sha", "color", "serving", "warning"),
    [
        (("blue", "r1"), "blue", "digest-1", "green", False, None),  # a new release goes to the idle color
        (("green", "r1"), "green", "digest-1", "blue", False, None),
        (("blue", "r2"), "blue", "digest-1", "blue", True, None),  # the serving release: one docker check left
        # state.json lags nginx (interrupted after the switch): the files decide, the release is unknown.
        (("blue", "r2"), "green", "digest-1", "blue", False, "send traffic to color green but"),
        # The files do not agree on one color (a placeholder): state.json decides.
        (("green", "r1"), None, "digest-1", "blue", False, None),
    ],
)
def test_live_and_target_color(active, files, sha, color, serving, warning):
    plan = planning.plan_rollout(params(), observed(state(*active), files and serving_files(files), sha))
    assert plan["color"] == color
    assert plan["serving"] is serving
    assert bool(plan["warnings"]) is bool(warning)
    if warning:
        assert warning in plan["warnings"][0]
        assert plan["previous"] == {"color": files, "release": None}


def test_the_serving_release_changes_no_upstream_and_drains_nothing():
    plan = planning.plan_rollout(params(), observed(state("blue", "r2"), serving_files("blue")))
    assert [(item["changed"], item["switch"]) for item in plan["upstreams"]] == [(False, False), (False, False)]
    assert plan["diff"] == []
    assert not any(step.startswith("drain") for step in plan["steps"])


def test_the_first_deploy_writes_both_colors_groups_and_keeps_the_placeholder_group():
    plan = planning.plan_rollout(params(), observed(files=placeholders()))
    blocks = upstreams.upstream_blocks(plan["upstreams"][1]["content"])
    assert list(blocks) == ["demo_frontend", "demo_frontend__blue", "demo_frontend__green"]
    assert upstreams.upstream_ports(blocks["demo_frontend"]) == [18251]  # serves until a marker exists
    assert upstreams.upstream_ports(blocks["demo_frontend__blue"]) == [18211, 18212]
    assert upstreams.upstream_ports(blocks["demo_frontend__green"]) == [18221, 18222]
    # The diff shows each file, then the markers that appear.
    assert [(item["before_header"], item["before"] != "", item["after"] != "") for item in plan["diff"]] == [
        (BACKEND_CONF, True, True),
        (FRONTEND_CONF, True, True),
        (marker("demo_backend", "blue"), False, True),
        (marker("demo_frontend", "blue"), False, True),
    ]


def test_a_new_release_switches_markers_only_and_drains_and_stops_the_old_color():
    files = serving_files("blue")
    plan = planning.plan_rollout(params(drain_seconds=2.5), observed(state("blue", "r1"), files))
    assert plan["color"] == "green"
    # Both colors' groups were written by the first deploy: no file changes, so no reload.
    assert [(item["changed"], item["switch"]) for item in plan["upstreams"]] == [(False, True), (False, True)]
    assert plan["steps"][0] == "upstream groups unchanged, no reload (nginx -t, nginx -T)"
    assert (
        plan["steps"][2]
        == "switch demo_backend, demo_frontend to green by the color markers (nginx -T, rename; no reload)"
    )
    assert plan["steps"][-3:] == [
        "watch demo-green for 30 s, demo-blue kept running; switch back at a failure",
        "record r2 as active in /srv/berth/demo/state.json",
        "drain (at least 2.5 s after the switch), then stop demo-blue",
    ]
    assert [(item["before_header"], item["before"] != "", item["after"] != "") for item in plan["diff"]] == [
        (marker("demo_backend", "blue"), True, False),
        (marker("demo_backend", "green"), False, True),
        (marker("demo_frontend", "blue"), True, False),
        (marker("demo_frontend", "green"), False, True),
    ]
    assert "demo_backend__green" in plan["diff"][1]["after"]
    # What a switch back puts back.
    assert (
        plan["upstreams"][0]["markers"][marker("demo_backend", "blue")]["before"]
        == files[marker("demo_backend", "blue")]
    )


def test_both_markers_mean_green_as_in_nginx_and_the_switch_removes_the_stray_one():
    files = {**serving_files("blue"), marker("demo_backend", "green"): "", marker("demo_frontend", "green"): ""}
    plan = planning.plan_rollout(params(), observed(state("green", "r1"), files))
    assert plan["previous"] == {"color": "green", "release": "r1"}
    assert plan["color"] == "blue"
    assert [item["selected"] for item in plan["upstreams"]] == ["green", "green"]
    assert written(plan, files)[marker("demo_backend", "green")] is None


def test_a_host_with_single_group_files_keeps_serving_them_until_the_first_switch():
    """The upgrade path: files written before the markers existed name the live color by their ports."""
    files = {
        BACKEND_CONF: legacy_file("demo_backend", [18220]),
        FRONTEND_CONF: legacy_file("demo_frontend", [18221, 18222]),
    }
    plan = planning.plan_rollout(params(), observed(state("blue", "r1"), files))
    assert plan["warnings"] and "send traffic to color green" in plan["warnings"][0]
    assert plan["color"] == "blue"
    item = plan["upstreams"][0]
    assert item["changed"] and item["switch"] and item["selected"] is None
    blocks = upstreams.upstream_blocks(item["content"])
    # The single group stays as it was: it serves until the marker appears, after nginx has reloaded.
    assert blocks["demo_backend"] == upstreams.upstream_blocks(files[BACKEND_CONF])["demo_backend"]
    assert upstreams.upstream_ports(blocks["demo_backend__blue"]) == [18210]
    assert upstreams.upstream_ports(blocks["demo_backend__green"]) == [18220]
    # Rolled out as planned, the next plan of the same release changes nothing.
    again = planning.plan_rollout(params(), observed(state("blue", "r2"), written(plan, files)))
    assert again["serving"] is True


def test_a_replica_change_rewrites_the_new_colors_group_only():
    files = serving_files("blue")
    services = [SERVICES[0], SERVICES[1], {**SERVICES[2], "replicas": 3}]
    plan = planning.plan_rollout(params(services=services), observed(state("blue", "r1"), files))
    backend, frontend = plan["upstreams"]
    assert (backend["changed"], frontend["changed"]) == (False, True)
    blocks = upstreams.upstream_blocks(frontend["content"])
    assert upstreams.upstream_ports(blocks["demo_frontend__green"]) == [18221, 18222, 18223]
    # The serving color's group is left as it is: its containers run as they were started.
    assert upstreams.upstream_ports(blocks["demo_frontend__blue"]) == [18211, 18212]
    assert (
        plan["steps"][0] == "write the upstream groups of demo_frontend, traffic not moved (nginx -t, nginx -T, reload)"
    )


def test_a_missing_upstream_file_diffs_from_empty():
    plan = planning.plan_rollout(params(), observed())
    assert [item["before"] for item in plan["diff"]] == ["", "", "", ""]
    assert [item["before"] for item in plan["upstreams"]] == [None, None]


def test_workers_only_leave_nginx_untouched():
    plan = planning.plan_rollout(params(services=[{"name": "worker"}]), observed(files={}, compose=["worker"]))
    assert plan["upstreams"] == []
    assert plan["steps"] == [
        "no service behind nginx: nginx untouched",
        "start and gate demo-blue: worker",
        "watch demo-blue for 30 s; switch back at a failure",
        "record r2 as active in /srv/berth/demo/state.json",
    ]


def test_an_internal_service_is_gated_on_its_ports_and_leaves_nginx_untouched():
    ai = {"name": "ai", "container_port": 8000, "ports": {"blue": 18212, "green": 18222}, "behind_nginx": False}
    ai["probes"] = [{"path": "/api/health"}]
    plan = planning.plan_rollout(params(services=[ai]), observed(files={}, compose=["ai"]))
    assert plan["upstreams"] == []
    assert "no service behind nginx: nginx untouched" in plan["steps"]
    assert not any(item.startswith("probe through nginx") for item in plan["steps"])
    assert planning.upstream_paths(planning.listed_services(params(services=[ai])), UPSTREAMS) == []
    assert applying.nginx_probes(plan) == []
    assert applying.direct_urls(plan, plan["services"][0], ai["probes"][0]) == ["http://127.0.0.1:18212/api/health"]


@pytest.mark.parametrize(
    ("changes", "step"),
    [
        (
            {"nginx_test_command": ["nginx-check"]},
            "write the upstream groups of demo_backend, demo_frontend, traffic not moved (nginx -t, reload)",
        ),
        ({"nginx_url": ""}, None),
        ({"state_dir": "/var/lib/demo"}, "record r2 as active in /var/lib/demo/state.json"),
    ],
)
def test_steps_follow_the_settings(changes, step):
    plan = planning.plan_rollout(params(**changes), observed())
    if step:
        assert step in plan["steps"]
    else:
        assert not any(item.startswith("probe through nginx") for item in plan["steps"])


def test_upstream_paths_are_the_files_the_plan_reads():
    given = params()
    services = planning.listed_services(given)
    assert planning.upstream_paths(services, given["upstreams_dir"]) == [
        BACKEND_CONF,
        marker("demo_backend", "blue"),
        marker("demo_backend", "green"),
        FRONTEND_CONF,
        marker("demo_frontend", "blue"),
        marker("demo_frontend", "green"),
    ]


def test_each_expression_is_compiled_once_in_the_plan():
    services = [{**SERVICES[0], "probes": [{"path": "/api", "expect": "status == 'ok'"}, {"path": "/"}]}]
    plan = planning.plan_rollout(params(services=services), observed(files={BACKEND_CONF: None}))
    first, second = plan["services"][0]["probes"]
    assert first["expression"].expression == "status == 'ok'"
    assert first["expression"].search({"status": "ok"}) is True
    assert second["expression"] is None


def test_a_listed_service_compose_does_not_have_is_refused():
    with pytest.raises(
        planning.PlanError, match=r"services: frontend not in .*compose.yaml \(it has backend, worker\)"
    ):
        planning.plan_rollout(params(), observed(compose=["backend", "worker"]))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"app": "Demo"}, "app='Demo': use lower-case letters"),
        ({"release": "bad release!"}, "release='bad release!': use letters"),
        ({"keep_releases": 1}, "keep_releases=1: keep at least 2"),
        ({"nginx_url": "ftp://x/"}, "nginx_url='ftp://x/': give scheme and host only"),
        ({"release_dir": "/nonexistent"}, "release_dir='/nonexistent': holds no compose file 'compose.yaml'"),
        ({"services": [{**SERVICES[0], "ports": {"blue": 70000, "green": 1}}]}, "services[backend].ports.blue=70000"),
        ({"services": [{**SERVICES[0], "replicas": -1}]}, "services[backend].replicas=-1: must be at least 1"),
    ],
)
def test_parameters_are_refused_naming_the_option(changes, message):
    assert any(error.startswith(message) for error in planning.validation_errors(params(**changes)))


def test_a_recorded_release_whose_files_changed_is_refused_naming_both_digests():
    with pytest.raises(planning.PlanError) as refused:
        planning.plan_rollout(params(), observed(state("blue", "r2", sha="digest-1"), sha="digest-2"))
    message = str(refused.value)
    assert "release='r2' is recorded in /srv/berth/demo/state.json with release_sha256 digest-1" in message
    assert "now has digest-2" in message
    assert "deploy the change under a new release id" in message


def test_a_zero_watch_window_plans_no_watch():
    plan = planning.plan_rollout(params(watch_seconds=0), observed(state("blue", "r1")))
    assert not any(step.startswith("watch") for step in plan["steps"])
    assert plan["settings"]["watch_seconds"] == 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"watch_seconds": -1}, "watch_seconds=-1: must be at least 0"),
        ({"heartbeat_timeout": 0}, "heartbeat_timeout=0: must be more than 0"),
        ({"lock_dir": "/nonexistent/deploy.lock"}, "lock_dir='/nonexistent/deploy.lock': no such directory"),
    ],
)
def test_bad_safety_settings_are_refused_naming_the_option(changes, message):
    assert message in "; ".join(planning.validation_errors(params(**changes)))
