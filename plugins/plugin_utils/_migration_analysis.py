# Copyright (c) berth.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Safety analysis of SQL migration files, run on the controller by the safe_migration action plugin.

Each file is parsed with pglast (libpg_query, PostgreSQL's own parser) and every statement is
classified:

- ``destructive``: loses data or breaks the release that is still running (drops, truncates,
  DELETE/UPDATE without WHERE, renames, a NOT NULL column without default on a filled table).
  Refused unless the file carries ``-- berth:allow destructive reason="..."``.
- ``lock-heavy``: holds a lock that blocks reads or writes for as long as a scan, an index build or
  a table rewrite takes. Refused by the ``strict`` policy unless the file carries
  ``-- berth:allow lock-heavy reason="..."``; the ``warn`` policy lets it run with a warning.
- ``unanalysable``: runs SQL the parser cannot see (a DO block, EXECUTE of a prepared statement,
  a function called for its side effects), so nothing can say it is safe. Refused unless the file
  carries ``-- berth:allow unanalysable reason="..."``.
- ``error``: cannot run as written (a parse error, CONCURRENTLY or VACUUM inside a transactional
  file, transaction control inside a file, a malformed directive). Always refused.

- ``advice``: safe to run, but a choice that costs later (an int key that runs out, varchar(n)
  whose limit needs a lock-heavy type change to raise, timestamp without time zone, char(n), a
  no-transaction statement that fails when the file is re-run). Always runs, with a warning.

A statement without a finding is safe. Statements on a table created earlier in the same file are
safe whatever they do: nobody else can be using that table yet.
"""

from __future__ import annotations

import hashlib
import os
import re

from ansible_collections.berth.stack.plugins.module_utils._migrations import parse_name, quote_ident, version_key

try:
    import pglast
    from pglast import ast
    from pglast.enums import AlterTableType, ConstrType, ObjectType
    from pglast.stream import RawStream

    HAS_PGLAST = True
except ImportError:
    HAS_PGLAST = False

DESTRUCTIVE = "destructive"
LOCK_HEAVY = "lock-heavy"
UNANALYSABLE = "unanalysable"
ERROR = "error"
ADVICE = "advice"
ALLOWABLE_CLASSES = (DESTRUCTIVE, LOCK_HEAVY, UNANALYSABLE)

DIRECTIVE = re.compile(r"^\s*--\s*berth:(?P<name>[\w-]+)(?P<rest>.*)$")
PLAIN_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_$]*$")
ALLOW = re.compile(r'^\s+(?P<cls>[\w-]+)\s+reason\s*=\s*"(?P<reason>[^"]*)"\s*$')

# Rule id -> (class, why it is dangerous, the safe alternative). One table, so the README, the
# tests and the findings all speak the same language.
RULES = {
    "drop-table": (
        DESTRUCTIVE,
        "DROP TABLE deletes the table and its data; the running release may still read it.",
        "Contract in a later release: stop using the table, back it up, then drop it under an allowance.",
    ),
    "drop-schema": (
        DESTRUCTIVE,
        "DROP SCHEMA deletes every object in the schema.",
        "Drop the objects one release after nothing uses them, under an allowance.",
    ),
    "drop-database": (
        DESTRUCTIVE,
        "DROP DATABASE deletes a whole database.",
        "Never from a migration: drop databases by hand after a verified backup.",
    ),
    "drop-object": (
        DESTRUCTIVE,
        "Dropping a view, sequence, type, domain or function breaks the release that still uses it.",
        "Drop it one release after the code stopped using it, under an allowance.",
    ),
    "truncate": (
        DESTRUCTIVE,
        "TRUNCATE deletes every row and takes an ACCESS EXCLUSIVE lock.",
        "Delete the rows that must go in bounded batches with a WHERE clause.",
    ),
    "delete-without-where": (
        DESTRUCTIVE,
        "DELETE without WHERE deletes every row of the table.",
        "Add a WHERE clause naming the rows to delete, and delete in bounded batches.",
    ),
    "update-without-where": (
        DESTRUCTIVE,
        "UPDATE without WHERE rewrites every row in one transaction, overwriting existing values.",
        "Backfill in bounded batches with a WHERE clause, outside the schema change.",
    ),
    "drop-column": (
        DESTRUCTIVE,
        "DROP COLUMN deletes the column's data, and the running release fails if it still selects it.",
        "Expand/contract: stop reading and writing the column in one release, drop it in a later one.",
    ),
    "rename-column": (
        DESTRUCTIVE,
        "Renaming a column breaks every query of the running release that names it.",
        "Add the new column, write to both, backfill, switch reads, then drop the old one later.",
    ),
    "rename-table": (
        DESTRUCTIVE,
        "Renaming a table (or schema, or view) breaks every query of the running release that names it.",
        "Create the new table (or a view under the new name), migrate the code, drop the old name later.",
    ),
    "adding-required-field": (
        DESTRUCTIVE,
        "ADD COLUMN ... NOT NULL without a DEFAULT fails on a table that has rows, and inserts from "
        "the running release fail once it succeeds.",
        "Add the column nullable (or with a constant DEFAULT), backfill, then add a NOT VALID CHECK "
        "(col IS NOT NULL), VALIDATE it, and SET NOT NULL.",
    ),
    "drop-not-null": (
        DESTRUCTIVE,
        "DROP NOT NULL lets NULLs in that the running release does not expect.",
        "Allow it once the running release handles NULL in that column.",
    ),
    "unanalysable-do-block": (
        UNANALYSABLE,
        "A DO block runs procedural code (loops, dynamic SQL through EXECUTE) that the parser cannot see into, "
        "so nothing here can tell what it drops, deletes or locks.",
        "Write the statements out as plain SQL; if the block is needed, allow it with "
        '-- berth:allow unanalysable reason="what it does and why that is safe".',
    ),
    "unanalysable-execute": (
        UNANALYSABLE,
        "EXECUTE runs a prepared statement whose text is not judged here.",
        "Write the statement itself in the file.",
    ),
    "unanalysable-function-call": (
        UNANALYSABLE,
        "Calling a function (SELECT f(), CALL p()) for its effect runs SQL that is not in the file: "
        "what it changes and locks cannot be seen.",
        "Write what the function does as plain SQL, or allow the call with "
        '-- berth:allow unanalysable reason="what the function does".',
    ),
    "overwrite-column": (
        DESTRUCTIVE,
        "ALTER COLUMN ... TYPE ... USING an expression that does not read the column replaces every value "
        "of the column (and rewrites the table).",
        "Add a new column, backfill it in batches, switch the code, drop the old column later.",
    ),
    "create-index-non-concurrent": (
        LOCK_HEAVY,
        "CREATE INDEX without CONCURRENTLY blocks all writes to the table for the whole build.",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS in a file marked -- berth:no-transaction.",
    ),
    "drop-index-non-concurrent": (
        LOCK_HEAVY,
        "DROP INDEX without CONCURRENTLY takes an ACCESS EXCLUSIVE lock on the table.",
        "DROP INDEX CONCURRENTLY IF EXISTS in a file marked -- berth:no-transaction.",
    ),
    "reindex-non-concurrent": (
        LOCK_HEAVY,
        "REINDEX without CONCURRENTLY blocks writes (and reads that use the index) for the whole rebuild.",
        "REINDEX ... CONCURRENTLY in a file marked -- berth:no-transaction.",
    ),
    "foreign-key-without-not-valid": (
        LOCK_HEAVY,
        "Adding a foreign key validates every row while blocking writes on both tables.",
        "ADD CONSTRAINT ... FOREIGN KEY ... NOT VALID, then VALIDATE CONSTRAINT in a later statement.",
    ),
    "check-without-not-valid": (
        LOCK_HEAVY,
        "Adding a CHECK constraint scans the whole table under an ACCESS EXCLUSIVE lock.",
        "ADD CONSTRAINT ... CHECK (...) NOT VALID, then VALIDATE CONSTRAINT in a later statement.",
    ),
    "unique-constraint": (
        LOCK_HEAVY,
        "Adding a UNIQUE constraint builds its index under an ACCESS EXCLUSIVE lock.",
        "CREATE UNIQUE INDEX CONCURRENTLY, then ADD CONSTRAINT ... UNIQUE USING INDEX.",
    ),
    "primary-key-constraint": (
        LOCK_HEAVY,
        "Adding a PRIMARY KEY builds its index (and checks NOT NULL) under an ACCESS EXCLUSIVE lock.",
        "CREATE UNIQUE INDEX CONCURRENTLY, then ADD CONSTRAINT ... PRIMARY KEY USING INDEX.",
    ),
    "exclusion-constraint": (
        LOCK_HEAVY,
        "Adding an EXCLUDE constraint builds its index under an ACCESS EXCLUSIVE lock; there is no concurrent variant.",
        "Add it while the table is small or in a maintenance window, under an allowance.",
    ),
    "set-not-null": (
        LOCK_HEAVY,
        "SET NOT NULL scans the whole table under an ACCESS EXCLUSIVE lock.",
        "ADD CONSTRAINT c CHECK (col IS NOT NULL) NOT VALID in one file, VALIDATE CONSTRAINT c in a later "
        "file, then SET NOT NULL in a later run: with that CHECK validated PostgreSQL 12+ skips the scan, "
        "and safe_migration no longer reports it. Then drop the CHECK.",
    ),
    "changing-column-type": (
        LOCK_HEAVY,
        "Changing a column's type usually rewrites the table and its indexes under an ACCESS EXCLUSIVE lock.",
        "Add a new column of the new type, backfill in batches, switch the code, drop the old column later. "
        "(Raising or removing a varchar limit, varchar to text and other binary-coercible changes need no "
        "rewrite: safe_migration reads the column's current type on the database and does not refuse those.)",
    ),
    "volatile-default": (
        LOCK_HEAVY,
        "ADD COLUMN with a volatile DEFAULT (random(), clock_timestamp(), gen_random_uuid(), nextval) "
        "rewrites the whole table under an ACCESS EXCLUSIVE lock.",
        "Add the column without a default, set the default in a second statement, backfill in batches.",
    ),
    "rewriting-column": (
        LOCK_HEAVY,
        "Adding a serial, identity or stored generated column rewrites the whole table under an ACCESS EXCLUSIVE lock.",
        "Add a plain nullable column, attach a sequence default, backfill in batches.",
    ),
    "table-rewrite": (
        LOCK_HEAVY,
        "VACUUM FULL, CLUSTER, SET TABLESPACE and SET LOGGED/UNLOGGED rewrite the table under an "
        "ACCESS EXCLUSIVE lock.",
        "Use pg_repack or plain VACUUM; move or re-log tables in a maintenance window.",
    ),
    "lock-table": (
        LOCK_HEAVY,
        "An explicit LOCK holds the table for the rest of the transaction.",
        "Rely on the locks the statements take themselves; keep the file short.",
    ),
    "refresh-matview-non-concurrent": (
        LOCK_HEAVY,
        "REFRESH MATERIALIZED VIEW without CONCURRENTLY blocks reads of the view until it finishes.",
        "REFRESH MATERIALIZED VIEW CONCURRENTLY (needs a unique index on the view).",
    ),
    "alter-domain-add-constraint": (
        LOCK_HEAVY,
        "ALTER DOMAIN ... ADD CONSTRAINT (or SET NOT NULL) checks every row of every column of that domain, "
        "holding a lock that blocks writes to those tables.",
        "ADD CONSTRAINT ... NOT VALID, then VALIDATE CONSTRAINT in a later file.",
    ),
    "domain-with-check-column": (
        LOCK_HEAVY,
        "ADD COLUMN of a domain type that has CHECK or NOT NULL constraints checks the constraints against "
        "every row, rewriting the table under an ACCESS EXCLUSIVE lock.",
        "Add the column with the domain's base type, backfill, then switch the type in a maintenance window "
        "(or add the column while the table is empty).",
    ),
    "validate-in-same-transaction": (
        LOCK_HEAVY,
        "VALIDATE CONSTRAINT in the same transaction as an earlier ALTER TABLE of that table scans the "
        "whole table while the earlier statement's lock (ACCESS EXCLUSIVE for a CHECK) is still held, "
        "which is exactly what NOT VALID was meant to avoid.",
        "Put VALIDATE CONSTRAINT in its own, later migration file.",
    ),
    "backfill-in-same-transaction": (
        LOCK_HEAVY,
        "UPDATE or DELETE of a table altered earlier in the same transaction runs while that ALTER's lock "
        "(usually ACCESS EXCLUSIVE) is held, blocking every read and write until the backfill commits.",
        "Backfill in a separate migration file (or a job), in bounded batches with a WHERE clause.",
    ),
    "prefer-bigint": (
        ADVICE,
        "An int or smallint (serial) column used as a key or counter runs out at 2^31 (2^15), and widening "
        "it later is a table rewrite under an ACCESS EXCLUSIVE lock.",
        "Use bigint (bigserial, or bigint GENERATED ALWAYS AS IDENTITY).",
    ),
    "prefer-text-field": (
        ADVICE,
        "Raising a varchar(n) limit later is a type change; a limit is cheaper to change as a CHECK constraint.",
        "Use text, with CHECK (char_length(col) <= n) NOT VALID if a limit matters.",
    ),
    "prefer-timestamptz": (
        ADVICE,
        "timestamp without time zone stores wall-clock time with no zone, so values shift meaning when a "
        "server or client time zone changes; converting later rewrites the table.",
        "Use timestamptz.",
    ),
    "ban-char-field": (
        ADVICE,
        "char(n) pads values with spaces and is no faster than text; changing it later rewrites the table.",
        "Use text (with a CHECK constraint if the length matters).",
    ),
    "prefer-robust-stmts": (
        ADVICE,
        "A no-transaction file keeps the statements that already ran when a later one fails, so it runs "
        "again from the top; this statement then fails (already exists / does not exist) or, unnamed, "
        "builds a duplicate index.",
        "Name the index and write CREATE INDEX CONCURRENTLY IF NOT EXISTS / DROP INDEX CONCURRENTLY IF EXISTS.",
    ),
    "concurrently-in-transaction": (
        ERROR,
        "CONCURRENTLY cannot run inside a transaction block; this file runs in one.",
        "Put the statement in its own file whose first line is -- berth:no-transaction.",
    ),
    "needs-no-transaction": (
        ERROR,
        "VACUUM, CREATE/DROP DATABASE and ALTER SYSTEM cannot run inside a transaction block.",
        "Put the statement in its own file whose first line is -- berth:no-transaction.",
    ),
    "transaction-control": (
        ERROR,
        "BEGIN/COMMIT/ROLLBACK inside a file breaks the per-file transaction that keeps history consistent.",
        "Remove it; each file already runs in its own transaction (or in autocommit with -- berth:no-transaction).",
    ),
    "parse-error": (
        ERROR,
        "PostgreSQL's parser rejects this file.",
        "Fix the syntax; run the file against a scratch database first.",
    ),
    "bad-directive": (
        ERROR,
        "A berth: directive is malformed, unknown, or an allowance has no reason.",
        'Use -- berth:no-transaction or -- berth:allow destructive|lock-heavy|unanalysable reason="why this is safe".',
    ),
}

# Functions whose value differs per row, so a DEFAULT calling them forces a table rewrite.
VOLATILE_FUNCTIONS = {
    "random",
    "clock_timestamp",
    "timeofday",
    "gen_random_uuid",
    "uuid_generate_v1",
    "uuid_generate_v1mc",
    "uuid_generate_v4",
    "uuidv4",
    "uuidv7",
    "nextval",
    "txid_current",
}
SERIAL_TYPES = {"serial", "serial2", "serial4", "serial8", "smallserial", "bigserial"}
REWRITING_SUBTYPES = {"AT_SetTableSpace", "AT_SetLogged", "AT_SetUnLogged", "AT_SetAccessMethod"}
DROPPED_OBJECTS = {
    "OBJECT_VIEW",
    "OBJECT_MATVIEW",
    "OBJECT_SEQUENCE",
    "OBJECT_TYPE",
    "OBJECT_DOMAIN",
    "OBJECT_FUNCTION",
    "OBJECT_PROCEDURE",
    "OBJECT_FOREIGN_TABLE",
}


def sql_name(*parts: str) -> str:
    """A qualified name that to_regclass() reads back as the same relation: a name PostgreSQL did not
    fold to lower case ("Accounts") is quoted again; public is implied, so `t` and `public.t` match."""
    if len(parts) == 2 and parts[0] in (None, "public"):
        parts = parts[1:]
    return ".".join(part if PLAIN_IDENTIFIER.match(part) else quote_ident(part) for part in parts)


def table_name(relation) -> str:
    return sql_name(relation.schemaname, relation.relname)


def _finding(rule: str, statement: dict, table: str | None = None, **extra) -> dict:
    cls, why, alternative = RULES[rule]
    return {
        "rule": rule,
        "class": cls,
        "line": statement["line"],
        "statement": statement["sql"][:200],
        "table": table,
        "why": why,
        "alternative": alternative,
        **extra,
    }


def parse_directives(text: str) -> tuple[bool, dict, list]:
    """(transactional, {class: reason}, directive errors as (line, message))."""
    transactional = True
    allowances = {}
    errors = []
    for number, line in enumerate(text.splitlines(), start=1):
        match = DIRECTIVE.match(line)
        if not match:
            continue
        name, rest = match["name"], match["rest"]
        if name == "no-transaction" and not rest.strip():
            transactional = False
        elif name == "allow":
            allow = ALLOW.match(rest)
            if not allow or allow["cls"] not in ALLOWABLE_CLASSES or not allow["reason"].strip():
                errors.append((number, f"malformed allowance {line.strip()!r}"))
            else:
                allowances[allow["cls"]] = allow["reason"].strip()
        else:
            errors.append((number, f"unknown directive {line.strip()!r}"))
    return transactional, allowances, errors


def split_statements(text: str) -> list:
    """Statements with their text and 1-based starting line (pglast reports character offsets)."""
    statements = []
    for parsed in pglast.parse_sql(text):
        start = parsed.stmt_location or 0
        end = start + parsed.stmt_len if parsed.stmt_len else len(text)
        statements.append(
            {
                "sql": text[start:end].strip(),
                "line": text[:start].count("\n") + 1,
                "node": parsed.stmt,
                "tables": [],
            }
        )
    return statements


# Functions a migration may call in a plain SELECT: their effect is known (none on data, or a
# sequence or session setting). Any other call runs code this analysis cannot see.
KNOWN_FUNCTIONS = {
    "count", "sum", "min", "max", "avg", "now", "version", "current_setting", "set_config", "to_regclass",
    "setval", "nextval", "currval", "pg_advisory_lock", "pg_advisory_unlock", "pg_advisory_xact_lock",
    "pg_try_advisory_lock", "pg_try_advisory_xact_lock", "lower", "upper", "length", "char_length",
    "format", "concat", "pg_sleep",
}  # fmt: skip
# Type names that are never a user's domain (pglast spells the SQL-standard ones pg_catalog.x).
BUILTIN_TYPE_NAMES = {
    "text", "uuid", "json", "jsonb", "bytea", "date", "timestamptz", "timetz", "inet", "cidr", "macaddr",
    "money", "citext", "tsvector", "xml", "int", "integer", "bigint", "smallint", "serial", "bigserial",
    "smallserial", "boolean", "real", "float8", "float4", "int2", "int4", "int8", "bool", "varchar",
    "numeric", "timestamp", "interval", "time", "char", "name", "oid", "point", "daterange", "tstzrange",
}  # fmt: skip
COMPARISONS = {
    "=": lambda a, b: a == b,
    "<>": lambda a, b: a != b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
}
TRUE_WORDS = {"t", "true", "y", "yes", "on", "1"}
FALSE_WORDS = {"f", "false", "n", "no", "off", "0"}
UNKNOWN = object()


def sql_text(node) -> str:
    """A node printed back as SQL, for findings."""
    try:
        return RawStream()(node)
    except Exception:  # printing is best effort; the finding stands without it
        return "?"


def _constant(node):
    """The value of an expression built from constants only (None for SQL NULL), else UNKNOWN."""
    if isinstance(node, ast.A_Const):
        if node.isnull:
            return None
        value = node.val
        for attribute in ("boolval", "ival", "sval"):
            if hasattr(value, attribute):
                return getattr(value, attribute)
        return float(value.fval) if hasattr(value, "fval") else UNKNOWN
    if isinstance(node, ast.TypeCast) and node.typeName.names[-1].sval == "bool":
        inner = _constant(node.arg)
        if isinstance(inner, str) and inner.lower() in TRUE_WORDS | FALSE_WORDS:
            return inner.lower() in TRUE_WORDS
        return inner if isinstance(inner, bool) else UNKNOWN
    if isinstance(node, ast.BoolExpr):
        values = [_constant(arg) for arg in node.args]
        if node.boolop.name == "NOT_EXPR":
            return (not values[0]) if isinstance(values[0], bool) else UNKNOWN
        if node.boolop.name == "AND_EXPR":
            if False in values:
                return False
            return True if all(value is True for value in values) else UNKNOWN
        if True in values:
            return True
        return False if all(value is False for value in values) else UNKNOWN
    if isinstance(node, ast.A_Expr) and node.kind.name == "AEXPR_OP" and len(node.name) == 1:
        compare = COMPARISONS.get(node.name[0].sval)
        left, right = _constant(node.lexpr), _constant(node.rexpr)
        if compare and UNKNOWN not in (left, right) and None not in (left, right):
            try:
                return compare(left, right)
            except TypeError:
                return UNKNOWN
        # `id = id` holds for every row where id is not NULL.
        if compare and node.name[0].sval == "=" and isinstance(node.lexpr, ast.ColumnRef) and node.lexpr == node.rexpr:
            return True
    if isinstance(node, ast.NullTest):
        inner = _constant(node.arg)
        if inner is not UNKNOWN:
            return (inner is None) == (node.nulltesttype.name == "IS_NULL")
    if isinstance(node, ast.SubLink) and node.subLinkType.name == "EXISTS_SUBLINK":
        query = node.subselect
        if isinstance(query, ast.SelectStmt) and not query.fromClause and query.whereClause is None:
            return True
    return UNKNOWN


def _ctes(statement) -> dict:
    clause = getattr(statement, "withClause", None)
    return {cte.ctename: cte.ctequery for cte in (clause.ctes if clause else ())}


def _reads_whole_table(query, table: str, ctes: dict) -> bool:
    """A SELECT of every row of `table` (directly, or through a CTE that selects them all)."""
    if not isinstance(query, ast.SelectStmt) or query.whereClause is not None or query.limitCount is not None:
        return False
    sources = query.fromClause or ()
    if len(sources) != 1 or not isinstance(sources[0], ast.RangeVar):
        return False
    source = sources[0]
    if source.schemaname is None and source.relname in ctes:
        return _reads_whole_table(ctes[source.relname], table, {})
    return table_name(source) == table


def _refers_to_target(expression, names: set) -> bool:
    """Whether a WHERE clause reads the row being changed (a column of the target, or unqualified)."""

    def visit(node, in_subquery):
        if isinstance(node, ast.ColumnRef):
            fields = [getattr(field, "sval", None) for field in node.fields]
            if len(fields) >= 2 and fields[-2] in names:
                return True
            return len(fields) == 1 and not in_subquery
        if isinstance(node, ast.Node):
            inner = in_subquery or isinstance(node, ast.SelectStmt)
            return any(visit(getattr(node, attribute), inner) for attribute in node)
        if isinstance(node, tuple):
            return any(visit(item, in_subquery) for item in node)
        return False

    return visit(expression, False)


def where_problem(statement) -> str | None:
    """Why a DELETE or UPDATE changes every row although it may have a WHERE clause, else None."""
    where = statement.whereClause
    if where is None:
        return "no WHERE clause"
    if _constant(where) is True:
        return f"WHERE {sql_text(where)} is always true"
    target = table_name(statement.relation)
    names = {statement.relation.relname, target}
    if statement.relation.alias is not None:
        names = {statement.relation.alias.aliasname}
    if not _refers_to_target(where, names):
        return f"WHERE {sql_text(where)} does not read the rows of {target}: it matches all of them or none"
    ctes = _ctes(statement)
    if (
        isinstance(where, ast.SubLink)
        and where.subLinkType.name == "ANY_SUBLINK"
        and _reads_whole_table(where.subselect, target, ctes)
    ):
        return f"WHERE {sql_text(where)} selects every row of {target}"
    return None


def data_change_rules(node) -> list:
    """DELETE/UPDATE/MERGE anywhere in a statement (CTEs, PREPARE, EXPLAIN ANALYZE, rules) that
    change every row, as (rule, extra) pairs."""
    if isinstance(node, ast.ExplainStmt) and not _has_option(node.options, "analyze"):
        return []
    rules = []
    for inner in _walk(node):
        if isinstance(inner, (ast.DeleteStmt, ast.UpdateStmt)):
            problem = where_problem(inner)
            if problem:
                rule = "delete-without-where" if isinstance(inner, ast.DeleteStmt) else "update-without-where"
                nested = "" if inner is node else " (inside another statement)"
                rules.append((rule, {"table": table_name(inner.relation), "detail": f"{problem}{nested}"}))
        elif isinstance(inner, ast.MergeStmt) and _constant(inner.joinCondition) is True:
            for clause in inner.mergeWhenClauses or ():
                kind = clause.commandType.name
                if kind in ("CMD_DELETE", "CMD_UPDATE"):
                    rule = "delete-without-where" if kind == "CMD_DELETE" else "update-without-where"
                    detail = f"MERGE ... ON {sql_text(inner.joinCondition)} matches every row"
                    rules.append((rule, {"table": table_name(inner.relation), "detail": detail}))
    return rules


def _function_name(call) -> str:
    return ".".join(part.sval for part in call.funcname)


def unanalysable_rules(node) -> list:
    if isinstance(node, ast.DoStmt):
        return [("unanalysable-do-block", {"detail": "DO block"})]
    if isinstance(node, ast.ExecuteStmt):
        return [("unanalysable-execute", {"detail": f"EXECUTE {node.name}"})]
    if isinstance(node, ast.CallStmt):
        return [("unanalysable-function-call", {"detail": f"CALL {_function_name(node.funccall)}"})]
    if not isinstance(node, ast.SelectStmt):
        return []
    unknown = []
    for inner in _walk(node):
        if isinstance(inner, ast.FuncCall):
            parts = [part.sval.lower() for part in inner.funcname]
            known = parts[-1] in KNOWN_FUNCTIONS and (len(parts) == 1 or parts[0] == "pg_catalog")
            if not known:
                unknown.append(_function_name(inner))
    if not unknown:
        return []
    names = ", ".join(dict.fromkeys(unknown))
    return [("unanalysable-function-call", {"detail": f"SELECT calls {names}()"})]


def _type_of(type_name) -> dict | None:
    """{name, mods, text} of a type in ALTER COLUMN TYPE, when only integer modifiers follow it."""
    if type_name.arrayBounds:
        return None
    parts = [part.sval for part in type_name.names]
    mods = []
    for modifier in type_name.typmods or ():
        value = _constant(modifier)
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        mods.append(value)
    schema = parts[0] if len(parts) == 2 else None
    return {"schema": schema, "name": parts[-1], "mods": mods, "text": sql_text(type_name)}


def column_type_rules(command) -> list:
    """changing-column-type, which the module lifts when the database says no rewrite is needed."""
    column = command.def_
    using = column.raw_default
    if using is not None and not any(isinstance(node, ast.ColumnRef) for node in _walk(using)):
        return [
            ("overwrite-column", {"detail": f"USING {sql_text(using)} replaces every value of {command.name}"}),
            ("changing-column-type", {"column": command.name}),
        ]
    new_type = _type_of(column.typeName)
    if using is not None or column.collClause is not None or new_type is None:
        reason = "a USING expression" if using is not None else "a COLLATE change" if column.collClause else ""
        return [("changing-column-type", {"column": command.name, "detail": reason or None})]
    return [("changing-column-type", {"column": command.name, "new_type": new_type, "unless_rewrite_free": True})]


def domain_column_rules(column) -> list:
    """ADD COLUMN of a type that may be a domain with constraints; the module asks the database."""
    if column.typeName is None or column.typeName.arrayBounds:
        return []
    parts = [part.sval for part in column.typeName.names]
    if parts[0] == "pg_catalog" or (len(parts) == 1 and parts[0].lower() in BUILTIN_TYPE_NAMES):
        return []
    extra = {"type_name": sql_name(*parts), "needs_constrained_domain": True, "needs_rows": True}
    return [("domain-with-check-column", extra)]


def domain_rules(node) -> list:
    if node.subtype == "C" and isinstance(node.def_, ast.Constraint) and not node.def_.skip_validation:
        action = f"ADD CONSTRAINT {node.def_.conname or ''}".strip()
    elif node.subtype == "O":
        action = "SET NOT NULL"
    else:
        return []
    domain = sql_name(*(part.sval for part in node.typeName))
    return [("alter-domain-add-constraint", {"domain": domain, "needs_domain_rows": True, "detail": action})]


def reindex_target(node, transactional: bool) -> dict | None:
    """What a REINDEX ... CONCURRENTLY rebuilds; a failed one leaves INVALID <index>_ccnew copies."""
    if transactional or not isinstance(node, ast.ReindexStmt) or not _has_option(node.params, "concurrently"):
        return None
    kind = node.kind.name
    if kind not in ("REINDEX_OBJECT_INDEX", "REINDEX_OBJECT_TABLE") or node.relation is None:
        return None
    return {"kind": "index" if kind == "REINDEX_OBJECT_INDEX" else "table", "name": table_name(node.relation)}


def _constraint_rule(constraint) -> str | None:
    kind = constraint.contype
    if kind == ConstrType.CONSTR_FOREIGN and not constraint.skip_validation:
        return "foreign-key-without-not-valid"
    if kind == ConstrType.CONSTR_CHECK and not constraint.skip_validation:
        return "check-without-not-valid"
    if kind == ConstrType.CONSTR_UNIQUE and not constraint.indexname:
        return "unique-constraint"
    if kind == ConstrType.CONSTR_PRIMARY and not constraint.indexname:
        return "primary-key-constraint"
    if kind == ConstrType.CONSTR_EXCLUSION:
        return "exclusion-constraint"
    return None


def _default_is_volatile(expression) -> bool:
    # Any call of a volatile function anywhere in the expression (e.g. md5(random()::text)).
    for node in _walk(expression):
        if isinstance(node, ast.FuncCall) and node.funcname[-1].sval.lower() in VOLATILE_FUNCTIONS:
            return True
    return False


def _walk(node):
    if isinstance(node, ast.Node):
        yield node
        for attribute in node:
            yield from _walk(getattr(node, attribute))
    elif isinstance(node, tuple):
        for item in node:
            yield from _walk(item)


def column_type_advice(columns) -> list:
    """Style rules for the column types of CREATE TABLE or ADD COLUMN, each rule once per statement."""
    rules = []
    for column in columns:
        if not isinstance(column, ast.ColumnDef) or column.typeName is None:
            continue
        type_name = column.typeName.names[-1].sval.lower()
        if type_name in {"int2", "int4", "serial", "serial2", "serial4", "smallserial"}:
            rules.append("prefer-bigint")
        elif type_name == "varchar" and column.typeName.typmods:
            rules.append("prefer-text-field")
        elif type_name == "timestamp":
            rules.append("prefer-timestamptz")
        elif type_name == "bpchar":
            rules.append("ban-char-field")
    return list(dict.fromkeys(rules))


def robust_statement_advice(node, transactional: bool) -> list:
    if transactional:
        return []
    if isinstance(node, ast.IndexStmt) and node.concurrent and not (node.idxname and node.if_not_exists):
        return ["prefer-robust-stmts"]
    if isinstance(node, ast.DropStmt) and node.concurrent and not node.missing_ok:
        return ["prefer-robust-stmts"]
    return []


def _add_column_rules(column) -> list:
    constraints = column.constraints or ()
    kinds = {constraint.contype for constraint in constraints}
    rules = []
    type_name = column.typeName.names[-1].sval.lower() if column.typeName else ""
    if (
        ConstrType.CONSTR_IDENTITY in kinds
        or type_name in SERIAL_TYPES
        or any(c.contype == ConstrType.CONSTR_GENERATED and c.generated_kind == "s" for c in constraints)
    ):
        rules.append("rewriting-column")
    default = next((c.raw_expr for c in constraints if c.contype == ConstrType.CONSTR_DEFAULT), None)
    if default is not None and _default_is_volatile(default):
        rules.append("volatile-default")
    if (
        ConstrType.CONSTR_NOTNULL in kinds
        and default is None
        and not {ConstrType.CONSTR_IDENTITY, ConstrType.CONSTR_GENERATED} & kinds
        and type_name not in SERIAL_TYPES
    ):
        rules.append("adding-required-field")
    for constraint in constraints:
        rule = _constraint_rule(constraint)
        if rule:
            rules.append(rule)
    return rules + domain_column_rules(column)


def _alter_table_rules(node) -> list:
    rules = []
    for command in node.cmds:
        subtype = command.subtype
        if subtype == AlterTableType.AT_AddColumn:
            rules.extend(_add_column_rules(command.def_))
        elif subtype == AlterTableType.AT_DropColumn:
            rules.append("drop-column")
        elif subtype == AlterTableType.AT_SetNotNull:
            rules.append("set-not-null")
        elif subtype == AlterTableType.AT_DropNotNull:
            rules.append("drop-not-null")
        elif subtype == AlterTableType.AT_AlterColumnType:
            rules.extend(column_type_rules(command))
        elif subtype == AlterTableType.AT_AddConstraint:
            rule = _constraint_rule(command.def_)
            if rule:
                rules.append(rule)
        elif subtype.name in REWRITING_SUBTYPES:
            rules.append("table-rewrite")
    return rules


def _has_option(options, name: str) -> bool:
    return any(getattr(option, "defname", None) == name for option in options or ())


def statement_rules(node, transactional: bool) -> tuple[list, list]:
    """(rules that apply, tables the statement touches) for one parsed statement."""
    if isinstance(node, ast.AlterTableStmt):
        return _alter_table_rules(node), [table_name(node.relation)]
    if isinstance(node, ast.IndexStmt):
        if node.concurrent:
            return (["concurrently-in-transaction"] if transactional else []), [table_name(node.relation)]
        return ["create-index-non-concurrent"], [table_name(node.relation)]
    if isinstance(node, ast.DropStmt):
        kind = node.removeType.name
        if kind == "OBJECT_INDEX":
            if node.concurrent:
                return (["concurrently-in-transaction"] if transactional else []), []
            return ["drop-index-non-concurrent"], []
        if kind == "OBJECT_TABLE":
            return ["drop-table"], [sql_name(*(part.sval for part in name)) for name in node.objects]
        if kind == "OBJECT_SCHEMA":
            return ["drop-schema"], []
        if kind in DROPPED_OBJECTS:
            return ["drop-object"], []
        return [], []
    if isinstance(node, ast.DropdbStmt):
        return ["drop-database"] + (["needs-no-transaction"] if transactional else []), []
    if isinstance(node, ast.TruncateStmt):
        return ["truncate"], [table_name(relation) for relation in node.relations]
    if isinstance(node, (ast.DeleteStmt, ast.UpdateStmt, ast.MergeStmt)):
        return [], [table_name(node.relation)]  # data_change_rules judges their WHERE
    if isinstance(node, ast.RenameStmt):
        tables = [table_name(node.relation)] if node.relation else []
        if node.renameType == ObjectType.OBJECT_COLUMN:
            return ["rename-column"], tables
        if node.renameType.name in {"OBJECT_TABLE", "OBJECT_SCHEMA", "OBJECT_VIEW", "OBJECT_MATVIEW"}:
            return ["rename-table"], tables
        return [], tables
    if isinstance(node, ast.ReindexStmt):
        if _has_option(node.params, "concurrently"):
            return (["concurrently-in-transaction"] if transactional else []), []
        return ["reindex-non-concurrent"], []
    if isinstance(node, ast.VacuumStmt):
        tables = [table_name(rel.relation) for rel in node.rels or () if rel.relation is not None]
        rules = ["needs-no-transaction"] if transactional and node.is_vacuumcmd else []
        if _has_option(node.options, "full"):
            rules.append("table-rewrite")
        return rules, tables
    if isinstance(node, ast.ClusterStmt):
        return ["table-rewrite"], [table_name(node.relation)] if node.relation else []
    if isinstance(node, ast.LockStmt):
        return ["lock-table"], [table_name(relation) for relation in node.relations]
    if isinstance(node, ast.RefreshMatViewStmt):
        return ([] if node.concurrent else ["refresh-matview-non-concurrent"]), [table_name(node.relation)]
    if isinstance(node, ast.AlterDomainStmt):
        return domain_rules(node), []
    if isinstance(node, ast.TransactionStmt):
        return ["transaction-control"], []
    if isinstance(node, (ast.CreatedbStmt, ast.AlterSystemStmt)) and transactional:
        return ["needs-no-transaction"], []
    return [], []


def created_table(node) -> str | None:
    if isinstance(node, ast.CreateStmt):
        return table_name(node.relation)
    if isinstance(node, ast.CreateTableAsStmt) and node.into is not None:
        return table_name(node.into.rel)
    return None


def locked_until_commit(node) -> list:
    """Tables whose strong lock an ALTER TABLE keeps until COMMIT (VALIDATE alone blocks no reads or writes)."""
    if not isinstance(node, ast.AlterTableStmt):
        return []
    if all(command.subtype == AlterTableType.AT_ValidateConstraint for command in node.cmds):
        return []
    tables = [table_name(node.relation)]
    for command in node.cmds:
        # ADD FOREIGN KEY also locks the referenced table against writes.
        if isinstance(command.def_, ast.Constraint) and command.def_.pktable is not None:
            tables.append(table_name(command.def_.pktable))
    return tables


def same_transaction_rules(node, tables: list, locked: set) -> list:
    """Rules for statements that run while an earlier ALTER of the same file still holds its lock."""
    if not set(tables) & locked:
        return []
    if isinstance(node, ast.AlterTableStmt) and any(
        command.subtype == AlterTableType.AT_ValidateConstraint for command in node.cmds
    ):
        return ["validate-in-same-transaction"]
    if isinstance(node, (ast.UpdateStmt, ast.DeleteStmt)):
        return ["backfill-in-same-transaction"]
    return []


def advice_rules(node, transactional: bool) -> list:
    if isinstance(node, ast.CreateStmt):
        columns = node.tableElts or ()
    elif isinstance(node, ast.AlterTableStmt):
        columns = [command.def_ for command in node.cmds if command.subtype == AlterTableType.AT_AddColumn]
    else:
        columns = ()
    return column_type_advice(columns) + robust_statement_advice(node, transactional)


def concurrent_index_name(node) -> str | None:
    """The quoted name of an index built CONCURRENTLY; a failed build leaves it behind INVALID."""
    if not isinstance(node, ast.IndexStmt) or not node.concurrent or not node.idxname:
        return None
    schema = node.relation.schemaname
    return f"{quote_ident(schema)}.{quote_ident(node.idxname)}" if schema else quote_ident(node.idxname)


def set_not_null_columns(node) -> list:
    if not isinstance(node, ast.AlterTableStmt):
        return []
    return [command.name for command in node.cmds if command.subtype == AlterTableType.AT_SetNotNull]


# The app's own tool frames its SQL itself (alembic --sql prints BEGIN/COMMIT, prisma runs each file
# its own way): transaction errors are the tool's business, not the file's.
TOOL_FRAMING_RULES = {"transaction-control", "concurrently-in-transaction", "needs-no-transaction"}


def _statement_findings(node, statement, transactional, created, locked) -> list:
    rules, tables = statement_rules(node, transactional)
    rules = rules + data_change_rules(node) + unanalysable_rules(node)
    rules += same_transaction_rules(node, tables, locked) + advice_rules(node, transactional)
    pairs = [rule if isinstance(rule, tuple) else (rule, {}) for rule in rules]
    nested = [extra["table"] for rule, extra in pairs if extra.get("table")]
    tables += [table for table in dict.fromkeys(nested) if table not in tables]
    statement["tables"] = tables
    not_null_columns = iter(set_not_null_columns(node))
    findings = []
    for rule, extra in pairs:
        extra = dict(extra)
        table = extra.pop("table", tables[0] if tables else None)
        if rule == "adding-required-field":
            extra["needs_rows"] = True
        elif rule == "set-not-null":
            # With a validated CHECK (col IS NOT NULL) PostgreSQL skips the scan; the module looks.
            extra.update(column=next(not_null_columns), unless_not_null_checked=True)
        # A table this file created cannot be in use yet: nothing it does there blocks anyone.
        fresh = table is not None and table in created and all(name in created for name in tables)
        if fresh and RULES[rule][0] in ALLOWABLE_CLASSES:
            continue
        findings.append(_finding(rule, statement, table, **extra))
    return findings


def analyse(name: str, text: str, tool: bool = False) -> dict:
    """Statements, transaction mode, allowances and findings of one migration file.

    ``tool``: SQL that the app's own migration tool applies (a file of its image, or what it prints):
    it runs in a transaction when it opens one itself, and its BEGIN/COMMIT are not findings.
    """
    transactional, allowances, directive_errors = parse_directives(text)
    findings = [
        _finding("bad-directive", {"line": line, "sql": message}, detail=message) for line, message in directive_errors
    ]
    try:
        statements = split_statements(text)
    except pglast.parser.ParseError as error:
        position = error.args[1] if len(error.args) > 1 else 0
        line = text[:position].count("\n") + 1
        findings.append(_finding("parse-error", {"line": line, "sql": ""}, detail=error.args[0]))
        statements = []
    if tool:
        transactional = any(isinstance(statement["node"], ast.TransactionStmt) for statement in statements)
    created, locked = set(), set()
    for statement in statements:
        node = statement.pop("node")
        for finding in _statement_findings(node, statement, transactional, created, locked):
            if not (tool and finding["rule"] in TOOL_FRAMING_RULES):
                findings.append(finding)
        index = concurrent_index_name(node)
        if index:
            statement["index"] = index
        reindex = reindex_target(node, transactional)
        if reindex:
            statement["reindex"] = reindex
        new_table = created_table(node)
        if new_table:
            created.add(new_table)
        if transactional:
            locked.update(table for table in locked_until_commit(node) if table not in created)
    for finding in findings:
        finding["file"] = name
    return {
        "transactional": transactional,
        "allowances": allowances,
        "statements": statements,
        "findings": sorted(findings, key=lambda finding: finding["line"]),
    }


def review_tool_sql(collected: list) -> list:
    """The analysis of the SQL the app's own tool will apply, as the module's ``tool_sql`` option:
    per source (a file of the new image, or the output of sql_command) its findings and allowances."""
    reviewed = []
    for item in collected:
        result = analyse(item["source"], item["text"], tool=True)
        reviewed.append(
            {
                "file": item["source"],
                "checksum": hashlib.sha256(item["text"].encode()).hexdigest(),
                "allowances": result["allowances"],
                "findings": result["findings"],
            }
        )
    return reviewed


class MigrationFileError(ValueError):
    """A migration directory or file that cannot be used, with a message naming it."""


def load_directory(directory: str) -> list:
    """Every migration file of a directory, read, checksummed and analysed, in version order."""
    if not os.path.isdir(directory):
        raise MigrationFileError(f"directory: {directory} does not exist or is not a directory on the controller")
    migrations, seen = [], {}
    for filename in sorted(os.listdir(directory)):
        if not filename.endswith(".sql"):
            continue
        parsed = parse_name(filename)
        if parsed is None:
            raise MigrationFileError(
                f"{os.path.join(directory, filename)}: not a migration name; use V<version>__<description>.sql, "
                "for example V0003__add_status.sql"
            )
        version, description = parsed
        if version_key(version) in seen:
            raise MigrationFileError(f"{filename} and {seen[version_key(version)]} have the same version {version}")
        seen[version_key(version)] = filename
        path = os.path.join(directory, filename)
        try:
            with open(path, "rb") as handle:
                content = handle.read()
            text = content.decode("utf-8")
        except OSError as error:
            raise MigrationFileError(f"cannot read migration file {path}: {error.strerror}") from error
        except UnicodeDecodeError as error:
            raise MigrationFileError(f"cannot read migration file {path}: not UTF-8 ({error.reason})") from error
        analysis = analyse(filename, text)
        migrations.append(
            {
                "file": filename,
                "version": version,
                "description": description,
                "checksum": hashlib.sha256(content).hexdigest(),
                **analysis,
            }
        )
    return sorted(migrations, key=lambda item: version_key(item["version"]))
