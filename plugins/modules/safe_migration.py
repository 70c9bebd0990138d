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
  - Statements whose effect the parser cannot see (a C(DO) block, C(EXECUTE) of a prepared statement, C(CALL), a
    C(SELECT) of a function other than a few known built-ins) are C(unanalysable) and refused unless the file
    allows that class. A C(WHERE) that is always true (C(WHERE true), C(WHERE 1 = 1), C(WHERE id = id)), that reads
    no column of the changed table (C(DELETE ... USING other WHERE other.flag)) or that selects every row
    (C(WHERE id IN (SELECT id FROM same_table))) counts as no C(WHERE); so does a C(DELETE) or C(UPDATE) inside a
    CTE, C(PREPARE), C(EXPLAIN ANALYZE) or C(CREATE RULE), and C(MERGE ... ON true).
  - "Some rules are decided on the target database, and a lifted rule is listed in RV(lifted) with the reason:
    a type change PostgreSQL does without a rewrite, read against the column's current type (raising or removing a
    varchar or bit varying limit, varchar to text and back, raising numeric's precision at the same scale,
    raising a timestamp's precision, cidr to inet, timestamp to timestamptz in a UTC session); a NOT NULL column
    or a column of a constrained domain added to an empty table; SET NOT NULL with a validated CHECK; ALTER DOMAIN
    ... ADD CONSTRAINT when no table with rows uses the domain; any rule on a table an earlier pending file creates."
  - "A file allows a class with a comment line C(-- berth:allow destructive reason=\"...\"),
    C(-- berth:allow lock-heavy reason=\"...\") or C(-- berth:allow unanalysable reason=\"...\"); the reason is
    required and recorded in the history table. O(refuse_classes) refuses a class even where a file allows it.
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
  - "When something is pending, the SQL the tool is about to apply is judged first with the same analysis,
    O(policy), allowances and O(refuse_classes): the files matching O(sql_files) that O(image) carries and
    O(previous_image) did not (read with C(docker create) and C(docker cp), never run), and the output of
    O(sql_command). A refusal names the file inside the image (or the command) and the line; the tool does not run.
    The tool's sessions get O(lock_timeout) and O(statement_timeout) through C(PGOPTIONS) (O(tool_pgoptions))."
  - When something is pending and O(backup=true), a custom-format C(pg_dump) is written first, mode 0600,
    named with the database, the time and the versions about to be applied. A failed backup aborts the run.
    pg_dump gets the connection options as C(PG*) variables (never the password on a command line), so it connects
    like the module, with the same O(sslmode), O(sslrootcert), O(sslcert), O(sslkey) and O(sslcrl).
  - "pg_dump refuses a server newer than itself. With O(backup=true) and no O(backup_container), the module compares
    the host's C(pg_dump --version) with the server's C(server_version_num) right after connecting, in check mode too,
    and an older pg_dump fails the run before the lock and before anything is migrated or dumped, naming both major
    versions and the Debian package to install (C(postgresql-client-<server major>))."
  - "A database in a container on the target is reached through a port published on loopback
    (C(ports: [\"127.0.0.1:5432:5432\"]), then O(host=127.0.0.1)) or through its socket directory mounted on
    the host (C(volumes: [\"/run/berth/pg:/var/run/postgresql\"]), then O(host=/run/berth/pg));
    O(backup_container) runs C(pg_dump) inside the container instead of on the host."
author:
  - berth.stack maintainers (@berth-stack)
extends_documentation_fragment:
  - berth.stack.postgres
requirements:
  - psycopg (3) or psycopg2 on the target.
  - pglast on the controller (Mode 1, and Mode 2 with O(sql_files) or O(sql_command)).
  - pg_dump on the target at least as new as the server (backups without O(backup_container)), docker with the compose
    plugin (Mode 2).
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
        Destructive and unanalysable statements always need an allowance. Mode 2 judges the tool's SQL the same way.
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
  image:
    description:
      - The new image of O(service), whose SQL files O(sql_files) reads (Mode 2). Defaults to the image the compose
        file gives the service.
    type: str
  previous_image:
    description:
      - The running release's image of O(service) (a name or an image ID). Files it already carried with the same
        content are not linted again; without it every file matching O(sql_files) is (a first deploy).
    type: str
  sql_files:
    description:
      - Absolute globs inside O(image) of the SQL files the app's tool applies, for example
        V(/app/prisma/migrations/*/migration.sql) (prisma), V(/app/drizzle/*.sql) (drizzle) or
        V(/app/migrations/*.up.sql) (golang-migrate). C(*) stays within one directory, C(**) spans several.
      - Allowances are the same comment lines inside those files.
      - Each glob must match at least one file in O(image); one that matches none is refused before the tool
        runs, because the files it was meant to name would be applied unreviewed.
    type: list
    elements: str
    default: []
  sql_command:
    description:
      - Run like O(command) before it, this command prints the SQL the tool would apply without applying it, for
        example V([alembic, upgrade, head, --sql]); its output is linted, its BEGIN/COMMIT are the tool's own.
    type: list
    elements: str
    default: []
  tool_pgoptions:
    description:
      - Give the tool's container C(PGOPTIONS=-c lock_timeout=... -c statement_timeout=...) from O(lock_timeout) and
        O(statement_timeout). libpq reads it (psql; psycopg2 and psycopg 3, so alembic and Django); Prisma's engine
        does not, and drivers with their own protocol code (node-postgres, pgx, lib/pq, asyncpg, postgres.js) may
        not, so set the timeouts in their configuration.
    type: bool
    default: true
  tool_sql:
    description:
      - The analysis of the SQL the tool will apply, filled in by the action plugin from O(sql_files) and
        O(sql_command). Do not set it yourself.
    type: list
    elements: dict
  collect_tool_sql:
    description:
      - Set by the action plugin for its first pass, which only reads the SQL the tool would apply. Do not set it.
    type: bool
    default: false
  refuse_classes:
    description:
      - Classes refused even where a file allows them, in both modes. Set per inventory, for example
        V([destructive]) in production, so that "never DROP in production" is a setting.
    type: list
    elements: str
    choices: [destructive, lock-heavy, unanalysable]
    default: []
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
  lock_dir:
    description:
      - A deploy lock directory the caller holds (the P(berth.stack.compose_app#role) role's C(deploy.lock)).
      - While the module runs (its backup and migrations can take minutes), it writes C(<lock_dir>/heartbeat)
        once a second for as long as the controller is there, so the deploy does not look dead to
        C(playbooks/unlock.yml). Not in check mode. Unset, no lock is touched.
    type: path
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

- name: Apply them to a managed PostgreSQL over TLS, verifying its certificate and name; dump with the host's pg_dump
  berth.stack.safe_migration:
    directory: migrations/
    host: shop.abc123.eu-west-1.rds.amazonaws.com
    database: shop
    user: shop_owner
    password: "{{ vault_shop_db_password }}"
    sslmode: verify-full
    sslrootcert: /etc/berth/shop/rds-ca.pem

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
    # Lint the migration files release 42 adds before prisma applies them; never DROP in production.
    image: registry.example.com/shop/api:42
    previous_image: registry.example.com/shop/api:41
    sql_files: [/app/prisma/migrations/*/migration.sql]
    refuse_classes: [destructive]
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
    - Analysis findings for pending files (Mode 2, for the SQL the tool would apply), each with file, line, rule,
      class, why, alternative and verdict (allowed, warned or refused); C(refused_by) when O(refuse_classes) refused it.
  returned: Mode 1; Mode 2 with O(sql_files) or O(sql_command) when something is pending
  type: list
  elements: dict
lifted:
  description:
    - Findings the target database cleared, with verdict V(lifted) and C(lifted_because), the reason, for example
      that raising a varchar limit from 20 to 200 needs no rewrite and no scan.
  returned: when findings were judged
  type: list
  elements: dict
reviewed:
  description: The SQL sources judged before the tool ran (paths inside the image, C(output of <sql_command>)).
  returned: Mode 2 with O(sql_files) or O(sql_command) when something is pending
  type: list
  elements: str
tool_sql_collected:
  description: The action plugin's first pass only, the SQL read for review (source and text).
  returned: with O(collect_tool_sql)
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
      INVALID index left by a failed concurrent build, or of the C(_ccnew)/C(_ccold) copies a failed
      C(REINDEX ... CONCURRENTLY) left, dropped before it runs again.
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
import json
import os
import socket
import subprocess
import uuid

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.berth.stack.plugins.module_utils import _host_side as host_side
from ansible_collections.berth.stack.plugins.module_utils import _migration_image as image_sql
from ansible_collections.berth.stack.plugins.module_utils import _migrations as mig
from ansible_collections.berth.stack.plugins.module_utils import _postgres as pg

REFUSABLE_CLASSES = ("destructive", "lock-heavy", "unanalysable")


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
        "image": {"type": "str"},
        "previous_image": {"type": "str"},
        "sql_files": {"type": "list", "elements": "str", "default": []},
        "sql_command": {"type": "list", "elements": "str", "default": []},
        "tool_pgoptions": {"type": "bool", "default": True},
        "tool_sql": {"type": "list", "elements": "dict"},
        "collect_tool_sql": {"type": "bool", "default": False},
        "refuse_classes": {"type": "list", "elements": "str", "default": [], "choices": list(REFUSABLE_CLASSES)},
        "backup": {"type": "bool", "default": True},
        "backup_dir": {"type": "path", "default": "/var/backups/berth/migrations"},
        "backup_container": {"type": "str"},
        "backup_timeout": {"type": "int", "default": 3600},
        "lock_dir": {"type": "path"},
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
    if params["directory"] and (params["sql_files"] or params["sql_command"]):
        errors.append("sql_files, sql_command: only with command (Mode 2); Mode 1 lints its directory")
    errors += image_sql.pattern_errors("sql_files", params["sql_files"])
    reviewing = params["sql_files"] or params["sql_command"]
    if reviewing and params["tool_sql"] is None and not params["collect_tool_sql"]:
        errors.append(
            "tool_sql: missing; with sql_files or sql_command safe_migration must run through its action plugin"
        )
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


def review(module, connection, sources: list, result: dict, refusal: str) -> None:
    """Judge the findings on this database: refuse (naming file, line, rule), warn, and list lifted rules."""
    params = module.params
    same_session = params["command"] is None
    refused, findings, lifted = mig.judge(sources, params["policy"], connection, params["refuse_classes"], same_session)
    result.update(findings=findings, lifted=lifted)
    if refused:
        raise mig.MigrationError(
            f"{len(refused)} finding(s) refused, {refusal}:\n"
            + "\n".join(mig.describe_finding(finding) for finding in refused)
        )
    for finding in findings:
        if finding["verdict"] == "warned":
            module.warn(mig.describe_finding(finding))


def run_versioned(module, connection, keywords: dict, result: dict) -> None:
    params = module.params
    schema, table = params["history_schema"], params["history_table"]
    history = mig.read_history(connection, schema, table)
    pending, applied = mig.plan(params["migrations"], history, params["out_of_order"])
    result.update(
        applied=applied,
        pending=[{key: item[key] for key in ("version", "file", "description", "transactional")} for item in pending],
    )
    review(module, connection, pending, result, "nothing was changed")
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
    environment = []
    if params["tool_pgoptions"]:
        # libpq clients in the container (psql, psycopg behind alembic or Django) read PGOPTIONS.
        timeouts = {option: params[option].strip().replace(" ", "") for option in ("lock_timeout", "statement_timeout")}
        pgoptions = " ".join(f"-c {option}={value}" for option, value in timeouts.items())
        environment = ["--env", f"PGOPTIONS={pgoptions}"]
    full = [*compose, "run", "--rm", "--no-deps", "-T", *environment, "--name", name, params["service"], *argv]
    try:
        completed = subprocess.run(full, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as error:
        subprocess.run([docker, "rm", "--force", name], capture_output=True, check=False)
        raise mig.MigrationError(
            f"{' '.join(argv)} ran longer than {timeout} s (command_timeout); removed its container {name}"
        ) from error
    return completed.returncode, completed.stdout, completed.stderr


def service_image(module) -> str:
    """The image of O(service) in the release's compose file, unless O(image) names it."""
    params = module.params
    if params["image"]:
        return params["image"]
    docker = module.get_bin_path("docker", required=True)
    compose = [docker, "compose", "--file", params["compose_file"]]
    if params["project_name"]:
        compose += ["--project-name", params["project_name"]]
    completed = subprocess.run([*compose, "config", "--format", "json"], capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise mig.MigrationError(f"compose_file: {params['compose_file']}: {completed.stderr.strip()}")
    image = (json.loads(completed.stdout).get("services", {}).get(params["service"]) or {}).get("image")
    if not image:
        raise mig.MigrationError(f"service: {params['service']} has no image in {params['compose_file']}; set image")
    return image


def collect_tool_sql(module) -> list:
    """The SQL the app's tool is about to apply: new files of the new image, and what sql_command prints."""
    params = module.params
    collected = []
    if params["sql_files"]:
        docker = module.get_bin_path("docker", required=True)
        try:
            collected += image_sql.new_sql_files(
                docker, service_image(module), params["previous_image"], params["sql_files"]
            )
        except image_sql.ImageError as error:
            raise mig.MigrationError(f"sql_files: {error}") from error
    if params["sql_command"]:
        rc, stdout, stderr = compose_run(module, params["sql_command"], params["command_timeout"])
        if rc != 0:
            raise mig.MigrationError(
                f"sql_command {' '.join(params['sql_command'])} exited {rc}: {stderr.strip() or stdout.strip()}"
            )
        collected.append({"source": f"output of {' '.join(params['sql_command'])}", "text": stdout})
    return collected


def run_command_mode(module, connection, keywords: dict, result: dict) -> None:
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
    if params["tool_sql"] is not None:
        result["reviewed"] = [item["file"] for item in params["tool_sql"]]
        review(module, connection, params["tool_sql"], result, f"{' '.join(params['command'])} did not run")
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


def check_dump_client(module, connection) -> None:
    """Refuse a host pg_dump older than the server now, not when something is pending and the dump fails."""
    params = module.params
    if not params["backup"] or params["backup_container"]:
        return
    pg_dump = module.get_bin_path("pg_dump", required=True)
    rc, stdout, stderr = module.run_command([pg_dump, "--version"])
    if rc != 0:
        raise mig.MigrationError(f"backup: {pg_dump} --version exited {rc}: {stderr.strip() or stdout.strip()}")
    try:
        client = pg.client_major(stdout)
    except ValueError as error:
        raise mig.MigrationError(f"backup: {pg_dump} --version: {error}") from error
    too_old = pg.pg_dump_too_old(client, pg.server_major(connection))
    if too_old:
        raise mig.MigrationError(f"backup: {too_old} (or set backup_container); nothing was migrated")


def migrate(module, connection, key, mode, keywords, result):
    """Check the backup's pg_dump, take the advisory lock (not in check mode), then run the mode's migrations."""
    check_dump_client(module, connection)
    if not module.check_mode:
        waited = mig.acquire_lock(connection, key, module.params["lock_wait_timeout"])
        result["lock_wait_seconds"] = round(waited, 3)
    if mode == "sql":
        run_versioned(module, connection, keywords, result)
    else:
        run_command_mode(module, connection, keywords, result)


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(),
        mutually_exclusive=[("directory", "command")],
        required_one_of=[("directory", "command")],
        required_by={"command": ("check_command", "compose_file", "service")},
        supports_check_mode=True,
    )
    pg.require_driver(module)
    keywords = pg.conninfo(module.params)
    errors = parameter_errors(module.params) + pg.file_errors(keywords)
    if errors:
        module.fail_json(msg="; ".join(errors))
    mode = "sql" if module.params["directory"] else "command"
    if module.params["collect_tool_sql"]:
        # The action plugin's first pass: read what the tool will apply; no database, no lock.
        try:
            module.exit_json(changed=False, mode=mode, tool_sql_collected=collect_tool_sql(module))
        except mig.MigrationError as error:
            module.fail_json(msg=str(error), mode=mode)
    result = {"changed": False, "mode": mode, "backup": {}, "queries": [], "migrations": [], "retries": []}
    try:
        connection = pg.connect(keywords, f"berth.safe_migration@{socket.gethostname()}")
    except pg.DatabaseError as error:
        module.fail_json(msg=f"cannot connect to {pg.describe(keywords)}: {pg.server_message(error)}", **result)
    key = mig.advisory_lock_key(module.params["history_schema"], module.params["history_table"])
    try:
        with host_side.keep_heartbeat(None if module.check_mode else module.params["lock_dir"]):
            migrate(module, connection, key, mode, keywords, result)
    except mig.MigrationError as error:
        module.fail_json(msg=str(error), **result)
    except pg.DatabaseError as error:
        module.fail_json(msg=f"{pg.describe(keywords)}: {pg.server_message(error)}", **result)
    finally:
        connection.close()
    module.exit_json(**result)


if __name__ == "__main__":
    main()
