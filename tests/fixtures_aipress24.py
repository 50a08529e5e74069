"""Pytest plugin: Aipress24's database with the synthetic data, on PostgreSQL and as its SQLite
equivalent, a fresh copy per test.

The data is loaded once per session — into a PostgreSQL template database and into one SQLite
file — and each test gets a copy (`CREATE DATABASE … TEMPLATE …`, a file copy), which it may
change through `Aipress24Database.execute` (an ordinary, writable connection: the reader's own
is read-only). PostgreSQL is the local server (`AP24SYNC_TEST_POSTGRES_URL`, default
postgresql://postgres@127.0.0.1:5432/postgres); its tests are skipped, saying why, only when it
does not answer. Databases are named `ap24_aipress24_<random>` and dropped after use.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from reconciliation.connectors.aipress24 import Aipress24Reader, sqlite_timestamp
from reconciliation.sandbox.aipress24 import build_sqlite, load_postgres

POSTGRES_ADMIN_URL = os.environ.get(
    "AP24SYNC_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
BACKENDS = ("sqlite", "postgres")
_NAMED_PARAMETER = re.compile(r":([a-z_][a-z0-9_]*)")


def postgres_url(database: str, *, user: str | None = None, password: str | None = None) -> str:
    """The admin URL pointed at another database (and, optionally, as another user)."""
    parts = urlsplit(POSTGRES_ADMIN_URL)
    user = parts.username if user is None else user
    credentials = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(
        (parts.scheme, f"{credentials}{parts.hostname}{port}", f"/{database}", "", "")
    )


def postgres_admin(database: str | None = None) -> Any:
    import psycopg

    url = POSTGRES_ADMIN_URL if database is None else postgres_url(database)
    return psycopg.connect(url, autocommit=True, connect_timeout=3)


def drop_postgres_database(name: str) -> None:
    with postgres_admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Aipress24Database:
    """One test's copy of the database: `url` for the reader, `execute` to change the data."""

    backend: str
    url: str
    name: str  # the PostgreSQL database name, or the SQLite file's path

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple]:
        """Run one statement (`:name` parameters) through a writable connection."""
        params = dict(params or {})
        if self.backend == "sqlite":
            values = {
                key: sqlite_timestamp(value) if isinstance(value, datetime) else value
                for key, value in params.items()
            }
            connection = sqlite3.connect(self.name, isolation_level=None)
            try:
                return connection.execute(sql, values).fetchall()
            finally:
                connection.close()
        with postgres_admin(self.name) as connection:
            cursor = connection.execute(_NAMED_PARAMETER.sub(r"%(\1)s", sql), params)
            return cursor.fetchall() if cursor.description else []

    def reader(self, **options: Any) -> Aipress24Reader:
        return Aipress24Reader(url=self.url, **options)


@pytest.fixture(scope="session")
def _aipress24_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_sqlite(tmp_path_factory.mktemp("aipress24") / "aipress24.sqlite3")


@pytest.fixture(scope="session")
def _aipress24_postgres_template() -> Iterator[str]:
    import psycopg

    try:
        postgres_admin().close()
    except psycopg.Error as exc:
        reason = " ".join(str(exc).split())
        pytest.skip(
            f"PostgreSQL is not reachable at {urlsplit(POSTGRES_ADMIN_URL).netloc} "
            f"(AP24SYNC_TEST_POSTGRES_URL): {reason}"
        )
    name = f"ap24_aipress24_tmpl_{uuid.uuid4().hex[:12]}"
    with postgres_admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with postgres_admin(name) as connection:
            load_postgres(connection)
        yield name
    finally:
        drop_postgres_database(name)


def _fresh_sqlite(template: Path, directory: Path) -> Aipress24Database:
    path = directory / "aipress24.sqlite3"
    shutil.copyfile(template, path)
    return Aipress24Database(backend="sqlite", url=f"sqlite:///{path}", name=str(path))


@contextmanager
def _fresh_postgres(template: str) -> Iterator[Aipress24Database]:
    name = f"ap24_aipress24_{uuid.uuid4().hex[:12]}"
    with postgres_admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield Aipress24Database(backend="postgresql", url=postgres_url(name), name=name)
    finally:
        drop_postgres_database(name)


@pytest.fixture
def aipress24_sqlite(_aipress24_sqlite_template: Path, tmp_path: Path) -> Aipress24Database:
    """A fresh copy of the SQLite equivalent."""
    return _fresh_sqlite(_aipress24_sqlite_template, tmp_path)


@pytest.fixture
def aipress24_postgres(request: pytest.FixtureRequest) -> Iterator[Aipress24Database]:
    """A fresh PostgreSQL database with the schema and the synthetic data."""
    template = request.getfixturevalue("_aipress24_postgres_template")
    with _fresh_postgres(template) as database:
        yield database


@pytest.fixture(params=BACKENDS)
def aipress24_db(request: pytest.FixtureRequest) -> Aipress24Database:
    """Both backends in turn: the same behaviour must hold on PostgreSQL and on SQLite."""
    return request.getfixturevalue(f"aipress24_{request.param}")


@pytest.fixture
def aipress24_reader(aipress24_db: Aipress24Database) -> Iterator[Aipress24Reader]:
    reader = aipress24_db.reader()
    try:
        yield reader
    finally:
        reader.close()
