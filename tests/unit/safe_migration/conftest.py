"""Fixtures for the safe_migration tests: one throwaway cluster per session, one database per test."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from safe_migration_harness import Database, module_process, result_of, start_cluster, stop_cluster


@pytest.fixture(scope="session")
def cluster():
    started = start_cluster()
    try:
        yield started
    finally:
        stop_cluster(started)


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
