# Copyright (c) berth.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Versioned migrations for berth.stack.safe_migration: naming, history, locking, applying, backups.

The action plugin (controller) uses the naming helpers; the module (target) uses the rest.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import time
import zlib
from datetime import datetime

from ansible_collections.berth.stack.plugins.module_utils import _migration_state as state
from ansible_collections.berth.stack.plugins.module_utils import _postgres as pg

MIGRATION_NAME = re.compile(r"^V(?P<version>\d+(?:\.\d+)*)__(?P<description>[^/]+)\.sql$")
LOCK_TIMEOUT_SQLSTATE = "55P03"
# Advisory lock keys: a fixed class ("bert" in ASCII) and the history table's name, so two apps
# sharing a database with different history tables do not serialise each other.
ADVISORY_LOCK_CLASS = 0x62657274
BACKOFF_CAP_SECONDS = 30.0
DURATION = re.compile(r"^\d+\s*(ms|s|min|h)?$")


class MigrationError(Exception):
    """A failure the module reports as is, with whatever it had done up to then."""


def parse_name(filename: str) -> tuple[str, str] | None:
    """(version, description) of a migration file name like V0003__add_status.sql, else None."""
    match = MIGRATION_NAME.match(filename)
    if not match:
        return None
    return match["version"], match["description"].replace("_", " ")


def version_key(version: str) -> tuple:
    """V0010 sorts after V9, and V1.10 after V1.9."""
    return tuple(int(part) for part in version.split("."))


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def history_relation(schema: str, table: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(table)}"


def advisory_lock_key(schema: str, table: str) -> tuple[int, int]:
    return ADVISORY_LOCK_CLASS, zlib.crc32(f"{schema}.{table}".encode()) & 0x7FFFFFFF


# --- history -------------------------------------------------------------------------------------


def read_history(connection, schema: str, table: str) -> dict:
    """Applied migrations by version; empty when the history table does not exist yet."""
    exists = pg.query(connection, "SELECT to_regclass(%s) IS NOT NULL", (history_relation(schema, table),))[0][0]
    if not exists:
        return {}
    rows = pg.query(
        connection,
        f"SELECT version, description, checksum, applied_at::text, execution_ms, applied_by, allowance_reason "  # noqa: S608 - identifiers are quoted by quote_ident
        f"FROM {history_relation(schema, table)}",
    )
    columns = ("version", "description", "checksum", "applied_at", "execution_ms", "applied_by", "allowance_reason")
    return {row[0]: dict(zip(columns, row, strict=True)) for row in rows}


def ensure_history(connection, schema: str, table: str) -> list:
    statements = [
        f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}",
        f"CREATE TABLE IF NOT EXISTS {history_relation(schema, table)} ("
        "version text PRIMARY KEY, description text NOT NULL, checksum text NOT NULL, "
        "applied_at timestamptz NOT NULL DEFAULT now(), execution_ms integer NOT NULL, "
        "applied_by text NOT NULL, allowance_reason text)",
    ]
    for statement in statements:
        pg.execute(connection, statement)
    return statements


def record(connection, schema: str, table: str, migration: dict, execution_ms: int, applied_by: str) -> None:
    allowances = migration.get("allowances") or {}
    reason = "; ".join(f"{cls}: {text}" for cls, text in sorted(allowances.items())) or None
    pg.query(
        connection,
        f"INSERT INTO {history_relation(schema, table)} "  # noqa: S608 - identifiers are quoted by quote_ident
        "(version, description, checksum, execution_ms, applied_by, allowance_reason) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (migration["version"], migration["description"], migration["checksum"], execution_ms, applied_by, reason),
    )


# --- planning ------------------------------------------------------------------------------------


