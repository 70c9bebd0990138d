"""Real parts for compose_rollout's tests: the Docker engine with the demo images, PostgreSQL in a
container, and an nginx started from the test with its own prefix on 127.0.0.1 high ports.

Everything is named crtest-* (containers, projects, network) and removed at the end. Under pytest-xdist
each worker has an app of its own: gw0 is crtest on ports 18200-18299, gw1 crtest1 on 18300-18399, and so
on, so two workers roll out side by side without meeting.
"""

import copy
import http.client
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from ansible_collections.berth.stack.plugins.module_utils import _nginx_upstream as upstreams
from ansible_collections.berth.stack.plugins.module_utils._rollout_apply import release_sha256

REPO = Path(__file__).resolve().parents[3]
MIGRATIONS = REPO / "tests" / "fixtures" / "demo-app" / "migrations"
PSQL = "/usr/lib/postgresql/15/bin/psql"
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
APP = "crtest" if WORKER == 0 else f"crtest{WORKER}"


def port(number):
    """``number`` (in 18200-18299) moved to this worker's block of ports."""
    return number + 100 * WORKER


NETWORK = f"{APP}-net"
NGINX_PORT = port(18250)
PLACEHOLDER_PORT = port(18251)
# The same site over TLS, as the nginx role serves a site with a certificate: its name and its port.
TLS_NAME = "crtest.example.test"
NGINX_TLS_PORT = port(18252)
DATABASE_PORT = port(18260)
PORTS = {
    "backend": {"blue": port(18210), "green": port(18220)},
    "frontend": {"blue": port(18211), "green": port(18221)},
}
API = f"http://127.0.0.1:{NGINX_PORT}/api/health"
BACKEND_UPSTREAM, FRONTEND_UPSTREAM = UPSTREAMS = (f"{APP}_backend", f"{APP}_frontend")
# Known states a test can ask for: the releases rolled out in this order, the last one serving.
BASELINES = {
    "r1": [("r1", "v1", "blue")],
    "r2": [("r1", "v1", "blue"), ("r2", "v2", "green")],
}
DEMO_IMAGES = [
    f"berth/demo-{part}:{version}" for part in ("backend", "frontend", "worker") for version in ("v1", "v2", "v3")
]


def sh(*argv, check=True, timeout=180, **kwargs):
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout, **kwargs)


