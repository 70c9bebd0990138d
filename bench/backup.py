"""Benchmark: the postgres_backup role's backup of a ~1 GB database against a bare pg_dump -Fc.

Starts a PostgreSQL container (berth/demo-postgres, built by `make prepare`) on this machine's
engine, generates a database of about --size-mb MB, then, side by side in one run:
  1. bare:  docker exec pg_dump --format=custom --compress=N > file
  2. role:  the role's own script (roles/postgres_backup/files/berth_pg_backup.py run) with the
            same compression: snapshot export, pg_dump --snapshot while the rows are counted in
            that snapshot, globals, rename, retention, metrics, and its verification by restore
            into a scratch container, timed on its own.
Prints both times, the ratio (goal: role backup <= 1.10 x bare), the sizes, the verification time,
and the load average, since other work on the machine shows in both times.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "roles" / "postgres_backup" / "files" / "berth_pg_backup.py"
IMAGE = "berth/demo-postgres:latest"
CONTAINER = "berth-bench-backup-pg"


def psql(sql: str) -> str:
    argv = [
        "docker",
        "exec",
        CONTAINER,
        "psql",
        "-X",
        "-At",
        "-v",
        "ON_ERROR_STOP=1",
        "-U",
        "bench",
        "-d",
        "bench",
        "-c",
        sql,
    ]
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


def start_database() -> None:
    subprocess.run(["docker", "rm", "-f", CONTAINER], capture_output=True, check=False)
    environment = ["-e", "POSTGRES_USER=bench", "-e", "POSTGRES_DB=bench", "-e", "POSTGRES_PASSWORD=bench-local-only"]
    subprocess.run(
        ["docker", "run", "-d", "--name", CONTAINER, "--label", "owner=berth-bench", *environment, IMAGE],
        check=True,
        capture_output=True,
    )
    for _attempt in range(120):
        if (
            subprocess.run(["docker", "exec", CONTAINER, "pg_isready", "-q", "-h", "127.0.0.1"], check=False).returncode
            == 0
        ):
            return
        time.sleep(0.5)
    raise SystemExit("the benchmark's PostgreSQL did not start in 60 s")


def generate(size_mb: int) -> int:
    # About 110 bytes per row on disk: text that compresses like real data (words, numbers, hashes).
    rows = size_mb * 1024 * 1024 // 110
    psql("CREATE TABLE customers (id int PRIMARY KEY, name text)")
    psql("INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 10000) g")
    psql("CREATE TABLE orders (id bigint, customer int, status text, note text, created timestamptz)")
    statuses = "(ARRAY['new','paid','shipped','returned'])[1 + g % 4]"
    note = "md5(g::text) || ' order note ' || (g % 977)"
    psql(
        f"INSERT INTO orders SELECT g, g % 10000, {statuses}, {note}, now() - g * interval '1 second' "  # noqa: S608 - rows is an int
        f"FROM generate_series(1, {int(rows)}) g"
    )
    psql("VACUUM ANALYZE")
    return rows


def bare_dump(target: Path, compression: int) -> float:
    started = time.monotonic()
    with target.open("wb") as output:
        argv = [
            "docker",
            "exec",
            CONTAINER,
            "pg_dump",
            "--format=custom",
            f"--compress={compression}",
            "-U",
            "bench",
            "-d",
            "bench",
        ]
        subprocess.run(argv, stdout=output, check=True)
    return time.monotonic() - started


def role_backup(work: Path, compression: int) -> dict:
    job = {
        "name": "bench", "database": "bench", "user": "bench", "password_file": "", "container": CONTAINER,
        "host": "", "port": 5432, "sslmode": "require", "ca_file": "", "dir": str(work / "backups"),
        "compression": compression, "retention": [1, 0, 0, 0], "verify_every": 1, "verify_image": "",
        "checks": ["SELECT count(*) > 0 FROM orders"], "age_recipients": [], "remote": "", "rclone_config": "",
        "migration_dumps_dir": "", "migration_keep_last": 1,
        "metrics_dir": str(work / "metrics"), "state_dir": str(work / "state"), "lock_dir": str(work),
    }  # fmt: skip
    config = work / "job.json"
    config.write_text(json.dumps(job))
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--config", str(config), "run", "bench"],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.monotonic() - started
    print("    " + run.stdout.strip().replace("\n", "\n    "), flush=True)
    if run.returncode != 0:
        raise SystemExit(f"the role's backup failed: {run.stdout}{run.stderr}")
    state = json.loads((work / "state" / "bench.json").read_text())
    dump = next((work / "backups" / "bench").glob("bench-*.dump"))
    return {
        "wall": wall,
        "verify": state["verify_seconds"],
        "backup": wall - state["verify_seconds"],
        "size": dump.stat().st_size,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--size-mb", type=int, default=1024, help="approximate size of the generated table data (default 1024)"
    )
    parser.add_argument(
        "--compression", type=int, default=6, help="pg_dump --compress level of both runs (default 6, the role's)"
    )
    args = parser.parse_args()
    start_database()
    try:
        started = time.monotonic()
        rows = generate(args.size_mb)
        size = int(psql("SELECT pg_database_size('bench')"))
        print(
            f"database: {size / 1e6:.0f} MB, {rows} rows, generated in {time.monotonic() - started:.0f} s", flush=True
        )
        psql("SELECT count(*) FROM orders")  # warm the cache for both runs alike
        with tempfile.TemporaryDirectory(prefix="berth-bench-backup-") as directory:
            work = Path(directory)
            load_before = os.getloadavg()[0]
            bare_seconds = bare_dump(work / "bare.dump", args.compression)
            bare_size = (work / "bare.dump").stat().st_size
            (work / "bare.dump").unlink()
            load_between = os.getloadavg()[0]
            role = role_backup(work, args.compression)
            load_after = os.getloadavg()[0]
        print(f"bare pg_dump -Fc -Z{args.compression}: {bare_seconds:7.1f} s  {bare_size / 1e6:7.1f} MB")
        print(f"role backup (no verify):  {role['backup']:7.1f} s  {role['size'] / 1e6:7.1f} MB")
        print(f"ratio role/bare:          {role['backup'] / bare_seconds:7.2f}  (goal <= 1.10)")
        print(f"verification by restore:  {role['verify']:7.1f} s  (role total {role['wall']:.1f} s)")
        # Other work on the machine shows in both times; the 1-minute load average says how much.
        print(f"load average (1 min):     {load_before:.2f} before, {load_between:.2f} between, {load_after:.2f} after")
    finally:
        subprocess.run(["docker", "rm", "-f", CONTAINER], capture_output=True, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
