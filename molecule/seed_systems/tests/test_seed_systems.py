"""Systems B, C, A and D after seed_systems' side effects, checked from outside: B serves v1 again (the
rollback) on its managed PostgreSQL over verify-full, its workers recording their jobs in a Redis over
TLS, C serves its second git SHA, A (with D's thresholds and metrics on its API) serves v1 again behind
the external TLS proxy (v2, then a prune and a rollback to the oldest kept release). Each system's
defining checks from issue 12 (D's probe thresholds are checked on the module's gate records in
side_effect.yml)."""

import json
import random
import time

import pytest

testinfra_hosts = ["ansible://seed_systems-debian13"]

REGISTRY = "127.0.0.1:5000"
REGISTRY_SECRETS = ["seed-Regi5try-only", "ZGVwbG95ZXI6c2VlZC1SZWdpNXRyeS1vbmx5"]  # the password, base64(user:password)


# Sites with TLS at berth's nginx (their certificates come from the test CA prepare.yml makes).
TLS_SITES = {"orders.test"}
TEST_CA = "/etc/seed-edge/ca.pem"


def get(host, site, path, method="GET", body=None):
    data = f"-X {method} -H 'Content-Type: application/json' -d '{json.dumps(body)}'" if body is not None else ""
    if site in TLS_SITES:
        url = f"--cacert {TEST_CA} --resolve {site}:443:127.0.0.1 https://{site}{path}"
    else:
        url = f"-H 'Host: {site}' http://127.0.0.1{path}"
    return json.loads(host.check_output(f"curl -sS --fail --max-time 5 {data} {url}"))


def color(host, app):
    return json.loads(host.file(f"/srv/berth/{app}/state.json").content_string)["active"]["color"]


def psql(host, sql):
    return host.check_output(f'docker exec seed-managed-pg psql -At -U orders -d orders -c "{sql}"')


# The managed Redis (prepare.yml), asked with its own redis-cli from inside its container by the name the
# workers use; the password goes in on stdin from the operator's copy, never on a command line.
REDIS_CLI = "docker exec -i seed-managed-redis redis-cli -h cache.managed.test -p 6380"
REDIS_TLS = f"{REDIS_CLI} --tls --cacert /etc/redis/tls/ca.pem"
REDIS_CA = "/etc/berth/managed-redis/ca.pem"


def redis(host, command):
    return host.check_output(f"{REDIS_TLS} --askpass {command} < /etc/berth/managed-redis/password")


# System B: an API x3 and workers x5 on a managed PostgreSQL, secrets as files.
def test_b_serves_the_previous_tag_again_connected_to_the_managed_database(host):
    assert get(host, "orders.test", "/api/health") == {"status": "ok", "database": "connected", "version": "v1"}


def test_b_is_served_over_tls_at_nginx_and_plain_http_redirects_to_it(host):
    redirect = host.check_output(
        "curl -sS -o /dev/null -w '%{http_code} %{redirect_url}' --max-time 5 -H 'Host: orders.test' "
        "http://127.0.0.1/api/health"
    )
    assert redirect == "308 https://orders.test/api/health"
    issuer = host.check_output(
        "openssl s_client -connect 127.0.0.1:443 -servername orders.test -verify_return_error "
        f"-CAfile {TEST_CA} </dev/null 2>/dev/null | openssl x509 -noout -issuer -subject -nameopt RFC2253"
    )
    assert issuer.splitlines() == ["issuer=CN=seed edge CA", "subject=CN=orders.test"]


def test_b_has_three_api_replicas_each_serving(host):
    base = {"blue": 18110, "green": 18120}[color(host, "orders")]
    for port in range(base, base + 3):
        health = json.loads(host.check_output(f"curl -sS --fail --max-time 5 http://127.0.0.1:{port}/api/health"))
        assert health == {"status": "ok", "database": "connected", "version": "v1"}, port
    running = host.check_output(
        "docker ps -q --filter label=com.docker.compose.project=orders-%s"
        " --filter label=com.docker.compose.service=backend",
        color(host, "orders"),
    )
    assert len(running.split()) == 3


def redis_done(host):
    """The jobs each worker recorded in Redis: HGETALL's field and value lines, as {worker: count}."""
    lines = redis(host, "HGETALL jobs:done").splitlines()
    return {worker: int(count) for worker, count in zip(lines[::2], lines[1::2], strict=True)}


