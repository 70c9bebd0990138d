"""compose_app's migrate step against a managed PostgreSQL over TLS: the role's own tasks file.

ansible-playbook runs roles/compose_app/tasks/migrate.yml (include_role tasks_from, so the role's
defaults, vars and module_defaults are the real ones) on this host against the TLS cluster, as a deploy
with no data services runs it: compose_app_database carries sslmode and sslrootcert, and the backup runs
the host's pg_dump.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from role_tasks import run_role_tasks
from safe_migration_harness import ACCOUNTS, PASSWORD, postgres_bin


def run_migrate_step(tmp_path: Path, variables: dict) -> subprocess.CompletedProcess:
    # The host's pg_dump: Debian's, the same major version as the cluster.
    return run_role_tasks(tmp_path, "migrate.yml", variables, path=[postgres_bin()])


@pytest.fixture
def role_variables(tls_database, tls_authority, migrations, tmp_path):
    migrations("V1__accounts.sql", ACCOUNTS)
    return {
        "compose_app_name": "managed",
        "compose_app_release": "r1",
        "compose_app_root": str(tmp_path / "srv"),
        "compose_app_services": [{"name": "web", "image": "example/web:1", "ports": {"blue": 18010, "green": 18020}}],
        "compose_app_data_services": [],
        "compose_app_migrations_dir": str(migrations.directory),
        "compose_app_database": {
            "host": "127.0.0.1",
            "port": tls_database.cluster.port,
            "name": tls_database.name,
            "user": "postgres",
            "password": PASSWORD,
            "sslmode": "verify-full",
            "sslrootcert": str(tls_authority.certificate_file),
        },
    }


def test_the_role_migrates_a_managed_database_over_verify_full_with_a_backup(tls_database, role_variables, tmp_path):
    completed = run_migrate_step(tmp_path, role_variables)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    assert [row[0] for row in tls_database.history()] == ["1"]
    backups = list((tmp_path / "srv" / "managed" / "backups").iterdir())
    assert len(backups) == 1 and backups[0].name.endswith("-before-V1.dump"), backups
    listed = subprocess.run(
        [str(postgres_bin() / "pg_restore"), "--list", str(backups[0])], capture_output=True, check=False
    )
    assert listed.returncode == 0, listed.stderr
    assert PASSWORD not in output


def test_the_role_passes_sslrootcert_through_a_missing_one_is_refused_naming_it(tls_database, role_variables, tmp_path):
    database = dict(role_variables["compose_app_database"], sslrootcert="/nonexistent/managed-ca.pem")
    completed = run_migrate_step(tmp_path, dict(role_variables, compose_app_database=database))
    output = completed.stdout + completed.stderr
    assert completed.returncode == 2, output[-4000:]
    assert "sslrootcert: /nonexistent/managed-ca.pem does not exist or is not a file" in output
    assert tls_database.history() == []
    assert PASSWORD not in output


def test_the_role_passes_sslmode_through_verify_full_refuses_a_name_the_certificate_is_not_for(
    tls_database, role_variables, tmp_path
):
    # With libpq's default (prefer) this connection would succeed unverified.
    database = dict(role_variables["compose_app_database"], host="localhost")
    completed = run_migrate_step(tmp_path, dict(role_variables, compose_app_database=database))
    output = completed.stdout + completed.stderr
    assert completed.returncode == 2, output[-4000:]
    assert 'does not match host name "localhost"' in output
    assert tls_database.history() == []
