"""Mode 2 under the same guard, against the real Docker engine: the SQL files a new image carries
(and the running release's image did not) and what a tool prints as its SQL are linted before the
tool runs; the tool's libpq sessions get lock_timeout/statement_timeout through PGOPTIONS.

Images berth/smtest-* are built FROM the psql app image of conftest.py and removed at the end.
"""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest
from safe_migration_harness import PASSWORD
from test_playbook import ansible_playbook

# A prisma-like tool: applies /app/migrations/*/migration.sql in name order, each once, and says which
# timeouts its session runs with; `pending` exits 1 while a file is unapplied; `print-sql` prints the
# SQL it would run, like `alembic upgrade head --sql`.
APPLY = """\
#!/bin/sh
set -e
psql -v ON_ERROR_STOP=1 -q -c 'CREATE TABLE IF NOT EXISTS tool_migrations (name text PRIMARY KEY)'
echo "session: lock_timeout=$(psql -tAc 'SHOW lock_timeout') statement_timeout=$(psql -tAc 'SHOW statement_timeout')"
for file in /app/migrations/*/migration.sql; do
  name=$(basename "$(dirname "$file")")
  [ "$(psql -tAc "SELECT count(*) FROM tool_migrations WHERE name = '$name'")" = 1 ] && continue
  psql -v ON_ERROR_STOP=1 -q -1 -f "$file" -c "INSERT INTO tool_migrations VALUES ('$name')"
  echo "applied $name"
done
"""
PENDING = """\
#!/bin/sh
for file in /app/migrations/*/migration.sql; do
  name=$(basename "$(dirname "$file")")
  [ "$(psql -tAc "SELECT count(*) FROM tool_migrations WHERE name = '$name'" 2>/dev/null)" = 1 ] || exit 1
done
exit 0
"""
PRINT_SQL = """\
#!/bin/sh
echo 'BEGIN;'
for file in /app/migrations/*/migration.sql; do
  name=$(basename "$(dirname "$file")")
  [ "$(psql -tAc "SELECT count(*) FROM tool_migrations WHERE name = '$name'" 2>/dev/null)" = 1 ] || cat "$file"
done
echo 'COMMIT;'
"""
INIT = "CREATE TABLE widgets (id bigint PRIMARY KEY, name text);\nCREATE TABLE legacy_widgets (id bigint);\n"
DROP = "-- release 2 contracts the schema\n\nDROP TABLE legacy_widgets;\n"
ALLOWED = '-- berth:allow destructive reason="legacy_widgets unused since release 1"\n\nDROP TABLE legacy_widgets;\n'
PATTERN = "/app/migrations/*/migration.sql"
DROP_FILE = "/app/migrations/2_contract/migration.sql"


def build(tag: str, base: str, files: dict, context) -> str:
    lines = [f"FROM {base}"]
    for path, content in files.items():
        local = context / path.strip("/").replace("/", "_")
        local.write_text(content)
        local.chmod(0o755)
        lines.append(f"COPY {local.name} {path}")
    (context / "Dockerfile").write_text("\n".join(lines) + "\n")
    subprocess.run(["docker", "build", "--quiet", "--tag", tag, str(context)], check=True, capture_output=True)
    return tag


@pytest.fixture(scope="module")
def images(app_image, tmp_path_factory):
    """The running release's image (one migration) and two new ones that add a DROP, without and with an allowance."""
    suffix = uuid.uuid4().hex[:6]
    tools = {
        "/usr/local/bin/apply-sql": APPLY,
        "/usr/local/bin/pending": PENDING,
        "/usr/local/bin/print-sql": PRINT_SQL,
    }
    base = build(
        f"berth/smtest-base:{suffix}",
        app_image,
        {**tools, "/app/migrations/1_init/migration.sql": INIT},
        tmp_path_factory.mktemp("base"),
    )
    built = {
        "base": base,
        "destructive": build(
            f"berth/smtest-destructive:{suffix}", base, {DROP_FILE: DROP}, tmp_path_factory.mktemp("d")
        ),
        "allowed": build(f"berth/smtest-allowed:{suffix}", base, {DROP_FILE: ALLOWED}, tmp_path_factory.mktemp("a")),
    }
    yield built
    subprocess.run(["docker", "rmi", "--force", *built.values()], capture_output=True, check=False)


@pytest.fixture
def release(database, tmp_path):
    """release(image) -> module arguments for a compose file whose api service runs that image."""
    project = f"berth-smtest-{uuid.uuid4().hex[:8]}"
    composes = []

    def make(image: str, **extra) -> dict:
        compose = tmp_path / f"compose-{len(composes)}.yml"
        compose.write_text(
            f"services:\n  api:\n    image: {image}\n    network_mode: host\n    environment:\n"
            f'      PGHOST: 127.0.0.1\n      PGPORT: "{database.cluster.port}"\n      PGUSER: postgres\n'
            f"      PGPASSWORD: {PASSWORD}\n      PGDATABASE: {database.name}\n"
        )
        composes.append(compose)
        return database.params(
            compose_file=str(compose),
            service="api",
            project_name=project,
            image=image,
            command=["apply-sql"],
            check_command=["pending"],
            **extra,
        )

    yield make
    for compose in composes:
        subprocess.run(
            ["docker", "compose", "--file", str(compose), "--project-name", project, "down", "--remove-orphans"],
            capture_output=True,
            check=False,
        )