def http_get(url, timeout=3):
    """(status, body) of one GET; (None, reason) when the connection fails."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - 127.0.0.1 test URLs
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, exc.read().decode()
        except (OSError, http.client.HTTPException):
            return exc.code, ""
    # A connection refused or reset, or a response cut off (http.client.IncompleteRead) when the
    # server dies while answering: a failed request, never an exception in a client loop's thread.
    except (OSError, http.client.HTTPException) as exc:
        return None, str(exc)


def remove_everything():
    for project in (f"{APP}-blue", f"{APP}-green", f"{APP}-data"):
        sh("docker", "compose", "--project-name", project, "down", "--volumes", "--timeout", "2", check=False)
    sh("docker", "network", "rm", NETWORK, check=False)
    keepers = sh("docker", "ps", "--all", "--quiet", "--filter", f"label=berth.keep.app={APP}", check=False)
    keepers = keepers.stdout.split()
    if keepers:
        sh("docker", "rm", "--force", *keepers, check=False)


@pytest.fixture(scope="session")
def demo_images():
    missing = [image for image in DEMO_IMAGES if sh("docker", "image", "inspect", image, check=False).returncode]
    if missing:
        pytest.fail(f"demo images missing ({', '.join(missing)}): run `make prepare`")


@pytest.fixture(scope="session")
def database(demo_images, tmp_path_factory):
    """The data project: PostgreSQL on the shared network, migrated, published on 127.0.0.1 only."""
    remove_everything()
    sh("docker", "network", "create", NETWORK)
    compose = tmp_path_factory.mktemp("data") / "compose.yaml"
    compose.write_text(
        yaml.safe_dump(
            {
                "services": {
                    "db": {
                        "image": "berth/demo-postgres:latest",
                        "environment": {"POSTGRES_USER": "demo", "POSTGRES_PASSWORD": "crtest", "POSTGRES_DB": "demo"},
                        "ports": [f"127.0.0.1:{DATABASE_PORT}:5432"],
                        "networks": {"app": {"aliases": [f"{APP}-db"]}},
                    }
                },
                "networks": {"app": {"external": True, "name": NETWORK}},
            }
        )
    )
    sh("docker", "compose", "--project-name", f"{APP}-data", "--file", str(compose), "up", "--detach", "--wait")
    env = {**os.environ, "PGPASSWORD": "crtest"}
    for migration in sorted(MIGRATIONS.glob("V*.sql")):
        sh(
            PSQL,
            "-h",
            "127.0.0.1",
            "-p",
            str(DATABASE_PORT),
            "-U",
            "demo",
            "-d",
            "demo",
            "-v",
            "ON_ERROR_STOP=1",
            "-q",
            "-f",
            str(migration),
            env=env,
        )
    yield
    remove_everything()


def self_signed_certificate(directory: Path, stem: str, name: str) -> Path:
    """``<stem>.crt`` and ``<stem>.key`` in ``directory``: a self-signed certificate for ``name``; its path."""
    certificate = directory / f"{stem}.crt"
    request = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}"]
    request += ["-addext", f"subjectAltName=DNS:{name}", "-keyout", str(directory / f"{stem}.key")]
    sh(*request, "-out", str(certificate))
    return certificate


def selector_directives(name, upstreams_dir):
    """The server-context lines that choose upstream ``name``'s group from its markers, as the nginx role's
    site template (templates/upstream_selector.j2) writes them; locations then ``proxy_pass
    http://$berth_upstream_<name>``."""
    variable = f"$berth_upstream_{name}"
    lines = [f"set {variable} {name};"]
    lines += [
        f"if (-f {upstreams.marker_path(upstreams_dir, name, color)}) "
        f"{{ set {variable} {upstreams.group_name(name, color)}; }}"
        for color in upstreams.MARKER_ORDER
    ]
    return lines


