# Copyright (c) berth.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""berth-pg-backup: one PostgreSQL backup job, as berth-pg-backup@<job>.service runs it.

  run JOB                      dump, verify by restore, encrypt, copy off-host, prune, write metrics
  verify JOB FILE              restore FILE (a plain dump) into a scratch container and check it
  list JOB                     the job's backups, newest first, as JSON lines
  restore JOB --target DB      restore the latest (or --backup NAME) into a NEW database, or --replace
  on-failure JOB               the OnFailure hook: run the configured command, call the configured URL

Each job is described by /etc/berth/postgres_backup/jobs/JOB.json (written by the role, mode 0600).
Secrets never appear on a command line: the password reaches pg_dump and docker exec through the
environment, read from a 0600 file.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, date, datetime, timedelta

CONFIG_DIR = "/etc/berth/postgres_backup"
STAMP = "%Y%m%dT%H%M%SZ"
NAME = re.compile(r"^(?P<job>[a-z0-9][a-z0-9_-]*)-(?P<stamp>\d{8}T\d{6}Z)\.dump(?P<age>\.age)?$")
EXIT_LOCKED = 75
# The scratch server has no network; this password only satisfies the image's entrypoint.
DOCKER_EXEC = ["docker", "exec", "-i"]
RESTORE_INTO_VERIFY = ["-U", "postgres", "--dbname", "verify"]
SCRATCH_ENV = [
    "-e",
    "POSTGRES_USER=postgres",
    "-e",
    "POSTGRES_DB=postgres",
    "-e",
    "POSTGRES_PASSWORD=scratch-unreachable",
]


class BackupError(Exception):
    """A failed step, with the command's own message."""


# ---------------------------------------------------------------- retention (pure)


def months_between(newer: date, older: date) -> int:
    return (newer.year - older.year) * 12 + newer.month - older.month


def gfs_keep(stamps: list[datetime], now: datetime, last: int, daily: int, weekly: int, monthly: int) -> set:
    """The stamps that grandfather-father-son retention keeps: the newest `last`, then the newest of
    each of the last `daily` days, `weekly` ISO weeks and `monthly` calendar months (now's included)."""
    ordered = sorted(stamps, reverse=True)
    keep = set(ordered[:last])
    today = now.date()
    this_monday = today - timedelta(days=today.weekday())
    seen_days, seen_weeks, seen_months = set(), set(), set()
    for stamp in ordered:
        day = stamp.date()
        monday = day - timedelta(days=day.weekday())
        month = (day.year, day.month)
        if 0 <= (today - day).days < daily and day not in seen_days:
            seen_days.add(day)
            keep.add(stamp)
        if 0 <= (this_monday - monday).days // 7 < weekly and monday not in seen_weeks:
            seen_weeks.add(monday)
            keep.add(stamp)
        if 0 <= months_between(today, day) < monthly and month not in seen_months:
            seen_months.add(month)
            keep.add(stamp)
    return keep


def counts_differ(expected: dict, restored: dict) -> list[str]:
    """Every table whose row count differs, or that exists on one side only, as 'table: a != b'."""
    problems = []
    for table in sorted(set(expected) | set(restored)):
        if expected.get(table) != restored.get(table):
            problems.append(
                f"{table}: source {expected.get(table, 'missing')} != restored {restored.get(table, 'missing')}"
            )
    return problems


# ---------------------------------------------------------------- helpers


def log(message: str) -> None:
    print(message, flush=True)


def now_utc() -> datetime:
    # A clock variable for tests of retention: set in the unit's environment, never by the role.
    faked = os.environ.get("BERTH_PG_BACKUP_NOW")
    if faked:
        return datetime.strptime(faked, STAMP).replace(tzinfo=UTC)
    return datetime.now(UTC)