def legacy_exists(database) -> bool:
    return database.rows("SELECT to_regclass('legacy_widgets') IS NOT NULL")[0][0]


def test_a_destructive_file_in_the_new_image_is_refused_before_the_tool_runs(database, images, release, run_module):
    first = run_module(release(images["base"], sql_files=[PATTERN]))
    assert first["changed"] is True, first.get("msg")
    assert first["reviewed"] == ["/app/migrations/1_init/migration.sql"], "a first deploy lints every file"
    assert "session: lock_timeout=1s statement_timeout=15min" in first["stdout"], "psql honours PGOPTIONS"

    refused = run_module(release(images["destructive"], sql_files=[PATTERN], previous_image=images["base"]))
    assert refused["failed"] is True
    assert refused["reviewed"] == [DROP_FILE], "only what the running release's image did not carry"
    assert f"{DROP_FILE}:3: destructive [drop-table] DROP TABLE legacy_widgets" in refused["msg"]
    assert "apply-sql did not run" in refused["msg"]
    assert "rc" not in refused
    assert legacy_exists(database)


def test_an_allowance_in_the_file_lets_it_through_unless_the_inventory_refuses_the_class(
    database, images, release, run_module
):
    database.run(INIT)
    database.run("CREATE TABLE tool_migrations (name text PRIMARY KEY); INSERT INTO tool_migrations VALUES ('1_init')")
    params = release(images["allowed"], sql_files=[PATTERN], previous_image=images["base"], lock_timeout="2s")

    prod = run_module(dict(params, refuse_classes=["destructive"]))
    assert prod["failed"] is True
    assert "refuse_classes forbids destructive although the file allows it (legacy_widgets unused" in prod["msg"]
    assert legacy_exists(database)

    plan = run_module(params, check_mode=True)
    assert plan["changed"] is True, plan.get("msg")
    assert [(f["file"], f["line"], f["verdict"]) for f in plan["findings"]] == [(DROP_FILE, 3, "allowed")]
    assert legacy_exists(database), "check mode runs nothing"

    staging = run_module(params)
    assert staging["changed"] is True, staging.get("msg")
    assert staging["rc"] == 0
    assert "applied 2_contract" in staging["stdout"]
    assert "session: lock_timeout=2s" in staging["stdout"]
    assert not legacy_exists(database)


def test_the_sql_a_tool_prints_is_linted_by_its_output_line(database, images, release, run_module):
    database.run(INIT)
    database.run("CREATE TABLE tool_migrations (name text PRIMARY KEY); INSERT INTO tool_migrations VALUES ('1_init')")
    result = run_module(release(images["destructive"], sql_command=["print-sql"]))
    assert result["failed"] is True
    assert result["reviewed"] == ["output of print-sql"]
    # print-sql prints BEGIN; and then the pending file, whose DROP is on its line 3.
    assert "output of print-sql:4: destructive [drop-table] DROP TABLE legacy_widgets" in result["msg"]
    assert legacy_exists(database)


def test_a_pattern_that_matches_no_file_in_the_new_image_is_refused_before_the_tool_runs(
    database, images, release, run_module
):
    """A glob that names the wrong directory reviews nothing: the drop would run unseen. Refused instead."""
    database.run(INIT)
    database.run("CREATE TABLE tool_migrations (name text PRIMARY KEY); INSERT INTO tool_migrations VALUES ('1_init')")
    elsewhere = "/srv/app/migrations/*.sql"
    refused = run_module(release(images["destructive"], sql_files=[PATTERN, elsewhere], previous_image=images["base"]))
    assert refused["failed"] is True
    assert f"sql_files: {elsewhere!r} matches no file in image {images['destructive']}" in refused["msg"]
    assert "rc" not in refused
    assert legacy_exists(database)


def test_a_relative_sql_files_pattern_is_refused_naming_the_option(database, run_module, tmp_path):
    params = database.params(
        compose_file=str(tmp_path / "compose.yml"),
        service="api",
        command=["apply-sql"],
        check_command=["pending"],
        sql_files=["migrations/*.sql"],
    )
    result = run_module(params)
    assert result["failed"] is True
    assert "sql_files: 'migrations/*.sql' must be an absolute path inside the image" in result["msg"]


def test_through_ansible_playbook_the_action_plugin_reviews_before_the_tool_runs(database, images, release, tmp_path):
    database.run(INIT)
    database.run("CREATE TABLE tool_migrations (name text PRIMARY KEY); INSERT INTO tool_migrations VALUES ('1_init')")
    params = release(images["destructive"], sql_files=[PATTERN], previous_image=images["base"])
    params["password"] = "{{ db_password }}"  # noqa: S105 - the extra var ansible_playbook passes
    task = {"name": "Migrate with the app's tool", "berth.stack.safe_migration": params}
    playbook = tmp_path / "tool.yml"
    playbook.write_text(json.dumps([{"name": "Tool", "hosts": "localhost", "gather_facts": False, "tasks": [task]}]))

    rc, result = ansible_playbook(playbook)

    assert rc != 0
    assert f"{DROP_FILE}:3: destructive [drop-table]" in result["msg"]
    assert "apply-sql did not run" in result["msg"]
    assert legacy_exists(database)
