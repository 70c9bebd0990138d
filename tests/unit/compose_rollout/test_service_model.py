"""The service model the compose_app role and compose_rollout share: each rule, its message, and the filters."""

import pytest
from ansible_collections.berth.stack.plugins.filter.service_model import FilterModule
from ansible_collections.berth.stack.plugins.module_utils import _service_model as model

DIGEST = "sha256:" + "0123456789abcdef" * 4
BACKEND = {
    "name": "backend",
    "image": "berth/demo-backend:v1",
    "container_port": 8000,
    "ports": {"blue": 18010, "green": 18020},
}
WORKER = {"name": "worker", "image": "berth/demo-worker:v1"}
FILTERS = FilterModule().filters()


def backend(**changes):
    return {**BACKEND, **changes}


@pytest.mark.parametrize(
    "image",
    [
        "127.0.0.1:5000/berth/ledger-worker:r6",
        "berth/demo-postgres",
        f"postgres@{DIGEST}",
        f"registry.example.com/demo/backend:v2@{DIGEST}",
        "localhost/x",
        "localhost:5000/a__b/c-d.e:Tag_1.2-x",
    ],
)
def test_image_references_docker_takes_are_accepted(image):
    assert model.image_reference_error(image) is None


@pytest.mark.parametrize(
    "image",
    ["bad image", "UPPER/x", "x:", "x@sha256:abc", "/x", "x/", "x:tag with space", "-x", "x:-tag", "a" * 256],
)
def test_image_references_docker_refuses_are_refused(image):
    assert model.image_reference_error(image)


@pytest.mark.parametrize(
    ("name", "variable"),
    [("backend", "BERTH_PORT_BACKEND"), ("demo-front.end", "BERTH_PORT_DEMO_FRONT_END"), ("Api2", "BERTH_PORT_API2")],
)
def test_port_variable(name, variable):
    assert model.port_variable(name) == variable
    assert FILTERS["port_variable"](name) == variable


@pytest.mark.parametrize(
    ("app", "name", "upstream"),
    [("demo", "backend", "demo_backend"), ("demo", "front-end", "demo_front_end"), ("demo", "Api.v2", "demo_api_v2")],
)
def test_default_upstream(app, name, upstream):
    assert model.default_upstream(app, name) == upstream


@pytest.mark.parametrize(
    ("image", "listed"),
    [
        ("postgres", "postgres:latest"),
        ("postgres:17", "postgres:17"),
        ("127.0.0.1:5000/berth/ledger", "127.0.0.1:5000/berth/ledger:latest"),
        ("127.0.0.1:5000/berth/ledger:r6", "127.0.0.1:5000/berth/ledger:r6"),
        ("shop/api@sha256:" + "a" * 64, "shop/api@sha256:" + "a" * 64),
    ],
)
def test_a_reference_is_compared_as_docker_lists_it(image, listed):
    assert FILTERS["listed_reference"](image) == listed


def test_compose_environment_names_every_port_range_and_the_color():
    services = [backend(), {**WORKER}, {"name": "web", "ports": {"blue": 18030, "green": 18040}, "replicas": 2}]
    expected = {"BERTH_COLOR": "green", "BERTH_PORT_BACKEND": "18020", "BERTH_PORT_WEB": "18040-18041"}
    assert model.compose_environment(services, "green") == expected
    assert FILTERS["compose_environment"](services, "green") == expected


def test_with_defaults_fills_the_spec_and_the_default_upstream():
    service = model.with_defaults("demo", backend())
    assert (service["replicas"], service["health_timeout"], service["probes"]) == (1, 120, [])
    assert service["upstream"] == "demo_backend"
    assert model.with_defaults("demo", WORKER)["upstream"] is None
    assert model.with_defaults("demo", backend(upstream="own_name"))["upstream"] == "own_name"


def test_an_internal_service_listens_on_its_ports_but_has_no_upstream():
    internal = backend(name="ai", ports={"blue": 18030, "green": 18040}, behind_nginx=False, probes=[{"path": "/"}])
    service = model.with_defaults("demo", internal)
    assert (service["upstream"], service["container_port"]) == (None, 8000)
    assert model.service_ports(service, "green") == [18040]
    assert model.with_defaults("demo", backend())["behind_nginx"] is True
    # Its default upstream name stays free for another service.
    assert model.service_errors("demo", [internal, backend(upstream="demo_ai")]) == []


def test_valid_services_have_no_errors():
    services = [backend(probes=[{"path": "/api/health", "expect": "status == 'ok'"}]), WORKER]
    assert model.service_errors("demo", services) == []
    assert FILTERS["service_errors"](services, "demo") == []