class Nginx:
    def __init__(self, prefix: Path):
        self.prefix = prefix
        self.upstreams = prefix / "upstreams"
        self.conf = prefix / "nginx.conf"
        self.base = ["nginx", "-p", str(prefix), "-c", str(self.conf), "-e", str(prefix / "error.log")]

    def reload(self):
        """Reload, and wait until the old worker has exited and a new one runs: until then the old one may
        still take a new connection and answer it from the previous configuration. (The signal is handled
        later than `nginx -s reload` returns: counting workers right after it may still see the old one.)"""
        master = (self.prefix / "nginx.pid").read_text().strip()

        def workers():
            return set(sh("pgrep", "-P", master, check=False).stdout.split())

        old = workers()
        sh(*self.reload_command)
        assert wait_for(lambda: (now := workers()) and not now & old, timeout=30)

    def restart(self):
        """Stop nginx (fast shutdown: every connection closed), wait until it is gone, start it again."""
        pid = int((self.prefix / "nginx.pid").read_text())
        sh(*self.base, "-s", "stop")
        assert wait_for(lambda: not os.path.exists(f"/proc/{pid}"), timeout=10)
        sh(*self.base)

    @property
    def test_command(self):
        return [*self.base, "-t", "-q"]

    @property
    def reload_command(self):
        return [*self.base, "-s", "reload"]

    def write_placeholders(self):
        """The upstream files before any release, as the nginx role writes them: every upstream points at
        the 503 placeholder server, and no color marker exists."""
        for name in UPSTREAMS:
            (self.upstreams / f"{name}.conf").write_text(
                f"upstream {name} {{\n    server 127.0.0.1:{PLACEHOLDER_PORT} max_fails=0;\n    keepalive 16;\n}}\n"
            )
            for color in upstreams.MARKER_ORDER:
                (self.upstreams / f"{name}.{color}").unlink(missing_ok=True)

    def selected(self, name):
        """The color whose marker sends upstream ``name`` to its group, as nginx decides (None: no marker)."""
        paths = {color: self.upstreams / f"{name}.{color}" for color in upstreams.MARKER_ORDER}
        return upstreams.selected_color(
            {color: path.read_text() if path.exists() else None for color, path in paths.items()}
        )

    def serving_ports(self, name):
        """The ports nginx sends upstream ``name`` to: those of the group its markers select."""
        selected = self.selected(name)
        group = upstreams.group_name(name, selected) if selected else name
        blocks = upstreams.upstream_blocks((self.upstreams / f"{name}.conf").read_text())
        return upstreams.upstream_ports(blocks.get(group))

    def standard_groups(self):
        """Whether each upstream file holds both colors' groups with the fixture's ports, one replica each:
        a rollout of the fixture's services then changes no file, so it switches with no reload."""
        for name, service in zip(UPSTREAMS, ("backend", "frontend"), strict=True):
            path = self.upstreams / f"{name}.conf"
            blocks = upstreams.upstream_blocks(path.read_text() if path.exists() else "")
            for color in upstreams.MARKER_ORDER:
                if upstreams.upstream_ports(blocks.get(upstreams.group_name(name, color))) != [PORTS[service][color]]:
                    return False
        return True

    def selectors(self):
        """The server-context lines of a site that proxies to the test app (as the nginx role's site template)."""
        return "\n        ".join(line for name in UPSTREAMS for line in selector_directives(name, str(self.upstreams)))

    def make_certificate(self, stem, name):
        """A self-signed certificate for ``name`` (key and certificate files in the prefix); its path."""
        return self_signed_certificate(self.prefix, stem, name)

    def write_config(self):
        self.upstreams.mkdir(parents=True)
        self.write_placeholders()
        self.make_certificate("tls", TLS_NAME)
        self.conf.write_text(
            f"""
# The test runs as root in a private prefix; workers need its temporary directories.
user root;
worker_processes 1;
pid {self.prefix}/nginx.pid;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {self.prefix}/client_temp;
    proxy_temp_path {self.prefix}/proxy_temp;
    fastcgi_temp_path {self.prefix}/fastcgi_temp;
    uwsgi_temp_path {self.prefix}/uwsgi_temp;
    scgi_temp_path {self.prefix}/scgi_temp;
    include {self.upstreams}/*.conf;
    server {{
        listen 127.0.0.1:{PLACEHOLDER_PORT};
        return 503 "no release deployed yet\\n";
    }}
    server {{
        listen 127.0.0.1:{NGINX_PORT};
        open_file_cache off;
        {self.selectors()}
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        location /api/ {{ proxy_pass http://$berth_upstream_{BACKEND_UPSTREAM}; }}
        location /missing/ {{ return 404; }}
        location / {{ proxy_pass http://$berth_upstream_{FRONTEND_UPSTREAM}; }}
    }}
    server {{
        listen 127.0.0.1:{NGINX_TLS_PORT} ssl;
        server_name {TLS_NAME};
        ssl_certificate tls.crt;
        ssl_certificate_key tls.key;
        open_file_cache off;
        {self.selectors()}
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        location /api/ {{ proxy_pass http://$berth_upstream_{BACKEND_UPSTREAM}; }}
        location / {{ proxy_pass http://$berth_upstream_{FRONTEND_UPSTREAM}; }}
    }}
}}
"""
        )