def test_b_five_workers_all_consume_jobs_and_record_each_in_redis(host):
    """Jobs posted one at a time until each of the five workers has claimed one (at most 200). An idle
    worker polls every 0.5 s and a worker that claimed a job polls again at once, so jobs posted at a
    fixed pace lock two workers to alternate jobs and starve the others (a simulation of these workers
    starved one in 85 % of 2,000 runs at one job every 0.25 s, and this test failed so twice). Random
    gaps of 0.05-0.45 s break that lock: the simulation needed 8 jobs at the median, 21 at most in
    5,000. Each worker records a job in Redis after PostgreSQL has it done: the wait is for both."""
    psql(host, "DELETE FROM jobs WHERE payload = 'seed-workers'")
    redis(host, "DEL jobs:done")
    gaps = random.Random(12)  # noqa: S311 (test pacing, not a secret)
    ids = []
    workers = "SELECT count(DISTINCT processed_by) FROM jobs WHERE payload = 'seed-workers' AND status = 'done'"
    while len(ids) < 200 and (not ids or psql(host, workers) != "5"):
        ids.append(get(host, "orders.test", "/api/jobs", "POST", {"payload": "seed-workers"})["id"])
        time.sleep(gaps.uniform(0.05, 0.45))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done = int(psql(host, "SELECT count(*) FROM jobs WHERE payload = 'seed-workers' AND status = 'done'"))
        if done == len(ids) and sum(redis_done(host).values()) == len(ids):
            break
        time.sleep(0.5)
    counts = psql(host, "SELECT processed_by, count(*) FROM jobs WHERE payload = 'seed-workers' GROUP BY 1")
    processed_by = {worker: int(count) for worker, count in (line.split("|") for line in counts.splitlines())}
    # A worker's name is its container's host name (its short ID) and its release.
    serving = host.check_output(
        "docker ps -q --filter label=com.docker.compose.project=orders-%s"
        " --filter label=com.docker.compose.service=worker",
        color(host, "orders"),
    )
    assert sorted(processed_by) == sorted(f"{container}@v1" for container in serving.split())
    assert len(processed_by) == 5
    assert sum(processed_by.values()) == len(ids)
    assert redis_done(host) == processed_by


def test_b_app_connections_and_migrations_use_tls_verified_against_the_ca(host):
    sessions = (
        "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE client_addr IS NOT NULL AND ssl"
    )
    # 3 API replicas with a pool of 8 and 5 workers, all over TLS: pg_hba has hostssl lines only.
    assert int(psql(host, sessions)) >= 3 * 8 + 5
    assert psql(host, sessions.replace("AND ssl", "AND NOT ssl")) == "0"
    assert psql(host, "SELECT count(*) FROM pg_hba_file_rules WHERE type = 'host'") == "0"
    # Both migrations applied by safe_migration over verify-full from the host.
    assert psql(host, "SELECT count(*) FROM berth_schema_history") == "2"


def test_b_has_no_data_services_and_its_pre_migration_dump_is_0600(host):
    assert host.check_output("docker ps -a --filter label=com.docker.compose.project=orders-data -q") == ""
    dumps = host.check_output("find /srv/berth/orders/backups -type f -printf '%m %u %f\\n'").splitlines()
    assert dumps, "no pre-migration dump"
    assert all(line.startswith("600 root ") for line in dumps), dumps


def test_b_redis_refuses_plain_connections_and_tls_without_the_password(host):
    # No plain port (port 0), and the TLS port resets a client that does not speak TLS.
    plain = host.run(f"{REDIS_CLI.replace('-p 6380', '-p 6379')} PING")
    assert (plain.rc, plain.stderr.strip()) == (
        1,
        "Could not connect to Redis at cache.managed.test:6379: Connection refused",
    )
    not_tls = host.run(f"{REDIS_CLI} PING")
    assert (not_tls.rc, not_tls.stdout, not_tls.stderr.strip()) == (1, "", "Error: Connection reset by peer")
    assert host.check_output(f"{REDIS_TLS} PING") == "NOAUTH Authentication required."
    assert redis(host, "PING") == "PONG"


def test_b_worker_heartbeat_stands_still_while_redis_does_not_answer(host):
    """The heartbeat is the worker's health: Redis holds every client's commands for 8 s (CLIENT PAUSE),
    and the heartbeat, which moves every 0.5 s while both servers answer, stands still, then moves again.
    One script on the host: the samples' timing does not depend on testinfra's round trips, and the two
    samples inside the pause have 4.5 s of slack for their docker exec on a loaded machine."""
    heartbeat = f"docker exec orders-{color(host, 'orders')}-worker-1 stat -c %.3Y /tmp/worker-heartbeat"
    samples = host.check_output(
        f"{REDIS_TLS} --askpass CLIENT PAUSE 8000 ALL < /etc/berth/managed-redis/password"
        f" && sleep 1.5 && {heartbeat} && sleep 2 && {heartbeat} && sleep 6 && {heartbeat}"
    ).splitlines()
    assert samples[0] == "OK"
    paused, still_paused, after = (float(sample) for sample in samples[1:])
    assert still_paused == paused
    assert after > paused


