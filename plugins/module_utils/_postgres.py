# Copyright (c) berth.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one PostgreSQL connection layer of berth.stack: psycopg 3 first, psycopg2 as a fallback.

Modules take their connection options from ``connection_argument_spec()`` and connect with
``connect()``; everything else (SQLSTATE, server message) goes through the helpers here so a
module never needs to know which driver is installed.
"""

from __future__ import annotations

import os
import re
import traceback

from ansible.module_utils.basic import env_fallback, missing_required_lib

PSYCOPG_IMPORT_ERROR = None
try:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    DRIVER = "psycopg"
    DatabaseError = psycopg.Error
    HAS_PSYCOPG = True
except ImportError:
    try:
        import psycopg2
        from psycopg2.extensions import parse_dsn as conninfo_to_dict

        DRIVER = "psycopg2"
        DatabaseError = psycopg2.Error
        HAS_PSYCOPG = True
    except ImportError:
        PSYCOPG_IMPORT_ERROR = traceback.format_exc()
        DRIVER = None
        DatabaseError = Exception
        HAS_PSYCOPG = False

SSLMODES = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]

# Option name -> libpq keyword. libpq reads the same PG* variables itself, but resolving them
# here makes the values visible to pg_dump and to error messages.
LIBPQ_KEYWORDS = {
    "host": "host",
    "port": "port",
    "database": "dbname",
    "user": "user",
    "password": "password",
    "sslmode": "sslmode",
    "sslrootcert": "sslrootcert",
    "sslcert": "sslcert",
    "sslkey": "sslkey",
    "sslcrl": "sslcrl",
}

LIBPQ_ENVIRONMENT = {
    "host": "PGHOST",
    "port": "PGPORT",
    "dbname": "PGDATABASE",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslcrl": "PGSSLCRL",
}

# Keywords that name a file on the target: checked before connecting, since libpq's own message for a
# missing one depends on the sslmode (a missing root certificate with sslmode=require is silently skipped).
FILE_KEYWORDS = ("sslrootcert", "sslcert", "sslkey", "sslcrl")


def connection_argument_spec() -> dict:
    """The connection options every berth.stack PostgreSQL module accepts."""
    return {
        "host": {"type": "str", "fallback": (env_fallback, ["PGHOST"])},
        "port": {"type": "int", "fallback": (env_fallback, ["PGPORT"])},
        "database": {"type": "str", "aliases": ["db"], "fallback": (env_fallback, ["PGDATABASE"])},
        "user": {"type": "str", "fallback": (env_fallback, ["PGUSER"])},
        "password": {"type": "str", "no_log": True, "fallback": (env_fallback, ["PGPASSWORD"])},
        "sslmode": {"type": "str", "choices": SSLMODES, "fallback": (env_fallback, ["PGSSLMODE"])},
        **{
            # Paths, not contents: a key file's content is never read here, so there is nothing to hide.
            keyword: {"type": "path", "no_log": False, "fallback": (env_fallback, [LIBPQ_ENVIRONMENT[keyword]])}
            for keyword in FILE_KEYWORDS
        },
        # A URI may carry the password (postgresql://user:secret@host/db).
        "uri": {"type": "str", "no_log": True},
    }


def require_driver(module) -> None:
    if not HAS_PSYCOPG:
        module.fail_json(msg=missing_required_lib("psycopg (3) or psycopg2"), exception=PSYCOPG_IMPORT_ERROR)


def conninfo(params: dict) -> dict:
    """libpq keywords from the module options; explicit options win over the URI's parts."""
    keywords = dict(conninfo_to_dict(params["uri"])) if params.get("uri") else {}
    for option, keyword in LIBPQ_KEYWORDS.items():
        if params.get(option) is not None:
            keywords[keyword] = str(params[option])
    return keywords


def file_errors(keywords: dict) -> list:
    """``option: path: why`` for each certificate, key or CRL file libpq could not read."""
    errors = []
    for keyword in FILE_KEYWORDS:
        path = keywords.get(keyword)
        if not path:
            continue
        if not os.path.isabs(path):
            errors.append(f"{keyword}: {path} is not an absolute path")
        elif not os.path.isfile(path):
            errors.append(f"{keyword}: {path} does not exist or is not a file")
        elif not os.access(path, os.R_OK):
            errors.append(f"{keyword}: {path} is not readable")
    return errors


def libpq_environment(keywords: dict) -> dict:
    """PG* variables for client programs (pg_dump), so no password appears on a command line."""
    return {LIBPQ_ENVIRONMENT[key]: value for key, value in keywords.items() if key in LIBPQ_ENVIRONMENT}


def describe(keywords: dict) -> str:
    """Where a connection goes, for messages; never the password."""
    host = keywords.get("host", "the default socket")
    port = keywords.get("port", "5432")
    database = keywords.get("dbname") or keywords.get("user")
    return f"{f'database {database}' if database else 'the default database'} on {host}:{port}"


def connect(keywords: dict, application_name: str):
    """An autocommit connection: callers open transactions explicitly with BEGIN."""
    keywords = dict(keywords, application_name=application_name)
    if DRIVER == "psycopg":
        return psycopg.connect(autocommit=True, **keywords)
    connection = psycopg2.connect(**keywords)
    connection.autocommit = True
    return connection


def server_major(connection) -> int:
    return int(query(connection, "SHOW server_version_num")[0][0]) // 10000


def client_major(version_output: str) -> int:
    """The major version in a client's ``--version``: ``pg_dump (PostgreSQL) 17.6 (Debian 17.6-0+deb13u1)``."""
    match = re.search(r"\(PostgreSQL\) (\d+)", version_output)
    if not match:
        raise ValueError(f"no PostgreSQL version in {version_output.strip()!r}")
    return int(match.group(1))


def pg_dump_too_old(client: int, server: int) -> str | None:
    """Why pg_dump of major version ``client`` cannot dump the server, with the fix; None when it can.

    pg_dump refuses a server newer than itself ("aborting because of server version mismatch").
    """
    if client >= server:
        return None
    return (
        f"pg_dump {client} on this host is older than the server (PostgreSQL {server}) and cannot dump it: "
        f"install postgresql-client-{server} so pg_dump is at least as new as the server"
    )


def query(connection, sql: str, params: tuple | None = None) -> list:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def execute(connection, sql: str) -> None:
    """Run one statement as written (no parameters, so a '%' in migration SQL stays literal)."""
    with connection.cursor() as cursor:
        cursor.execute(sql)


def sqlstate(error) -> str | None:
    return getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)


def server_message(error) -> str:
    """PostgreSQL's own message with its detail and hint, without the driver's decoration."""
    diag = getattr(error, "diag", None)
    primary = getattr(diag, "message_primary", None)
    if not primary:
        return str(error).strip()
    parts = [primary]
    for label, attribute in (("DETAIL", "message_detail"), ("HINT", "message_hint")):
        value = getattr(diag, attribute, None)
        if value:
            parts.append(f"{label}: {value}")
    return " ".join(parts)
