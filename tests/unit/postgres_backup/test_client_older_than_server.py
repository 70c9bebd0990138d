"""A PostgreSQL client older than the server, for real: Debian 12's pg_dump 15 against PostgreSQL 17.

A Debian 12 systemd test host (the shared definition, tests/harness/systemd_host.yml) gets a
managed-server job. The role installs Debian 12's own `postgresql-client` (15) and must refuse
before any unit exists, naming the job, both versions and the package to install. The PostgreSQL 17
server (berth/demo-postgres) shares the host's network namespace, so the host reaches it on
127.0.0.1:5432 over TLS (sslmode=require, a certificate made in the server container), as it would
reach a managed one. Then the backup program the role had already installed, run as its timer
would after a server upgrade, refuses the same way and leaves nothing behind.
"""

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"
HARNESS = REPO / "tests" / "harness"
HOST_IMAGE = "berth/debian12-systemd:latest"
SERVER_IMAGE = "berth/demo-postgres:latest"
APT_CACHE = "/var/cache/berth-test/apt"
PASSWORD = "s3cret-legacy-pw"  # noqa: S105 - a throwaway server's, looked for in the output
JOB = {
    "name": "legacy",
    "host": "127.0.0.1",
    "port": 5432,
    "database": "app",
    "user": "app",
    "password": PASSWORD,
    "sslmode": "require",
    "verify_image": SERVER_IMAGE,
}


def run(argv, **kwargs):
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=600, **kwargs)


def ansible_playbook(tmp_path: Path, name: str, plays: list, inventory: dict) -> subprocess.CompletedProcess:
    playbook, hosts = tmp_path / f"{name}.yml", tmp_path / f"{name}-inventory.json"
    playbook.write_text(json.dumps(plays))
    hosts.write_text(json.dumps(inventory))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}
    return run([str(BIN / "ansible-playbook"), "-i", str(hosts), str(playbook)], env=env, cwd=REPO)


def harness(tmp_path: Path, tasks_file: str, variables: dict) -> subprocess.CompletedProcess:
    play = {
        "name": f"Run {tasks_file}",
        "hosts": "localhost",
        "gather_facts": False,
        "tasks": [{"ansible.builtin.include_tasks": str(HARNESS / tasks_file), "vars": variables}],
    }
    local = {"ansible_connection": "local", "ansible_python_interpreter": str(BIN / "python")}
    return ansible_playbook(tmp_path, tasks_file, [play], {"all": {"hosts": {"localhost": local}}})


def start_tls_server(name: str, host: str) -> None:
    environment = ["-e", "POSTGRES_USER=app", "-e", "POSTGRES_DB=app", "-e", f"POSTGRES_PASSWORD={PASSWORD}"]
    # The host's network namespace: the server is on the host's 127.0.0.1, like a local managed one.
    network = ["--network", f"container:{host}", "--label", "owner=berth-test"]
    started = run(["docker", "run", "-d", "--name", name, *network, *environment, SERVER_IMAGE])
    assert started.returncode == 0, started.stderr
    for _attempt in range(120):
        if run(["docker", "exec", name, "pg_isready", "-q", "-h", "127.0.0.1"]).returncode == 0:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"PostgreSQL 17 in {name} did not start: {run(['docker', 'logs', name]).stderr[-2000:]}")
    turn_tls_on = (
        'cd "$PGDATA"; openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1'
        " -keyout server.key -out server.crt 2>/dev/null; chmod 600 server.key;"
        " psql -X -q -v ON_ERROR_STOP=1 -U app -d app -c 'ALTER SYSTEM SET ssl = on' -c 'SELECT pg_reload_conf()'"
    )
    tls = run(["docker", "exec", name, "sh", "-ec", turn_tls_on])
    assert tls.returncode == 0, tls.stderr


@pytest.fixture(scope="module")
def old_client_host(tmp_path_factory):
    """A Debian 12 host whose role run has failed at the client check, and its PostgreSQL 17 server."""
    tmp_path = tmp_path_factory.mktemp("old-client")
    name = f"pgbclient-{uuid.uuid4().hex[:8]}"
    server = f"{name}-pg17"
    try:
        host = harness(
            tmp_path,
            "systemd_host.yml",
            {"berth_host_name": name, "berth_host_image": HOST_IMAGE, "berth_apt_cache_dir": APT_CACHE},
        )
        assert host.returncode == 0, host.stdout[-3000:]
        start_tls_server(server, name)
        play = {
            "name": "Apply postgres_backup with a managed job on a server newer than Debian 12's client",
            "hosts": name,
            "gather_facts": False,
            "roles": [{"role": "berth.stack.postgres_backup", "vars": {"postgres_backup_jobs": [JOB]}}],
        }
        target = {"ansible_connection": "community.docker.docker", "ansible_python_interpreter": "/usr/bin/python3"}
        applied = ansible_playbook(tmp_path, "role", [play], {"all": {"hosts": {name: target}}})
        yield name, applied
    finally:
        run(["docker", "rm", "-f", server])
        harness(tmp_path, "systemd_host_absent.yml", {"berth_host_name": name})


def on_host(name: str, *argv: str) -> subprocess.CompletedProcess:
    return run(["docker", "exec", name, *argv])


def test_the_client_is_really_older_than_the_server(old_client_host):
    name, _applied = old_client_host
    assert on_host(name, "pg_dump", "--version").stdout.startswith("pg_dump (PostgreSQL) 15.")
    queries = ["-c", "SHOW server_version_num", "-c", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"]
    conninfo = "host=127.0.0.1 user=app dbname=app sslmode=require"
    server = run(["docker", "exec", "-e", f"PGPASSWORD={PASSWORD}", name, "psql", "-X", "-At", *queries, conninfo])
    assert server.returncode == 0, server.stderr
    version, over_tls = server.stdout.split()
    assert version.startswith("17") and over_tls == "t"


def test_role_refuses_before_any_unit_naming_job_versions_and_fix(old_client_host):
    name, applied = old_client_host
    assert applied.returncode == 2, applied.stdout[-4000:]
    assert "TASK [berth.stack.postgres_backup : Fail when pg_dump is older than a managed server]" in applied.stdout
    message = (
        "postgres_backup_jobs[name=legacy]: the server runs PostgreSQL 17, this host's pg_dump is 15"
        " (postgresql-client). Install postgresql-client-17 (set postgres_backup_client_package)"
        " so pg_dump is at least as new as the server."
    )
    assert message in applied.stdout
    output = applied.stdout + applied.stderr
    leak = output.find(PASSWORD)
    assert leak == -1, f"the password is in the output, after: {output[max(0, leak - 800) : leak]}"
    units = on_host(name, "sh", "-c", "ls /etc/systemd/system | grep berth-pg-backup").stdout
    assert units == ""


def test_backup_program_refuses_an_older_pg_dump_at_run_time(old_client_host):
    name, _applied = old_client_host
    result = on_host(name, "/usr/local/libexec/berth/berth-pg-backup", "run", "legacy")
    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        "backup of legacy FAILED: pg_dump 15 on this host is older than the server (17):"
        " install postgresql-client-17 (postgres_backup_client_package)"
    ) in result.stdout
    assert on_host(name, "ls", "-A", "/var/backups/berth/postgres/legacy").stdout == ""
    metrics = on_host(name, "cat", "/var/lib/prometheus/node-exporter/berth_pg_backup_legacy.prom").stdout
    assert 'berth_pg_backup_failures_total{job="legacy",database="app"} 1' in metrics
