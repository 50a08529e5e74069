"""Aipress24's database for the demo and the tests: the recorded contract and its SQLite twin.

`schema.sql` and `sample-data.sql` are copied unchanged from ../shared/aipress24/ (the DDL that
SQLAlchemy generates from Aipress24's models at commit a2d7e4e2, and the synthetic data set that
loads into PostgreSQL 15 without errors), so that nothing reads ../shared at run time.

* `load_postgres(connection)` loads both into a PostgreSQL database, as the README did.
* `build_sqlite(path)` builds the equivalent SQLite file from the same two files, translated
  statement by statement (`sqlite.py`), so that `Aipress24Reader` runs the same SQL on both.
  Run it alone: `python -m reconciliation.sandbox.aipress24 /tmp/aipress24.sqlite3`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reconciliation.sandbox.aipress24.sqlite import build_sqlite

HERE = Path(__file__).resolve().parent
SCHEMA_SQL = HERE / "schema.sql"
SAMPLE_DATA_SQL = HERE / "sample-data.sql"

__all__ = ["SAMPLE_DATA_SQL", "SCHEMA_SQL", "build_sqlite", "load_postgres"]


def load_postgres(connection: Any) -> None:
    """Create the tables and load the synthetic data through a psycopg connection in
    autocommit mode, on an empty database (the sample data opens its own transaction)."""
    connection.execute(SCHEMA_SQL.read_text(encoding="utf-8"))
    connection.execute(SAMPLE_DATA_SQL.read_text(encoding="utf-8"))
