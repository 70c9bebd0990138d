"""The demo app after compose_app's scenario, checked from outside: nginx answers, the database
holds the migrations, secrets are 0600, ports are on 127.0.0.1, the old color is kept stopped.

Verify runs after side_effect.yml, whose last deploy of the demo is v2 (the AWX deploy job), on green:
v1 first on blue, v2 on green, v3 refused, the AWX rollback job's v1 on blue, then the AWX deploy job's
v2 on green. The refused inputs after that changed nothing."""

import json

import pytest

testinfra_hosts = ["ansible://compose_app-debian13"]

HOST_HEADER = "demo.localhost"


def get(host, path):
    return host.check_output(f"curl -sS --max-time 5 -H 'Host: {HOST_HEADER}' http://127.0.0.1{path}")


def containers(host, project):
    """service -> state of a Compose project's containers."""
    out = host.check_output(
        "docker ps --all --filter label=com.docker.compose.project=%s "
        "--format '{{.Label \"com.docker.compose.service\"}} {{.State}}'",
        project,
    )
    return dict(line.split() for line in out.splitlines())


def state(host):
    return json.loads(host.file("/srv/berth/demo/state.json").content_string)


def test_v2_serves_through_nginx_with_the_database_connected(host):
    assert json.loads(get(host, "/api/health")) == {"status": "ok", "database": "connected", "version": "v2"}
    assert 'id="frontend-version">v2<' in get(host, "/")


def test_notes_are_written_and_read_through_nginx(host):
    created = json.loads(
        host.check_output(
            "curl -sS --max-time 5 -H 'Host: %s' -H 'Content-Type: application/json' "
            '-d \'{"body": "from verify"}\' http://127.0.0.1/api/notes',
            HOST_HEADER,
        )
    )
    notes = json.loads(get(host, "/api/notes"))
    assert {"id": created["id"], "body": "from verify"} in [{"id": n["id"], "body": n["body"]} for n in notes]


def test_the_worker_consumes_the_queue(host):
    job = json.loads(
        host.check_output("curl -sS --max-time 5 -H 'Host: %s' -d '{}' http://127.0.0.1/api/jobs", HOST_HEADER)
    )
    for _attempt in range(30):
        status = json.loads(get(host, f"/api/jobs/{job['id']}"))
        if status["status"] == "done":
            break
        host.run("sleep 0.5")
    assert status["status"] == "done"
    assert status["processed_by"].endswith("@v2")


def test_migrations_are_recorded_in_the_history_table(host):
    versions = host.check_output(
        "docker exec demo-data-db-1 psql -U demo -d demo -tAc 'SELECT version FROM berth_schema_history ORDER BY 1'"
    )
    assert versions.split() == ["0001", "0002"]


def test_green_serves_v2_and_blue_is_kept_stopped(host):
    active = state(host)["active"]
    assert {key: active[key] for key in ("color", "release")} == {"color": "green", "release": "v2"}
    assert containers(host, "demo-green") == {"backend": "running", "worker": "running", "frontend": "running"}
    assert containers(host, "demo-blue") == {"backend": "exited", "worker": "exited", "frontend": "exited"}
    for name, blue, green in (("demo_backend", 18010, 18020), ("demo_frontend", 18011, 18021)):
        upstream = host.file(f"/etc/nginx/berth/upstreams/{name}.conf").content_string
        # The placeholder group the nginx role wrote, then one group per color with that color's port.
        lines = [line.strip() for line in upstream.splitlines()]
        assert [line for line in lines if line.startswith(("upstream ", "server "))] == [
            f"upstream {name} {{",
            "server 127.0.0.1:8503 max_fails=0;",
            f"upstream {name}__blue {{",
            f"server 127.0.0.1:{blue} max_fails=0;",
            f"upstream {name}__green {{",
            f"server 127.0.0.1:{green} max_fails=0;",
        ]
        # The green marker sends the upstream to its green group; no blue one is left beside it.
        assert host.file(f"/etc/nginx/berth/upstreams/{name}.green").is_file
        assert not host.file(f"/etc/nginx/berth/upstreams/{name}.blue").exists


def addresses(host, container, name):
    """The IPv4 addresses `name` resolves to inside `container` (Docker's embedded DNS)."""
    out = host.check_output("docker exec %s getent ahostsv4 %s", container, name)
    return {line.split()[0] for line in out.splitlines()}


def network_address(host, container, network):
    return host.check_output(
        "docker inspect --format '{{(index .NetworkSettings.Networks \"%s\").IPAddress}}' %s", network, container
    )