class KeepAliveLoop:
    """Bounded client loops through nginx (at most ``max_requests`` in all or ``max_seconds``), each thread
    on its own keep-alive connection, alternating GET /api/health and POST /api/notes (a write, answered
    201). Each answer is recorded with when it came, its status, the version and whether it was retried:
    a reused connection that nginx closed before answering (as a reload does to idle ones) is sent again
    once on a new connection, as HTTP clients do, and counted, never hidden."""

    def __init__(self, port=NGINX_PORT, max_requests=20000, max_seconds=90.0, connections=2, post=True):
        self.port, self.max_requests, self.max_seconds, self.post = port, max_requests, max_seconds, post
        self.answers = []  # (monotonic time, status, version, retried, method, ok, connection number)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, args=(number,), daemon=True) for number in range(connections)
        ]

    def _send(self, connection, method):
        """(status, body, connection, retried) of one request; status None when it got no answer."""
        retried = False
        path, body = (
            ("/api/notes", json.dumps({"body": "keep-alive loop"})) if method == "POST" else ("/api/health", None)
        )
        for reused in (connection is not None, False):
            if connection is None:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
                response = connection.getresponse()
                return response.status, response.read(), connection, retried
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                connection = None
                if not reused:
                    return None, str(exc).encode(), None, retried
                retried = True
        return None, b"unreachable", None, retried

    def _loop(self, thread):
        deadline = time.monotonic() + self.max_seconds
        connection, number = None, 0
        while not self._stop.is_set() and len(self.answers) < self.max_requests and time.monotonic() < deadline:
            number += 1
            method = "POST" if self.post and number % 2 == 0 else "GET"
            status, body, connection, retried = self._send(connection, method)
            ok = status == (201 if method == "POST" else 200)
            version = json.loads(body).get("version") if ok else None
            with self._lock:
                self.answers.append((time.monotonic(), status, version, retried, method, ok, thread))
            time.sleep(0.005)
        if connection is not None:
            connection.close()

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join()

    @property
    def failed(self):
        return [answer for answer in self.answers if not answer[5]]

    @property
    def retried(self):
        return [answer for answer in self.answers if answer[3]]

    @property
    def posts(self):
        return [answer for answer in self.answers if answer[4] == "POST"]

    @property
    def failed_seconds(self):
        """From the first failed answer to the first good one after the last failure: the outage users saw."""
        failed = self.failed
        if not failed:
            return 0.0
        after = [answer[0] for answer in self.answers if answer[5] and answer[0] > failed[-1][0]]
        return (after[0] if after else failed[-1][0]) - failed[0][0]

    @property
    def versions(self):
        """Versions in the order each connection was served them, consecutive duplicates collapsed: the one
        order every connection saw, or, when they differ, the list of each connection's (a comparison with
        one order then fails, showing them). Only a connection's own order is exact: requests on different
        connections overlap, and one that started before the switch may end after another's new answer."""
        orders = []
        for thread in range(len(self._threads)):
            order = []
            for answer in self.answers:
                if answer[6] == thread and answer[2] and (not order or order[-1] != answer[2]):
                    order.append(answer[2])
            orders.append(tuple(order))
        distinct = list(dict.fromkeys(orders))
        return list(distinct[0]) if len(distinct) == 1 else [list(order) for order in distinct]

    def summary(self):
        return (
            f"{len(self.answers)} requests ({len(self.posts)} POST), {len(self.failed)} failed over "
            f"{self.failed_seconds:.2f} s, {len(self.retried)} retried, versions {self.versions}"
        )


def stop_stale_nginx():
    """Stop the nginx an earlier run of this worker left behind (a run killed before its clean-up): it would
    hold this worker's ports, and the new nginx could not start."""
    pattern = f"nginx -p /tmp/pytest-of-[^ ]*/nginx-{APP}-[0-9]+ "
    if sh("pkill", "--full", "--", pattern, check=False).returncode == 0:
        assert wait_for(lambda: sh("pgrep", "--full", "--", pattern, check=False).returncode == 1, timeout=10)


@pytest.fixture(scope="session")
def nginx(tmp_path_factory):
    stop_stale_nginx()
    nginx = Nginx(tmp_path_factory.mktemp(f"nginx-{APP}-"))
    nginx.write_config()
    sh(*nginx.base)
    yield nginx
    sh(*nginx.base, "-s", "quit", check=False)


# The images' own HEALTHCHECK with a 10 s timeout instead of their 2 s: in a slow hour of this 2-core
# machine (the same work 1.7-2.3 times slower) the checks exceeded 2 s, Docker called a healthy release
# unhealthy and its watch switched it back. Tests that are about the healthcheck give their own.
HEALTHCHECK = {"timeout": "10s"}