def plan(migrations: list, history: dict, out_of_order: bool) -> tuple[list, list]:
    """(pending migrations in version order, versions already applied); raises on drift or gaps."""
    applied_keys = {version_key(version): row for version, row in history.items()}
    pending = []
    for migration in sorted(migrations, key=lambda item: version_key(item["version"])):
        row = applied_keys.get(version_key(migration["version"]))
        if row is None:
            pending.append(migration)
        elif row["checksum"] != migration["checksum"]:
            raise MigrationError(
                f"checksum drift: {migration['file']} was applied with checksum {row['checksum']} "
                f"but the file now has checksum {migration['checksum']}; applied migrations must never "
                "change (restore the file, or write a new migration)"
            )
    newest = max(applied_keys, default=None)
    gaps = [item["file"] for item in pending if newest is not None and version_key(item["version"]) < newest]
    if gaps and not out_of_order:
        newest_text = ".".join(str(part) for part in newest)
        raise MigrationError(
            f"out-of-order migration: {', '.join(gaps)} has a lower version than the newest applied "
            f"version {newest_text}; set out_of_order=true if applying it late is intended"
        )
    applied = sorted(history, key=version_key)
    return pending, applied


def table_has_rows(connection, table: str) -> bool:
    relation = pg.query(connection, "SELECT to_regclass(%s)::text", (table,))[0][0]
    if relation is None:
        return False
    return pg.query(connection, f"SELECT EXISTS (SELECT FROM {relation})")[0][0]  # noqa: S608 - a regclass name


def has_validated_not_null_check(connection, table: str, column: str) -> bool:
    """A validated CHECK (column IS NOT NULL) lets SET NOT NULL skip its full-table scan (PostgreSQL 12+)."""
    return pg.query(
        connection,
        "SELECT EXISTS (SELECT FROM pg_constraint WHERE conrelid = to_regclass(%s) AND contype = 'c' "
        "AND convalidated AND pg_get_constraintdef(oid) = format('CHECK ((%%I IS NOT NULL))', %s::text))",
        (table, column),
    )[0][0]


def table_exists(connection, table: str) -> bool:
    return pg.query(connection, "SELECT to_regclass(%s) IS NOT NULL", (table,))[0][0]


DATABASE_KEYS = (
    "needs_rows",
    "unless_not_null_checked",
    "unless_rewrite_free",
    "new_type",
    "needs_constrained_domain",
    "needs_domain_rows",
    "type_name",
    "same_session",
)


def finding_state(connection, finding: dict) -> tuple[bool, str | None]:
    """(whether the finding holds on this database, why not when a rule was lifted).

    The controller cannot see the database: whether a table has rows, a CHECK proves NOT NULL, a type
    change needs a rewrite, a type is a constrained domain, or a domain's columns sit in filled tables.
    A lifted rule carries its reason into the plan; a finding that simply does not apply (a type that is
    not a domain) carries none.
    """
    table = finding.get("table")
    blocking = finding["class"] in ("destructive", "lock-heavy")
    if blocking and table and not table_exists(connection, table):
        return False, f"{table} does not exist yet (an earlier pending file creates it), so nobody uses it"
    if finding.get("needs_constrained_domain") and not state.constrained_domain(connection, finding["type_name"]):
        return False, None
    if finding.get("needs_rows") and not table_has_rows(connection, table):
        return False, f"{table} has no rows, so nothing is scanned or rewritten"
    if finding.get("unless_not_null_checked") and has_validated_not_null_check(connection, table, finding["column"]):
        return False, f"a validated CHECK ({finding['column']} IS NOT NULL) lets PostgreSQL skip the scan"
    if finding.get("unless_rewrite_free"):
        current = state.column_type(connection, table, finding["column"])
        if current is not None:
            timezone = pg.query(connection, "SHOW TimeZone")[0][0] if finding.get("same_session") else None
            free, why = state.type_change_without_rewrite(current[0], current[1], finding["new_type"], timezone)
            finding["detail"] = f"{table}.{finding['column']} {current[2]} to {finding['new_type']['text']}: {why}"
            if free:
                return False, finding["detail"]
    if finding.get("needs_domain_rows"):
        filled = state.filled_domain_columns(connection, finding["domain"])
        if not filled:
            return False, f"no column of domain {finding['domain']} is in a table with rows, so nothing is scanned"
        finding["detail"] = f"{finding.get('detail') or 'ALTER DOMAIN'} checks {', '.join(filled)}"
    return True, None


