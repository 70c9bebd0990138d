"""Rules the database decides, against the real throwaway cluster: which type changes PostgreSQL does
without a rewrite (checked by the table's relfilenode), domains, lifted rules in check mode's plan,
refuse_classes, unanalysable statements and the _ccnew copies a failed REINDEX CONCURRENTLY leaves."""

from __future__ import annotations

import uuid

import pytest
from ansible_collections.berth.stack.plugins.module_utils import _migration_state as state
from ansible_collections.berth.stack.plugins.module_utils import _migrations as mig
from ansible_collections.berth.stack.plugins.plugin_utils import _migration_analysis as analysis
from safe_migration_harness import ACCOUNTS, Database


@pytest.fixture(scope="module")
def scratch(cluster):
    """One database for the decisions below; each case makes its own table."""
    name = f"t_state_{uuid.uuid4().hex[:8]}"
    with cluster.connect(autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    database = Database(cluster, name)
    with database.connect(autocommit=True) as connection:
        connection.execute("SET TimeZone = 'UTC'")
        yield database, connection
    with cluster.connect(autocommit=True) as connection:
        connection.execute(f"DROP DATABASE {name} WITH (FORCE)")


def judged(connection, sql: str) -> tuple[list, list]:
    """(refused findings, lifted rules) of one file judged on this database."""
    migration = dict(analysis.analyse("V1__t.sql", sql), file="V1__t.sql")
    verdicts = mig.judge([migration], "strict", connection)
    return verdicts[0], verdicts[2]


def filenode(connection, table: str):
    return connection.execute("SELECT pg_relation_filenode(%s::regclass)", (table,)).fetchone()[0]


@pytest.mark.parametrize(
    ("current", "new", "without_rewrite"),
    [
        ("varchar(20)", "varchar(50)", True),
        ("varchar(20)", "varchar", True),
        ("varchar(20)", "text", True),
        ("text", "varchar", True),
        ("numeric(10,2)", "numeric(12,2)", True),
        ("numeric(10,2)", "numeric", True),
        ("timestamp(3)", "timestamp(6)", True),
        ("varbit(8)", "varbit(16)", True),
        ("cidr", "inet", True),
        ("varchar(50)", "varchar(20)", False),
        ("text", "varchar(20)", False),
        ("numeric(10,2)", "numeric(10,3)", False),
        ("numeric", "numeric(10,2)", False),
        ("integer", "bigint", False),
        ("bigint", "integer", False),
        ("timestamp", "timestamptz", True),  # in a UTC session (PostgreSQL 12+)
        ("timestamp(3)", "timestamp(0)", False),
        ("varchar(20)", "char(20)", False),
    ],
)
def test_type_change_decision_matches_what_postgresql_does(scratch, current, new, without_rewrite):
    connection = scratch[1]
    table = f"t_{uuid.uuid4().hex[:8]}"
    value = {"cidr": "'10.0.0.0/8'", "varbit(8)": "B'1'", "timestamp(3)": "now()", "timestamp": "now()"}.get(
        current, "'1'"
    )
    connection.execute(f"CREATE TABLE {table} (c {current}); INSERT INTO {table} VALUES ({value})")  # noqa: S608
    refused, lifted = judged(connection, f"ALTER TABLE {table} ALTER COLUMN c TYPE {new};")
    assert (refused == []) is without_rewrite
    assert (len(lifted) == 1) is without_rewrite
    before = filenode(connection, table)
    connection.execute(f"ALTER TABLE {table} ALTER COLUMN c TYPE {new}")
    assert (filenode(connection, table) == before) is without_rewrite, "the decision disagrees with PostgreSQL"
    finding = (lifted or refused)[0]
    assert f"{table}.c" in finding.get("lifted_because", finding.get("detail"))


def test_timestamp_to_timestamptz_rewrites_outside_utc(scratch):
    connection = scratch[1]
    connection.execute("CREATE TABLE stamps (at timestamp); INSERT INTO stamps VALUES (now())")
    connection.execute("SET TimeZone = 'America/New_York'")
    try:
        (refused,), no_lifts = judged(connection, "ALTER TABLE stamps ALTER COLUMN at TYPE timestamptz;")
        before = filenode(connection, "stamps")
        connection.execute("ALTER TABLE stamps ALTER COLUMN at TYPE timestamptz")
        assert filenode(connection, "stamps") != before
    finally:
        connection.execute("SET TimeZone = 'UTC'")
    assert "is not binary-coercible" in refused["detail"]
    assert no_lifts == []


def test_a_domain_with_a_check_rewrites_a_filled_table_and_not_an_empty_one(scratch):
    connection = scratch[1]
    connection.execute(
        "CREATE DOMAIN email_address AS text CHECK (VALUE LIKE '%@%');"
        "CREATE DOMAIN plain_label AS text;"
        "CREATE TABLE filled (id int); INSERT INTO filled VALUES (1); CREATE TABLE empty (id int);"
    )
    refused, lifted = judged(connection, "ALTER TABLE filled ADD COLUMN contact email_address;")
    assert [finding["rule"] for finding in refused] == ["domain-with-check-column"]
    before = filenode(connection, "filled")
    connection.execute("ALTER TABLE filled ADD COLUMN contact email_address")
    assert filenode(connection, "filled") != before, "PostgreSQL rewrote the table, as the finding says"

    refused, lifted = judged(connection, "ALTER TABLE empty ADD COLUMN contact email_address;")
    assert refused == []
    assert lifted[0]["lifted_because"] == "empty has no rows, so nothing is scanned or rewritten"

    refused, lifted = judged(connection, "ALTER TABLE filled ADD COLUMN label plain_label;")
    assert (refused, lifted) == ([], []), "a domain without constraints adds like its base type"


def test_alter_domain_add_constraint_is_judged_by_the_columns_that_use_it(scratch):
    connection = scratch[1]
    connection.execute(
        "CREATE DOMAIN quantity AS int; CREATE DOMAIN unused_quantity AS int;"
        "CREATE TABLE stock (n quantity); INSERT INTO stock VALUES (3);"
    )
    (refused,), no_lifts = judged(connection, "ALTER DOMAIN quantity ADD CONSTRAINT positive CHECK (VALUE > 0);")
    assert refused["rule"] == "alter-domain-add-constraint"
    assert refused["detail"] == "ADD CONSTRAINT positive checks stock.n"
    assert no_lifts == []
    refused, lifted = judged(connection, "ALTER DOMAIN unused_quantity ADD CONSTRAINT p CHECK (VALUE > 0);")
    assert refused == []
    assert "no column of domain unused_quantity is in a table with rows" in lifted[0]["lifted_because"]


def test_check_mode_plan_names_lifted_and_refused_type_changes(database, run_module, migrations):
    database.run("CREATE TABLE notes (body varchar(20), total numeric(10,2)); INSERT INTO notes VALUES ('a', 1)")
    migrations("V1__widen.sql", "ALTER TABLE notes ALTER COLUMN body TYPE varchar(200);")

    plan = run_module(database.params(directory=migrations.directory), check_mode=True)
    assert plan["changed"] is True, plan.get("msg")
    assert plan["findings"] == []
    (lifted,) = plan["lifted"]
    assert (lifted["file"], lifted["line"], lifted["rule"], lifted["verdict"]) == (
        "V1__widen.sql",
        1,
        "changing-column-type",
        "lifted",
    )
    assert "notes.body character varying(20) to varchar(200): raising the limit" in lifted["lifted_because"]

    migrations("V2__scale.sql", "ALTER TABLE notes ALTER COLUMN total TYPE numeric(10,4);")
    refused = run_module(database.params(directory=migrations.directory), check_mode=True)
    assert refused["failed"] is True
    assert (
        "V2__scale.sql:1: lock-heavy [changing-column-type] notes.total numeric(10,2) to numeric(10, 4)"
        in (refused["msg"])
    )
    assert "changing numeric's scale" in refused["msg"]


def test_refuse_classes_refuses_even_an_allowed_drop(database, run_module, migrations):
    database.run(ACCOUNTS + "CREATE TABLE legacy (id int);")
    migrations(
        "V1__contract.sql", '-- berth:allow destructive reason="legacy unused since release 11"\nDROP TABLE legacy;'
    )

    result = run_module(database.params(directory=migrations.directory, refuse_classes=["destructive"]))
    assert result["failed"] is True
    assert "V1__contract.sql:2: destructive [drop-table]" in result["msg"]
    assert (
        "refuse_classes forbids destructive although the file allows it (legacy unused since release 11)"
        in (result["msg"])
    )
    assert database.rows("SELECT to_regclass('legacy') IS NOT NULL")[0][0] is True

    staging = run_module(database.params(directory=migrations.directory, refuse_classes=["lock-heavy"]))
    assert staging["changed"] is True, staging.get("msg")
    assert database.rows("SELECT to_regclass('legacy') IS NULL")[0][0] is True


def test_unanalysable_is_refused_unless_allowed(database, run_module, migrations):
    database.run(ACCOUNTS)
    migrations("V1__do.sql", "DO $$ BEGIN EXECUTE 'DROP TABLE accounts'; END $$;")
    refused = run_module(database.params(directory=migrations.directory))
    assert refused["failed"] is True
    assert "V1__do.sql:1: unanalysable [unanalysable-do-block]" in refused["msg"]
    assert database.rows("SELECT count(*) FROM accounts")[0][0] == 50

    (migrations.directory / "V1__do.sql").unlink()
    migrations(
        "V1__count.sql",
        '-- berth:allow unanalysable reason="reads only"\n'
        "CREATE FUNCTION n() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM accounts';\nSELECT n();",
    )
    allowed = run_module(database.params(directory=migrations.directory))
    assert allowed["changed"] is True, allowed.get("msg")
    assert [finding["verdict"] for finding in allowed["findings"]] == ["allowed"]
    assert database.history()[0][5] == "unanalysable: reads only"


def test_a_retried_reindex_concurrently_first_drops_the_ccnew_copy_a_failed_one_left(database, run_module, migrations):
    # An expression index whose function fails on demand makes REINDEX CONCURRENTLY fail in its build
    # phase, after it created accounts_key_ccnew: what a timeout or a cancel leaves behind.
    database.run(
        ACCOUNTS + "CREATE FUNCTION key_of(email text) RETURNS text IMMUTABLE LANGUAGE plpgsql AS $$ BEGIN "
        "IF current_setting('berth.fail', true) = 'on' THEN RAISE EXCEPTION 'build failed'; END IF; "
        "RETURN lower(email); END $$;"
        "CREATE INDEX accounts_key ON accounts (key_of(email));"
    )
    with database.connect(autocommit=True) as connection:
        connection.execute("SET berth.fail = 'on'")
        with pytest.raises(Exception, match="build failed"):
            connection.execute("REINDEX INDEX CONCURRENTLY accounts_key")
    invalid = "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE NOT i.indisvalid"
    assert database.rows(invalid) == [("accounts_key_ccnew",)]

    migrations("V1__reindex.sql", "-- berth:no-transaction\nREINDEX INDEX CONCURRENTLY accounts_key;")
    plan = run_module(database.params(directory=migrations.directory), check_mode=True)
    assert plan["queries"] == [] and database.rows(invalid) == [("accounts_key_ccnew",)], "check mode drops nothing"

    result = run_module(database.params(directory=migrations.directory))
    assert result["changed"] is True, result.get("msg")
    assert "DROP INDEX CONCURRENTLY IF EXISTS public.accounts_key_ccnew" in result["queries"]
    assert database.rows(invalid) == []
    names = (
        "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname LIKE 'accounts_key%'"
    )
    assert database.rows(names) == [("accounts_key",)]

    with database.connect(autocommit=True) as connection:
        connection.execute("SET berth.fail = 'on'")
        with pytest.raises(Exception, match="build failed"):
            connection.execute("REINDEX TABLE CONCURRENTLY accounts")
        # A table's reindex makes every copy before it builds any, so a failure leaves all of them.
        assert state.reindex_leftovers(connection, {"kind": "table", "name": "accounts"}) == [
            "public.accounts_key_ccnew",
            "public.accounts_pkey_ccnew",
        ]
        assert state.reindex_leftovers(connection, {"kind": "index", "name": "accounts_pkey"}) == [
            "public.accounts_pkey_ccnew"
        ]
