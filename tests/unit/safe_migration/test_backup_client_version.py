"""The host's pg_dump older than the server, for real: Debian 12's pg_dump 15 against PostgreSQL 17.

The PostgreSQL 17 server is berth/demo-postgres, published on a free 127.0.0.1 port, as a managed server
newer than the host's client would be. The module must refuse before its lock, before any backup and
before any migration, naming both versions and the package to install; a backup in the server's own
container (backup_container, its pg_dump is 17) is not refused.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid

import pytest
from safe_migration_harness import ACCOUNTS, free_port, postgres_bin

SERVER_IMAGE = "berth/demo-postgres:latest"
SERVER_PASSWORD = "s3cret-pg17-pw"  # noqa: S105 - a throwaway server's, looked for in the results
REFUSAL = (
    "backup: pg_dump 15 on this host is older than the server (PostgreSQL 17) and cannot dump it: install"
    " postgresql-client-17 so pg_dump is at least as new as the server (or set backup_container);"
    " nothing was migrated"
)


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)


@pytest.fixture(scope="module")
def server17():
    name, port = f"berth-sm-pg17-{uuid.uuid4().hex[:8]}", free_port()
    environment = ["-e", "POSTGRES_USER=app", "-e", "POSTGRES_DB=app", "-e", f"POSTGRES_PASSWORD={SERVER_PASSWORD}"]
    published = ["--label", "owner=berth-test", "-p", f"127.0.0.1:{port}:5432"]
    started = run("docker", "run", "-d", "--name", name, *published, *environment, SERVER_IMAGE)
    assert started.returncode == 0, started.stderr
    try:
        for _attempt in range(120):
            if run("docker", "exec", name, "pg_isready", "-q", "-h", "127.0.0.1").returncode == 0:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"PostgreSQL 17 in {name} did not start: {run('docker', 'logs', name).stderr[-2000:]}")
        yield name, port
    finally:
        run("docker", "rm", "-f", name)


def psql(container: str, database: str, sql: str) -> subprocess.CompletedProcess:
    return run("docker", "exec", container, "psql", "-X", "-At", "-U", "app", "-d", database, "-c", sql)


@pytest.fixture
def database17(server17):
    """A fresh database on the PostgreSQL 17 server: (container, port, database name)."""
    name, port = server17
    database = f"t_{uuid.uuid4().hex[:10]}"
    created = psql(name, "app", f"CREATE DATABASE {database}")
    assert created.returncode == 0, created.stderr
    yield name, port, database
    psql(name, "app", f"DROP DATABASE {database} WITH (FORCE)")


def params(port: int, database: str, directory, backup_dir, **extra) -> dict:
    return {
        "directory": directory,
        "host": "127.0.0.1",
        "port": port,
        "database": database,
        "user": "app",
        "password": SERVER_PASSWORD,
        "sslmode": "disable",
        "backup": True,
        "backup_dir": str(backup_dir),
        **extra,
    }


def history_exists(container: str, database: str) -> str:
    return psql(container, database, "SELECT to_regclass('public.berth_schema_history') IS NOT NULL").stdout.strip()


def test_the_hosts_pg_dump_is_really_older_than_the_server(server17):
    name, _port = server17
    assert run(str(postgres_bin() / "pg_dump"), "--version").stdout.startswith("pg_dump (PostgreSQL) 15.")
    server = psql(name, "app", "SHOW server_version_num")
    assert server.stdout.startswith("17"), server.stdout + server.stderr


@pytest.mark.parametrize("check_mode", [True, False], ids=["check", "apply"])
def test_an_older_pg_dump_is_refused_before_any_backup_or_migration(
    database17, migrations, run_module, tmp_path, check_mode
):
    name, port, database = database17
    migrations("V1__accounts.sql", ACCOUNTS)
    backups = tmp_path / "backups"
    result = run_module(params(port, database, migrations.directory, backups), check_mode)
    assert result.get("failed") is True, result
    assert result["msg"] == REFUSAL
    assert result["queries"] == [] and result["backup"] == {}
    assert not backups.exists()
    assert history_exists(name, database) == "f"
    assert SERVER_PASSWORD not in json.dumps(result)


def test_a_backup_in_the_servers_container_is_not_refused(database17, migrations, run_module, tmp_path):
    name, port, database = database17
    migrations("V1__accounts.sql", ACCOUNTS)
    result = run_module(params(port, database, migrations.directory, tmp_path / "backups", backup_container=name))
    assert result["changed"] is True, result.get("msg")
    assert result["backup"]["method"] == "docker exec"
    assert history_exists(name, database) == "t"
    assert SERVER_PASSWORD not in json.dumps(result)
