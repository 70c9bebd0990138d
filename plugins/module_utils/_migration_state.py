# Copyright (c) berth.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the target database says about a finding: rules the controller cannot decide from SQL alone.

The analysis on the controller sees ``ALTER COLUMN note TYPE varchar(50)`` but not what ``note`` is
now; whether that needs a table rewrite depends on the current type. The same holds for a domain
whose columns may sit in filled tables, and for the ``_ccnew`` copies a failed
``REINDEX CONCURRENTLY`` leaves behind. The pure decisions are plain functions, so tests call them
directly; the lookups take a connection.
"""

from __future__ import annotations

import re

from ansible_collections.berth.stack.plugins.module_utils import _postgres as pg

# Spellings the parser keeps as written, mapped to the catalog's type names.
TYPE_ALIASES = {"int": "int4", "integer": "int4", "bigint": "int8", "smallint": "int2", "decimal": "numeric"}
# Types whose modifier is a precision PostgreSQL can raise without touching a row (6 is the most).
PRECISION_TYPES = {"timestamp", "timestamptz", "time", "timetz"}


def decode_typmod(type_name: str, typmod: int) -> tuple:
    """pg_attribute.atttypmod as the numbers written in SQL: varchar(20) -> (20,), numeric(10,2) -> (10, 2)."""
    if typmod < 0:
        return ()
    if type_name in ("varchar", "bpchar"):
        return (typmod - 4,)
    if type_name == "numeric":
        return ((typmod - 4) >> 16 & 0xFFFF, (typmod - 4) & 0xFFFF)
    return (typmod,)


def type_change_without_rewrite(current: str, current_mods: tuple, new: dict, timezone: str | None = None):
    """(no rewrite needed, why) for ALTER COLUMN ... TYPE from the column's current type to `new`
    ({schema, name, mods} from the analysis), after PostgreSQL's documented binary-coercible cases.

    timezone: the TimeZone of the session that will run the change, when it is known (Mode 1);
    timestamp <-> timestamptz needs no rewrite when it is UTC (PostgreSQL 12+)."""
    name = TYPE_ALIASES.get(new["name"].lower(), new["name"].lower())
    mods = tuple(new["mods"])
    if new.get("schema") not in (None, "pg_catalog"):
        return False, f"{new['text']} is not a built-in type"
    if name == current and mods == current_mods:
        return True, "the column already has this type, so nothing is rewritten"
    if {current, name} <= {"varchar", "text"}:
        old_limit = current_mods[0] if current == "varchar" and current_mods else None
        new_limit = mods[0] if name == "varchar" and mods else None
        if new_limit is None:
            return True, "removing a length limit (varchar and text are binary-coercible) needs no rewrite and no scan"
        if old_limit is not None and new_limit >= old_limit:
            return True, f"raising the limit from {old_limit} to {new_limit} needs no rewrite and no scan"
        return False, "a new or lower length limit makes PostgreSQL rewrite the table to check every value"
    if current == name == "varbit":
        if not mods or (current_mods and mods[0] >= current_mods[0]):
            return True, "raising or removing a bit varying limit needs no rewrite"
        return False, "a new or lower bit varying limit rewrites the table"
    if current == name == "numeric":
        if not mods:
            return True, "removing numeric's precision and scale needs no rewrite"
        if not current_mods:
            return False, "constraining an unconstrained numeric rewrites the table"
        precision, scale = (*mods, 0)[:2]
        if scale == current_mods[1] and precision >= current_mods[0]:
            return True, "raising numeric's precision with the same scale needs no rewrite"
        return False, "changing numeric's scale (or lowering its precision) rewrites every value"
    if current == name and name in PRECISION_TYPES:
        if not mods or mods[0] >= (current_mods[0] if current_mods else 6):
            return True, f"raising {name}'s fractional-second precision needs no rewrite"
        return False, f"lowering {name}'s precision rounds every value, a rewrite"
    if {current, name} == {"timestamp", "timestamptz"} and not mods and timezone in ("UTC", "Etc/UTC"):
        return True, f"timestamp and timestamptz store the same value when the session's TimeZone is {timezone}"
    if (current, name) == ("cidr", "inet"):
        return True, "cidr is binary-coercible to inet, so no rewrite is needed"
    return False, f"{current} to {name} is not binary-coercible: PostgreSQL rewrites the table and its indexes"


def column_type(connection, table: str, column: str) -> tuple[str, tuple, str] | None:
    """(type name, modifiers, formatted type) of a column, or None when there is no such column."""
    rows = pg.query(
        connection,
        "SELECT t.typname, a.atttypmod, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "JOIN pg_type t ON t.oid = a.atttypid WHERE a.attrelid = to_regclass(%s) AND a.attname = %s "
        "AND a.attnum > 0 AND NOT a.attisdropped",
        (table, column),
    )
    if not rows:
        return None
    name, typmod, formatted = rows[0]
    return name, decode_typmod(name, typmod), formatted


def constrained_domain(connection, type_name: str) -> bool:
    """Whether a type is a domain with CHECK constraints or NOT NULL (which ADD COLUMN checks on every row)."""
    return pg.query(
        connection,
        "SELECT EXISTS (SELECT FROM pg_type t WHERE t.oid = to_regtype(%s) AND t.typtype = 'd' "
        "AND (t.typnotnull OR EXISTS (SELECT FROM pg_constraint c WHERE c.contypid = t.oid)))",
        (type_name,),
    )[0][0]


def filled_domain_columns(connection, domain: str) -> list:
    """table.column of every column of the domain whose table has rows (what ADD CONSTRAINT scans)."""
    rows = pg.query(
        connection,
        "SELECT a.attrelid::regclass::text, a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "WHERE a.atttypid = to_regtype(%s) AND a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'm')",
        (domain,),
    )
    filled = []
    for table, column in rows:
        if pg.query(connection, f"SELECT EXISTS (SELECT FROM {table})")[0][0]:  # noqa: S608 - a regclass name
            filled.append(f"{table}.{column}")
    return filled


def reindex_leftovers(connection, reindex: dict) -> list:
    """INVALID <index>_ccnew / _ccold copies that a failed REINDEX ... CONCURRENTLY of this index or
    table left; a retry would add another copy (_ccnew1, ...), and each one slows every write."""
    if reindex["kind"] == "index":
        prefix = pg.query(connection, "SELECT relname FROM pg_class WHERE oid = to_regclass(%s)", (reindex["name"],))
        if not prefix:
            return []
        leftover = re.compile(re.escape(prefix[0][0]) + r"_cc(new|old)\d*$")
    else:
        leftover = re.compile(r".+_cc(new|old)\d*$")
    rows = pg.query(
        connection,
        "SELECT c.relname, format('%%I.%%I', n.nspname, c.relname) FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE NOT i.indisvalid AND i.indrelid = CASE WHEN %s = 'index' "
        "THEN (SELECT indrelid FROM pg_index WHERE indexrelid = to_regclass(%s)) ELSE to_regclass(%s)::oid END "
        "ORDER BY 1",
        (reindex["kind"], reindex["name"], reindex["name"]),
    )
    return [qualified for name, qualified in rows if leftover.match(name)]
