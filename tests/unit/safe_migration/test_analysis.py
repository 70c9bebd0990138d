"""The controller-side analysis: every class with several statements each, on pglast's real parser."""

from __future__ import annotations

import pytest
from ansible_collections.berth.stack.plugins.module_utils import _migrations as mig
from ansible_collections.berth.stack.plugins.plugin_utils import _migration_analysis as analysis


def rules_of(sql: str, transactional: bool = True) -> list:
    text = sql if transactional else f"-- berth:no-transaction\n{sql}"
    return [(finding["class"], finding["rule"]) for finding in analysis.analyse("V1__t.sql", text)["findings"]]


@pytest.mark.parametrize(
    ("sql", "rule"),
    [
        ("DROP TABLE accounts;", "drop-table"),
        ("DROP TABLE IF EXISTS app.accounts CASCADE;", "drop-table"),
        ("DROP SCHEMA billing CASCADE;", "drop-schema"),
        ("DROP VIEW active_accounts;", "drop-object"),
        ("DROP SEQUENCE invoice_seq;", "drop-object"),
        ("TRUNCATE accounts;", "truncate"),
        ("TRUNCATE accounts, invoices RESTART IDENTITY CASCADE;", "truncate"),
        ("DELETE FROM accounts;", "delete-without-where"),
        ("UPDATE accounts SET status = 'active';", "update-without-where"),
        ("ALTER TABLE accounts DROP COLUMN legacy_flag;", "drop-column"),
        ("ALTER TABLE accounts RENAME COLUMN name TO full_name;", "rename-column"),
        ("ALTER TABLE accounts RENAME TO customers;", "rename-table"),
        ("ALTER SCHEMA billing RENAME TO invoicing;", "rename-table"),
        ("ALTER TABLE accounts ADD COLUMN tier bigint NOT NULL;", "adding-required-field"),
        ("ALTER TABLE accounts ALTER COLUMN email DROP NOT NULL;", "drop-not-null"),
    ],
)
def test_destructive_statements(sql, rule):
    assert rules_of(sql) == [("destructive", rule)]


@pytest.mark.parametrize(
    ("sql", "rule"),
    [
        ("CREATE INDEX accounts_email ON accounts (email);", "create-index-non-concurrent"),
        ("CREATE UNIQUE INDEX accounts_ref ON accounts (ref);", "create-index-non-concurrent"),
        ("DROP INDEX accounts_email;", "drop-index-non-concurrent"),
        ("REINDEX TABLE accounts;", "reindex-non-concurrent"),
        (
            "ALTER TABLE invoices ADD CONSTRAINT fk FOREIGN KEY (account_id) REFERENCES accounts;",
            "foreign-key-without-not-valid",
        ),
        ("ALTER TABLE invoices ADD COLUMN payer bigint REFERENCES accounts;", "foreign-key-without-not-valid"),
        ("ALTER TABLE accounts ADD CONSTRAINT positive CHECK (balance >= 0);", "check-without-not-valid"),
        ("ALTER TABLE accounts ADD CONSTRAINT email_unique UNIQUE (email);", "unique-constraint"),
        ("ALTER TABLE accounts ADD PRIMARY KEY (id);", "primary-key-constraint"),
        ("ALTER TABLE bookings ADD CONSTRAINT no_overlap EXCLUDE USING gist (room WITH =);", "exclusion-constraint"),
        ("ALTER TABLE accounts ALTER COLUMN email SET NOT NULL;", "set-not-null"),
        ("ALTER TABLE accounts ALTER COLUMN id TYPE bigint;", "changing-column-type"),
        ("ALTER TABLE accounts ADD COLUMN token uuid DEFAULT gen_random_uuid();", "volatile-default"),
        ("ALTER TABLE accounts ADD COLUMN seen timestamptz DEFAULT clock_timestamp();", "volatile-default"),
        ("ALTER TABLE accounts ADD COLUMN seq bigserial;", "rewriting-column"),
        ("ALTER TABLE accounts ADD COLUMN n bigint GENERATED ALWAYS AS IDENTITY;", "rewriting-column"),
        ("ALTER TABLE accounts SET TABLESPACE fast;", "table-rewrite"),
        ("CLUSTER accounts USING accounts_pkey;", "table-rewrite"),
        ("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE;", "lock-table"),
        ("REFRESH MATERIALIZED VIEW account_totals;", "refresh-matview-non-concurrent"),
        ("ALTER DOMAIN positive_int ADD CONSTRAINT pos CHECK (VALUE > 0);", "alter-domain-add-constraint"),
    ],
)
def test_lock_heavy_statements(sql, rule):
    assert rules_of(sql) == [("lock-heavy", rule)]


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        (
            "ALTER TABLE accounts ADD CONSTRAINT positive CHECK (balance >= 0) NOT VALID;\n"
            "ALTER TABLE accounts VALIDATE CONSTRAINT positive;",
            "validate-in-same-transaction",
        ),
        (
            "ALTER TABLE invoices ADD CONSTRAINT fk FOREIGN KEY (account_id) REFERENCES accounts NOT VALID;\n"
            "ALTER TABLE invoices VALIDATE CONSTRAINT fk;",
            "validate-in-same-transaction",
        ),
        (
            "ALTER TABLE accounts ADD COLUMN status text;\nUPDATE accounts SET status = 'active' WHERE id < 1000;",
            "backfill-in-same-transaction",
        ),
        (
            "ALTER TABLE invoices ADD CONSTRAINT fk FOREIGN KEY (account_id) REFERENCES accounts NOT VALID;\n"
            "DELETE FROM accounts WHERE closed;",
            "backfill-in-same-transaction",
        ),
    ],
)
def test_statements_that_run_under_an_earlier_alters_lock(text, rule):
    assert rules_of(text) == [("lock-heavy", rule)]
    assert rules_of(text, transactional=False) == [], "in autocommit the ALTER's lock is gone before the next statement"


