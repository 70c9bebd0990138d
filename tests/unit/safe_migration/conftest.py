"""Fixtures for the safe_migration tests: one throwaway cluster per session, one database per test."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
from safe_migration_harness import (
    Database,
    make_authority,
    module_process,
    result_of,
    start_cluster,
    stop_cluster,
)


@pytest.fixture(scope="session")
def cluster():
    started = start_cluster()
    try:
        yield started
    finally:
        stop_cluster(started)


def fresh_database(cluster):
    name = f"t_{uuid.uuid4().hex[:10]}"
    with cluster.connect(autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    yield Database(cluster, name)
    with cluster.connect(autocommit=True) as connection:
        connection.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def database(cluster):
    yield from fresh_database(cluster)


@pytest.fixture(scope="session")
def tls_authority(tmp_path_factory):
    """The CA that signs the TLS cluster's certificate; ``.certificate_file`` is what sslrootcert names."""
    return make_authority(tmp_path_factory.mktemp("tls-ca"), "ca")


@pytest.fixture(scope="session")
def tls_cluster(tls_authority):
    """A cluster like a managed server: TLS only (hostssl), its certificate for 127.0.0.1 signed by tls_authority."""
    started = start_cluster(tls_authority)
    try:
        yield started
    finally:
        stop_cluster(started)


@pytest.fixture
def tls_database(tls_cluster):
    yield from fresh_database(tls_cluster)


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


# Mode 2: an app image whose migration tool is psql (test_command_mode.py, test_command_review.py).
IMAGE = "berth-safe-migration-test-app:latest"

# The app image's migration tool: psql scripts standing in for alembic/prisma. `status` follows
# the module's contract (0: up to date, 1: pending).
DOCKERFILE = """\
FROM berth/debian13-base:latest
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-client \\
    && rm -rf /var/lib/apt/lists/*
COPY migrate status /usr/local/bin/
"""
MIGRATE = """\
#!/bin/sh
set -e
psql -v ON_ERROR_STOP=1 -q <<'SQL'
CREATE TABLE IF NOT EXISTS app_migrations (version int PRIMARY KEY);
CREATE TABLE IF NOT EXISTS widgets (id int PRIMARY KEY, name text);
INSERT INTO app_migrations VALUES (1), (2) ON CONFLICT DO NOTHING;
SQL
echo "migrated to version 2"
"""
STATUS = """\
#!/bin/sh
version=$(psql -tAc 'SELECT max(version) FROM app_migrations' 2>/dev/null) || version=0
[ "$version" = 2 ] && exit 0
echo "pending: database at version ${version:-0}, image at 2"
exit 1
"""


@pytest.fixture(scope="session")
def app_image(tmp_path_factory):
    context = tmp_path_factory.mktemp("app-image")
    (context / "Dockerfile").write_text(DOCKERFILE)
    for name, script in (("migrate", MIGRATE), ("status", STATUS)):
        (context / name).write_text(script)
        (context / name).chmod(0o755)
    subprocess.run(["docker", "build", "--quiet", "--tag", IMAGE, str(context)], check=True, capture_output=True)
    return IMAGE
