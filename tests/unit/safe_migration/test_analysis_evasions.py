"""The second pass of the analysis: what a rule list cannot see, statements written to slip past it,
and the facts the analysis leaves to the database (checked against a real server in test_database_state.py)."""

from __future__ import annotations

import pytest
from ansible_collections.berth.stack.plugins.module_utils import _migration_image as image_sql
from ansible_collections.berth.stack.plugins.plugin_utils import _migration_analysis as analysis


def findings_of(sql: str, transactional: bool = True, tool: bool = False) -> list:
    text = sql if transactional else f"-- berth:no-transaction\n{sql}"
    return analysis.analyse("V1__t.sql", text, tool=tool)["findings"]


def rules_of(sql: str, **kwargs) -> list:
    return [(finding["class"], finding["rule"]) for finding in findings_of(sql, **kwargs)]


@pytest.mark.parametrize(
    ("sql", "rule"),
    [
        ("DO $$ BEGIN EXECUTE 'DROP TABLE accounts'; END $$;", "unanalysable-do-block"),
        ("DO LANGUAGE plpgsql $$ BEGIN PERFORM purge(); END $$;", "unanalysable-do-block"),
        ("PREPARE wipe AS SELECT 1;\nEXECUTE wipe;", "unanalysable-execute"),
        ("SELECT purge_old_accounts();", "unanalysable-function-call"),
        ("SELECT app.rebuild_search(id) FROM accounts WHERE id < 10;", "unanalysable-function-call"),
        ("SELECT * FROM cleanup_sessions();", "unanalysable-function-call"),
        ("CALL archive_accounts();", "unanalysable-function-call"),
    ],
)
def test_sql_the_parser_cannot_see_is_unanalysable(sql, rule):
    assert ("unanalysable", rule) in rules_of(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count(*) FROM accounts;",
        "SELECT setval('accounts_id_seq', (SELECT max(id) FROM accounts));",
        "SELECT pg_catalog.set_config('search_path', '', false);",
        "SELECT 1;",
        "CREATE FUNCTION purge() RETURNS void LANGUAGE sql AS 'DELETE FROM sessions WHERE false';",
    ],
)
def test_known_functions_and_function_definitions_are_analysable(sql):
    assert rules_of(sql) == []


def test_an_allowance_covers_unanalysable_and_names_it():
    text = '-- berth:allow unanalysable reason="rebuilds search vectors, reads only"\nSELECT rebuild_search();'
    result = analysis.analyse("V2__search.sql", text)
    assert result["allowances"] == {"unanalysable": "rebuilds search vectors, reads only"}
    (finding,) = result["findings"]
    assert (finding["line"], finding["detail"]) == (2, "SELECT calls rebuild_search()")


@pytest.mark.parametrize(
    ("sql", "rule", "detail"),
    [
        ("DELETE FROM accounts WHERE true;", "delete-without-where", "WHERE TRUE is always true"),
        ("DELETE FROM accounts WHERE 1 = 1;", "delete-without-where", "WHERE 1 = 1 is always true"),
        ("DELETE FROM accounts WHERE 'a' <> 'b';", "delete-without-where", "is always true"),
        ("DELETE FROM accounts WHERE NOT false;", "delete-without-where", "is always true"),
        ("DELETE FROM accounts WHERE 't'::boolean;", "delete-without-where", "is always true"),
        ("DELETE FROM accounts WHERE NULL IS NULL;", "delete-without-where", "is always true"),
        ("DELETE FROM accounts WHERE EXISTS (SELECT 1);", "delete-without-where", "is always true"),
        ("UPDATE accounts SET tier = 1 WHERE id = 7 OR 2 > 1;", "update-without-where", "is always true"),
        ("UPDATE accounts SET tier = 1 WHERE true AND 1 = 1;", "update-without-where", "is always true"),
        ("UPDATE accounts SET tier = 1 WHERE id = id;", "update-without-where", "WHERE id = id is always true"),
        ("DELETE FROM accounts WHERE now() > '2020-01-01';", "delete-without-where", "does not read the rows"),
        ("DELETE FROM accounts WHERE (SELECT count(*) FROM flags) > 0;", "delete-without-where", "does not read"),
    ],
)
def test_an_always_true_where_is_no_where(sql, rule, detail):
    (finding,) = findings_of(sql)
    assert (finding["class"], finding["rule"], finding["table"]) == ("destructive", rule, "accounts")
    assert detail in finding["detail"]


