"""Benchmark: requests lost while an app's image changes, three ways, under the same steady load.

  (a) naive:   `docker compose up -d` with the new image (what most deploys do today)
  (b) berth:   berth.stack.compose_rollout from v1 to v2 (health-gated blue/green behind nginx)
  (c) failing: berth.stack.compose_rollout to v3, whose health says 200 but database disconnected
  (d) no-op:   berth.stack.compose_rollout of the serving v2 again (nothing to do), and, when the
               `make demo` target runs, `ansible-playbook playbooks/app.yml -i inventories/local`
               with nothing changed (wall time of the whole playbook; target 10 s)

Everything runs on this machine: the demo images (make prepare), PostgreSQL in a container, and an
nginx started here with its own prefix on 127.0.0.1:18240, whose site chooses the upstream group by
the rollout's color markers as the nginx role's sites do. The load is a paced Python client (--rate
requests/s over keep-alive connections, bounded by --max-seconds and rate * max-seconds requests)
against 127.0.0.1 through nginx, GET /api/health and POST /api/notes in turn. It prints one table:
failed requests, requests retried on a new connection after a closed keep-alive connection, p50/p99
latency, rollout duration and the switch's duration (the module's timings.switch: from the last gate
to every marker in place) for each case, from one run.

    .venv/bin/python bench/rollout.py [--rate 300]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / ".ansible" / "collections"))
from ansible_collections.berth.stack.plugins.module_utils import _nginx_upstream as upstreams

REPO = Path(__file__).resolve().parents[1]
MIGRATIONS = REPO / "tests" / "fixtures" / "demo-app" / "migrations"
PSQL = "/usr/lib/postgresql/15/bin/psql"
PREFIX = "crbench"
NETWORK = f"{PREFIX}-net"
NGINX_PORT, PLACEHOLDER_PORT, DATABASE_PORT, NAIVE_PORT = 18240, 18241, 18261, 18234
PORTS = {"blue": 18230, "green": 18231}
WATCH_SECONDS = 10
DEMO_CONTAINER = "berth-demo"
DATABASE_ENV = {"PGHOST": f"{PREFIX}-db", "PGUSER": "demo", "PGPASSWORD": "crbench", "PGDATABASE": "demo"}


def sh(*argv, check=True, env=None, cwd=None, timeout=300):
    result = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout, check=False)
    if check and result.returncode != 0:
        sys.exit(f"bench: `{' '.join(map(str, argv))}` failed: {(result.stderr or result.stdout)[-800:]}")
    return result


class Load:
    """Paced requests through nginx from several threads, each on its own keep-alive connection: GET
    /api/health and POST /api/notes in turn."""

    def __init__(self, rate, max_seconds, threads=8):
        self.rate, self.max_seconds, self.threads = rate, max_seconds, threads
        self.results = []  # (status or error name, seconds taken, when it ended, retried)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers = [threading.Thread(target=self._run, daemon=True) for _worker in range(threads)]

    def _run(self):
        interval = self.threads / self.rate
        limit = int(self.rate * self.max_seconds / self.threads)
        connection = None
        started = time.monotonic()
        for number in range(limit):
            if self._stop.is_set() or time.monotonic() - started > self.max_seconds:
                break
            wait = started + number * interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            begun = time.monotonic()
            status, connection, retried = self._get(connection, post=number % 2 == 1)
            with self._lock:
                self.results.append((status, time.monotonic() - begun, time.monotonic(), retried))

    @staticmethod
    def _get(connection, port=NGINX_PORT, post=False):
        """One GET (or POST of a note), retried once on a fresh connection when a reused keep-alive
        connection was closed before any answer (as browsers and HTTP libraries do: nginx closes idle
        connections on reload). Returns (status, connection, retried): a retry is counted, never hidden;
        a POST's 201 counts as 200."""
        retried = False
        for reused in (connection is not None, False):
            if connection is None:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                if post:
                    body = json.dumps({"body": "bench"})
                    connection.request("POST", "/api/notes", body=body, headers={"Content-Type": "application/json"})
                else:
                    connection.request("GET", "/api/health")
                response = connection.getresponse()
                response.read()
                return (200 if post and response.status == 201 else response.status), connection, retried
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                connection = None
                if not reused:
                    return type(exc).__name__, None, retried
                retried = True
        return "unreachable", None, retried

    def __enter__(self):
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for worker in self._workers:
            worker.join()

    def summary(self):
        latencies = sorted(seconds for _status, seconds, _end, _retried in self.results)
        quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0] * 99
        failures = {}
        failed_at = []
        for status, _seconds, ended, _retried in self.results:
            if status != 200:
                failures[str(status)] = failures.get(str(status), 0) + 1
                failed_at.append(ended)
        ends = [ended for _status, _seconds, ended, _retried in self.results]
        duration = max(ends) - min(ends) if len(ends) > 1 else 0
        return {
            "requests": len(self.results),
            "failed": sum(failures.values()),
            "failures": failures,
            "retried": sum(retried for _status, _seconds, _end, retried in self.results),
            # From the first failed request to the last: how long clients saw errors.
            "error_window_s": max(failed_at) - min(failed_at) if failed_at else 0.0,
            "rate": len(self.results) / duration if duration else 0.0,
            "p50_ms": quantiles[49] * 1000,
            "p99_ms": quantiles[98] * 1000,
        }