def compose_file(version, overrides=None):
    """The release's compose file, as compose_app renders it: ports from BERTH_PORT_*, the shared network."""
    database = {"PGHOST": f"{APP}-db", "PGUSER": "demo", "PGPASSWORD": "crtest", "PGDATABASE": "demo"}
    services = {
        "backend": {
            "image": f"berth/demo-backend:{version}",
            "environment": database,
            "ports": ["127.0.0.1:${BERTH_PORT_BACKEND}:8000"],
        },
        "worker": {"image": f"berth/demo-worker:{version}", "environment": database},
        "frontend": {"image": f"berth/demo-frontend:{version}", "ports": ["127.0.0.1:${BERTH_PORT_FRONTEND}:8000"]},
    }
    for name, service in services.items():
        service.update({"networks": ["app"], "healthcheck": dict(HEALTHCHECK), **(overrides or {}).get(name, {})})
    return {"services": services, "networks": {"app": {"external": True, "name": NETWORK}}}


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("crtest")


@pytest.fixture(scope="session")
def release(workdir):
    def make(release_id, version, overrides=None, files=None):
        """The release directory with its compose file and ``files`` (name -> text) beside it."""
        directory = workdir / "releases" / release_id
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "compose.yaml").write_text(yaml.safe_dump(compose_file(version, overrides)))
        for name, text in (files or {}).items():
            (directory / name).write_text(text)
        return directory

    return make


# The test app's services as the module takes them: backend and frontend behind nginx, a worker.
SERVICES = [
    {
        "name": "backend",
        "ports": PORTS["backend"],
        "upstream": BACKEND_UPSTREAM,
        "health_timeout": 30,
        "probes": [
            {
                "path": "/api/health",
                "expect": "status == 'ok' && database == 'connected'",
                "successes": 3,
                "interval": 0.2,
                "timeout": 4,
            }
        ],
    },
    {"name": "worker", "health_timeout": 30},
    {
        "name": "frontend",
        "ports": PORTS["frontend"],
        "upstream": FRONTEND_UPSTREAM,
        "health_timeout": 30,
        "probes": [{"path": "/healthz", "nginx_path": "/", "successes": 2, "interval": 0.2, "timeout": 4}],
    },
]


def module_args(nginx, workdir, release_dir, release_id):
    """The module's arguments for the test app (as the rollout fixture passes them, before overrides)."""
    return {
        "app": APP,
        "release": release_id,
        "release_dir": str(release_dir),
        "state_dir": str(workdir / "state"),
        "upstreams_dir": str(nginx.upstreams),
        "nginx_url": f"http://127.0.0.1:{NGINX_PORT}",
        "nginx_test_command": nginx.test_command,
        "nginx_reload_command": nginx.reload_command,
        "drain_seconds": 1,
        # A short watch window keeps the suite fast; test_rollout_safety.py exercises long ones.
        "watch_seconds": 2,
        "stop_timeout": 3,
        "services": copy.deepcopy(SERVICES),
    }


@pytest.fixture(scope="session")
def rollout(database, nginx, workdir):
    """Run the module through ansible-playbook, as a play would; returns the task's result."""

    def run(release_dir, release_id, check=False, diff=False, environment=None, **overrides):
        args = module_args(nginx, workdir, release_dir, release_id)
        args.update(overrides)
        playbook = workdir / f"play-{release_id}.yml"
        play = {
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "tasks": [{"name": "rollout", "berth.stack.compose_rollout": args, "ignore_errors": True}],
        }
        playbook.write_text(yaml.safe_dump([play]))
        argv = [shutil.which("ansible-playbook") or str(REPO / ".venv/bin/ansible-playbook"), str(playbook)]
        argv += ["--check"] if check else []
        argv += ["--diff"] if diff else []
        env = {
            **os.environ,
            "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
            "ANSIBLE_COLLECTIONS_PATH": str(REPO / ".ansible" / "collections"),
            "ANSIBLE_LOCALHOST_WARNING": "false",
            "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
            **(environment or {}),
        }
        completed = sh(*argv, env=env, cwd=REPO, check=False, timeout=300)
        try:
            output = json.loads(completed.stdout)
        except ValueError:
            pytest.fail(f"ansible-playbook printed no JSON: {completed.stdout[-2000:]} {completed.stderr[-2000:]}")
        return output["plays"][0]["tasks"][0]["hosts"]["localhost"]

    return run


