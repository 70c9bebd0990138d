"""compose_rollout's plan, computed from parameters and observations given as dicts: no Docker, no files."""

import pytest
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible_collections.berth.stack.plugins.module_utils import _nginx_upstream as upstreams
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


def upstream_file(name, ports, comment):
    return upstreams.render_upstream(name, ports, 16, comment)


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


def serving_files(color, release="r2"):
    """The upstream files as the rollout of ``release`` to ``color`` wrote them."""
    ports = {"blue": ([18210], [18211, 18212]), "green": ([18220], [18221, 18222])}[color]
    comment = f"Managed by berth.stack.compose_rollout: app demo, color {color}, release {release}"
    return {
        BACKEND_CONF: upstream_file("demo_backend", ports[0], comment),
        FRONTEND_CONF: upstream_file("demo_frontend", ports[1], comment),
    }


def test_first_deploy_plans_blue_with_every_upstream_and_the_listed_order_first():
    plan = planning.plan_rollout(params(), observed())
    public = planning.public_plan(plan)
    assert (public["color"], public["project"]) == ("blue", "demo-blue")
    assert public["order"] == ["backend", "worker", "frontend", "cache"]
    assert public["upstreams"] == [
        {"name": "demo_backend", "path": BACKEND_CONF, "ports": [18210], "changed": True},
        {"name": "demo_frontend", "path": FRONTEND_CONF, "ports": [18211, 18212], "changed": True},
    ]
    assert public["steps"] == [
        "start and gate demo-blue: backend, worker, frontend, cache",
        "switch upstreams to blue: demo_backend, demo_frontend (nginx -t, nginx -T, reload)",
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
        (("blue", "r2"), "green", "digest-1", "blue", False, "point at color green but"),
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
    assert [item["changed"] for item in plan["upstreams"]] == [False, False]
    assert plan["diff"] == []
    assert not any(step.startswith("drain") for step in plan["steps"])


def test_a_new_release_drains_and_stops_the_old_color_and_diffs_each_changed_file():
    files = {**serving_files("blue"), BACKEND_CONF: PLACEHOLDER}
    plan = planning.plan_rollout(params(drain_seconds=2.5), observed(state("blue", "r1"), files))
    assert plan["steps"][-3:] == [
        "watch demo-green for 30 s, demo-blue kept running; switch back at a failure",
        "record r2 as active in /srv/berth/demo/state.json",
        "drain (at least 2.5 s after the switch), then stop demo-blue",
    ]
    assert [(item["before_header"], item["before"]) for item in plan["diff"]] == [
        (BACKEND_CONF, PLACEHOLDER),
        (FRONTEND_CONF, files[FRONTEND_CONF]),
    ]
    assert "server 127.0.0.1:18220 max_fails=0;" in plan["diff"][0]["after"]
    assert plan["upstreams"][0]["before"] == PLACEHOLDER  # what restore() puts back


def test_a_missing_upstream_file_diffs_from_empty():
    plan = planning.plan_rollout(params(), observed())
    assert [item["before"] for item in plan["diff"]] == ["", ""]
    assert [item["before"] for item in plan["upstreams"]] == [None, None]


def test_workers_only_leave_nginx_untouched():
    plan = planning.plan_rollout(params(services=[{"name": "worker"}]), observed(files={}, compose=["worker"]))
    assert plan["upstreams"] == []
    assert plan["steps"] == [
        "start and gate demo-blue: worker",
        "no service behind nginx: nginx untouched",
        "watch demo-blue for 30 s; switch back at a failure",
        "record r2 as active in /srv/berth/demo/state.json",
    ]


@pytest.mark.parametrize(
    ("changes", "step"),
    [
        (
            {"nginx_test_command": ["nginx-check"]},
            "switch upstreams to blue: demo_backend, demo_frontend (nginx -t, reload)",
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
    assert planning.upstream_paths(services, given["upstreams_dir"]) == [BACKEND_CONF, FRONTEND_CONF]


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