@pytest.mark.parametrize(
    ("service", "name", "variable", "content"),
    [
        ("backend", "jwt_secret", "JWT_SECRET_FILE", "orders-jwt-secret-only-in-tests"),
        ("worker", "jwt_secret", "JWT_SECRET_FILE", "orders-jwt-secret-only-in-tests"),
        ("worker", "redis_password", "REDIS_PASSWORD_FILE", "seed-managed-redis-only"),
        # The CA prepare.yml made for the managed Redis: the file's content is the host's file.
        ("worker", "redis_ca", "REDIS_CA_FILE", REDIS_CA),
    ],
)
def test_b_secret_files_are_the_services_own_read_only_0400(host, service, name, variable, content):
    container = f"orders-{color(host, 'orders')}-{service}-1"
    if content == REDIS_CA:
        content = host.file(REDIS_CA).content_string.strip()
    assert host.check_output(f"docker exec {container} stat -c '%a %u' /run/secrets/{name}") == "400 10001"
    assert host.check_output(f"docker exec {container} cat /run/secrets/{name}") == content
    assert host.check_output(f"docker exec {container} printenv {variable}") == f"/run/secrets/{name}"


# System C: an ordered release from a private registry, tagged by git SHA.
def test_c_serves_the_second_sha_through_nginx(host):
    assert get(host, "studio.test", "/api/health")["version"] == "v2"
    state = json.loads(host.file("/srv/berth/studio/state.json").content_string)
    assert state["active"]["release"] == "8d0e4b7"


def test_c_backend_calls_the_ai_service_by_name_within_its_color(host):
    live = color(host, "studio")
    answer = host.check_output(
        f"docker exec studio-{live}-backend-1 python3 -c "
        "\"import urllib.request as r; print(r.urlopen('http://ai:8000/api/health', timeout=5).read().decode())\""
    )
    assert json.loads(answer)["version"] == "v2"
    ai_address = host.check_output(
        "docker inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' %s",
        f"studio-{live}-ai-1",
    )
    assert host.check_output(f"docker exec studio-{live}-backend-1 getent ahostsv4 ai").split()[0] == ai_address


def test_c_the_ai_service_answers_on_its_own_port_and_nginx_has_no_upstream_for_it(host):
    port = {"blue": 18213, "green": 18223}[color(host, "studio")]
    health = json.loads(host.check_output(f"curl -sS --fail --max-time 5 http://127.0.0.1:{port}/api/health"))
    assert health["version"] == "v2"
    assert not host.file("/etc/nginx/berth/upstreams/studio_ai.conf").exists
    assert "studio_ai" not in host.check_output("nginx -T 2>/dev/null")


def test_c_the_registry_refuses_a_pull_without_a_login(host):
    pulled = host.run(f"docker pull {REGISTRY}/studio/ai:8d0e4b7")
    assert pulled.rc != 0
    assert "no basic auth credentials" in pulled.stderr


def test_c_no_registry_credentials_stay_on_the_host(host):
    assert not host.file("/root/.docker/config.json").exists
    assert host.check_output("find /run /tmp -maxdepth 1 -name 'berth-studio-registry.*'") == ""
    # A canary holding the base64 form proves the search reads files and finds that form; it finds nothing else.
    host.check_output(f"printf '%s' {REGISTRY_SECRETS[1]} > /root/seed-canary")
    try:
        holders = host.run(
            "grep -rlsF " + " ".join(f"-e {secret}" for secret in REGISTRY_SECRETS) + " /run /root /srv/berth /etc /tmp"
        )
    finally:
        host.check_output("rm -f /root/seed-canary")
    assert holders.stdout.split() == ["/root/seed-canary"]


# System A: a frontend and an API behind the external TLS proxy (seed-edge on 127.0.0.1:8443, which
# connects to nginx's site on 6666 from 127.0.0.2). CLIENT is a client address of its own on loopback.
EDGE = "--cacert /etc/seed-edge/ca.pem https://shop.test:8443"
CLIENT = "127.0.0.23"
# After side_effect's v1 -> v2, a prune and the rollback to the oldest kept release.
SHOP = "v1"


def through_proxy(host, path, client=CLIENT):
    return host.check_output(f"curl -sS --fail --max-time 5 --interface {client} {EDGE}{path}")


