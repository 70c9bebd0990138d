"""The psycopg2 fallback of the shared connection layer, against the same real cluster.

Targets that only have Debian's python3-psycopg2 take this path. psycopg 3 is hidden from the module
process by a package of the same name, earlier on its path, whose import fails as if psycopg 3 were
not installed; psycopg2 itself is the real driver, pinned in requirements-dev.txt.
"""

from __future__ import annotations

import threading

import pytest
from safe_migration_harness import (
    ACCOUNTS,
    columns,
    hold_lock_on_accounts,
    module_process,
    release_after_a_lock_timeout,
    result_of,
)


@pytest.fixture
def run_with_psycopg2(tmp_path):
    hidden = tmp_path / "without-psycopg3" / "psycopg"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text('raise ImportError("psycopg 3 is hidden: this test exercises psycopg2")\n')

    def run(args: dict) -> dict:
        environment = {"PYTHONPATH": str(hidden.parent)}
        return result_of(module_process(args, tmp_path, environment=environment))

    return run


def test_psycopg2_applies_retries_and_reports_server_errors(database, migrations, run_with_psycopg2):
    migrations("V1__accounts.sql", ACCOUNTS)
    broken = migrations("V2__status.sql", "ALTER TABLE accounts ADD COLUMN status text;\nSELECT 1 / 0;\n")

    failed = run_with_psycopg2(database.params(directory=migrations.directory))
    assert failed["failed"] is True
    assert "V2__status.sql line 2: statement 'SELECT 1 / 0' failed: division by zero" in failed["msg"]
    assert [row[0] for row in database.history()] == ["1"]
    assert columns(database, "accounts") == ["id", "email"]

    broken.write_text("ALTER TABLE accounts ADD COLUMN status text;\n")
    release = threading.Event()
    holder = hold_lock_on_accounts(database, release)
    release_after_a_lock_timeout(database, release, lock_timeout=0.2)
    applied = run_with_psycopg2(
        database.params(directory=migrations.directory, lock_timeout="200ms", retry_delay=0.2, lock_retries=8)
    )
    holder.join()
    assert applied["changed"] is True, applied.get("msg")
    assert applied["retries"], "SQLSTATE 55P03 must be recognised through psycopg2's pgcode"
    assert columns(database, "accounts") == ["id", "email", "status"]

    again = run_with_psycopg2(database.params(directory=migrations.directory))
    assert again["changed"] is False
    assert again["applied"] == ["1", "2"]
