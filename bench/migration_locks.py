"""bench/migration_locks: what an ALTER TABLE does to application queries while a long transaction runs.

A throwaway PostgreSQL cluster on 127.0.0.1 serves an `orders` table to several application clients
doing short reads and writes in bounded loops. A long transaction (a report) holds an ACCESS SHARE
lock on the table; meanwhile a migration needing ACCESS EXCLUSIVE (ALTER TABLE ... ADD COLUMN) is
applied (a) with plain psql and (b) with berth.stack.safe_migration (defaults: lock_timeout 1s,
retries with backoff). For each it prints the longest application query stall, how many queries
waited more than 1 s, and when the migration completed.

Run: .venv/bin/python bench/migration_locks.py   (or: make bench-migration-locks)
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / ".ansible" / "collections"))
sys.path.insert(0, str(REPO / "tests" / "unit" / "safe_migration"))

# The harness is importable only once the paths above are on sys.path.
from safe_migration_harness import (  # noqa: E402
    PASSWORD,
    Database,
    module_process,
    result_of,
    start_cluster,
    stop_cluster,
)

ALTER = "ALTER TABLE orders ADD COLUMN note text"
ROWS = 20_000


def prepare(database: Database) -> None:
    database.run("DROP TABLE IF EXISTS orders, berth_schema_history")
    database.run("CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL, amount int NOT NULL)")
    with database.connect(autocommit=True) as connection:
        connection.execute("INSERT INTO orders SELECT n, 'new', n %% 100 FROM generate_series(1, %s) n", (ROWS,))


def application_client(database: Database, stop_at: float, max_queries: int, samples: list) -> None:
    """Short reads and writes, each its own transaction, until stop_at or max_queries."""
    generator = random.Random()  # noqa: S311 - load generation, not cryptography
    with database.connect(autocommit=True, application_name="bench-app") as connection:
        for _query in range(max_queries):
            if time.monotonic() >= stop_at:
                break
            key = generator.randint(1, ROWS)
            started = time.monotonic()
            if generator.random() < 0.7:
                connection.execute("SELECT status, amount FROM orders WHERE id = %s", (key,)).fetchone()
            else:
                connection.execute("UPDATE orders SET amount = amount + 1 WHERE id = %s", (key,))
            samples.append((started, time.monotonic() - started))
            time.sleep(0.005)


def long_transaction(database: Database, hold: float, ended: dict) -> None:
    with database.connect(application_name="bench-report") as connection:
        connection.execute("SELECT count(*) FROM orders").fetchone()
        time.sleep(hold)
        connection.commit()
    ended["at"] = time.monotonic()


def migrate_with_psql(database: Database, workdir: Path) -> tuple[bool, str]:
    cluster = database.cluster
    connection = ["-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres", "-d", database.name]
    completed = subprocess.run(
        [str(cluster.bin / "psql"), *connection, "-v", "ON_ERROR_STOP=1", "-c", ALTER],
        env={**os.environ, "PGPASSWORD": PASSWORD},
        capture_output=True,
        text=True,
        check=False,
    )
    return completed.returncode == 0, completed.stderr.strip()


def migrate_with_safe_migration(database: Database, workdir: Path) -> tuple[bool, str]:
    directory = workdir / "migrations"
    directory.mkdir(exist_ok=True)
    (directory / "V1__order_note.sql").write_text(f"{ALTER};\n")
    result = result_of(module_process(database.params(directory=directory, lock_retries=10), workdir), timeout=120)
    detail = f"{len(result.get('retries', []))} lock-timeout retries"
    return not result.get("failed"), detail + (f": {result['msg']}" if "msg" in result else "")


def scenario(database: Database, workdir: Path, migrate, args) -> dict:
    prepare(database)
    samples: list = []
    ended: dict = {}
    begin = time.monotonic()
    stop_at = begin + args.duration
    clients = [
        threading.Thread(target=application_client, args=(database, stop_at, args.max_queries, samples))
        for _client in range(args.clients)
    ]
    for client in clients:
        client.start()
    time.sleep(1.0)
    report = threading.Thread(target=long_transaction, args=(database, args.hold, ended))
    report.start()
    time.sleep(1.0)
    migration_started = time.monotonic()
    ok, detail = migrate(database, workdir)
    migration_done = time.monotonic()
    report.join()
    for client in clients:
        client.join()
    stalls = [latency for _started, latency in samples]
    return {
        "queries": len(samples),
        "longest_stall": max(stalls),
        "over_1s": sum(1 for latency in stalls if latency > 1.0),
        "migration_ok": ok,
        "detail": detail,
        "completed_after": migration_done - migration_started,
        "after_report_end": migration_done - ended["at"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=6, help="application clients (default 6)")
    parser.add_argument("--hold", type=float, default=8.0, help="seconds the long transaction holds its lock")
    parser.add_argument("--duration", type=float, default=16.0, help="seconds of application load per run")
    parser.add_argument("--max-queries", type=int, default=20_000, help="upper bound of queries per client")
    args = parser.parse_args()

    cluster = start_cluster()
    try:
        with cluster.connect(autocommit=True) as connection:
            connection.execute("CREATE DATABASE bench")
        database = Database(cluster, "bench")
        with tempfile.TemporaryDirectory(prefix="berth-bench-") as workdir:
            results = {
                "plain psql": scenario(database, Path(workdir), migrate_with_psql, args),
                "safe_migration": scenario(database, Path(workdir), migrate_with_safe_migration, args),
            }
    finally:
        stop_cluster(cluster)

    print(
        f"bench/migration_locks: PostgreSQL {cluster.bin.parent.name}, {args.clients} clients on 127.0.0.1, "
        f"long transaction holds ACCESS SHARE on orders for {args.hold:g} s, migration: {ALTER}"
    )
    print(f"{'method':<16}{'queries':>9}{'longest stall':>15}{'waited > 1 s':>14}{'migration done':>16}  vs report end")
    for name, result in results.items():
        print(
            f"{name:<16}{result['queries']:>9}{result['longest_stall']:>14.2f}s{result['over_1s']:>14}"
            f"{result['completed_after']:>15.2f}s  {result['after_report_end']:+.2f} s"
            f"{'' if result['migration_ok'] else '  FAILED'}"
        )
    print(f"safe_migration: {results['safe_migration']['detail']}")
    return 0 if all(result["migration_ok"] for result in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
