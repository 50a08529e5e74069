"""Pytest plugin: Dolibarr's real schema (`schema.sql`, dumped from the recorded instance) loaded
into a throw-away MariaDB database, once per session.

The server is `AP24SYNC_TEST_MARIADB_URL` (default `mysql://root@127.0.0.1:3306`). When it does
not answer, the tests that use `dolibarr_schema_db` are skipped, saying why — unless
`AP24SYNC_REQUIRE_MARIADB` is set (to anything but an empty string), which makes them fail
instead (CI, where the server must be there). The database is named `ap24_dolibarr_<hex>`,
created `utf8mb4` / `utf8mb4_unicode_ci` like the recorded instance's, and dropped at the end of
the session. The schema is read from the repository's copy
(`reconciliation/sandbox/contracts/dolibarr/schema.sql`), never from ../shared.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

import reconciliation.sandbox

MARIADB_URL = os.environ.get("AP24SYNC_TEST_MARIADB_URL", "mysql://root@127.0.0.1:3306")
REQUIRE_MARIADB = bool(os.environ.get("AP24SYNC_REQUIRE_MARIADB"))
SCHEMA_SQL = Path(reconciliation.sandbox.__file__).resolve().parent / (
    "contracts/dolibarr/schema.sql"
)
CHARSET, COLLATION = "utf8mb4", "utf8mb4_unicode_ci"

__all__ = ["dolibarr_schema_db", "split_sql_statements"]


def _connect(database: str | None = None) -> Any:
    import pymysql

    parts = urlsplit(MARIADB_URL)
    if parts.scheme not in ("mysql", "mariadb"):
        raise ValueError(f"AP24SYNC_TEST_MARIADB_URL must be mysql://…, not {MARIADB_URL!r}")
    return pymysql.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=unquote(parts.username or "root"),
        password=unquote(parts.password or ""),
        database=database,
        charset=CHARSET,
        collation=COLLATION,
        autocommit=True,
        connect_timeout=3,
    )


# -- splitting a mysqldump into statements ------------------------------------------------------

# A quoted string or identifier (with the backslash escapes of ' and " strings and the doubled
# quote of all three), a comment, or a statement end. `/*!40101 … */` is a conditional comment
# that the server *executes*: it stays in the statement and is sent as it is.
_TOKEN = re.compile(
    r"""
      '(?:[^'\\]|\\.|'')*'
    | "(?:[^"\\]|\\.|"")*"
    | `(?:[^`]|``)*`
    | /\*!.*?\*/
    | /\*.*?\*/
    | (?:--[ \t]|--$|\#)[^\n]*
    | ;
    """,
    re.VERBOSE | re.DOTALL | re.MULTILINE,
)


def split_sql_statements(text: str) -> list[str]:
    """The statements of a SQL script, split on the `;` that are outside strings, identifiers
    and comments; plain comments are dropped, conditional comments (`/*!…*/`) kept. A
    `DELIMITER` line (a mysql client command, not SQL) is refused rather than misread."""
    if re.search(r"^\s*DELIMITER\b", text, re.IGNORECASE | re.MULTILINE):
        raise ValueError("the script changes the DELIMITER: cannot split it safely")
    statements: list[str] = []
    current: list[str] = []
    position = 0
    for match in _TOKEN.finditer(text):
        current.append(text[position : match.start()])
        token = match.group(0)
        position = match.end()
        if token == ";":
            statement = "".join(current).strip()
            if statement:
                statements.append(statement)
            current = []
        elif token.startswith(("--", "#")) or (token.startswith("/*") and token[2:3] != "!"):
            current.append(" ")
        else:
            current.append(token)
    current.append(text[position:])
    rest = "".join(current).strip()
    if rest:
        raise ValueError(f"the script ends with an unterminated statement: {rest[:80]!r}")
    return statements


# -- the fixture ----------------------------------------------------------------------------------


@dataclass
class DolibarrSchemaDatabase:
    """The loaded schema: `columns` of a table as information_schema lists them, and `query`
    for anything else (rows as tuples; `%s` parameters, PyMySQL's paramstyle)."""

    name: str
    connection: Any

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        with self.connection.cursor() as cursor:
            cursor.execute(sql, params)
            return list(cursor.fetchall()) if cursor.description else []

    def columns(self, table: str) -> list[str]:
        rows = self.query(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
            (self.name, table),
        )
        return [row[0] for row in rows]

    def tables(self) -> list[str]:
        rows = self.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s"
            " ORDER BY table_name",
            (self.name,),
        )
        return [row[0] for row in rows]


def _unreachable(reason: str) -> None:
    where = urlsplit(MARIADB_URL)
    message = (
        f"MariaDB is not reachable at {where.hostname}:{where.port or 3306} "
        f"(AP24SYNC_TEST_MARIADB_URL): {reason}"
    )
    if REQUIRE_MARIADB:
        pytest.fail(f"{message}; AP24SYNC_REQUIRE_MARIADB is set", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def dolibarr_schema_db() -> Iterator[DolibarrSchemaDatabase]:
    """A fresh database holding Dolibarr's real tables (empty), for the whole session."""
    import pymysql

    try:
        admin = _connect()
    except pymysql.err.MySQLError as exc:
        _unreachable(" ".join(str(exc).split()))
    name = f"ap24_dolibarr_{uuid.uuid4().hex[:12]}"
    try:
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET {CHARSET} COLLATE {COLLATION}")
        statements = split_sql_statements(SCHEMA_SQL.read_text(encoding="utf-8"))
        # The dump's own SET statements (foreign key checks off, the session's time zone…) only
        # last for the connection that loads it.
        loader = _connect(name)
        try:
            with loader.cursor() as cursor:
                for statement in statements:
                    cursor.execute(statement)
        finally:
            loader.close()
        database = DolibarrSchemaDatabase(name=name, connection=_connect(name))
        try:
            expected = re.findall(r"^CREATE TABLE `(\w+)`", SCHEMA_SQL.read_text(), re.MULTILINE)
            loaded = sorted(database.tables())
            if sorted(expected) != loaded:
                raise AssertionError(f"schema.sql declares {expected}, the database has {loaded}")
            yield database
        finally:
            database.connection.close()
    finally:
        try:
            with admin.cursor() as cursor:
                cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            admin.close()