def write_nginx(prefix: Path):
    upstreams_dir = prefix / "upstreams"
    upstreams_dir.mkdir()
    (upstreams_dir / f"{PREFIX}_backend.conf").write_text(
        f"upstream {PREFIX}_backend {{\n    server 127.0.0.1:{NAIVE_PORT} max_fails=0;\n    keepalive 16;\n}}\n"
    )
    selectors = "\n        ".join(upstreams.selector_directives(f"{PREFIX}_backend", str(upstreams_dir)))
    temp = " ".join(
        f"{name}_temp_path {prefix}/{name};" for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (prefix / "nginx.conf").write_text(
        f"""user root;
worker_processes 1;
pid {prefix}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    {temp}
    include {upstreams_dir}/*.conf;
    server {{ listen 127.0.0.1:{PLACEHOLDER_PORT}; return 503; }}
    server {{
        listen 127.0.0.1:{NGINX_PORT};
        open_file_cache off;
        {selectors}
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        location /api/ {{ proxy_pass http://$berth_upstream_{PREFIX}_backend; }}
    }}
}}
"""
    )
    return ["nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")]


def compose_document(version, ports):
    backend = {
        "image": f"berth/demo-backend:{version}",
        "environment": DATABASE_ENV,
        "ports": [ports],
        "networks": ["app"],
    }
    return {"services": {"backend": backend}, "networks": {"app": {"external": True, "name": NETWORK}}}


def start_database(work: Path):
    compose = work / "data.yaml"
    database = {
        "image": "berth/demo-postgres:latest",
        "environment": {"POSTGRES_USER": "demo", "POSTGRES_PASSWORD": "crbench", "POSTGRES_DB": "demo"},
        "ports": [f"127.0.0.1:{DATABASE_PORT}:5432"],
        "networks": {"app": {"aliases": [f"{PREFIX}-db"]}},
    }
    compose.write_text(
        yaml.safe_dump({"services": {"db": database}, "networks": {"app": {"external": True, "name": NETWORK}}})
    )
    sh("docker", "network", "create", NETWORK)
    sh("docker", "compose", "-p", f"{PREFIX}-data", "-f", str(compose), "up", "-d", "--wait")
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
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            str(migration),
            env={**os.environ, "PGPASSWORD": "crbench"},
        )


def cleanup():
    for project in ("naive", "blue", "green", "data"):
        sh("docker", "compose", "-p", f"{PREFIX}-{project}", "down", "--volumes", "--timeout", "2", check=False)
    sh("docker", "network", "rm", NETWORK, check=False)
    # The images' keepers (compose_rollout keeps each recorded release's images from a prune).
    keepers = sh("docker", "ps", "--all", "--quiet", "--filter", f"label=berth.keep.app={PREFIX}", check=False)
    if keepers.stdout.split():
        sh("docker", "rm", "--force", *keepers.stdout.split(), check=False)