@pytest.mark.parametrize(
    ("services", "message"),
    [
        ([backend(ports={"blue": 70000, "green": 18020})], "services[backend].ports.blue=70000: out of range 1-65535"),
        ([backend(ports={"blue": 0, "green": 18020})], "services[backend].ports.blue=0: out of range 1-65535"),
        (
            [backend(ports={"blue": 65535, "green": 18020}, replicas=2)],
            "services[backend].ports.blue=65535: out of range 1-65535 (its replica 2 on 65536)",
        ),
        ([backend(replicas=-1)], "services[backend].replicas=-1: must be at least 1"),
        ([backend(replicas=0)], "services[backend].replicas=0: must be at least 1"),
        ([backend(container_port=70000)], "services[backend].container_port=70000: out of range 1-65535"),
        ([backend(container_port=0)], "services[backend].container_port=0: out of range 1-65535"),
        ([{"name": "web", "container_port": 80}], "services[web].ports: required (blue and green host ports)"),
        ([{"name": "web", "upstream": "demo_web"}], "services[web].ports: required (blue and green host ports)"),
        ([{"name": "web", "probes": [{"path": "/"}]}], "services[web].ports: required (blue and green host ports)"),
        (
            [backend(), backend(name="other", upstream="other", ports={"blue": 18020, "green": 18030})],
            "services[other].ports.blue=18020: overlaps another service's or color's ports",
        ),
        (
            [backend(ports={"blue": 18010, "green": 18011}, replicas=2)],
            "services[backend].ports.green=18011: overlaps another service's or color's ports",
        ),
        (
            [backend(upstream="Demo-Backend")],
            "services[backend].upstream='Demo-Backend': must match ^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$",
        ),
        # <upstream>__blue and __green are the colors' groups: another upstream may not take such a name.
        ([backend(upstream="demo__blue")], "services[backend].upstream='demo__blue': must match"),
        ([backend(upstream="demo_")], "services[backend].upstream='demo_': must match"),
        (
            [backend(), backend(name="api", ports={"blue": 18030, "green": 18040}, upstream="demo_backend")],
            "services[api].upstream='demo_backend': used by two services",
        ),
        (
            [backend(upstream="demo_api", behind_nginx=False)],
            "services[backend].upstream='demo_api': a service with behind_nginx false has no upstream",
        ),
        ([backend(behind_nginx="maybe")], "services[backend]: argument 'behind_nginx' is of type"),
        ([backend(probes=[{"path": "health"}])], "services[backend].probes[0].path='health': must start with /"),
        (
            [backend(probes=[{"path": "/", "successes": 0}])],
            "services[backend].probes[0].successes=0: must be at least 1",
        ),
        (
            [backend(probes=[{"path": "/", "expect": "status =="}])],
            "services[backend].probes[0].expect: invalid JMESPath expression 'status =='",
        ),
        ([backend(), backend()], "services[backend].name='backend': listed twice"),
        ([backend(name="my service")], "services[0].name='my service': must match ^[a-zA-Z0-9._-]+$"),
        ([{"image": "x"}], "services[0]: missing required arguments: name"),
        ([backend(image="bad image")], "services[backend].image='bad image': not an image reference"),
        ([backend(image="UPPER/x")], "services[backend].image='UPPER/x': not an image reference"),
        (
            [backend(nginx_path="/api")],
            "services[backend]: unknown key nginx_path (known: behind_nginx, boot_grace, command, container_port",
        ),
        ([backend(probes=[{"path": "/", "nginx": "/"}])], "services[backend]: unknown key probes.nginx (known:"),
        ([backend(replicas="two")], "services[backend]: argument 'replicas' is of type str"),
        ([backend(command="run")], None),  # a string is a one-element list, as ansible converts it
        (["backend"], "services[0]: must be a dict, got str"),
        ("backend", "services: must be a list of services, got str"),
    ],
)
def test_each_bad_service_setting_is_named(services, message):
    errors = model.service_errors("demo", services)
    if message is None:
        assert errors == []
    else:
        assert any(error.startswith(message) for error in errors), errors


def test_every_problem_is_reported_at_once_under_the_role_variable():
    services = [backend(replicas=-1, image="bad image"), {"name": "web", "container_port": 80}]
    errors = FILTERS["service_errors"](services, "demo")
    assert [error.split(":", maxsplit=1)[0] for error in errors] == [
        "compose_app_services[backend].image='bad image'",
        "compose_app_services[backend].replicas=-1",
        "compose_app_services[web].ports",
    ]


@pytest.mark.parametrize(
    ("secrets", "message"),
    [
        ({"API_TOKEN": "a'b\\c$d"}, None),
        ({"1TOKEN": "x"}, "services[backend].secrets.1TOKEN: the name must match ^[A-Za-z_][A-Za-z0-9_]*$"),
        ({"TOKEN": "ends with \\"}, "services[backend].secrets.TOKEN: the value has a backslash"),
        ({"TOKEN": "quote \\' inside"}, "services[backend].secrets.TOKEN: the value has a backslash"),
        (["TOKEN"], "services[backend]: secrets must be a dict of NAME: value (value not shown)"),
    ],
)
def test_secrets_are_refused_by_name_never_by_value(secrets, message):
    errors = model.service_errors("demo", [backend(secrets=secrets)])
    if message is None:
        assert errors == []
        return
    assert any(error.startswith(message) for error in errors), errors
    for value in secrets.values() if isinstance(secrets, dict) else []:
        assert value not in " ".join(errors)


