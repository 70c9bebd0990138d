"""_postgres.py's pure helpers: the TLS keywords as pg_dump receives them, and the file checks."""

from __future__ import annotations

from ansible_collections.berth.stack.plugins.module_utils import _postgres as pg


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
