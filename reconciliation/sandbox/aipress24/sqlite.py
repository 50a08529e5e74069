"""The SQLite equivalent of Aipress24's database, built from `schema.sql` and `sample-data.sql`.

Translated so that `Aipress24Reader` reads the same rows, with the same SQL, as from PostgreSQL:

- BIGSERIAL, SERIAL, BIGINT, INTEGER → INTEGER: 64 bits, so snowflake ids stay exact (parsed
  from the literal's digits, bound as Python ints, never floats);
- BOOLEAN → INTEGER 0/1: SQLite has no boolean;
- UUID → lower-case TEXT: PostgreSQL orders UUIDs as that text does;
- TIMESTAMP WITH / WITHOUT TIME ZONE → TEXT `2026-06-18 09:41:00.000000+00:00`: UTC and fixed
  width, so comparing text compares time; naive values are UTC (README §9.9);
- DECIMAL(p, s) → TEXT with `s` decimals, exactly as PostgreSQL prints it (`199.00`): SQLite's
  NUMERIC affinity would store 59.90 as a float;
- native ENUM types → TEXT with a CHECK of their values: the stored upper-case names;
- JSON, JSONB → TEXT; FLOAT → REAL (`aut_user.karma`: not money, not read);
- `DEFAULT now()` → the same fixed-width UTC text.

Primary keys, unique constraints, foreign keys (checked while loading) and indexes are kept.
The `SET`, `BEGIN`/`COMMIT` and `setval` statements of the data file have no SQLite meaning and
are skipped. The file is written in rollback-journal mode (not WAL), so that it can be opened
`mode=ro` by a process that may not write beside it.
"""

from __future__ import annotations

import os
import re
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from reconciliation.connectors.aipress24 import sqlite_timestamp

HERE = Path(__file__).resolve().parent
_NOW_DEFAULT = "(strftime('%Y-%m-%d %H:%M:%f', 'now') || '000+00:00')"


@dataclass(frozen=True)
class _Column:
    kind: str  # integer, boolean, uuid, timestamptz, timestamp, decimal, enum, json, float, text
    scale: int | None = None