@pytest.mark.parametrize(
    ("sql", "rule", "detail"),
    [
        ("DELETE FROM accounts AS a;", "delete-without-where", "no WHERE clause"),
        ("DELETE FROM accounts a WHERE a.id = a.id;", "delete-without-where", "is always true"),
        ("UPDATE accounts AS a SET tier = 0;", "update-without-where", "no WHERE clause"),
        (
            "WITH gone AS (DELETE FROM accounts RETURNING *) SELECT count(*) FROM gone;",
            "delete-without-where",
            "(inside another statement)",
        ),
        (
            "WITH gone AS (DELETE FROM accounts RETURNING *) INSERT INTO archive SELECT * FROM gone;",
            "delete-without-where",
            "(inside another statement)",
        ),
        (
            "WITH moved AS (UPDATE accounts SET tier = 0 RETURNING id) SELECT count(*) FROM moved;",
            "update-without-where",
            "(inside another statement)",
        ),
        ("WITH recent AS (SELECT 1) DELETE FROM accounts;", "delete-without-where", "no WHERE clause"),
        (
            "WITH everyone AS (SELECT id FROM accounts) DELETE FROM accounts WHERE id IN (SELECT id FROM everyone);",
            "delete-without-where",
            "selects every row of accounts",
        ),
        ("DELETE FROM accounts WHERE id IN (SELECT id FROM accounts);", "delete-without-where", "selects every row"),
        ("DELETE FROM accounts USING closed;", "delete-without-where", "no WHERE clause"),
        ("DELETE FROM accounts a USING closed c WHERE c.final;", "delete-without-where", "does not read the rows"),
        ("UPDATE accounts SET tier = p.tier FROM plans p WHERE p.active;", "update-without-where", "does not read"),
        ("MERGE INTO accounts a USING closed c ON true WHEN MATCHED THEN DELETE;", "delete-without-where", "MERGE"),
        ("EXPLAIN ANALYZE DELETE FROM accounts;", "delete-without-where", "(inside another statement)"),
        ("PREPARE wipe AS DELETE FROM accounts;", "delete-without-where", "(inside another statement)"),
        (
            "CREATE RULE wipe AS ON INSERT TO audit DO ALSO DELETE FROM accounts;",
            "delete-without-where",
            "(inside another statement)",
        ),
    ],
)
def test_evasions_of_the_where_rule(sql, rule, detail):
    found = [finding for finding in findings_of(sql) if finding["rule"] == rule]
    assert [finding["table"] for finding in found] == ["accounts"]
    assert detail in found[0]["detail"]


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM accounts a USING closed c WHERE c.account_id = a.id;",
        "UPDATE accounts SET tier = p.tier FROM plans p WHERE p.id = accounts.plan_id;",
        "DELETE FROM accounts WHERE EXISTS (SELECT 1 FROM closed c WHERE c.account_id = accounts.id);",
        "DELETE FROM accounts WHERE id IN (SELECT account_id FROM closed);",
        "DELETE FROM accounts WHERE id IN (SELECT id FROM accounts WHERE closed);",
        "WITH gone AS (DELETE FROM sessions WHERE expires < now() RETURNING id) SELECT count(*) FROM gone;",
        "MERGE INTO accounts a USING closed c ON c.account_id = a.id WHEN MATCHED THEN DELETE;",
        "EXPLAIN DELETE FROM accounts;",
        "UPDATE accounts SET tier = 1 WHERE id = 7 AND 1 = 1;",
    ],
)
def test_filters_that_do_select_rows_stay_safe(sql):
    assert rules_of(sql) == []


def test_a_using_expression_that_ignores_the_column_overwrites_it():
    assert rules_of("ALTER TABLE accounts ALTER COLUMN email TYPE text USING NULL;") == [
        ("destructive", "overwrite-column"),
        ("lock-heavy", "changing-column-type"),
    ]


@pytest.mark.parametrize(
    ("sql", "new_type"),
    [
        ("ALTER TABLE accounts ALTER COLUMN note TYPE varchar(50);", {"name": "varchar", "mods": [50]}),
        ("ALTER TABLE accounts ALTER note TYPE character varying;", {"name": "varchar", "mods": []}),
        ("ALTER TABLE accounts ALTER COLUMN note TYPE text;", {"name": "text", "mods": []}),
        ("ALTER TABLE accounts ALTER COLUMN total TYPE numeric(12, 2);", {"name": "numeric", "mods": [12, 2]}),
        ("ALTER TABLE accounts ALTER COLUMN id TYPE bigint;", {"name": "int8", "mods": []}),
    ],
)
def test_type_changes_leave_the_decision_to_the_database(sql, new_type):
    (finding,) = findings_of(sql)
    assert finding["rule"] == "changing-column-type"
    assert finding["unless_rewrite_free"] is True
    assert {key: finding["new_type"][key] for key in ("name", "mods")} == new_type


@pytest.mark.parametrize(
    "sql",
    [
        "ALTER TABLE accounts ALTER COLUMN note TYPE varchar(50) USING note::varchar(50);",
        'ALTER TABLE accounts ALTER COLUMN note TYPE text COLLATE "C";',
        "ALTER TABLE accounts ALTER COLUMN tags TYPE text[];",
    ],
)
def test_type_changes_the_database_cannot_clear(sql):
    (finding,) = findings_of(sql)
    assert finding["rule"] == "changing-column-type"
    assert "unless_rewrite_free" not in finding


