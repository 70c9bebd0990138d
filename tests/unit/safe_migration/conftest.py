"""Fixtures for the safe_migration tests: one throwaway cluster per session, one database per test."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
from safe_migration_harness import (
    PASSWORD,
    Cluster,
    Database,
    as_postgres,
    free_port,
    module_process,
    postgres_bin,
    result_of,
)


@pytest.fixture(scope="session")
def cluster():
    bin_dir = postgres_bin()
    base = tempfile.mkdtemp(prefix="berth-pg-")
    data, run = f"{base}/data", f"{base}/run"
    os.makedirs(run)
    with open(f"{base}/pwfile", "w") as handle:
        handle.write(PASSWORD)
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        for path in (run, f"{base}/pwfile"):
            shutil.chown(path, "postgres")
    port = free_port()
    subprocess.run(
        as_postgres(
            [
                str(bin_dir / "initdb"),
                "-D",
                data,
                "-U",
                "postgres",
                "--pwfile",
                f"{base}/pwfile",
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "--no-sync",
            ]
        ),
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {run} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60"
    subprocess.run(
        as_postgres([str(bin_dir / "pg_ctl"), "-D", data, "-l", f"{base}/log", "-o", options, "-w", "start"]),
        check=True,
        capture_output=True,
    )
    try:
        yield Cluster(bin=bin_dir, port=port, socket_dir=run)
    finally:
        subprocess.run(
            as_postgres([str(bin_dir / "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop"]), capture_output=True
        )
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def database(cluster):
    name = f"t_{uuid.uuid4().hex[:10]}"
    with cluster.connect(autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    yield Database(cluster, name)
    with cluster.connect(autocommit=True) as connection:
        connection.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def run_module(tmp_path):
    def run(args: dict, check_mode: bool = False, timeout: float = 60) -> dict:
        return result_of(module_process(args, tmp_path, check_mode), timeout)

    return run


@pytest.fixture
def migrations(tmp_path):
    """A migration directory and a writer: write("V1__x.sql", "SQL")."""
    directory = tmp_path / "migrations"
    directory.mkdir()

    def write(name: str, sql: str) -> Path:
        path = directory / name
        path.write_text(sql)
        return path

    write.directory = directory
    return write