def rollout(work: Path, nginx: list[str], version: str):
    release = work / "releases" / version
    release.mkdir(parents=True, exist_ok=True)
    (release / "compose.yaml").write_text(
        yaml.safe_dump(compose_document(version, "127.0.0.1:${BERTH_PORT_BACKEND}:8000"))
    )
    args = {
        "app": PREFIX,
        "release": version,
        "release_dir": str(release),
        "state_dir": str(work / "state"),
        "upstreams_dir": str(work / "nginx" / "upstreams"),
        "nginx_url": f"http://127.0.0.1:{NGINX_PORT}",
        "nginx_test_command": [*nginx, "-t", "-q"],
        "nginx_reload_command": [*nginx, "-s", "reload"],
        "drain_seconds": 2,
        # Shorter than the default 30 s, so the benchmark's load phases stay short.
        "watch_seconds": WATCH_SECONDS,
        "stop_timeout": 5,
        "services": [
            {
                "name": "backend",
                "ports": PORTS,
                "upstream": f"{PREFIX}_backend",
                "health_timeout": 60,
                "probes": [
                    {
                        "path": "/api/health",
                        "expect": "status == 'ok' && database == 'connected'",
                        "successes": 3,
                        "interval": 0.5,
                        "timeout": 10,
                    }
                ],
            }
        ],
    }
    playbook = work / f"rollout-{version}.yml"
    play = {
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": False,
        "tasks": [{"name": "rollout", "berth.stack.compose_rollout": args, "ignore_errors": True}],
    }
    playbook.write_text(yaml.safe_dump([play]))
    env = {
        **os.environ,
        "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
        "ANSIBLE_COLLECTIONS_PATH": str(REPO / ".ansible" / "collections"),
    }
    begun = time.monotonic()
    completed = sh(
        shutil.which("ansible-playbook") or str(REPO / ".venv/bin/ansible-playbook"),
        str(playbook),
        env=env,
        cwd=REPO,
        check=False,
    )
    seconds = time.monotonic() - begun
    result = json.loads(completed.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    return result, result.get("timings", {}).get("total", seconds)


def demo_noop_seconds():
    """Wall seconds of playbooks/app.yml against the running demo target with nothing to change (it is run
    once first, so the second run has nothing to do), or None without a demo target."""
    running = sh("docker", "inspect", "--format", "{{.State.Running}}", DEMO_CONTAINER, check=False)
    if running.stdout.strip() != "true":
        return None
    argv = [shutil.which("ansible-playbook") or str(REPO / ".venv/bin/ansible-playbook")]
    argv += [str(REPO / "playbooks" / "app.yml"), "-i", str(REPO / "inventories" / "local")]
    sh(*argv, cwd=REPO, timeout=900)
    begun = time.monotonic()
    completed = sh(*argv, cwd=REPO, timeout=900)
    seconds = time.monotonic() - begun
    recap = [line for line in completed.stdout.splitlines() if line.startswith(DEMO_CONTAINER)]
    return seconds, (recap[-1].split(":", 1)[1].split() if recap else [])


def measure(load_args, action, settle=2.0):
    """Run ``action`` under load, with ``settle`` seconds of load before and after it."""
    with Load(*load_args) as load:
        time.sleep(settle)
        outcome = action()
        time.sleep(settle)
    return load.summary(), outcome


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=300, help="requests per second (default 300)")
    parser.add_argument("--max-seconds", type=float, default=90, help="upper bound of each load phase")
    args = parser.parse_args()
    if not shutil.which("nginx"):
        return print("bench: nginx is missing: run `make prepare`", file=sys.stderr) or 2
    load_args = (args.rate, args.max_seconds)
    cleanup()
    rows = []
    with tempfile.TemporaryDirectory(prefix="berth-bench-rollout-") as tmp:
        work = Path(tmp)
        (work / "nginx").mkdir()
        nginx = write_nginx(work / "nginx")
        try:
            start_database(work)
            naive = work / "naive.yaml"
            naive.write_text(yaml.safe_dump(compose_document("v1", f"127.0.0.1:{NAIVE_PORT}:8000")))
            sh("docker", "compose", "-p", f"{PREFIX}-naive", "-f", str(naive), "up", "-d", "--wait")
            sh(*nginx)

            def naive_up():
                naive.write_text(yaml.safe_dump(compose_document("v2", f"127.0.0.1:{NAIVE_PORT}:8000")))
                begun = time.monotonic()
                sh("docker", "compose", "-p", f"{PREFIX}-naive", "-f", str(naive), "up", "-d")
                return time.monotonic() - begun

            summary, seconds = measure(load_args, naive_up)
            rows.append(("(a) naive compose up -d, v1 -> v2", summary, seconds, "ok", None))
            sh("docker", "compose", "-p", f"{PREFIX}-naive", "down", "--timeout", "2")

            first, _seconds = rollout(work, nginx, "v1")
            if first.get("failed"):
                sys.exit(f"bench: first berth deploy failed: {first['msg']}")
            summary, (result, seconds) = measure(load_args, lambda: rollout(work, nginx, "v2"))
            outcome = "failed" if result.get("failed") else "ok"
            rows.append(("(b) berth rollout, v1 -> v2", summary, seconds, outcome, result["timings"]))
            summary, (result, seconds) = measure(load_args, lambda: rollout(work, nginx, "v3"))
            outcome = (
                "refused at " + result.get("failed_gate", {}).get("gate", "?") + " gate"
                if result.get("failed")
                else "DEPLOYED"
            )
            rows.append(("(c) berth rollout to broken v3", summary, seconds, outcome, result["timings"]))
            begun = time.monotonic()
            summary, (result, _seconds) = measure(load_args, lambda: rollout(work, nginx, "v2"), settle=0.5)
            outcome = "changed" if result.get("changed") else "unchanged"
            seconds = time.monotonic() - begun - 1.0
            rows.append(("(d) berth rollout of serving v2 again", summary, seconds, outcome, None))
        finally:
            sh(*nginx, "-s", "quit", check=False)
            cleanup()
    print(
        f"\nrollout benchmark: {args.rate} req/s target through nginx on 127.0.0.1:{NGINX_PORT}, "
        "GET /api/health and POST /api/notes in turn\n"
    )
    header = (
        f"{'case':40} {'requests':>8} {'req/s':>6} {'failed':>7} {'retried':>7} {'errors s':>8} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'rollout s':>9} {'check ms':>8} {'switch ms':>9}  outcome"
    )
    print(header)
    print("-" * len(header))
    for name, summary, seconds, outcome, timings in rows:
        check_ms, switch_ms = (
            f"{timings[key] * 1000:.1f}" if key in (timings or {}) else "-" for key in ("switch_check", "switch")
        )
        print(
            f"{name:40} {summary['requests']:>8} {summary['rate']:>6.0f} {summary['failed']:>7} "
            f"{summary['retried']:>7} {summary['error_window_s']:>8.1f} {summary['p50_ms']:>7.1f} "
            f"{summary['p99_ms']:>7.1f} {seconds:>9.1f} {check_ms:>8} {switch_ms:>9}  {outcome}"
        )
    for name, summary, _seconds, _outcome, _switch in rows:
        if summary["failures"]:
            print(f"failed requests of {name}: {summary['failures']}")
    print(
        f"(b) and (c) use a {WATCH_SECONDS:g} s watch window; (d)'s rollout s is the playbook's wall time; "
        "check ms is the module's timings.switch_check (nginx -T, before the last recheck), switch ms its "
        "timings.switch (from the last gate to the color markers renamed into place; no reload)."
    )
    demo = demo_noop_seconds()
    if demo is None:
        print(f"no-op playbooks/app.yml on the demo: no {DEMO_CONTAINER} container (run `make demo` first)")
    else:
        print(f"no-op playbooks/app.yml on the demo: {demo[0]:.1f} s wall (target 10 s); recap {' '.join(demo[1])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