def run(argv: list, what: str, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    if result.returncode != 0:
        raise BackupError(f"{what} failed ({argv[0]} exited {result.returncode}): {result.stderr.strip()}")
    return result


def load_job(name: str, config_path: str | None = None) -> dict:
    path = config_path or os.path.join(CONFIG_DIR, "jobs", f"{name}.json")
    with open(path, encoding="utf-8") as handle:
        job = json.load(handle)
    password_file = job.get("password_file")
    job["password"] = ""
    if password_file and os.path.exists(password_file):
        with open(password_file, encoding="utf-8") as handle:
            job["password"] = handle.read().rstrip("\n")
    return job


def libpq_env(job: dict) -> dict:
    environment = dict(os.environ)
    if job["password"]:
        environment["PGPASSWORD"] = job["password"]
    if job.get("host"):
        environment.update(
            PGHOST=job["host"], PGPORT=str(job.get("port", 5432)), PGSSLMODE=job.get("sslmode", "require")
        )
        if job.get("ca_file"):
            environment["PGSSLROOTCERT"] = job["ca_file"]
    return environment


def client(job: dict, tool: str, *args: str, interactive: bool = False) -> list:
    """argv for a PostgreSQL client tool: in the data service container, or on this host."""
    if job.get("container"):
        argv = ["docker", "exec"] + (["-i"] if interactive else [])
        if job["password"]:
            argv += ["-e", "PGPASSWORD"]
        return [*argv, job["container"], tool, "--username", job["user"], *args]
    return [tool, "--username", job["user"], "--no-password", *args]


def job_dir(job: dict) -> str:
    return os.path.join(job["dir"], job["name"])


def backups(job: dict) -> list[dict]:
    directory = job_dir(job)
    found = []
    for entry in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        match = NAME.match(entry)
        if match and match["job"] == job["name"]:
            stamp = datetime.strptime(match["stamp"], STAMP).replace(tzinfo=UTC)
            found.append(
                {"name": entry, "stamp": stamp, "path": os.path.join(directory, entry), "encrypted": bool(match["age"])}
            )
    return sorted(found, key=lambda item: item["stamp"], reverse=True)


def remove_set(directory: str, prefix: str) -> list[str]:
    """Remove the dump, its globals and its manifest (every file named PREFIX.*)."""
    removed = []
    for entry in os.listdir(directory):
        if entry.startswith(prefix + "."):
            os.unlink(os.path.join(directory, entry))
            removed.append(entry)
    return removed


# ---------------------------------------------------------------- snapshot, counts, dump


COUNT_QUERY = (
    "SELECT format('SELECT %L || '' '' || count(*) FROM %I.%I', n.nspname || '.' || c.relname, n.nspname, c.relname) "
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
    "AND n.nspname NOT LIKE 'pg_toast%' AND NOT c.relispartition ORDER BY 1 \\gexec\n"
)


def parse_counts(lines: list[str]) -> dict:
    counts = {}
    for line in lines:
        table, _sep, number = line.rpartition(" ")
        counts[table] = int(number)
    return counts


class Snapshot:
    """A REPEATABLE READ transaction that exports its snapshot and counts every table in it (while
    the dump that imports the snapshot runs); it stays open until that dump has finished."""

    def __init__(self, job: dict):
        argv = client(
            job, "psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "--dbname", job["database"], interactive=True
        )
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=libpq_env(job)
        )

    def ask(self, sql: str, marker: str = "berth-end") -> list[str]:
        self.process.stdin.write(sql + f"\\echo {marker}\n")
        self.process.stdin.flush()
        lines = []
        while True:
            line = self.process.stdout.readline()
            if not line:
                self.process.wait()
                raise BackupError(f"database session ended: {self.process.stderr.read().strip()}")
            if line.rstrip("\n") == marker:
                return lines
            lines.append(line.rstrip("\n"))

    def open(self) -> tuple[str, int]:
        self.ask("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;\n")
        # The first statement fixes the transaction's snapshot: the one exported, and the one the
        # counts below see.
        snapshot, version = self.ask("SELECT pg_export_snapshot();\nSHOW server_version_num;\n")
        return snapshot, int(version)

    def count(self) -> dict:
        return parse_counts(self.ask(COUNT_QUERY))

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write("COMMIT;\n")
                self.process.stdin.close()
            except BrokenPipeError:
                pass
            self.process.wait(timeout=60)


def check_client_version(job: dict, server_version: int) -> None:
    if job.get("container"):
        return
    output = run(["pg_dump", "--version"], "pg_dump --version").stdout
    client_major = int(re.search(r"\(PostgreSQL\) (\d+)", output).group(1))
    server_major = server_version // 10000
    if client_major < server_major:
        raise BackupError(
            f"pg_dump {client_major} on this host is older than the server ({server_major}): "
            f"install postgresql-client-{server_major} (postgres_backup_client_package)"
        )