def judge(pending: list, policy: str, connection, refuse_classes=(), same_session=True) -> tuple[list, list, list]:
    """(findings that refuse the run, all findings of pending files with their verdict, lifted rules).

    refuse_classes: classes refused even where a file allows them (an inventory's "never DROP in production").
    same_session: this module's session runs the SQL (Mode 1), so its settings (TimeZone) hold for it too.
    """
    refused, judged, lifted = [], [], []
    for migration in pending:
        allowances = migration.get("allowances") or {}
        for finding in migration.get("findings") or []:
            finding = dict(finding, same_session=same_session)
            applies, reason = finding_state(connection, finding) if connection is not None else (True, None)
            for key in DATABASE_KEYS:
                finding.pop(key, None)
            if not applies:
                if reason:
                    lifted.append(dict(finding, verdict="lifted", lifted_because=reason))
                continue
            cls = finding["class"]
            if cls == "error":
                verdict = "refused"
            elif cls == "advice":
                verdict = "warned"
            elif cls in refuse_classes:
                verdict = "refused"
                allowed = f" although the file allows it ({allowances[cls]})" if cls in allowances else ""
                finding["refused_by"] = f"refuse_classes forbids {cls}{allowed}"
            elif cls in allowances:
                verdict = "allowed"
            elif cls == "lock-heavy" and policy == "warn":
                verdict = "warned"
            else:
                verdict = "refused"
            finding["verdict"] = verdict
            judged.append(finding)
            if verdict == "refused":
                refused.append(finding)
    return refused, judged, lifted


def describe_finding(finding: dict) -> str:
    policy = f" Refused by policy: {finding['refused_by']}." if finding.get("refused_by") else ""
    return (
        f"{finding['file']}:{finding['line']}: {finding['class']} [{finding['rule']}] "
        f"{finding.get('detail') or finding['statement']}: {finding['why']} Safe alternative: {finding['alternative']}"
        f"{policy}"
    )


# --- the advisory lock ---------------------------------------------------------------------------


def lock_holder(connection, key: tuple[int, int]) -> str:
    rows = pg.query(
        connection,
        "SELECT a.pid, a.application_name, a.usename, coalesce(host(a.client_addr), 'local socket'), "
        "date_trunc('second', now() - a.backend_start)::text FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.classid = %s AND l.objid = %s AND l.objsubid = 2 AND l.granted",
        key,
    )
    if not rows:
        return "a session that has since gone away"
    pid, application, user, client, age = rows[0]
    return f"pid {pid} ({application or 'no application_name'}, user {user}, from {client}, connected for {age})"


def acquire_lock(connection, key: tuple[int, int], wait_seconds: float) -> float:
    """Take the session advisory lock, polling until wait_seconds; returns the seconds waited."""
    started = time.monotonic()
    while True:
        if pg.query(connection, "SELECT pg_try_advisory_lock(%s, %s)", key)[0][0]:
            return time.monotonic() - started
        if time.monotonic() - started >= wait_seconds:
            raise MigrationError(
                f"another migration holds the advisory lock {key[0]}/{key[1]}: {lock_holder(connection, key)}; "
                f"gave up after waiting {wait_seconds:g} s (lock_wait_timeout)"
            )
        time.sleep(min(0.5, max(0.05, wait_seconds / 20)))


# --- applying ------------------------------------------------------------------------------------


def check_duration(option: str, value: str) -> str | None:
    if not DURATION.match(value.strip()):
        return f"{option}: {value!r} is not a PostgreSQL duration such as '1s', '500ms' or '10min'"
    return None


def set_timeouts(connection, lock_timeout: str, statement_timeout: str) -> list:
    statements = [
        f"SET lock_timeout = '{lock_timeout.strip()}'",
        f"SET statement_timeout = '{statement_timeout.strip()}'",
    ]
    for statement in statements:
        pg.execute(connection, statement)
    return statements