@pytest.mark.parametrize(
    "text",
    [
        "ALTER TABLE accounts VALIDATE CONSTRAINT positive;\nALTER TABLE accounts VALIDATE CONSTRAINT fk;",
        "ALTER TABLE accounts ADD COLUMN status text;\nUPDATE invoices SET total = 0 WHERE total IS NULL;",
        "CREATE TABLE audit (id bigint);\nALTER TABLE audit ADD COLUMN a text;\nUPDATE audit SET a = '' WHERE id = 1;",
    ],
)
def test_later_statements_on_other_or_unlocked_tables_are_safe(text):
    assert rules_of(text) == []


def test_set_not_null_names_its_column_for_the_check_constraint_lookup():
    findings = analysis.analyse(
        "V1__t.sql", 'ALTER TABLE accounts ALTER email SET NOT NULL, ALTER "Name" SET NOT NULL;'
    )
    assert [(finding["rule"], finding["column"]) for finding in findings["findings"]] == [
        ("set-not-null", "email"),
        ("set-not-null", "Name"),
    ]


def test_a_named_concurrent_index_build_carries_the_index_to_clean_up():
    text = '-- berth:no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS "Email" ON app.accounts (email);'
    (statement,) = analysis.analyse("V1__t.sql", text)["statements"]
    assert statement["index"] == '"app"."Email"'


@pytest.mark.parametrize(
    ("sql", "rules"),
    [
        ("CREATE TABLE tags (id serial PRIMARY KEY, label text);", ["prefer-bigint"]),
        ("CREATE TABLE tags (id int, rank smallint, label varchar(40));", ["prefer-bigint", "prefer-text-field"]),
        ("ALTER TABLE accounts ADD COLUMN seen timestamp;", ["prefer-timestamptz"]),
        ("ALTER TABLE accounts ADD COLUMN country char(2), ADD COLUMN region character(3);", ["ban-char-field"]),
    ],
)
def test_column_types_that_cost_later_are_advice(sql, rules):
    assert rules_of(sql) == [("advice", rule) for rule in rules]


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE INDEX CONCURRENTLY accounts_email ON accounts (email);",
        "CREATE INDEX CONCURRENTLY ON accounts (email);",
        "DROP INDEX CONCURRENTLY accounts_email;",
    ],
)
def test_no_transaction_statements_that_fail_on_a_rerun_are_advice(sql):
    assert rules_of(sql, transactional=False) == [("advice", "prefer-robust-stmts")]