def test_a_service_name_resolves_only_within_its_color_while_both_colors_run(host):
    """As during a rollout: blue's backend (v1) runs beside live green. Green's frontend must reach green's
    backend alone as `backend`, blue's backend its own, and the data service from both colors."""
    host.check_output("docker start demo-blue-backend-1")
    try:
        blue = network_address(host, "demo-blue-backend-1", "berth-demo-blue")
        green = network_address(host, "demo-green-backend-1", "berth-demo-green")
        assert blue and green and blue != green
        assert addresses(host, "demo-green-frontend-1", "backend") == {green}
        assert addresses(host, "demo-blue-backend-1", "backend") == {blue}
        assert addresses(host, "demo-green-frontend-1", "demo-db") == {
            network_address(host, "demo-data-db-1", "berth-demo-green")
        }
        assert addresses(host, "demo-blue-backend-1", "demo-db") == {
            network_address(host, "demo-data-db-1", "berth-demo-blue")
        }
    finally:
        host.check_output("docker stop demo-blue-backend-1")
    assert containers(host, "demo-blue")["backend"] == "exited"


def test_history_records_each_release_once_with_its_color_and_image_ids(host):
    releases = state(host)["releases"]
    # v3 failed its gate, so it was never recorded; v1 (the rollback) and v2 were deployed again and moved
    # to the front.
    assert [(item["release"], item["color"]) for item in releases] == [("v2", "green"), ("v1", "blue")]
    for item in releases:
        assert item["images"]["backend"]["image"] == f"berth/demo-backend:{item['release']}"
        assert item["images"]["backend"]["image_id"].startswith("sha256:")


def test_release_directories_hold_the_history_and_the_failed_v3_but_no_refused_release(host):
    assert sorted(host.file("/srv/berth/demo/releases").listdir()) == ["v1", "v2", "v3"]
    assert host.check_output("ls -d /tmp/berth-demo-* 2>/dev/null || true") == ""


@pytest.mark.parametrize("path", ["/srv/berth/demo/data/db.env", "/srv/berth/demo/releases/v1/backend.env"])
def test_secret_env_files_are_root_only(host, path):
    secret = host.file(path)
    assert secret.mode == 0o600
    assert secret.user == "root"
    assert "demo-local-only" in secret.content_string


# The scenario's host_vars give the backend this token: $, ${...} and $$ that compose would
# interpolate in a double-quoted env value, a backslash, quotes, non-ASCII and a double space.
LITERAL_ENV_VALUE = 't0k $HOME ${PGUSER} $$ é "dq" it\'s a\\d  end'


def test_secret_reaches_the_container_exactly_as_given(host):
    active = state(host)["active"]["color"]
    backend = host.check_output(
        "docker ps -q --filter label=com.docker.compose.project=demo-%s "
        "--filter label=com.docker.compose.service=backend",
        active,
    )
    # run() rather than check_output(): a failure must not echo the secret into the log.
    token = host.run("docker exec %s printenv DEMO_API_TOKEN", backend)
    assert token.rc == 0
    assert token.stdout.removesuffix("\n") == LITERAL_ENV_VALUE


def test_secret_file_is_mounted_read_only_for_the_service_user_alone(host):
    active = state(host)["active"]["color"]
    backend = f"demo-{active}-backend-1"
    # stat inside the container: the file as the app sees it; run() so that a failure never logs the secret.
    mode = host.check_output("docker exec %s stat -c '%%a %%u %%g' /run/secrets/api_token", backend)
    assert mode == "400 10001 10001"
    token = host.run("docker exec %s cat /run/secrets/api_token", backend)
    assert token.rc == 0
    assert token.stdout == LITERAL_ENV_VALUE
    overwrite = host.run("docker exec --user 0 %s sh -c 'echo x > /run/secrets/api_token'", backend)
    assert overwrite.rc != 0
    assert "Read-only file system" in overwrite.stderr
    other = host.run("docker exec --user 10002 %s cat /run/secrets/api_token", backend)
    assert other.rc != 0
    assert "Permission denied" in other.stderr
    release = state(host)["active"]["release"]
    on_host = host.file(f"/srv/berth/demo/releases/{release}/secrets/backend/api_token")
    assert (on_host.mode, on_host.uid, on_host.gid) == (0o400, 10001, 10001)


def test_data_and_app_ports_listen_on_loopback_only(host):
    published = host.check_output("docker ps --format '{{.Ports}}'")
    addresses = {
        part.strip().split(":")[0] for line in published.splitlines() for part in line.split(",") if "->" in part
    }
    assert addresses == {"127.0.0.1"}


def test_app_containers_run_as_a_non_root_user(host):
    user = host.check_output(
        "docker inspect --format '{{.Config.User}}' $(docker ps -q --filter label=com.docker.compose.service=backend)"
    )
    assert user == "10001"


def test_no_deploy_lock_is_left_behind(host):
    assert not host.file("/srv/berth/demo/deploy.lock").exists
