"""_postgres.py's pure helpers: the client version check and the TLS keywords as pg_dump receives them."""

from __future__ import annotations

import pytest
from ansible_collections.berth.stack.plugins.module_utils import _postgres as pg


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n", 15),
        ("pg_dump (PostgreSQL) 17.6 (Debian 17.6-0+deb13u1)\n", 17),
        ("pg_dump (PostgreSQL) 9.6.24\n", 9),
    ],
)
def test_the_client_major_version_comes_from_its_version_line(output, major):
    assert pg.client_major(output) == major


def test_a_version_line_without_a_version_is_an_error_that_quotes_it():
    with pytest.raises(ValueError, match="no PostgreSQL version in 'pg_dump: not found'"):
        pg.client_major("pg_dump: not found\n")


@pytest.mark.parametrize(("client", "server"), [(15, 15), (17, 15), (17, 17)])
def test_a_client_as_new_as_the_server_or_newer_is_fine(client, server):
    assert pg.pg_dump_too_old(client, server) is None


def test_an_older_client_is_refused_naming_both_versions_and_the_package():
    assert pg.pg_dump_too_old(15, 17) == (
        "pg_dump 15 on this host is older than the server (PostgreSQL 17) and cannot dump it: "
        "install postgresql-client-17 so pg_dump is at least as new as the server"
    )


def test_pg_dump_gets_every_tls_setting_and_the_password_only_in_its_environment():
    keywords = pg.conninfo(
        {
            "uri": None,
            "host": "db.example.test",
            "port": 5432,
            "database": "shop",
            "user": "shop",
            "password": "pw",
            "sslmode": "verify-full",
            "sslrootcert": "/etc/ca.pem",
            "sslcert": "/etc/client.crt",
            "sslkey": "/etc/client.key",
            "sslcrl": "/etc/ca.crl",
        }
    )
    assert pg.libpq_environment(keywords) == {
        "PGHOST": "db.example.test",
        "PGPORT": "5432",
        "PGDATABASE": "shop",
        "PGUSER": "shop",
        "PGPASSWORD": "pw",
        "PGSSLMODE": "verify-full",
        "PGSSLROOTCERT": "/etc/ca.pem",
        "PGSSLCERT": "/etc/client.crt",
        "PGSSLKEY": "/etc/client.key",
        "PGSSLCRL": "/etc/ca.crl",
    }


def test_the_file_checks_name_every_bad_file_at_once(tmp_path):
    readable = tmp_path / "ca.pem"
    readable.write_text("not read by the check")
    keywords = {"sslrootcert": str(readable), "sslcert": "client.crt", "sslkey": str(tmp_path), "sslcrl": ""}
    assert pg.file_errors(keywords) == [
        "sslcert: client.crt is not an absolute path",
        f"sslkey: {tmp_path} does not exist or is not a file",
    ]