def test_advice_warns_and_never_refuses_even_under_strict():
    text = "CREATE TABLE tags (id int);\nALTER TABLE tags ADD COLUMN label varchar(10);\n"
    migration = dict(analysis.analyse("V5__tags.sql", text), file="V5__tags.sql")
    assert [finding["line"] for finding in migration["findings"]] == [1, 2], "advice holds on a fresh table too"
    refused, judged, lifted = mig.judge([migration], "strict", connection=None)
    assert lifted == []
    assert refused == []
    assert {finding["verdict"] for finding in judged} == {"warned"}


def test_vacuum_full_is_lock_heavy_outside_a_transaction():
    assert rules_of("VACUUM FULL accounts;", transactional=False) == [("lock-heavy", "table-rewrite")]


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TABLE invoices (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, total numeric NOT NULL);",
        "ALTER TABLE accounts ADD COLUMN status text;",
        "ALTER TABLE accounts ADD COLUMN status text NOT NULL DEFAULT 'active';",
        "ALTER TABLE accounts ADD COLUMN created timestamptz DEFAULT now();",
        "ALTER TABLE invoices ADD CONSTRAINT fk FOREIGN KEY (account_id) REFERENCES accounts NOT VALID;",
        "ALTER TABLE invoices VALIDATE CONSTRAINT fk;",
        "ALTER TABLE accounts ADD CONSTRAINT positive CHECK (balance >= 0) NOT VALID;",
        "ALTER TABLE accounts ADD CONSTRAINT accounts_pkey PRIMARY KEY USING INDEX accounts_id_idx;",
        "ALTER TABLE accounts ALTER COLUMN status SET DEFAULT 'active';",
        "UPDATE accounts SET status = 'active' WHERE id BETWEEN 1 AND 1000;",
        "DELETE FROM sessions WHERE expires < now() - interval '30 days';",
        "INSERT INTO settings (key, value) VALUES ('theme', 'dark');",
        "CREATE VIEW active_accounts AS SELECT * FROM accounts WHERE status = 'active';",
        "REFRESH MATERIALIZED VIEW CONCURRENTLY account_totals;",
        "COMMENT ON TABLE accounts IS 'customers';",
    ],
)
def test_safe_statements_have_no_findings(sql):
    assert rules_of(sql) == []


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS accounts_email ON accounts (email);",
        "DROP INDEX CONCURRENTLY IF EXISTS accounts_email;",
        "REINDEX INDEX CONCURRENTLY accounts_email;",
    ],
)
def test_concurrently_is_an_error_in_a_transaction_and_safe_outside(sql):
    assert rules_of(sql) == [("error", "concurrently-in-transaction")]
    assert rules_of(sql, transactional=False) == []


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("BEGIN;\nALTER TABLE accounts ADD COLUMN x int;\nCOMMIT;", "transaction-control"),
        ("VACUUM accounts;", "needs-no-transaction"),
        ("ALTER TABLE accounts ADD COLUMN x int;\nSELEC 1;", "parse-error"),
        ("-- berth:allow destructive\nSELECT 1;", "bad-directive"),
        ('-- berth:allow everything reason="yolo"\nSELECT 1;', "bad-directive"),
        ("-- berth:run-twice\nSELECT 1;", "bad-directive"),
    ],
)
def test_errors(text, rule):
    assert ("error", rule) in rules_of(text)


def test_statements_on_a_table_created_in_the_same_file_are_safe():
    text = (
        "CREATE TABLE audit (id bigint, who text);\n"
        "CREATE INDEX audit_who ON audit (who);\n"
        "ALTER TABLE audit ADD COLUMN at timestamptz NOT NULL;\n"
        "ALTER TABLE audit ALTER COLUMN who SET NOT NULL;\n"
        "CREATE INDEX accounts_email ON accounts (email);\n"
    )
    findings = analysis.analyse("V2__audit.sql", text)["findings"]
    assert [(finding["rule"], finding["line"], finding["table"]) for finding in findings] == [
        ("create-index-non-concurrent", 5, "accounts")
    ]