def dump_and_count(job: dict, session: Snapshot, snapshot: str, target: str) -> dict:
    """pg_dump --snapshot into TARGET while the session that exported the snapshot counts the rows
    of every table in it: the counts are exact for the dump, and take none of the dump's time."""
    argv = client(job, "pg_dump", "--format=custom", f"--compress={job['compression']}", f"--snapshot={snapshot}")
    argv += ["--dbname", job["database"]]
    with open(target, "xb") as output, tempfile.TemporaryFile() as errors:
        dumping = subprocess.Popen(argv, stdout=output, stderr=errors, env=libpq_env(job))
        try:
            counts = session.count()
        except BaseException:
            dumping.kill()
            raise
        finally:
            returncode = dumping.wait()
        if returncode != 0:
            errors.seek(0)
            raise BackupError(f"pg_dump failed (exit {returncode}): {errors.read().decode(errors='replace').strip()}")
    return counts


def dump_globals(job: dict, target: str) -> None:
    argv = client(job, "pg_dumpall", "--globals-only")
    with open(target, "xb") as output:
        result = subprocess.run(argv, stdout=output, stderr=subprocess.PIPE, env=libpq_env(job), check=False)
    if result.returncode != 0:
        raise BackupError(f"pg_dumpall --globals-only failed: {result.stderr.decode(errors='replace').strip()}")


# ---------------------------------------------------------------- verification


def source_image(job: dict) -> str:
    if job.get("verify_image"):
        return job["verify_image"]
    return run(["docker", "inspect", "--format", "{{.Image}}", job["container"]], "docker inspect").stdout.strip()


def verify(job: dict, path: str, expected: dict, server_version: int | None) -> dict:
    """Restore PATH into a scratch container of the same major version, compare counts, run checks."""
    started = time.monotonic()
    scratch = f"berth-pg-verify-{job['name']}"
    subprocess.run(["docker", "rm", "-f", scratch], capture_output=True, check=False)
    labels = ["--network", "none", "--label", "owner=berth-pg-backup"]
    run(
        ["docker", "run", "-d", "--name", scratch, *labels, *SCRATCH_ENV, source_image(job)],
        "starting the scratch container",
    )
    try:
        for _attempt in range(120):
            ready = subprocess.run(
                ["docker", "exec", scratch, "pg_isready", "-q", "-h", "/var/run/postgresql"], check=False
            )
            if ready.returncode == 0:
                break
            time.sleep(0.5)
        else:
            raise BackupError("the scratch PostgreSQL did not become ready in 60 s")
        psql = ["docker", "exec", "-i", scratch, "psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-U", "postgres"]
        scratch_version = int(run([*psql, "-c", "SHOW server_version_num"], "scratch version").stdout.strip())
        if server_version and scratch_version // 10000 != server_version // 10000:
            raise BackupError(
                f"scratch image {source_image(job)} runs PostgreSQL {scratch_version // 10000}, "
                f"the source {server_version // 10000}: set verify_image to the same major version"
            )
        run([*psql, "-c", "CREATE DATABASE verify"], "creating the scratch database")
        with open(path, "rb") as dump_file:
            restored = subprocess.run(
                [
                    *DOCKER_EXEC,
                    scratch,
                    "pg_restore",
                    "--exit-on-error",
                    "--no-owner",
                    "--no-acl",
                    *RESTORE_INTO_VERIFY,
                ],
                stdin=dump_file,
                capture_output=True,
                check=False,
            )
        if restored.returncode != 0:
            raise BackupError(
                f"verification: pg_restore --exit-on-error failed: {restored.stderr.decode(errors='replace').strip()}"
            )
        counted = run(
            [*psql, "-d", "verify"], "counting rows in the restored copy", input=COUNT_QUERY
        ).stdout.splitlines()
        problems = counts_differ(expected, parse_counts(counted))
        if problems:
            raise BackupError("verification: row counts differ: " + "; ".join(problems))
        for check in job["checks"]:
            answer = run([*psql, "-d", "verify", "-c", check], f"check {check!r}").stdout.strip()
            if answer != "t":
                raise BackupError(f"verification: check {check!r} returned {answer!r}, not true")
    finally:
        subprocess.run(["docker", "rm", "-f", scratch], capture_output=True, check=False)
    seconds = round(time.monotonic() - started, 3)
    tables, rows, checks = len(expected), sum(expected.values()), len(job["checks"])
    log(f"verified by restore into {scratch}: {tables} tables, {rows} rows, {checks} checks, {seconds} s")
    return {"tables": len(expected), "rows": sum(expected.values()), "seconds": seconds}