@pytest.fixture(scope="session")
def state_file(workdir):
    def read():
        path = workdir / "state" / "state.json"
        return json.loads(path.read_text()) if path.exists() else None

    return read


def project_containers(project, service=None):
    """``docker inspect`` documents of a project's (or one of its services') containers."""
    argv = ["docker", "ps", "--all", "--quiet", "--filter", f"label=com.docker.compose.project={project}"]
    if service is not None:
        argv += ["--filter", f"label=com.docker.compose.service={service}"]
    ids = sh(*argv).stdout.split()
    return json.loads(sh("docker", "inspect", *ids).stdout) if ids else []


def service_of(document):
    return document["Config"]["Labels"]["com.docker.compose.service"]


def container_states(project):
    """service -> State.Status of a project's containers."""
    return {service_of(doc): doc["State"]["Status"] for doc in project_containers(project)}


def container_snapshot(project):
    """service -> (container id, state, start time) of a project's containers: changes when any is touched."""
    return {
        service_of(doc): (doc["Id"], doc["State"]["Status"], doc["State"]["StartedAt"])
        for doc in project_containers(project)
    }


def inspect_service(project, service):
    return project_containers(project, service)[0]


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def served_version():
    status, body = http_get(API)
    assert status == 200, body
    return json.loads(body)["version"]


@pytest.fixture(scope="session")
def reset_app(rollout, nginx, workdir):
    """No release at all: both colors removed, placeholder upstream files, no state.json."""

    def reset():
        for color in ("blue", "green"):
            sh("docker", "compose", "--project-name", f"{APP}-{color}", "down", "--timeout", "2", check=False)
        nginx.write_placeholders()
        nginx.reload()
        (workdir / "state" / "state.json").unlink(missing_ok=True)
        assert wait_for(lambda: http_get(API)[0] == 503)

    return reset


@pytest.fixture(scope="session")
def baseline(rollout, release, nginx, state_file, reset_app):
    """Put one of BASELINES in place, so a test does not depend on what ran before it. The state the
    previous test left is kept when it already is that baseline, and built on when it is the start of
    it (the rollouts take time); otherwise everything is reset first."""

    def in_place(steps, exact):
        last, version, color = steps[-1]
        state = state_file()
        if not state or (state["active"] or {}).get("release") != last or state["active"]["color"] != color:
            return False
        recorded = {item["release"]: item for item in state["releases"]}
        standard = release_sha256(str(release(last, version) / "compose.yaml"), [])
        if recorded[last].get("release_sha256") != standard:
            return False
        if exact and [(item["release"], item["color"]) for item in state["releases"]] != [
            (release_id, release_color) for release_id, _version, release_color in reversed(steps)
        ]:
            return False
        running = container_states(f"{APP}-{color}")
        ports = nginx.serving_ports(BACKEND_UPSTREAM)
        served = http_get(API)
        return (
            nginx.standard_groups()
            and bool(running)
            and set(running.values()) == {"running"}
            and ports == [PORTS["backend"][color]]
            and served[0] == 200
            and json.loads(served[1])["version"] == version
        )

    def put(name, exact=False):
        steps = BASELINES[name]
        if in_place(steps, exact):
            return
        done = next((count for count in range(len(steps) - 1, 0, -1) if in_place(steps[:count], True)), 0)
        if not done:
            reset_app()
        for release_id, version, color in steps[done:]:
            result = rollout(release(release_id, version), release_id)
            assert not result.get("failed"), result.get("msg")
            assert result["color"] == color

    return put


@pytest.fixture(scope="session")
def serving(baseline, state_file, nginx):
    """Some release serves (``version`` when given, none of ``avoid``); r1, or r2 for v2, is rolled out
    when none does."""

    def ensure(version=None, avoid=()):
        state = state_file()
        active = (state or {}).get("active") or {}
        running = container_states(f"{APP}-{active['color']}") if active else {}
        status, body = http_get(API)
        fits = running and set(running.values()) == {"running"} and status == 200 and active["release"] not in avoid
        fits = fits and nginx.standard_groups()
        if fits and (version is None or json.loads(body)["version"] == version):
            return
        baseline("r2" if version == "v2" else "r1")

    return ensure