def test_a_routes_root_to_the_frontend_and_api_to_the_backend_without_the_prefix(host):
    page = through_proxy(host, "/")
    assert f'<span class="badge" id="frontend-version">{SHOP}</span>' in page
    echo = json.loads(through_proxy(host, "/api/echo"))
    assert (echo["path"], echo["version"]) == ("/echo", SHOP)
    assert json.loads(through_proxy(host, "/api/health")) == {"status": "ok", "database": "connected", "version": SHOP}


def test_a_backend_sees_the_real_client_address_and_https_through_the_proxy(host):
    headers = json.loads(through_proxy(host, "/api/echo"))["headers"]
    assert headers == {
        "Host": "shop.test",
        "X-Real-IP": CLIENT,
        "X-Forwarded-For": f"{CLIENT}, 127.0.0.2",
        "X-Forwarded-Proto": "https",
    }


def test_a_forwarding_headers_from_anyone_but_the_proxy_are_replaced(host):
    forged = "-H 'X-Forwarded-For: 203.0.113.7' -H 'X-Forwarded-Proto: https' -H 'X-Real-IP: 203.0.113.7'"
    echo = json.loads(
        host.check_output(
            f"curl -sS --fail --max-time 5 --interface {CLIENT} {forged} -H 'Host: shop.test' http://127.0.0.1:6666/api/echo"
        )
    )
    assert echo["headers"] == {
        "Host": "shop.test",
        "X-Real-IP": CLIENT,
        "X-Forwarded-For": CLIENT,
        "X-Forwarded-Proto": "http",
    }


def test_a_site_answers_only_its_own_name_on_its_port(host):
    status = host.check_output(
        "curl -sS -o /dev/null -w '%{http_code}' --max-time 5 -H 'Host: orders.test' http://127.0.0.1:6666/api/health"
    )
    assert status == "404"


@pytest.mark.parametrize(("service", "user"), [("backend", "10001"), ("frontend", "10001")])
def test_a_app_containers_run_as_their_non_root_user(host, service, user):
    container = f"shop-{color(host, 'shop')}-{service}-1"
    assert host.check_output(f"docker exec {container} id -u") == user


def test_a_database_runs_postgresql_17_as_postgres(host):
    assert host.check_output("docker exec shop-data-db-1 id -un") == "postgres"
    version = host.check_output("docker exec shop-data-db-1 psql -U shop -d shop -qtAc 'SHOW server_version_num'")
    assert version.startswith("17"), version


def test_a_frontend_listens_on_3000_in_its_container(host):
    port = {"blue": 18311, "green": 18321}[color(host, "shop")]
    health = json.loads(host.check_output(f"curl -sS --fail --max-time 5 http://127.0.0.1:{port}/healthz"))
    assert health == {"status": "ok", "version": SHOP}
    published = host.check_output(f"docker port shop-{color(host, 'shop')}-frontend-1")
    assert published == f"3000/tcp -> 127.0.0.1:{port}"


def test_a_migrations_were_applied_by_the_apps_own_tool(host):
    def psql(sql):
        return host.check_output("docker exec shop-data-db-1 psql -U shop -d shop -qtAc %s", sql)

    # V0003 is D's expand, from v2's image; the refused contract (V0004) never ran, and a rollback does
    # not undo a migration.
    assert psql("SELECT version FROM demo_schema_migrations ORDER BY 1").split() == ["V0001", "V0002", "V0003"]
    # Command mode: the tool keeps its own history; safe_migration's file mode was not used.
    assert psql("SELECT to_regclass('berth_schema_history') IS NULL") == "t"


# System D: /metrics for the operator, not the public.
@pytest.mark.parametrize(
    "request_",
    [
        f"--interface {CLIENT} {EDGE}/api/metrics",
        "-H 'Host: shop.test' http://127.0.0.1:6666/api/metrics",
        "-H 'Host: shop.test' http://127.0.0.1:6666/api/metrics/",
    ],
)
def test_d_metrics_are_refused_through_the_public_site(host, request_):
    status = host.check_output(f"curl -sS -o /dev/null -w '%{{http_code}}' --max-time 5 {request_}")
    assert status == "404"


def test_d_metrics_answer_at_the_stable_address_from_the_live_color(host):
    metrics = host.check_output("curl -sS --fail --max-time 5 http://127.0.0.1:8502/upstreams/shop_backend/metrics")
    assert f'demo_build_info{{version="{SHOP}"}} 1' in metrics.splitlines()
    port = {"blue": 18310, "green": 18320}[color(host, "shop")]
    # The same document the live color's API answers on its own port.
    assert host.check_output(f"curl -sS --fail --max-time 5 http://127.0.0.1:{port}/metrics").startswith("# HELP")