# ---------------------------------------------------------------- encryption, off-host copy, pruning


def encrypt(job: dict, plain: str) -> str:
    sealed = plain + ".age"
    argv = ["age", "--encrypt", "--output", sealed]
    for recipient in job["age_recipients"]:
        argv += ["--recipient", recipient]
    run([*argv, plain], "age --encrypt")
    os.unlink(plain)
    return sealed


def rclone(job: dict, *args: str) -> subprocess.CompletedProcess:
    return run(["rclone", "--config", job["rclone_config"], *args], f"rclone {args[0]}")


def remote_dir(job: dict) -> str:
    return job["remote"].rstrip("/") + "/" + job["name"]


def prune_local(job: dict, now: datetime) -> list[str]:
    found = backups(job)
    keep = gfs_keep([item["stamp"] for item in found], now, *job["retention"])
    removed = []
    for item in found:
        if item["stamp"] not in keep:
            removed += remove_set(job_dir(job), f"{job['name']}-{item['stamp'].strftime(STAMP)}")
    return removed


def prune_remote(job: dict, now: datetime) -> list[str]:
    listing = rclone(job, "lsf", "--files-only", remote_dir(job)).stdout.split()
    stamps = {}
    for entry in listing:
        match = NAME.match(entry)
        if match and match["job"] == job["name"]:
            stamps[entry] = datetime.strptime(match["stamp"], STAMP).replace(tzinfo=UTC)
    keep = gfs_keep(list(stamps.values()), now, *job["retention"])
    removed = []
    for entry in listing:
        stamp = re.match(rf"^{re.escape(job['name'])}-(\d{{8}}T\d{{6}}Z)\.", entry)
        if stamp and stamp[1] in {s.strftime(STAMP) for s in stamps.values() if s not in keep}:
            rclone(job, "deletefile", f"{remote_dir(job)}/{entry}")
            removed.append(entry)
    return removed


def prune_migration_dumps(job: dict, now: datetime) -> list[str]:
    """safe_migration's pre-migration dumps (NAME-<local time>-before-<versions>.dump): same policy, own count."""
    directory = job.get("migration_dumps_dir")
    if not directory or not os.path.isdir(directory):
        return []
    dumps = {}
    for entry in os.listdir(directory):
        if entry.endswith(".dump"):
            path = os.path.join(directory, entry)
            dumps[path] = datetime.fromtimestamp(os.stat(path).st_mtime, UTC)
    retention = [job["migration_keep_last"], *job["retention"][1:]]
    keep = gfs_keep(list(dumps.values()), now, *retention)
    removed = []
    for path, stamp in dumps.items():
        if stamp not in keep:
            os.unlink(path)
            removed.append(os.path.basename(path))
    return removed


# ---------------------------------------------------------------- metrics


def state_path(job: dict) -> str:
    return os.path.join(job["state_dir"], f"{job['name']}.json")