def lock_blockers(connection, tables: list) -> str:
    """Who holds locks on the tables a statement needed, read right after its lock wait timed out."""
    descriptions = []
    for table in tables:
        rows = pg.query(
            connection,
            "SELECT l.mode, a.pid, coalesce(a.application_name, ''), a.state, "
            "coalesce(date_trunc('second', now() - a.xact_start)::text, '?') "
            "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.relation = to_regclass(%s) AND l.granted AND l.pid <> pg_backend_pid()",
            (table,),
        )
        holders = ", ".join(
            f"{mode} by pid {pid} ({application or 'no application_name'}, {state}, transaction open {age})"
            for mode, pid, application, state, age in rows
        )
        descriptions.append(f"a lock on {table}" + (f" held as {holders}" if holders else ""))
    return "; ".join(descriptions) or "a lock (the statement names no table)"


def backoff(attempt: int, base: float) -> float:
    """Exponential backoff with full jitter on top, so retrying runners do not stampede."""
    delay = min(BACKOFF_CAP_SECONDS, base * (2**attempt))
    return delay + random.uniform(0, delay / 2)  # noqa: S311 - jitter, not cryptography


def _statement_error(migration: dict, statement: dict, error) -> str:
    return (
        f"{migration['file']} line {statement['line']}: statement {statement['sql'][:300]!r} failed: "
        f"{pg.server_message(error)}"
    )


def _run_with_retries(connection, migration, statement_source, settings, on_retry):
    """Run a unit (a whole transactional file, or one statement) retrying on lock timeout."""
    attempt = 0
    while True:
        try:
            return statement_source()
        except pg.DatabaseError as error:
            statement = getattr(error, "berth_statement", None) or {"line": "?", "sql": "", "tables": []}
            if pg.sqlstate(error) != LOCK_TIMEOUT_SQLSTATE:
                raise MigrationError(_statement_error(migration, statement, error)) from error
            waited_for = lock_blockers(connection, statement.get("tables") or [])
            if attempt >= settings["lock_retries"]:
                raise MigrationError(
                    f"{migration['file']} line {statement['line']}: gave up after {attempt + 1} attempts, each "
                    f"waiting lock_timeout={settings['lock_timeout']} for {waited_for}; statement "
                    f"{statement['sql'][:300]!r}"
                ) from error
            delay = backoff(attempt, settings["retry_delay"])
            on_retry(
                {
                    "file": migration["file"],
                    "line": statement["line"],
                    "attempt": attempt + 1,
                    "waited_for": waited_for,
                    "sleep": round(delay, 2),
                }
            )
            time.sleep(delay)
            attempt += 1


def _execute_statement(connection, statement: dict) -> None:
    try:
        pg.execute(connection, statement["sql"])
    except pg.DatabaseError as error:
        error.berth_statement = statement
        raise


def drop_invalid_index(connection, statement: dict) -> list:
    """Drop what a failed CREATE INDEX CONCURRENTLY left: an INVALID index that IF NOT EXISTS would keep."""
    invalid = pg.query(
        connection,
        "SELECT EXISTS (SELECT FROM pg_index WHERE indexrelid = to_regclass(%s) AND NOT indisvalid)",
        (statement["index"],),
    )[0][0]
    if not invalid:
        return []
    drop = f"DROP INDEX CONCURRENTLY IF EXISTS {statement['index']}"
    _execute_statement(connection, dict(statement, sql=drop))
    return [drop]


def drop_reindex_leftovers(connection, statement: dict) -> list:
    """Drop the INVALID _ccnew/_ccold copies a failed REINDEX ... CONCURRENTLY left, before it runs again."""
    drops = []
    for index in state.reindex_leftovers(connection, statement["reindex"]):
        drop = f"DROP INDEX CONCURRENTLY IF EXISTS {index}"
        _execute_statement(connection, dict(statement, sql=drop))
        drops.append(drop)
    return drops