@pytest.mark.parametrize(
    ("service", "message"),
    [
        ({"user": "10001", "secret_files": {"jwt_secret": "s3cr3t-a", "db.password": "s3cr3t-b"}}, None),
        ({"user": "10001:20002", "secret_files": {"jwt_secret": "s3cr3t-a"}}, None),
        (
            {"user": "app", "secret_files": {"jwt_secret": "s3cr3t-a"}},
            "services[backend].user='app': secret_files need the user the service runs as, as UID or UID:GID",
        ),
        ({"secret_files": {"jwt_secret": "s3cr3t-a"}}, "services[backend].user=None: secret_files need the user"),
        (
            {"user": "10001", "secret_files": {"../jwt": "s3cr3t-a"}},
            "services[backend].secret_files.../jwt: the name must match ^[A-Za-z0-9_][A-Za-z0-9_.-]*$",
        ),
        (
            {"user": "10001", "secret_files": ["s3cr3t-a"]},
            "services[backend]: secret_files must be a dict of NAME: value (value not shown)",
        ),
    ],
)
def test_secret_files_need_file_names_and_a_numeric_user_and_never_show_a_value(service, message):
    errors = model.service_errors("demo", [backend(**service)])
    if message is None:
        assert errors == []
    else:
        assert any(error.startswith(message) for error in errors), errors
    assert "s3cr3t" not in " ".join(errors)


def test_secret_files_are_placed_per_service_and_owned_by_its_user():
    services = [
        backend(user="10001:20002", secret_files={"jwt_secret": "a", "api.key": "b"}),
        {"name": "worker", "user": "10003", "secret_files": {"jwt_secret": "c"}},
        {"name": "cron", "secret_files": {}},
    ]
    assert FILTERS["secret_files"](services) == [
        {
            "service": "backend",
            "name": "api.key",
            "path": "secrets/backend/api.key",
            "key": "s0_api.key",
            "owner": 10001,
            "group": 20002,
        },
        {
            "service": "backend",
            "name": "jwt_secret",
            "path": "secrets/backend/jwt_secret",
            "key": "s0_jwt_secret",
            "owner": 10001,
            "group": 20002,
        },
        {
            "service": "worker",
            "name": "jwt_secret",
            "path": "secrets/worker/jwt_secret",
            "key": "s1_jwt_secret",
            "owner": 10003,
            "group": 10003,
        },
    ]


# Types, required and unknown keys of a data service are the role's meta/argument_specs.yml's to check
# (tests/unit/test_compose_app_argument_specs.py); the filter adds the rules a type cannot say.
@pytest.mark.parametrize(
    ("services", "message"),
    [
        ([{"name": "db", "image": "berth/demo-postgres", "container_port": 5432, "published_port": 15432}], None),
        ([{"name": "db", "image": "berth/demo-postgres", "published_port": 15432}], "[db].published_port=15432: needs"),
        ([{"name": "db", "image": "pg", "container_port": 5432, "published_port": 0}], "[db].published_port=0: out of"),
        ([{"name": "db", "image": "pg", "container_port": 99999}], "[db].container_port=99999: out of range"),
        ([{"name": "d b", "image": "pg"}], "[0].name='d b': must match"),
        ([{"name": "db", "image": "Bad Image"}], "[db].image='Bad Image': not an image reference"),
        ([{"name": "db", "image": "pg", "secrets": {"P": "x\\"}}], "[db].secrets.P: the value has a backslash"),
        ([{"name": "db", "image": "pg"}, {"name": "db", "image": "pg"}], "[db].name='db': listed twice"),
    ],
)
def test_each_bad_data_service_setting_is_named(services, message):
    errors = FILTERS["data_service_errors"](services)
    if message is None:
        assert errors == []
    else:
        assert any(error.startswith("compose_app_data_services" + message) for error in errors), errors


@pytest.mark.parametrize(
    ("app", "release", "keep", "messages"),
    [
        ("demo", "2025-01-15.1", 2, []),
        ("Demo", "v1", 5, ["compose_app_name='Demo': use lower-case letters"]),
        ("demo", "../v1", 5, ["compose_app_release='../v1': use letters, digits"]),
        ("demo", "v1", 1, ["compose_app_keep_releases=1: keep at least 2"]),
        ("my-app", "", 0, ["compose_app_name='my-app'", "compose_app_release=''", "compose_app_keep_releases=0"]),
    ],
)
def test_the_role_names_its_own_variables_in_release_errors(app, release, keep, messages):
    errors = FILTERS["release_errors"](app, release, keep)
    assert len(errors) == len(messages), errors
    for error, message in zip(errors, messages, strict=True):
        assert error.startswith(message), errors