def read_state(job: dict) -> dict:
    try:
        with open(state_path(job), encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return {
            "failures": 0,
            "runs": 0,
            "last_success": 0,
            "size": 0,
            "verified": 0,
            "duration": 0,
            "verify_seconds": 0,
        }


def write_atomically(path: str, text: str, mode: int) -> None:
    partial = path + ".partial"
    with open(partial, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(partial, mode)
    os.replace(partial, path)


def write_metrics(job: dict, state: dict, success: bool) -> None:
    label = f'job="{job["name"]}",database="{job["database"]}"'
    metrics = [
        ("last_success_timestamp_seconds", "gauge", "Unix time of the last successful backup.", state["last_success"]),
        ("last_run_timestamp_seconds", "gauge", "Unix time the last run ended.", state["last_run"]),
        ("last_run_success", "gauge", "1 when the last run succeeded, 0 when it failed.", int(success)),
        ("last_duration_seconds", "gauge", "Wall time of the last successful run.", state["duration"]),
        ("last_size_bytes", "gauge", "Size of the last successful backup as stored.", state["size"]),
        ("last_verified", "gauge", "1 when the last successful backup was verified by a restore.", state["verified"]),
        (
            "last_verify_duration_seconds",
            "gauge",
            "Wall time of the last verification by restore.",
            state["verify_seconds"],
        ),
        ("failures_total", "counter", "Failed runs since the job was created.", state["failures"]),
    ]
    lines = []
    for name, kind, text, value in metrics:
        lines += [
            f"# HELP berth_pg_backup_{name} {text}",
            f"# TYPE berth_pg_backup_{name} {kind}",
            f"berth_pg_backup_{name}{{{label}}} {value}",
        ]
    os.makedirs(job["metrics_dir"], exist_ok=True)
    write_atomically(
        os.path.join(job["metrics_dir"], f"berth_pg_backup_{job['name']}.prom"), "\n".join(lines) + "\n", 0o644
    )
    os.makedirs(job["state_dir"], mode=0o700, exist_ok=True)
    write_atomically(state_path(job), json.dumps(state), 0o600)


# ---------------------------------------------------------------- commands


def backup_once(job: dict, state: dict) -> dict:
    now = now_utc()
    stamp = now.strftime(STAMP)
    directory = job_dir(job)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    base = os.path.join(directory, f"{job['name']}-{stamp}")
    partials = [
        f"{base}.dump.partial",
        f"{base}.globals.sql.partial",
        f"{base}.dump.partial.age",
        f"{base}.globals.sql.partial.age",
    ]
    started = time.monotonic()
    try:
        session = Snapshot(job)
        try:
            snapshot, server_version = session.open()
            check_client_version(job, server_version)
            counts = dump_and_count(job, session, snapshot, partials[0])
        finally:
            session.close()
        log(f"dumped {job['database']} at snapshot {snapshot}: {len(counts)} tables, {sum(counts.values())} rows")
        if job.get("container"):
            dump_globals(job, partials[1])
        number = state["runs"] + 1
        verified = None
        if job["verify_every"] and number % job["verify_every"] == 0:
            verified = verify(job, partials[0], counts, server_version)
        stored = partials[0]
        if job["age_recipients"]:
            stored = encrypt(job, partials[0])
            if os.path.exists(partials[1]):
                encrypt(job, partials[1])
                os.replace(partials[1] + ".age", f"{base}.globals.sql.age")
        final = base + (".dump.age" if job["age_recipients"] else ".dump")
        if os.path.exists(partials[1]):
            os.replace(partials[1], f"{base}.globals.sql")
        manifest = {
            "job": job["name"],
            "database": job["database"],
            "taken_at": stamp,
            "server_version_num": server_version,
            "counts": counts,
            "verified": verified,
            "encrypted": bool(job["age_recipients"]),
        }
        write_atomically(f"{base}.json", json.dumps(manifest, indent=1) + "\n", 0o600)
        os.replace(stored, final)
    except BaseException:
        for partial in partials:
            if os.path.exists(partial):
                os.unlink(partial)
        raise
    size = os.stat(final).st_size
    log(f"stored {final} ({size} bytes)")
    if job.get("remote"):
        for entry in sorted(os.listdir(directory)):
            if entry.startswith(f"{job['name']}-{stamp}.") and not entry.endswith(".partial"):
                rclone(job, "copyto", os.path.join(directory, entry), f"{remote_dir(job)}/{entry}")
        log(f"copied off-host to {remote_dir(job)}")
    removed = prune_local(job, now)
    if job.get("remote"):
        removed += [f"remote:{entry}" for entry in prune_remote(job, now)]
    removed += [f"migration:{entry}" for entry in prune_migration_dumps(job, now)]
    log(f"retention removed {len(removed)} files: {' '.join(removed) if removed else '-'}")
    return {
        "runs": number,
        "size": size,
        "verified": int(verified is not None),
        "verify_seconds": verified["seconds"] if verified else 0,
        "duration": round(time.monotonic() - started, 3),
    }


def command_run(job: dict) -> int:
    os.makedirs(job["lock_dir"], exist_ok=True)
    with open(os.path.join(job["lock_dir"], f"berth-pg-backup-{job['name']}.lock"), "w", encoding="utf-8") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another run of {job['name']} holds the lock: not starting a second one")
            return EXIT_LOCKED
        state = read_state(job)
        try:
            outcome = backup_once(job, state)
        except (BackupError, OSError, subprocess.SubprocessError, ValueError) as error:
            state.update(failures=state["failures"] + 1, last_run=int(time.time()))
            write_metrics(job, state, success=False)
            log(f"backup of {job['name']} FAILED: {error}")
            return 1
        state.update(outcome, last_success=int(time.time()), last_run=int(time.time()))
        write_metrics(job, state, success=True)
        return 0


def command_verify(job: dict, path: str) -> int:
    manifest_path = re.sub(r"\.dump(\.age)?$", ".json", path)
    expected = {}
    if os.path.exists(manifest_path):
        with open(manifest_path, encoding="utf-8") as handle:
            expected = json.load(handle)["counts"]
    else:
        log(f"no manifest {manifest_path}: checking that it restores, without row counts")
    try:
        verify(job, path, expected, None)
    except (BackupError, OSError) as error:
        log(f"{path} FAILED verification: {error}")
        return 1
    return 0


def command_list(job: dict) -> int:
    for item in backups(job):
        print(
            json.dumps(
                {"name": item["name"], "taken_at": item["stamp"].strftime(STAMP), "size": os.stat(item["path"]).st_size}
            )
        )
    return 0


def command_restore(job: dict, name: str, target: str, identity: str, replace: bool) -> int:
    found = [item for item in backups(job) if not name or item["name"] == name]
    if not found:
        raise BackupError(f"no backup {name or '(any)'} of job {job['name']} in {job_dir(job)}")
    chosen = found[0]
    source = None
    if chosen["encrypted"]:
        if not identity:
            raise BackupError(
                f"{chosen['name']} is encrypted: give the age identity (postgres_backup_restore_identity_file)"
            )
        source = subprocess.Popen(["age", "--decrypt", "--identity", identity, chosen["path"]], stdout=subprocess.PIPE)
        stdin = source.stdout
    else:
        stdin = open(chosen["path"], "rb")  # noqa: SIM115 - handed to the child process below
    database = job["database"] if replace else target
    if not replace:
        run(client(job, "createdb", "--", target), f"createdb {target}", env=libpq_env(job))
    options = ["--clean", "--if-exists", "--single-transaction"] if replace else ["--no-owner"]
    argv = client(job, "pg_restore", "--exit-on-error", *options, "--dbname", database, interactive=True)
    restored = subprocess.run(argv, stdin=stdin, capture_output=True, env=libpq_env(job), check=False)
    stdin.close()
    if source and source.wait() != 0:
        raise BackupError(f"age --decrypt of {chosen['name']} failed")
    if restored.returncode != 0:
        raise BackupError(f"pg_restore into {database} failed: {restored.stderr.decode(errors='replace').strip()}")
    print(json.dumps({"backup": chosen["name"], "database": database, "replaced": replace}))
    return 0


def command_on_failure(job_name: str) -> int:
    with open(os.path.join(CONFIG_DIR, "on_failure.json"), encoding="utf-8") as handle:
        hook = json.load(handle)
    log(f"backup job {job_name} failed: see journalctl -u berth-pg-backup@{job_name}.service")
    status = 0
    if hook.get("command"):
        status = subprocess.run(
            hook["command"], env={**os.environ, "BERTH_PG_BACKUP_JOB": job_name}, check=False
        ).returncode
    if hook.get("url"):
        body = json.dumps({"job": job_name, "host": os.uname().nodename, "status": "failed"}).encode()
        headers = {"Content-Type": "application/json"}
        request = urllib.request.Request(hook["url"], data=body, headers=headers)  # noqa: S310
        # The operator's own http(s) URL; preflight refuses any other scheme.
        with urllib.request.urlopen(request, timeout=30):  # noqa: S310
            pass
    return status


def main() -> int:
    parser = argparse.ArgumentParser(prog="berth-pg-backup")
    parser.add_argument("--config", help="job file (default: the role's)")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in ("run", "list", "on-failure"):
        commands.add_parser(command).add_argument("job")
    verify_parser = commands.add_parser("verify")
    verify_parser.add_argument("job")
    verify_parser.add_argument("file")
    restore_parser = commands.add_parser("restore")
    restore_parser.add_argument("job")
    restore_parser.add_argument("--backup", default="")
    restore_parser.add_argument("--target", default="")
    restore_parser.add_argument("--identity", default="")
    restore_parser.add_argument("--replace", action="store_true")
    args = parser.parse_args()
    if args.command == "on-failure":
        return command_on_failure(args.job)
    job = load_job(args.job, args.config)
    try:
        if args.command == "run":
            return command_run(job)
        if args.command == "verify":
            return command_verify(job, args.file)
        if args.command == "list":
            return command_list(job)
        if not args.replace and not args.target:
            raise BackupError("restore needs --target NEW_DATABASE, or --replace")
        return command_restore(job, args.backup, args.target, args.identity, args.replace)
    except BackupError as error:
        log(f"{args.command} {args.job} FAILED: {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