def apply_migration(connection, migration: dict, settings: dict, retries: list) -> dict:
    """Apply one file and record it; returns its timing and any cleanup run. History and file commit together."""
    started = time.monotonic()
    attempts = {"count": 0}
    cleanup = []

    def on_retry(event):
        retries.append(event)

    def record_in_history(execution_ms):
        record(
            connection,
            settings["history_schema"],
            settings["history_table"],
            migration,
            execution_ms,
            settings["applied_by"],
        )

    if migration["transactional"]:

        def whole_file():
            attempts["count"] += 1
            attempt_started = time.monotonic()
            pg.execute(connection, "BEGIN")
            try:
                for statement in migration["statements"]:
                    _execute_statement(connection, statement)
                record_in_history(int((time.monotonic() - attempt_started) * 1000))
                pg.execute(connection, "COMMIT")
            except BaseException:
                pg.execute(connection, "ROLLBACK")
                raise

        _run_with_retries(connection, migration, whole_file, settings, on_retry)
    else:
        for index, statement in enumerate(migration["statements"]):

            def one_statement(statement=statement):
                attempts["count"] += 1
                if statement.get("index"):
                    cleanup.extend(drop_invalid_index(connection, statement))
                if statement.get("reindex"):
                    cleanup.extend(drop_reindex_leftovers(connection, statement))
                _execute_statement(connection, statement)

            try:
                _run_with_retries(connection, migration, one_statement, settings, on_retry)
            except MigrationError as error:
                raise MigrationError(
                    f"{error} (non-transactional file: its first {index} statement(s) stay committed; "
                    "the file is not recorded and runs again next time, so it must be re-runnable)"
                ) from error
        record_in_history(int((time.monotonic() - started) * 1000))
    return {
        "version": migration["version"],
        "file": migration["file"],
        "transactional": migration["transactional"],
        "statements": len(migration["statements"]),
        "attempts": attempts["count"],
        "duration_ms": int((time.monotonic() - started) * 1000),
        "cleanup": cleanup,
    }


# --- backups -------------------------------------------------------------------------------------


def backup_path(directory: str, database: str, versions: list) -> str:
    stamp = datetime.now().astimezone().strftime("%Y%m%dT%H%M%S%z")
    label = f"V{versions[0]}-V{versions[-1]}" if len(versions) > 1 else f"V{versions[0]}" if versions else "app"
    safe_database = re.sub(r"[^A-Za-z0-9_.-]", "_", database)
    return os.path.join(directory, f"{safe_database}-{stamp}-before-{label}.dump")


def dump_command(keywords: dict, container: str | None, lock_timeout: str, docker: str, pg_dump: str | None):
    """(argv, extra environment) for a custom-format dump to stdout; the password only in the env."""
    wait = f"--lock-wait-timeout={lock_timeout.strip().replace(' ', '')}"
    environment = pg.libpq_environment(keywords)
    if container:
        # Inside the container pg_dump reaches the server over its own local socket.
        argv = [docker, "exec", "-i"]
        if "password" in keywords:
            argv += ["-e", "PGPASSWORD"]
        argv += [container, "pg_dump", "--format=custom", wait]
        argv += ["--username", keywords.get("user", "postgres"), "--dbname", keywords.get("dbname", "postgres")]
        return argv, {key: value for key, value in environment.items() if key == "PGPASSWORD"}
    return [pg_dump, "--format=custom", "--no-password", wait], environment


def take_backup(path: str, argv: list, environment: dict, timeout: float) -> dict:
    """Dump into a 0600 temporary file next to the target, then rename; a failure leaves nothing."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    partial = f"{path}.partial"
    started = time.monotonic()
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as output:
            result = subprocess.run(
                argv,
                stdout=output,
                stderr=subprocess.PIPE,
                env={**os.environ, **environment},
                timeout=timeout,
                check=False,
            )
        if result.returncode != 0:
            raise MigrationError(
                f"backup failed, nothing was migrated: {' '.join(argv[:3])} ... exited {result.returncode}: "
                f"{result.stderr.decode(errors='replace').strip()}"
            )
        with open(partial, "rb") as dump:
            if dump.read(5) != b"PGDMP":
                raise MigrationError(f"backup failed, nothing was migrated: {partial} is not a custom-format dump")
        os.replace(partial, path)
    except subprocess.TimeoutExpired as error:
        raise MigrationError(f"backup failed, nothing was migrated: pg_dump ran longer than {timeout:g} s") from error
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return {"path": path, "size": os.path.getsize(path), "duration_ms": int((time.monotonic() - started) * 1000)}