def build_sqlite(
    path: str | os.PathLike[str],
    *,
    schema: str | os.PathLike[str] | None = None,
    data: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the SQLite equivalent of `schema.sql` + `sample-data.sql` to `path` (replacing any
    file there, atomically) and return its absolute path."""
    target = Path(path).absolute()
    schema_text = Path(schema or HERE / "schema.sql").read_text(encoding="utf-8")
    data_text = Path(data or HERE / "sample-data.sql").read_text(encoding="utf-8")
    ddl, columns = translate_schema(schema_text)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, scratch = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(handle)
    try:
        connection = sqlite3.connect(scratch, isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode = DELETE")
            connection.execute("PRAGMA foreign_keys = ON")
            connection.execute("BEGIN")
            for statement in ddl:
                connection.execute(statement)
            for table, names, values in _inserts(data_text, columns):
                marks = ", ".join("?" for _ in names)
                quoted = ", ".join(f'"{name}"' for name in names)
                connection.execute(
                    f'INSERT INTO "{table}" ({quoted}) VALUES ({marks})',  # noqa: S608 - names from schema.sql
                    values,
                )
            connection.execute("COMMIT")
        finally:
            connection.close()
        Path(scratch).replace(target)
    except BaseException:
        Path(scratch).unlink(missing_ok=True)
        raise
    return target


# --- the schema ---------------------------------------------------------------------------------


def translate_schema(text: str) -> tuple[list[str], dict[str, dict[str, _Column]]]:
    """SQLite statements for schema.sql, and each table's column kinds (to convert the data)."""
    enums: dict[str, list[str]] = {}
    statements: list[str] = []
    columns: dict[str, dict[str, _Column]] = {}
    for statement in _statements(text):
        enum = re.fullmatch(r"CREATE TYPE (\w+) AS ENUM \((.*)\)", statement, re.S)
        if enum:
            enums[enum[1]] = [_string(token) for token in _split(enum[2])]
            continue
        table = re.fullmatch(r"CREATE TABLE (\w+) \((.*)\)", statement, re.S)
        if table:
            ddl, kinds = _table(table[1], table[2], enums)
            statements.append(ddl)
            columns[table[1]] = kinds
            continue
        if statement.startswith("CREATE INDEX "):
            statements.append(statement)
            continue
        raise ValueError(f"schema.sql statement not translated: {statement[:60]!r}")
    return statements, columns


_CONSTRAINT_STARTS = ("PRIMARY KEY", "UNIQUE", "FOREIGN KEY", "CONSTRAINT", "CHECK")


def _table(name: str, body: str, enums: dict[str, list[str]]) -> tuple[str, dict[str, _Column]]:
    lines: list[str] = []
    kinds: dict[str, _Column] = {}
    for part in _split(body):
        if part.startswith(_CONSTRAINT_STARTS):
            lines.append(part)
            continue
        match = re.fullmatch(
            r"(\w+) (\w+(?:\([\d, ]+\))?(?: WITH(?:OUT)? TIME ZONE)?)(.*)",
            part,
            re.S,
        )
        if not match:
            raise ValueError(f"column of {name} not understood: {part!r}")
        column, pg_type, rest = match[1], match[2], match[3]
        kind, sqlite_type = _column_type(pg_type, enums)
        rest = rest.replace("DEFAULT now()", f"DEFAULT {_NOW_DEFAULT}")
        check = ""
        if kind.kind == "enum":
            values = ", ".join(f"'{value}'" for value in enums[pg_type])
            check = f" CHECK ({column} IN ({values}))"
        lines.append(f'"{column}" {sqlite_type}{rest}{check}')
        kinds[column] = kind
    return f'CREATE TABLE "{name}" (\n    ' + ",\n    ".join(lines) + "\n)", kinds


def _column_type(pg_type: str, enums: dict[str, list[str]]) -> tuple[_Column, str]:
    upper = pg_type.upper()
    if pg_type in enums:
        return _Column("enum"), "TEXT"
    if upper in {"BIGSERIAL", "SERIAL", "BIGINT", "INTEGER", "SMALLINT"}:
        return _Column("integer"), "INTEGER"
    if upper == "BOOLEAN":
        return _Column("boolean"), "INTEGER"
    if upper == "UUID":
        return _Column("uuid"), "TEXT"
    if upper in {"TIMESTAMP WITH TIME ZONE", "TIMESTAMPTZ"}:
        return _Column("timestamptz"), "TEXT"
    if upper in {"TIMESTAMP WITHOUT TIME ZONE", "TIMESTAMP"}:
        return _Column("timestamp"), "TEXT"
    decimal = re.fullmatch(r"(?:DECIMAL|NUMERIC)\((\d+), ?(\d+)\)", upper)
    if decimal:
        return _Column("decimal", scale=int(decimal[2])), "TEXT"
    if upper in {"JSON", "JSONB"}:
        return _Column("json"), "TEXT"
    if upper in {"FLOAT", "REAL", "DOUBLE PRECISION"}:
        return _Column("float"), "REAL"
    if upper in {"TEXT", "VARCHAR"} or re.fullmatch(r"VARCHAR\(\d+\)", upper):
        return _Column("text"), "TEXT"
    raise ValueError(f"no SQLite translation for the type {pg_type!r}")


# --- the data -----------------------------------------------------------------------------------

_SKIPPED = re.compile(r"^(SET |BEGIN$|COMMIT$|SELECT setval\()", re.I)


def _inserts(
    text: str, columns: dict[str, dict[str, _Column]]
) -> Iterator[tuple[str, list[str], list[Any]]]:
    for statement in _statements(text):
        if _SKIPPED.match(statement):
            continue
        match = re.fullmatch(r"INSERT INTO (\w+) \(([^)]*)\)\s+VALUES\s*\((.*)\)", statement, re.S)
        if not match:
            raise ValueError(f"sample-data.sql statement not translated: {statement[:60]!r}")
        table = match[1]
        names = [name.strip() for name in match[2].split(",")]
        literals = _split(match[3])
        if len(names) != len(literals):
            raise ValueError(f"{table}: {len(names)} columns but {len(literals)} values")
        kinds = columns[table]
        yield table, names, [_value(kinds[n], lit) for n, lit in zip(names, literals, strict=True)]


def _value(column: _Column, literal: str) -> Any:
    """The SQLite value of one SQL literal, as the reader expects to find it (module table)."""
    if literal.upper() == "NULL":
        return None
    kind = column.kind
    if kind == "boolean":
        if literal.lower() not in {"true", "false"}:
            raise ValueError(f"not a boolean literal: {literal!r}")
        return 1 if literal.lower() == "true" else 0
    if kind == "integer":
        return int(literal)  # from the literal's digits: exact, whatever its size
    if kind == "float":
        return float(literal)
    if kind == "decimal":
        raw = _string(literal) if literal.startswith("'") else literal
        return str(Decimal(raw).quantize(Decimal(1).scaleb(-(column.scale or 0))))
    text = _string(literal)
    if kind == "uuid":
        return text.lower()
    if kind in {"timestamptz", "timestamp"}:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)  # naive columns hold UTC (README §9.9)
        return sqlite_timestamp(moment)
    return text


# --- SQL text -----------------------------------------------------------------------------------


def _statements(text: str) -> Iterator[str]:
    """The statements of a script, without comments, split on `;` outside quotes."""
    current: list[str] = []
    index, length = 0, len(text)
    while index < length:
        char = text[index]
        if char == "'":
            end = index + 1
            while True:
                end = text.index("'", end)
                if text.startswith("''", end):
                    end += 2
                    continue
                break
            current.append(text[index : end + 1])
            index = end + 1
            continue
        if text.startswith("--", index):
            newline = text.find("\n", index)
            index = length if newline == -1 else newline
            continue
        if char == ";":
            statement = "".join(current).strip()
            if statement:
                yield statement
            current = []
        else:
            current.append(char)
        index += 1
    statement = "".join(current).strip()
    if statement:
        yield statement


def _split(text: str) -> list[str]:
    """Items separated by commas outside quotes and parentheses, stripped."""
    items: list[str] = []
    depth, start, index, in_string = 0, 0, 0, False
    while index < len(text):
        char = text[index]
        if in_string:
            if char == "'":
                if text.startswith("''", index):
                    index += 1
                else:
                    in_string = False
        elif char == "'":
            in_string = True
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(text[start:index].strip())
            start = index + 1
        index += 1
    tail = text[start:].strip()
    if tail:
        items.append(tail)
    return items


def _string(literal: str) -> str:
    if not (len(literal) >= 2 and literal[0] == literal[-1] == "'"):
        raise ValueError(f"not a string literal: {literal!r}")
    return literal[1:-1].replace("''", "'")
