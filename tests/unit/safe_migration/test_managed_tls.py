"""A managed PostgreSQL reached over TLS with sslmode=verify-full, through the real module process.

The TLS cluster (conftest.tls_cluster) accepts only hostssl connections and presents a certificate
for 127.0.0.1 signed by a test CA. pg_dump is the host's (Debian's, first on the module's PATH).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess

import psycopg
import pytest
from safe_migration_harness import (
    ACCOUNTS,
    PASSWORD,
    free_port,
    make_authority,
    module_process,
    postgres_bin,
    result_of,
)


def verify_full(database, authority, **extra) -> dict:
    return database.params(sslmode="verify-full", sslrootcert=str(authority.certificate_file), **extra)


def assert_no_password(result: dict) -> None:
    assert PASSWORD not in json.dumps(result), "the password is in the module's result"


def test_the_tls_cluster_refuses_a_connection_without_tls(tls_cluster):
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        tls_cluster.connect(sslmode="disable").close()


def test_migrations_apply_over_verify_full_with_sslrootcert(tls_database, tls_authority, migrations, run_module):
    migrations("V1__accounts.sql", ACCOUNTS)
    result = run_module(verify_full(tls_database, tls_authority, directory=migrations.directory))
    assert result["changed"] is True, result.get("msg")
    assert [row[0] for row in tls_database.history()] == ["1"]
    assert_no_password(result)
    again = run_module(verify_full(tls_database, tls_authority, directory=migrations.directory))
    assert again["changed"] is False, again.get("msg")


def test_a_ca_that_did_not_sign_the_server_certificate_fails_and_applies_nothing(
    tls_database, migrations, run_module, tmp_path
):
    migrations("V1__accounts.sql", ACCOUNTS)
    stranger = make_authority(tmp_path, "stranger")
    result = run_module(verify_full(tls_database, stranger, directory=migrations.directory))
    assert result.get("failed") is True, result
    assert result["msg"].startswith(f"cannot connect to database {tls_database.name} on 127.0.0.1:")
    assert "certificate verify failed" in result["msg"]
    assert tls_database.history() == []
    assert_no_password(result)


def test_verify_full_refuses_a_name_the_certificate_is_not_for(tls_database, tls_authority, migrations, run_module):
    # localhost is 127.0.0.1 here too (one line in /etc/hosts), but the certificate names only the address.
    migrations("V1__accounts.sql", ACCOUNTS)
    result = run_module(verify_full(tls_database, tls_authority, directory=migrations.directory, host="localhost"))
    assert result.get("failed") is True, result
    # libpq counts the subject's common name as the "other name".
    assert 'server certificate for "127.0.0.1" (and 1 other name) does not match host name "localhost"' in result["msg"]
    assert tls_database.history() == []
    assert_no_password(result)


def test_the_backup_runs_the_hosts_pg_dump_over_verify_full(
    tls_database, tls_authority, migrations, run_module, tmp_path
):
    # Without PGSSLMODE and PGSSLROOTCERT from the module, pg_dump could not connect at all: plain
    # connections are refused, and verify-full without a root certificate fails.
    tls_database.run("CREATE TABLE orders (id bigint PRIMARY KEY); INSERT INTO orders VALUES (1), (2);")
    migrations("V1__accounts.sql", ACCOUNTS)
    backups = tmp_path / "backups"
    params = verify_full(
        tls_database, tls_authority, directory=migrations.directory, backup=True, backup_dir=str(backups)
    )
    result = run_module(params)
    assert result["changed"] is True, result.get("msg")
    assert result["backup"]["taken"] is True and result["backup"]["method"] == "pg_dump"
    dump = result["backup"]["path"]
    assert os.path.dirname(dump) == str(backups)
    assert stat.S_IMODE(os.stat(dump).st_mode) == 0o600
    listed = subprocess.run(
        [str(postgres_bin() / "pg_restore"), "--list", dump], capture_output=True, text=True, check=False
    )
    assert listed.returncode == 0, listed.stderr
    assert "TABLE public orders" in listed.stdout
    assert "accounts" not in listed.stdout, "the dump is taken before the migration"
    assert [row[0] for row in tls_database.history()] == ["1"]
    assert_no_password(result)


@pytest.mark.parametrize(
    ("option", "value", "why"),
    [
        ("sslrootcert", "/nonexistent/berth-ca.crt", "does not exist or is not a file"),
        ("sslrootcert", "ca.crt", "is not an absolute path"),
        ("sslrootcert", "/etc", "does not exist or is not a file"),
        ("sslcert", "/nonexistent/client.crt", "does not exist or is not a file"),
        ("sslkey", "/nonexistent/client.key", "does not exist or is not a file"),
        ("sslcrl", "/nonexistent/root.crl", "does not exist or is not a file"),
    ],
)
def test_a_certificate_file_that_is_not_there_is_refused_before_connecting(
    tls_database, migrations, run_module, option, value, why
):
    # Nothing listens on the port: had the module tried to connect, it would say so instead.
    migrations("V1__accounts.sql", ACCOUNTS)
    params = tls_database.params(directory=migrations.directory, sslmode="verify-full", port=free_port())
    result = run_module({**params, option: value})
    assert result.get("failed") is True, result
    assert result["msg"] == f"{option}: {value} {why}"
    assert_no_password(result)


def test_the_files_from_the_environment_or_a_uri_are_checked_too(tls_database, migrations, tmp_path):
    migrations("V1__accounts.sql", ACCOUNTS)
    params = tls_database.params(directory=migrations.directory, sslmode="verify-full", port=free_port())
    from_environment = result_of(module_process(params, tmp_path, environment={"PGSSLKEY": "/nonexistent/k.key"}))
    assert from_environment["msg"] == "sslkey: /nonexistent/k.key does not exist or is not a file"
    uri = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{free_port()}/x"
    uri += "?sslmode=verify-full&sslrootcert=/nonexistent/u.crt"
    from_uri = result_of(module_process({"directory": migrations.directory, "uri": uri, "backup": False}, tmp_path))
    assert from_uri["msg"] == "sslrootcert: /nonexistent/u.crt does not exist or is not a file"
    assert_no_password(from_uri)
