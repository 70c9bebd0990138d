"""Mode 2 against the real Docker engine: the app's own migration tool in a one-off container."""

from __future__ import annotations

import os
import stat
import subprocess
import uuid

import pytest
from ansible_collections.berth.stack.plugins.module_utils import _migrations as mig
from safe_migration_harness import PASSWORD


@pytest.fixture
def release(app_image, database, tmp_path):
    """A release compose file whose api service reaches the test cluster over the host network."""
    compose = tmp_path / "compose.yml"
    compose.write_text(
        f"""\
services:
  api:
    image: {app_image}
    network_mode: host
    environment:
      PGHOST: 127.0.0.1
      PGPORT: "{database.cluster.port}"
      PGUSER: postgres
      PGPASSWORD: {PASSWORD}
      PGDATABASE: {database.name}
"""
    )
    project = f"berth-sm-test-{uuid.uuid4().hex[:8]}"
    yield {
        "compose_file": str(compose),
        "service": "api",
        "project_name": project,
        "command": ["migrate"],
        "check_command": ["status"],
    }
    subprocess.run(
        ["docker", "compose", "--file", str(compose), "--project-name", project, "down", "--remove-orphans"],
        capture_output=True,
        check=False,  # nothing to remove is fine
    )


def widgets_exists(database) -> bool:
    return database.rows("SELECT to_regclass('widgets') IS NOT NULL")[0][0]


def test_check_apply_and_reapply(database, release, run_module, tmp_path):
    backups = tmp_path / "backups"
    params = database.params(**release, backup=True, backup_dir=str(backups))

    plan = run_module(params, check_mode=True)
    assert plan["changed"] is True, plan.get("msg")
    assert plan["check_rc"] == 1
    assert plan["backup"]["path"].endswith("-before-app.dump")
    assert not widgets_exists(database)
    assert not backups.exists()

    applied = run_module(params)
    assert applied["changed"] is True, applied.get("msg")
    assert applied["rc"] == 0
    assert "migrated to version 2" in applied["stdout"]
    assert widgets_exists(database)
    assert stat.S_IMODE(os.stat(applied["backup"]["path"]).st_mode) == 0o600

    again = run_module(params)
    assert again["changed"] is False
    assert again["check_rc"] == 0
    assert len(os.listdir(backups)) == 1


def test_a_failing_command_fails_with_its_output(database, release, run_module):
    release["command"] = ["sh", "-c", "echo 'relation \"gadgets\" does not exist' >&2; exit 3"]

    result = run_module(database.params(**release))

    assert result["failed"] is True
    assert result["rc"] == 3
    assert "sh -c echo 'relation \"gadgets\" does not exist' >&2; exit 3 exited 3" in result["msg"]
    assert 'relation "gadgets" does not exist' in result["stderr"]


def test_a_command_past_its_timeout_is_removed(database, release, run_module):
    release["command"] = ["sleep", "60"]

    result = run_module(database.params(**release, command_timeout=3))

    assert result["failed"] is True
    assert "ran longer than 3 s (command_timeout)" in result["msg"]
    left = subprocess.run(
        ["docker", "ps", "--all", "--quiet", "--filter", f"label=com.docker.compose.project={release['project_name']}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert left.strip() == ""


def test_command_mode_shares_the_advisory_lock(database, release, run_module):
    key = mig.advisory_lock_key("public", "berth_schema_history")
    with database.connect(autocommit=True, application_name="sql-mode-runner") as holder:
        holder.execute("SELECT pg_advisory_lock(%s, %s)", key)
        result = run_module(database.params(**release, lock_wait_timeout=0.5))
    assert result["failed"] is True
    assert "another migration holds the advisory lock" in result["msg"]
    assert "sql-mode-runner" in result["msg"]
    assert not widgets_exists(database)
