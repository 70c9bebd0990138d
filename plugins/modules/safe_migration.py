#!/usr/bin/python
# Copyright (c) berth.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: safe_migration
short_description: Apply PostgreSQL schema migrations that cannot take production down
version_added: 0.1.0
description:
  - "Mode 1 (O(directory)): applies versioned SQL files to PostgreSQL and records each in a history table.
    Files are named C(V<version>__<description>.sql), for example C(V0003__add_status.sql); the version is
    one or more dot-separated integers (C(V1.10) sorts after C(V1.9)) and underscores in the description
    read as spaces. Other file names ending in C(.sql) are an error; other files are ignored."
  - Before anything runs, an action plugin parses every file on the controller with PostgreSQL's own parser
    (pglast) and classifies each statement as destructive, lock-heavy or safe. Destructive statements
    (drops, truncates, DELETE/UPDATE without WHERE, renames, NOT NULL columns without default on a filled
    table) are refused unless the file allows them; lock-heavy statements (index builds without
    CONCURRENTLY, constraints without NOT VALID, VALIDATE CONSTRAINT or a backfill in the same transaction
    as an ALTER of that table, SET NOT NULL without a validated CHECK (col IS NOT NULL), rewriting type
    changes and defaults, VACUUM FULL, CLUSTER, REINDEX, LOCK) are refused by O(policy=strict) and warned
    about by O(policy=warn). Every finding names the file, line, rule, why it is dangerous and the safe
    alternative. Statements on a table created earlier in the same file, or by an earlier file of the same
    run (it does not exist yet when the run starts), are safe. Advice (int instead of
    bigint, varchar(n), timestamp without time zone, char(n), concurrent index statements that fail on a
    re-run) is always a warning, never a refusal.
  - "A file allows a class with a comment line C(-- berth:allow destructive reason=\"...\") or
    C(-- berth:allow lock-heavy reason=\"...\"); the reason is required and recorded in the history table.
    A file whose statements cannot run in a transaction (CREATE INDEX CONCURRENTLY, VACUUM) starts with
    C(-- berth:no-transaction); it runs statement by statement in autocommit and must be safe to re-run
    (use IF NOT EXISTS / IF EXISTS). Before each attempt of a named CREATE INDEX CONCURRENTLY, an INVALID
    index of that name left by a failed build is dropped, so IF NOT EXISTS cannot keep a broken index.
    CONCURRENTLY in a transactional file is an error."
  - Each transactional file runs in one transaction together with its history row, so a failure leaves
    neither. Runners serialise on a session advisory lock. Every statement runs under O(lock_timeout) and
    O(statement_timeout); a file that hits the lock timeout (SQLSTATE 55P03) is rolled back and retried
    with exponential backoff and jitter, so the application's queries never queue behind it for longer
    than O(lock_timeout).
  - An applied file whose content changed (checksum drift) stops the run; so does a pending file older
    than the newest applied one unless O(out_of_order=true).
  - "Mode 2 (O(command)): runs the application's own migration tool (alembic, prisma migrate deploy,
    drizzle, C(pnpm db:migrate)) in a one-off container of the new image with C(docker compose run --rm),
    under the same advisory lock, backup and timeout. O(check_command) decides whether anything is pending."
  - When something is pending and O(backup=true), a custom-format C(pg_dump) is written first, mode 0600,
    named with the database, the time and the versions about to be applied. A failed backup aborts the run.
  - "A database in a container on the target is reached through a port published on loopback
    (C(ports: [\"127.0.0.1:5432:5432\"]), then O(host=127.0.0.1)) or through its socket directory mounted on
    the host (C(volumes: [\"/run/berth/pg:/var/run/postgresql\"]), then O(host=/run/berth/pg));
    O(backup_container) runs C(pg_dump) inside the container instead of on the host."
author:
  - berth.stack maintainers (@berth-stack)
requirements:
  - psycopg (3) or psycopg2 on the target.
  - pglast on the controller (Mode 1).
  - pg_dump on the target (backups without O(backup_container)), docker with the compose plugin (Mode 2).
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details:
      - Check mode connects, reads the history and returns the plan (applied, pending, findings, the backup
        that would be taken) without taking a lock or changing anything. In Mode 2 it runs O(check_command).
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
  action:
    description:
      - Indicates this has a corresponding action plugin so some parts of the options can be executed on the controller.
    support: full
options:
  directory:
    description:
      - Directory of C(V<version>__<description>.sql) files on the controller (Mode 1). The action plugin reads
        and analyses it; a relative path is looked up like a C(files) path.
    type: path
  migrations:
    description:
      - The files of O(directory) with their analysis, filled in by the action plugin. Do not set it yourself.
    type: list
    elements: dict
  policy:
    description:
      - V(strict) refuses lock-heavy statements that the file does not allow; V(warn) runs them with a warning.
        Destructive statements always need an allowance.
    type: str
    choices: [strict, warn]
    default: strict
  out_of_order:
    description: Apply pending files whose version is lower than the newest applied one.
    type: bool
    default: false
  history_schema:
    description: Schema of the history table (created when missing).
    type: str
    default: public
  history_table:
    description: Name of the history table (created on the first apply).
    type: str
    default: berth_schema_history
  applied_by:
    description: Recorded in the history table. Defaults to the remote user and host name.
    type: str
  lock_timeout:
    description:
      - PostgreSQL C(lock_timeout) for every migration statement; the longest an application query can queue
        behind a migration.
    type: str
    default: 1s
  statement_timeout:
    description: PostgreSQL C(statement_timeout) for every migration statement.
    type: str
    default: 15min
  lock_retries:
    description: How many times a file (or a statement of a non-transactional file) is retried after a lock timeout.
    type: int
    default: 5
  retry_delay:
    description: First backoff delay in seconds; it doubles per retry (capped at 30 s) plus up to 50% jitter.
    type: float
    default: 1.0
  lock_wait_timeout:
    description: Seconds a runner waits for another runner's advisory lock before failing with the holder's identity.
    type: float
    default: 60
  command:
    description: The application's migration command, run in a one-off container of O(service) (Mode 2).
    type: list
    elements: str
  check_command:
    description:
      - Run like O(command) to decide whether anything is pending; it must change nothing.
        Exit code 0 means up to date, 1 means pending (as C(prisma migrate status) does); anything else is an error.
    type: list
    elements: str
  compose_file:
    description: The release's compose file on the target (Mode 2).
    type: path
  service:
    description: The compose service whose image carries the migration tool (Mode 2).
    type: str
  project_name:
    description: Compose project name (C(docker compose -p)); defaults to Compose's own choice.
    type: str
  command_timeout:
    description: Seconds O(command) may run before its container is removed and the module fails.
    type: int
    default: 1800
  backup:
    description: Dump the database before the first statement when something is pending.
    type: bool
    default: true
  backup_dir:
    description: Directory on the target for the dumps (created with mode 0700).
    type: path
    default: /var/backups/berth/migrations
  backup_container:
    description: Run C(pg_dump) with C(docker exec) in this database container instead of on the target host.
    type: str
  backup_timeout:
    description: Seconds the dump may take.
    type: int
    default: 3600
  host:
    description:
      - Host name, IP address or socket directory of the server (libpq C(host)).
      - Like every connection option here, it falls back to its libpq environment variable on the target
        (C(PGHOST), C(PGPORT), C(PGDATABASE), C(PGUSER), C(PGPASSWORD), C(PGSSLMODE)).
    type: str
  port:
    description: Server port.
    type: int
  database:
    description: Database name.
    type: str
    aliases: [db]
  user:
    description: Role to connect as.
    type: str
  password:
    description: Password of O(user); never logged.
    type: str
  sslmode:
    description: libpq C(sslmode).
    type: str
    choices: [disable, allow, prefer, require, verify-ca, verify-full]
  uri:
    description:
      - A libpq connection URI (C(postgresql://user@host:port/db)); the individual options override its parts.
      - Never logged, since it may carry a password.
    type: str
notes:
  - Run it once per database, for example with C(run_once).
"""

EXAMPLES = r"""
- name: Apply pending SQL migrations to the database published on loopback
  berth.stack.safe_migration:
    directory: migrations/
    host: 127.0.0.1
    port: 5432
    database: shop
    user: shop_owner
    password: "{{ vault_shop_db_password }}"

- name: Show what would run (check mode), allowing lock-heavy statements with a warning
  berth.stack.safe_migration:
    directory: migrations/
    uri: postgresql://shop_owner@127.0.0.1:5432/shop
    policy: warn
  check_mode: true

- name: Run the application's own migration tool from the new image, dumping through the DB container
  berth.stack.safe_migration:
    compose_file: /srv/berth/shop/releases/42/compose.yml
    service: api
    command: [npx, prisma, migrate, deploy]
    check_command: [npx, prisma, migrate, status]
    host: 127.0.0.1
    database: shop
    user: shop_owner
    password: "{{ vault_shop_db_password }}"
    backup_container: shop-data-postgres-1
"""

RETURN = r"""
mode:
  description: V(sql) for versioned files, V(command) for the application's own tool.
  returned: always
  type: str
applied:
  description: Versions that were already applied before this run.
  returned: Mode 1
  type: list
  elements: str
pending:
  description: Migrations that were (or in check mode would be) applied, in order.
  returned: Mode 1
  type: list
  elements: dict
  sample: [{"version": "0003", "file": "V0003__add_status.sql", "transactional": true}]
findings:
  description:
    - Analysis findings for pending files, each with file, line, rule, class, why, alternative and verdict
      (allowed, warned or refused).
  returned: Mode 1
  type: list
  elements: dict
backup:
  description:
    - The dump taken (path, size, duration_ms, method), or in check mode the one that would be taken
      (path, taken=false).
    - Empty when nothing is pending or O(backup=false).
  returned: always
  type: dict
queries:
  description:
    - Statements executed, in order, including the session settings and the C(DROP INDEX CONCURRENTLY) of an
      INVALID index left by a failed concurrent build.
  returned: always
  type: list
  elements: str
migrations:
  description: Per applied file, its version, statement count, attempts and duration in milliseconds.
  returned: Mode 1
  type: list
  elements: dict
retries:
  description: Lock timeouts that led to a retry, with the file, line, lock waited for and sleep.
  returned: Mode 1
  type: list
  elements: dict
lock_wait_seconds:
  description: Seconds spent waiting for another runner's advisory lock.
  returned: when not in check mode
  type: float
check_rc:
  description: Exit code of O(check_command) (0 up to date, 1 pending).
  returned: Mode 2
  type: int
rc:
  description: Exit code of O(command).
  returned: Mode 2, when the command ran
  type: int
stdout:
  description: Output of O(command) (or of O(check_command) when nothing was pending).
  returned: Mode 2
  type: str
stderr:
  description: Error output of O(command) (or of O(check_command) when nothing was pending).
  returned: Mode 2
  type: str
"""

import getpass
import os
import socket
import subprocess
import uuid

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.berth.stack.plugins.module_utils import _migrations as mig
from ansible_collections.berth.stack.plugins.module_utils import _postgres as pg


def argument_spec() -> dict:
    return {
        "directory": {"type": "path"},
        "migrations": {"type": "list", "elements": "dict"},
        "policy": {"type": "str", "choices": ["strict", "warn"], "default": "strict"},
        "out_of_order": {"type": "bool", "default": False},
        "history_schema": {"type": "str", "default": "public"},
        "history_table": {"type": "str", "default": "berth_schema_history"},
        "applied_by": {"type": "str"},
        "lock_timeout": {"type": "str", "default": "1s"},
        "statement_timeout": {"type": "str", "default": "15min"},
        "lock_retries": {"type": "int", "default": 5},
        "retry_delay": {"type": "float", "default": 1.0},
        "lock_wait_timeout": {"type": "float", "default": 60},
        "command": {"type": "list", "elements": "str"},
        "check_command": {"type": "list", "elements": "str"},
        "compose_file": {"type": "path"},
        "service": {"type": "str"},
        "project_name": {"type": "str"},
        "command_timeout": {"type": "int", "default": 1800},
        "backup": {"type": "bool", "default": True},
        "backup_dir": {"type": "path", "default": "/var/backups/berth/migrations"},
        "backup_container": {"type": "str"},
        "backup_timeout": {"type": "int", "default": 3600},
        **pg.connection_argument_spec(),
    }


def parameter_errors(params: dict) -> list:
    errors = [
        mig.check_duration(option, params[option])
        for option in ("lock_timeout", "statement_timeout")
        if mig.check_duration(option, params[option])
    ]
    for option in ("lock_retries", "retry_delay", "lock_wait_timeout", "command_timeout", "backup_timeout"):
        if params[option] < 0:
            errors.append(f"{option}: {params[option]} must not be negative")
    if params["directory"] and params["migrations"] is None:
        errors.append("migrations: missing; safe_migration must run through its action plugin, which fills it in")
    return errors


def default_applied_by() -> str:
    return f"{os.environ.get('SUDO_USER') or getpass.getuser()}@{socket.gethostname()}"


def backup_plan(module, keywords: dict, versions: list) -> dict:
    params = module.params
    if not params["backup"]:
        return {}
    database = keywords.get("dbname") or keywords.get("user") or "postgres"
    return {"path": mig.backup_path(params["backup_dir"], database, versions), "taken": False}


def run_backup(module, keywords: dict, planned: dict) -> dict:
    params = module.params
    docker = module.get_bin_path("docker", required=True) if params["backup_container"] else "docker"
    pg_dump = None if params["backup_container"] else module.get_bin_path("pg_dump", required=True)
    argv, environment = mig.dump_command(keywords, params["backup_container"], params["lock_timeout"], docker, pg_dump)
    taken = mig.take_backup(planned["path"], argv, environment, params["backup_timeout"])
    return dict(taken, taken=True, method="docker exec" if params["backup_container"] else "pg_dump")


def run_versioned(module, connection, keywords: dict, result: dict) -> None:
    params = module.params
    schema, table = params["history_schema"], params["history_table"]
    history = mig.read_history(connection, schema, table)
    pending, applied = mig.plan(params["migrations"], history, params["out_of_order"])
    refused, findings = mig.judge(pending, params["policy"], connection)
    result.update(
        applied=applied,
        pending=[{key: item[key] for key in ("version", "file", "description", "transactional")} for item in pending],
        findings=findings,
    )
    if refused:
        raise mig.MigrationError(
            f"{len(refused)} finding(s) refused, nothing was changed:\n"
            + "\n".join(mig.describe_finding(finding) for finding in refused)
        )
    for finding in findings:
        if finding["verdict"] == "warned":
            module.warn(mig.describe_finding(finding))
    if not pending:
        return
    result["changed"] = True
    result["backup"] = backup_plan(module, keywords, [item["version"] for item in pending])
    if module.check_mode:
        return
    if result["backup"]:
        result["backup"] = run_backup(module, keywords, result["backup"])
    result["queries"] += mig.set_timeouts(connection, params["lock_timeout"], params["statement_timeout"])
    result["queries"] += mig.ensure_history(connection, schema, table)
    settings = {
        "history_schema": schema,
        "history_table": table,
        "applied_by": params["applied_by"] or default_applied_by(),
        "lock_timeout": params["lock_timeout"],
        "lock_retries": params["lock_retries"],
        "retry_delay": params["retry_delay"],
    }
    for migration in pending:
        timing = mig.apply_migration(connection, migration, settings, result["retries"])
        result["queries"] += timing.pop("cleanup") + [statement["sql"] for statement in migration["statements"]]
        result["migrations"].append(timing)


def compose_run(module, argv: list, timeout: int) -> tuple[int, str, str]:
    """Run argv in a one-off container of the service; a timeout removes the container."""
    params = module.params
    docker = module.get_bin_path("docker", required=True)
    name = f"berth-migrate-{uuid.uuid4().hex[:12]}"
    compose = [docker, "compose", "--file", params["compose_file"]]
    if params["project_name"]:
        compose += ["--project-name", params["project_name"]]
    full = [*compose, "run", "--rm", "--no-deps", "-T", "--name", name, params["service"], *argv]
    try:
        completed = subprocess.run(full, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as error:
        subprocess.run([docker, "rm", "--force", name], capture_output=True, check=False)
        raise mig.MigrationError(
            f"{' '.join(argv)} ran longer than {timeout} s (command_timeout); removed its container {name}"
        ) from error
    return completed.returncode, completed.stdout, completed.stderr


def run_command_mode(module, keywords: dict, result: dict) -> None:
    params = module.params
    rc, stdout, stderr = compose_run(module, params["check_command"], params["command_timeout"])
    result.update(check_rc=rc, stdout=stdout, stderr=stderr)
    if rc not in (0, 1):
        raise mig.MigrationError(
            f"check_command {' '.join(params['check_command'])} exited {rc} (0: up to date, 1: pending): "
            f"{stderr.strip() or stdout.strip()}"
        )
    if rc == 0:
        return
    result["changed"] = True
    result["backup"] = backup_plan(module, keywords, [])
    if module.check_mode:
        return
    if result["backup"]:
        result["backup"] = run_backup(module, keywords, result["backup"])
    result["queries"].append(" ".join(params["command"]))
    rc, stdout, stderr = compose_run(module, params["command"], params["command_timeout"])
    result.update(rc=rc, stdout=stdout, stderr=stderr)
    if rc != 0:
        raise mig.MigrationError(f"{' '.join(params['command'])} exited {rc}: {stderr.strip() or stdout.strip()}")


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(),
        mutually_exclusive=[("directory", "command")],
        required_one_of=[("directory", "command")],
        required_by={"command": ("check_command", "compose_file", "service")},
        supports_check_mode=True,
    )
    pg.require_driver(module)
    errors = parameter_errors(module.params)
    if errors:
        module.fail_json(msg="; ".join(errors))
    mode = "sql" if module.params["directory"] else "command"
    result = {"changed": False, "mode": mode, "backup": {}, "queries": [], "migrations": [], "retries": []}
    keywords = pg.conninfo(module.params)
    try:
        connection = pg.connect(keywords, f"berth.safe_migration@{socket.gethostname()}")
    except pg.DatabaseError as error:
        module.fail_json(msg=f"cannot connect to {pg.describe(keywords)}: {pg.server_message(error)}", **result)
    key = mig.advisory_lock_key(module.params["history_schema"], module.params["history_table"])
    try:
        if not module.check_mode:
            waited = mig.acquire_lock(connection, key, module.params["lock_wait_timeout"])
            result["lock_wait_seconds"] = round(waited, 3)
        if mode == "sql":
            run_versioned(module, connection, keywords, result)
        else:
            run_command_mode(module, keywords, result)
    except mig.MigrationError as error:
        module.fail_json(msg=str(error), **result)
    except pg.DatabaseError as error:
        module.fail_json(msg=f"{pg.describe(keywords)}: {pg.server_message(error)}", **result)
    finally:
        connection.close()
    module.exit_json(**result)


if __name__ == "__main__":
    main()