@pytest.mark.parametrize(
    ("sql", "table"),
    [
        ('ALTER TABLE "Accounts" ALTER COLUMN email SET NOT NULL;', '"Accounts"'),
        ("ALTER TABLE public.accounts ALTER COLUMN email SET NOT NULL;", "accounts"),
        ('ALTER TABLE "Billing".invoices ALTER COLUMN total SET NOT NULL;', '"Billing".invoices'),
        ('DROP TABLE app."Old Accounts";', 'app."Old Accounts"'),
    ],
)
def test_finding_tables_are_names_to_regclass_reads_back(sql, table):
    (finding,) = analysis.analyse("V1__t.sql", sql)["findings"]
    assert finding["table"] == table


def test_a_finding_names_file_line_rule_why_and_alternative():
    text = "-- add a column\n\nALTER TABLE accounts\n  ALTER COLUMN email SET NOT NULL;\n"
    (finding,) = analysis.analyse("V7__email_required.sql", text)["findings"]
    assert finding["file"] == "V7__email_required.sql"
    assert finding["line"] == 3
    assert finding["rule"] == "set-not-null"
    assert "ACCESS EXCLUSIVE" in finding["why"]
    assert "NOT VALID" in finding["alternative"]


def test_directives_set_transaction_mode_and_allowances():
    text = (
        "-- berth:no-transaction\n"
        '-- berth:allow lock-heavy reason="table has 40 rows"\n'
        '-- berth:allow destructive reason="contract step of release 12"\n'
        "SELECT 1;\n"
    )
    result = analysis.analyse("V3__x.sql", text)
    assert result["transactional"] is False
    assert result["allowances"] == {"lock-heavy": "table has 40 rows", "destructive": "contract step of release 12"}


def test_statement_lines_and_text_come_from_the_parser():
    text = "-- é\nCREATE TABLE a (id int);\n\n/* two\nlines */ INSERT INTO a VALUES (1);\nSELECT ';'"
    statements = analysis.analyse("V1__a.sql", text)["statements"]
    assert [(statement["line"], statement["sql"]) for statement in statements] == [
        (2, "CREATE TABLE a (id int)"),
        (5, "INSERT INTO a VALUES (1)"),
        (6, "SELECT ';'"),
    ]


def test_load_directory_orders_by_numeric_version_and_checksums(migrations):
    migrations("V10__ten.sql", "SELECT 10;")
    migrations("V9__nine.sql", "SELECT 9;")
    migrations("V1.2__one_two.sql", "SELECT 1.2;")
    migrations("README.md", "ignored")
    loaded = analysis.load_directory(str(migrations.directory))
    assert [item["file"] for item in loaded] == ["V1.2__one_two.sql", "V9__nine.sql", "V10__ten.sql"]
    assert loaded[0]["description"] == "one two"
    assert len(loaded[0]["checksum"]) == 64


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"add_status.sql": "SELECT 1;"}, "not a migration name; use V<version>__<description>.sql"),
        ({"V1__a.sql": "SELECT 1;", "V01__b.sql": "SELECT 2;"}, "have the same version"),
        ({"V1__latin1.sql": b"SELECT '\xe9';"}, "cannot read migration file"),
    ],
)
def test_load_directory_rejects_bad_files(migrations, files, message):
    for name, content in files.items():
        path = migrations.directory / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    with pytest.raises(analysis.MigrationFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        analysis.load_directory(str(migrations.directory))


def test_load_directory_names_a_missing_directory(tmp_path):
    with pytest.raises(analysis.MigrationFileError, match=r"directory: .*/nowhere does not exist"):
        analysis.load_directory(str(tmp_path / "nowhere"))


def test_a_parse_error_names_its_line():
    (finding,) = analysis.analyse("V4__typo.sql", "-- é\nSELECT 1;\n\nSELEC 2;\n")["findings"]
    assert (finding["rule"], finding["line"]) == ("parse-error", 4)
    assert 'syntax error at or near "SELEC"' in finding["detail"]


def test_load_directory_names_a_file_it_cannot_open(migrations):
    # Root reads any mode, so an unopenable entry is made the way root cannot read either.
    (migrations.directory / "V1__not_a_file.sql").mkdir()
    with pytest.raises(analysis.MigrationFileError, match=r"cannot read migration file .*V1__not_a_file.sql: Is a"):
        analysis.load_directory(str(migrations.directory))