@pytest.mark.parametrize(
    ("sql", "found"),
    [
        ("ALTER DOMAIN positive_int ADD CONSTRAINT pos CHECK (VALUE > 0);", True),
        ("ALTER DOMAIN positive_int SET NOT NULL;", True),
        ("ALTER DOMAIN positive_int ADD CONSTRAINT pos CHECK (VALUE > 0) NOT VALID;", False),
        ("ALTER DOMAIN positive_int VALIDATE CONSTRAINT pos;", False),
    ],
)
def test_alter_domain_without_not_valid_asks_for_filled_columns(sql, found):
    findings = findings_of(sql)
    assert [(f["rule"], f["domain"], f["needs_domain_rows"]) for f in findings] == (
        [("alter-domain-add-constraint", "positive_int", True)] if found else []
    )


@pytest.mark.parametrize(
    ("sql", "type_name"),
    [
        ("ALTER TABLE accounts ADD COLUMN contact email_address;", "email_address"),
        ('ALTER TABLE accounts ADD COLUMN amount billing."Money";', 'billing."Money"'),
        ("ALTER TABLE accounts ADD COLUMN contact text, ADD COLUMN id2 uuid;", None),
    ],
)
def test_add_column_of_a_possible_domain_asks_the_database(sql, type_name):
    found = [f for f in findings_of(sql) if f["rule"] == "domain-with-check-column"]
    assert [f["type_name"] for f in found] == ([type_name] if type_name else [])


@pytest.mark.parametrize(
    ("sql", "target"),
    [
        ("REINDEX INDEX CONCURRENTLY accounts_email;", {"kind": "index", "name": "accounts_email"}),
        ("REINDEX TABLE CONCURRENTLY app.accounts;", {"kind": "table", "name": "app.accounts"}),
        ("REINDEX (CONCURRENTLY) INDEX accounts_email;", {"kind": "index", "name": "accounts_email"}),
    ],
)
def test_a_concurrent_reindex_names_what_a_failed_run_leaves(sql, target):
    (statement,) = analysis.analyse("V1__t.sql", f"-- berth:no-transaction\n{sql}")["statements"]
    assert statement["reindex"] == target


def test_tool_sql_drops_the_tools_own_framing_and_keeps_its_transaction():
    text = (
        "BEGIN;\nCREATE TABLE alembic_version (version_num varchar(32) NOT NULL);\n"
        "ALTER TABLE accounts ADD COLUMN tier bigint;\nUPDATE accounts SET tier = 0 WHERE tier IS NULL;\n"
        "DROP TABLE legacy;\nCOMMIT;\n"
    )
    assert rules_of(text, tool=True) == [
        ("advice", "prefer-text-field"),
        ("lock-heavy", "backfill-in-same-transaction"),
        ("destructive", "drop-table"),
    ]
    plain = "CREATE INDEX CONCURRENTLY IF NOT EXISTS accounts_tier ON accounts (tier);"
    assert rules_of(plain, tool=True) == [], "without BEGIN the tool runs it in autocommit"
    assert ("error", "transaction-control") in rules_of(text), "a versioned file may not frame itself"


def test_review_tool_sql_keeps_file_allowances_and_lines():
    reviewed = analysis.review_tool_sql(
        [
            {
                "source": "/app/migrations/2_drop/migration.sql",
                "text": '-- berth:allow destructive reason="x"\n\nDROP TABLE t;',
            }
        ]
    )
    assert reviewed[0]["file"] == "/app/migrations/2_drop/migration.sql"
    assert reviewed[0]["allowances"] == {"destructive": "x"}
    assert [(f["file"], f["line"], f["rule"]) for f in reviewed[0]["findings"]] == [
        ("/app/migrations/2_drop/migration.sql", 3, "drop-table")
    ]


@pytest.mark.parametrize(
    ("path", "pattern", "matched"),
    [
        ("/app/prisma/migrations/20240101_init/migration.sql", "/app/prisma/migrations/*/migration.sql", True),
        ("/app/prisma/migrations/migration.sql", "/app/prisma/migrations/*/migration.sql", False),
        ("/app/drizzle/0001_x.sql", "/app/drizzle/*.sql", True),
        ("/app/drizzle/meta/0001.sql", "/app/drizzle/*.sql", False),
        ("/app/db/migrations/1_init.up.sql", "/app/db/**/*.up.sql", True),
        ("/app/db/1_init.down.sql", "/app/db/**/*.up.sql", False),
    ],
)
def test_sql_file_patterns_match_per_directory_level(path, pattern, matched):
    assert image_sql.matches(path, pattern) is matched


@pytest.mark.parametrize(
    ("pattern", "prefix"),
    [("/app/migrations/*/migration.sql", "/app/migrations"), ("/*.sql", "/"), ("/app/db/x.sql", "/app/db")],
)
def test_only_the_directory_above_the_first_wildcard_is_copied(pattern, prefix):
    assert image_sql.static_prefix(pattern) == prefix
