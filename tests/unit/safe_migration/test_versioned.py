"""Mode 1 against a real PostgreSQL cluster: history, drift, order, locks, transactions, check mode, backups."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import threading
import time

from safe_migration_harness import (
    ACCOUNTS,
    MIGRATION_WAITS_FOR_A_LOCK,
    PASSWORD,
    RUNNERS_CONNECTED,
    columns,
    hold_lock_on_accounts,
    module_process,
    release_after_a_lock_timeout,
    result_of,
    wait_for,
)


def test_apply_then_reapply_is_unchanged(database, migrations, run_module):
    migrations("V0001__accounts.sql", ACCOUNTS)
    migrations("V0002__add_status.sql", "ALTER TABLE accounts ADD COLUMN status text DEFAULT 'active';\n")

    first = run_module(database.params(directory=migrations.directory, applied_by="ci@test"))
    assert not first.get("failed"), first["msg"] if first.get("failed") else ""
    assert first["changed"] is True
    assert [item["version"] for item in first["pending"]] == ["0001", "0002"]
    assert [item["file"] for item in first["migrations"]] == ["V0001__accounts.sql", "V0002__add_status.sql"]
    assert all(item["duration_ms"] >= 0 and item["attempts"] == 1 for item in first["migrations"])
    assert "ALTER TABLE accounts ADD COLUMN status text DEFAULT 'active'" in first["queries"]
    assert "SET lock_timeout = '1s'" in first["queries"]
    assert columns(database, "accounts") == ["id", "email", "status"]
    history = database.history()
    assert [(row[0], row[1], row[4]) for row in history] == [
        ("0001", "accounts", "ci@test"),
        ("0002", "add status", "ci@test"),
    ]
    assert all(len(row[2]) == 64 for row in history)

    second = run_module(database.params(directory=migrations.directory))
    assert second["changed"] is False
    assert second["pending"] == []
    assert second["applied"] == ["0001", "0002"]
    assert database.history() == history


def test_checksum_drift_stops_everything(database, migrations, run_module):
    path = migrations("V1__accounts.sql", ACCOUNTS)
    assert run_module(database.params(directory=migrations.directory))["changed"] is True
    applied_checksum = database.history()[0][2]
    path.write_text(ACCOUNTS + "-- edited after it was applied\n")
    migrations("V2__status.sql", "ALTER TABLE accounts ADD COLUMN status text;\n")

    result = run_module(database.params(directory=migrations.directory))

    assert result["failed"] is True
    assert "checksum drift: V1__accounts.sql" in result["msg"]
    assert f"applied with checksum {applied_checksum}" in result["msg"]
    assert f"now has checksum {hashlib.sha256(path.read_bytes()).hexdigest()}" in result["msg"]
    assert "status" not in columns(database, "accounts")


def test_out_of_order_is_refused_unless_allowed(database, migrations, run_module):
    migrations("V1__accounts.sql", ACCOUNTS)
    migrations("V3__status.sql", "ALTER TABLE accounts ADD COLUMN status text;\n")
    run_module(database.params(directory=migrations.directory))
    migrations("V2__plan.sql", "ALTER TABLE accounts ADD COLUMN plan text;\n")

    refused = run_module(database.params(directory=migrations.directory))
    assert refused["failed"] is True
    assert "out-of-order migration: V2__plan.sql" in refused["msg"]
    assert "out_of_order=true" in refused["msg"]
    assert "plan" not in columns(database, "accounts")

    allowed = run_module(database.params(directory=migrations.directory, out_of_order=True))
    assert allowed["changed"] is True
    assert [row[0] for row in database.history()] == ["1", "2", "3"]


def test_second_runner_waits_then_fails_naming_the_holder(database, migrations, tmp_path, run_module):
    # The first runner's migration waits at a gate the test holds (advisory lock 42), so the others
    # meet its runner lock however slowly their processes start.
    migrations("V1__slow.sql", "SELECT pg_advisory_xact_lock(42);\n")
    params = database.params(directory=migrations.directory)
    with database.connect(autocommit=True) as gate:
        gate.execute("SELECT pg_advisory_lock(42)")
        slow = module_process(dict(params, lock_timeout="60s"), tmp_path)
        wait_for(database, MIGRATION_WAITS_FOR_A_LOCK)
        patient_process = module_process(dict(params, lock_wait_timeout=30), tmp_path)

        impatient = run_module(dict(params, lock_wait_timeout=0.5))
        assert impatient["failed"] is True
        assert "another migration holds the advisory lock" in impatient["msg"]
        assert "berth.safe_migration@" in impatient["msg"]
        assert "pid " in impatient["msg"]

        wait_for(database, RUNNERS_CONNECTED.format(count=2))
        time.sleep(0.5)
        gate.execute("SELECT pg_advisory_unlock(42)")
    patient = result_of(patient_process)
    assert result_of(slow)["changed"] is True
    assert patient["changed"] is False
    assert patient["lock_wait_seconds"] > 0.3
    assert len(database.history()) == 1


def test_lock_timeout_retries_until_the_long_transaction_ends(database, migrations, run_module):
    migrations("V1__accounts.sql", ACCOUNTS)
    run_module(database.params(directory=migrations.directory))
    migrations("V2__status.sql", "ALTER TABLE accounts ADD COLUMN status text;\n")
    release = threading.Event()
    holder = hold_lock_on_accounts(database, release)
    release_after_a_lock_timeout(database, release, lock_timeout=0.2)

    result = run_module(
        database.params(directory=migrations.directory, lock_timeout="200ms", retry_delay=0.3, lock_retries=8)
    )
    holder.join()

    assert result["changed"] is True, result.get("msg")
    assert result["retries"], "the migration should have hit lock_timeout at least once"
    assert "a lock on accounts held as AccessShareLock" in result["retries"][0]["waited_for"]
    assert "long-report" in result["retries"][0]["waited_for"]
    assert result["migrations"][0]["attempts"] == len(result["retries"]) + 1
    assert "status" in columns(database, "accounts")


def test_lock_timeout_gives_up_cleanly_when_the_transaction_never_ends(database, migrations, run_module):
    migrations("V1__accounts.sql", ACCOUNTS)
    run_module(database.params(directory=migrations.directory))
    migrations(
        "V2__status.sql", "ALTER TABLE accounts ADD COLUMN note text;\nALTER TABLE accounts ADD COLUMN status text;\n"
    )
    release = threading.Event()
    holder = hold_lock_on_accounts(database, release)

    result = run_module(
        database.params(directory=migrations.directory, lock_timeout="100ms", retry_delay=0.1, lock_retries=2)
    )
    release.set()

    assert result["failed"] is True
    assert "V2__status.sql line 1: gave up after 3 attempts" in result["msg"]
    assert "lock_timeout=100ms" in result["msg"]
    assert "a lock on accounts held as AccessShareLock" in result["msg"]
    assert len(result["retries"]) == 2
    assert columns(database, "accounts") == ["id", "email"]
    assert [row[0] for row in database.history()] == ["1"]
    holder.join()


def test_a_file_failing_half_way_rolls_back_completely(database, migrations, run_module):
    migrations("V1__accounts.sql", ACCOUNTS)
    migrations(
        "V2__broken.sql",
        "CREATE TABLE invoices (id int);\nINSERT INTO invoices VALUES (1);\n"
        "ALTER TABLE accounts ADD COLUMN status text;\nSELECT 1 / 0;\n",
    )

    result = run_module(database.params(directory=migrations.directory))

    assert result["failed"] is True
    assert "V2__broken.sql line 4: statement 'SELECT 1 / 0' failed: division by zero" in result["msg"]
    assert database.rows("SELECT to_regclass('invoices')")[0][0] is None
    assert columns(database, "accounts") == ["id", "email"]
    assert [row[0] for row in database.history()] == ["1"]
    assert [item["file"] for item in result["migrations"]] == ["V1__accounts.sql"]


def test_non_transactional_file_runs_statement_by_statement(database, migrations, run_module):
    migrations("V1__accounts.sql", ACCOUNTS)
    migrations(
        "V2__email_index.sql",
        "-- berth:no-transaction\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS accounts_email ON accounts (email);\n"
        "VACUUM (ANALYZE) accounts;\n",
    )

    result = run_module(database.params(directory=migrations.directory))

    assert result["changed"] is True, result.get("msg")
    assert result["migrations"][1]["transactional"] is False
    assert database.rows("SELECT indisvalid FROM pg_index WHERE indexrelid = 'accounts_email'::regclass") == [(True,)]
    assert [row[0] for row in database.history()] == ["1", "2"]


def test_a_concurrent_index_build_that_timed_out_is_rebuilt_not_kept_invalid(database, migrations, run_module):
    migrations("V1__accounts.sql", ACCOUNTS)
    run_module(database.params(directory=migrations.directory))
    migrations(
        "V2__email_index.sql",
        "-- berth:no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS accounts_email ON accounts (email);\n",
    )
    # An open write transaction: CREATE INDEX CONCURRENTLY registers the index, then times out waiting
    # for it, leaving an INVALID index that a plain retry with IF NOT EXISTS would silently keep.
    release = threading.Event()
    holder = hold_lock_on_accounts(database, release, "INSERT INTO accounts (email) VALUES ('late@example.test')")
    release_after_a_lock_timeout(database, release, lock_timeout=0.2)

    result = run_module(
        database.params(directory=migrations.directory, lock_timeout="200ms", retry_delay=0.3, lock_retries=8)
    )
    holder.join()

    assert result["changed"] is True, result.get("msg")
    assert result["retries"], "the index build should have hit lock_timeout at least once"
    assert 'DROP INDEX CONCURRENTLY IF EXISTS "accounts_email"' in result["queries"]
    assert database.rows("SELECT indisvalid FROM pg_index WHERE indexrelid = 'accounts_email'::regclass") == [(True,)]
    assert [row[0] for row in database.history()] == ["1", "2"]


def test_set_not_null_runs_once_a_validated_check_proves_it(database, migrations, run_module):
    migrations("V1__tables.sql", ACCOUNTS + "CREATE TABLE tags (label text);\nINSERT INTO tags VALUES ('a');\n")
    migrations(
        "V2__email_check.sql", "ALTER TABLE accounts ADD CONSTRAINT email_nn CHECK (email IS NOT NULL) NOT VALID;\n"
    )
    migrations("V3__email_validate.sql", "ALTER TABLE accounts VALIDATE CONSTRAINT email_nn;\n")
    assert run_module(database.params(directory=migrations.directory))["changed"] is True

    unproven = migrations("V4__label_required.sql", "ALTER TABLE tags ALTER COLUMN label SET NOT NULL;\n")
    refused = run_module(database.params(directory=migrations.directory))
    assert refused["failed"] is True
    assert "V4__label_required.sql:1: lock-heavy [set-not-null]" in refused["msg"]
    unproven.unlink()

    migrations("V4__email_required.sql", "ALTER TABLE accounts ALTER COLUMN email SET NOT NULL;\n")
    applied = run_module(database.params(directory=migrations.directory))
    assert applied["changed"] is True, applied.get("msg")
    assert applied["findings"] == []
    assert database.rows(
        "SELECT is_nullable FROM information_schema.columns WHERE table_name = 'accounts' AND column_name = 'email'"
    ) == [("NO",)]


def test_refused_findings_change_nothing_and_allowances_are_recorded(database, migrations, run_module):
    migrations("V1__accounts.sql", ACCOUNTS)
    run_module(database.params(directory=migrations.directory))
    migrations("V2__index.sql", "CREATE INDEX accounts_email ON accounts (email);\n")
    migrations("V3__drop.sql", "ALTER TABLE accounts DROP COLUMN email;\n")

    refused = run_module(database.params(directory=migrations.directory))
    assert refused["failed"] is True
    assert "2 finding(s) refused, nothing was changed" in refused["msg"]
    assert "V2__index.sql:1: lock-heavy [create-index-non-concurrent]" in refused["msg"]
    assert "V3__drop.sql:1: destructive [drop-column]" in refused["msg"]
    assert "Safe alternative:" in refused["msg"]
    assert [row[0] for row in database.history()] == ["1"]

    warned = run_module(database.params(directory=migrations.directory, policy="warn"))
    assert warned["failed"] is True
    assert "V3__drop.sql" in warned["msg"] and "V2__index.sql" not in warned["msg"]

    (migrations.directory / "V3__drop.sql").write_text(
        '-- berth:allow destructive reason="email moved to contacts in release 41"\n'
        "ALTER TABLE accounts DROP COLUMN email;\n"
    )
    applied = run_module(database.params(directory=migrations.directory, policy="warn"))
    assert applied["changed"] is True, applied.get("msg")
    assert "V2__index.sql:1: lock-heavy [create-index-non-concurrent]" in str(applied["warnings"])
    assert {finding["verdict"] for finding in applied["findings"]} == {"warned", "allowed"}
    assert database.history()[-1][5] == "destructive: email moved to contacts in release 41"


def test_required_column_is_only_destructive_on_a_filled_table(database, migrations, run_module):
    migrations("V1__tables.sql", ACCOUNTS + "CREATE TABLE tags (id int);\n")
    run_module(database.params(directory=migrations.directory))
    migrations("V2__required.sql", "ALTER TABLE tags ADD COLUMN label text NOT NULL;\n")
    assert run_module(database.params(directory=migrations.directory))["changed"] is True

    migrations("V3__required.sql", "ALTER TABLE accounts ADD COLUMN tier int NOT NULL;\n")
    result = run_module(database.params(directory=migrations.directory))
    assert result["failed"] is True
    assert "[adding-required-field]" in result["msg"]


def test_a_table_created_by_an_earlier_file_of_the_same_run_is_new(database, migrations, run_module):
    migrations("V1__invoices.sql", "CREATE TABLE invoices (id bigint PRIMARY KEY, ref text);\n")
    migrations("V2__invoice_ref.sql", "CREATE INDEX invoices_ref ON invoices (ref);\n")

    first_deploy = run_module(database.params(directory=migrations.directory))
    assert first_deploy["changed"] is True, first_deploy.get("msg")
    assert first_deploy["findings"] == []

    migrations("V3__invoice_ref_again.sql", "CREATE INDEX invoices_ref_2 ON invoices (ref);\n")
    later = run_module(database.params(directory=migrations.directory))
    assert later["failed"] is True
    assert "V3__invoice_ref_again.sql:1: lock-heavy [create-index-non-concurrent]" in later["msg"]


def test_a_quoted_mixed_case_table_is_checked_against_the_live_database(database, migrations, run_module):
    migrations("V1__accounts.sql", ACCOUNTS.replace("accounts", '"Accounts"'))
    run_module(database.params(directory=migrations.directory))
    migrations("V2__required.sql", 'ALTER TABLE "Accounts" ALTER COLUMN email SET NOT NULL;\n')

    result = run_module(database.params(directory=migrations.directory))

    assert result["failed"] is True, "the table exists and has rows, so SET NOT NULL must be refused"
    assert "[set-not-null]" in result["msg"]


def test_check_mode_returns_the_plan_and_touches_nothing(database, migrations, run_module, tmp_path):
    migrations("V1__accounts.sql", ACCOUNTS)
    run_module(database.params(directory=migrations.directory))
    history = database.history()
    migrations("V2__status.sql", "ALTER TABLE accounts ADD COLUMN status text;\n")
    migrations("V3__plan.sql", "ALTER TABLE accounts ADD COLUMN plan text;\n")
    backups = tmp_path / "backups"

    plan = run_module(database.params(directory=migrations.directory, backup=True, backup_dir=str(backups)), True)

    assert plan["changed"] is True
    assert plan["applied"] == ["1"]
    assert [item["file"] for item in plan["pending"]] == ["V2__status.sql", "V3__plan.sql"]
    assert plan["findings"] == []
    assert plan["backup"]["taken"] is False
    assert plan["backup"]["path"].startswith(f"{backups}/{database.name}-")
    assert plan["backup"]["path"].endswith("-before-V2-V3.dump")
    assert plan["queries"] == []
    assert database.history() == history
    assert columns(database, "accounts") == ["id", "email"]
    assert not backups.exists()


def test_backup_only_when_pending_and_restorable(database, migrations, run_module, tmp_path, cluster):
    migrations("V1__accounts.sql", ACCOUNTS)
    backups = tmp_path / "backups"
    params = database.params(directory=migrations.directory, backup=True, backup_dir=str(backups))

    first = run_module(params)

    assert first["changed"] is True, first.get("msg")
    dump = first["backup"]["path"]
    assert first["backup"]["taken"] is True
    assert dump.endswith("-before-V1.dump")
    assert stat.S_IMODE(os.stat(dump).st_mode) == 0o600
    assert sorted(os.listdir(backups)) == [os.path.basename(dump)]

    assert run_module(params)["changed"] is False
    assert sorted(os.listdir(backups)) == [os.path.basename(dump)], "nothing pending must mean no backup"

    migrations("V2__status.sql", "ALTER TABLE accounts ADD COLUMN status text;\n")
    second = run_module(params)
    restored = f"{database.name}_restored"
    database.run(f"CREATE DATABASE {restored}")
    try:
        subprocess.run(
            [
                str(cluster.bin / "pg_restore"),
                "--host=127.0.0.1",
                f"--port={cluster.port}",
                "--username=postgres",
                f"--dbname={restored}",
                second["backup"]["path"],
            ],
            env={**os.environ, "PGPASSWORD": "berth-test-secret"},
            check=True,
            capture_output=True,
        )
        with cluster.connect(restored) as connection:
            restored_columns = connection.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'accounts' ORDER BY 1"
            ).fetchall()
            assert restored_columns == [("email",), ("id",)], "the dump holds the state before V2"
            assert connection.execute("SELECT count(*) FROM accounts").fetchone() == (50,)
    finally:
        database.run(f"DROP DATABASE {restored} WITH (FORCE)")


def test_failed_backup_aborts_the_migration(database, migrations, run_module, tmp_path):
    migrations("V1__accounts.sql", ACCOUNTS)
    params = database.params(
        directory=migrations.directory, backup=True, backup_dir=str(tmp_path / "b"), backup_container="no-such-db"
    )

    result = run_module(params)

    assert result["failed"] is True
    assert "backup failed, nothing was migrated" in result["msg"]
    assert database.history() == []
    assert os.listdir(tmp_path / "b") == []


def test_bad_parameters_give_clear_errors(database, migrations, run_module):
    migrations("V1__accounts.sql", ACCOUNTS)
    bad_sslmode = run_module(database.params(directory=migrations.directory, sslmode="sometimes"))
    assert "value of sslmode must be one of: disable, allow, prefer" in bad_sslmode["msg"]
    assert "got: sometimes" in bad_sslmode["msg"]

    bad_timeout = run_module(database.params(directory=migrations.directory, lock_timeout="a while"))
    assert "lock_timeout: 'a while' is not a PostgreSQL duration" in bad_timeout["msg"]

    wrong_password = run_module(database.params(directory=migrations.directory, password="not-it"))  # noqa: S106 - a wrong password on purpose
    assert f"cannot connect to database {database.name} on 127.0.0.1:" in wrong_password["msg"]
    assert "not-it" not in str(wrong_password["msg"])
    masked = wrong_password["invocation"]["module_args"]["password"]
    assert masked == "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"
    assert database.history() == []


def test_connection_uri_and_libpq_environment(database, migrations, run_module, cluster):
    migrations("V1__accounts.sql", ACCOUNTS)
    uri = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{cluster.port}/{database.name}?sslmode=disable"
    result = run_module({"directory": migrations.directory, "uri": uri, "backup": False})
    assert result["changed"] is True, result.get("msg")
    assert [row[0] for row in database.history()] == ["1"]
    assert PASSWORD not in json.dumps(result), "a URI carries the password, so it must be no_log"


def test_the_deploy_lock_keeps_its_heartbeat_while_a_migration_runs(database, migrations, tmp_path):
    # The migration waits at a gate the test holds, as a long migration would run: meanwhile the
    # lock's heartbeat goes on (compose_app's unlock.yml takes a silent heartbeat for a dead deploy).
    migrations("V1__slow.sql", "SELECT pg_advisory_xact_lock(42);\n")
    lock = tmp_path / "deploy.lock"
    lock.mkdir()
    (lock / "owner").write_text(json.dumps({"controller": "another-host", "pid": 1}) + "\n")
    heartbeat = lock / "heartbeat"
    params = dict(database.params(directory=migrations.directory), lock_timeout="60s", lock_dir=str(lock))
    beats = set()
    with database.connect(autocommit=True) as gate:
        gate.execute("SELECT pg_advisory_lock(42)")
        process = module_process(params, tmp_path)
        wait_for(database, MIGRATION_WAITS_FOR_A_LOCK)
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:
            if heartbeat.exists():
                beats.add(heartbeat.stat().st_mtime_ns)
            time.sleep(0.1)
        gate.execute("SELECT pg_advisory_unlock(42)")
    result = result_of(process)
    assert result["changed"] is True, result.get("msg")
    assert len(beats) >= 3, beats
    assert json.loads(heartbeat.read_text())["pid"] == process.pid
    # The beat ends with the module.
    last = heartbeat.stat().st_mtime_ns
    time.sleep(1.5)
    assert heartbeat.stat().st_mtime_ns == last
