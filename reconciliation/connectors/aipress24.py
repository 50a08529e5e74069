"""Reading Aipress24's database: the only code that knows its tables (../shared/aipress24/).

`Aipress24Reader` connects to the database named by `AIPRESS24_DATABASE_URL` — PostgreSQL in
production, or the SQLite equivalent of the synthetic data (`reconciliation.sandbox.aipress24`)
for the demo and for tests without PostgreSQL; the same SQL runs on both. It is read-only three
times over: the session refuses writes (PostgreSQL: `default_transaction_read_only=on` at
start-up and `SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY`, and every page is read in
a `BEGIN READ ONLY` transaction; SQLite: the file is opened `mode=ro` with `query_only`), the
reader only sends the SELECTs below, with every value bound as a parameter, and production gives
it a role that may only SELECT the columns it reads (`grant_statements`, docs/aipress24.md).

Each thread reading through a reader gets one connection, opened at its first read and reused
for every read after it; `close()` closes them all. A connection found broken is dropped, so
the next read opens a new one.

Streams (`*_changed`, `purchases_paid`) return a `Page` of typed rows and the cursor to read on
from: rows come in (timestamp, id) order, strictly after the cursor given, so rows sharing a
timestamp are not lost between pages. Rows younger than `settle` (two minutes) are left for the
next read: Aipress24 stamps a row before its transaction commits, so a row may become visible
after a younger one was already read, but not later than its transaction's length.
`purchases_all` walks every purchase by id: purchases have no update column, and a refund only
changes their status (README §9.1).

Failures become the project's errors: `TransientError` for an unreachable server, a lost
connection, a timeout or a locked file; `ConfigurationError` (one line, naming
AIPRESS24_DATABASE_URL) for a missing or malformed URL, a database, role or file that does not
exist, refused credentials or a missing GRANT; `PermanentError` when the schema is not the one
expected; `UnexpectedValue` for a stored value the reader cannot read. No message, repr or log
line holds the password: the URL is parsed here and handed to the driver as separate arguments,
and the driver's messages are scrubbed before they are quoted.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from reconciliation.config import setting_required
from reconciliation.connectors.aipress24_types import (
    SYSTEM,
    BusinessWall,
    BusinessWallStatus,
    BusinessWallType,
    ChangeCursor,
    Organisation,
    Page,
    ProductType,
    Purchase,
    PurchaseStatus,
    Subscription,
    SubscriptionStatus,
    UnexpectedValue,
    User,
)
from reconciliation.errors import Ap24SyncError, ConfigurationError, PermanentError, TransientError
from reconciliation.logs import REDACTED

if TYPE_CHECKING:
    from reconciliation.resilience import Breaker

SETTING = "AIPRESS24_DATABASE_URL"
DEFAULT_PAGE_SIZE = 500
MAX_PAGE_SIZE = 10_000
DEFAULT_SETTLE = timedelta(minutes=2)
DEFAULT_CONNECT_TIMEOUT = 5.0  # seconds
DEFAULT_STATEMENT_TIMEOUT = 60.0  # seconds
APPLICATION_NAME = "ap24sync-aipress24-reader"

EnumT = TypeVar("EnumT", bound=StrEnum)
Row = dict[str, Any]


# --- the URL ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DatabaseTarget:
    """`AIPRESS24_DATABASE_URL`, parsed: `postgres[ql]://user:password@host:port/dbname?sslmode=…`
    or `sqlite:///relative/path` / `sqlite:////absolute/path` (django-environ's convention)."""

    backend: str  # "postgresql" | "sqlite"
    host: str | None = None
    port: int | None = None
    dbname: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    query: tuple[tuple[str, str], ...] = ()
    path: Path | None = None

    @property
    def display(self) -> str:
        """Where it points, for messages: never the password."""
        if self.backend == "sqlite":
            return str(self.path)
        host = self.host or "local socket"
        port = f":{self.port}" if self.port else ""
        user = f"{self.user}@" if self.user else ""
        return f"{user}{host}{port}/{self.dbname}"


def parse_database_url(url: str) -> DatabaseTarget:
    """The target of a URL, or a ConfigurationError in one line that never quotes it whole."""
    scheme, separator, _rest = url.partition("://")
    scheme = scheme.lower()
    if not separator or scheme not in {"postgres", "postgresql", "sqlite"}:
        shown = f"{scheme}://" if separator else "a value without a scheme"
        raise ConfigurationError(
            f"{SETTING} must start with postgres://, postgresql:// or sqlite:///, not {shown}; "
            "see .env.example"
        )
    if scheme == "sqlite":
        location = url[len("sqlite://") :]
        if not location.startswith("/") or location in {"/", "/:memory:"}:
            raise ConfigurationError(
                f"{SETTING} must name a SQLite file: sqlite:////absolute/path.sqlite3 or "
                "sqlite:///relative/path.sqlite3; see .env.example"
            )
        return DatabaseTarget(backend="sqlite", path=Path(unquote(location[1:])).absolute())
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigurationError(
            f"{SETTING} is not a valid URL (check the host and port); see .env.example"
        ) from None
    dbname = unquote(parts.path.lstrip("/"))
    if not dbname:
        raise ConfigurationError(f"{SETTING} names no database (…/dbname); see .env.example")
    query = tuple(parse_qsl(parts.query, keep_blank_values=True))
    return DatabaseTarget(
        backend="postgresql",
        host=unquote(parts.hostname) if parts.hostname else None,
        port=port,
        dbname=dbname,
        user=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        query=query,
    )


# --- values -------------------------------------------------------------------------------------


def sqlite_timestamp(moment: datetime) -> str:
    """How the SQLite equivalent stores a timestamp: UTC ISO text of fixed width,
    `2026-06-18 09:41:00.000000+00:00`, so that comparing text compares time."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"a timestamp must be timezone-aware: {moment!r}")
    return moment.astimezone(UTC).isoformat(sep=" ", timespec="microseconds")


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


def _utc(value: Any, *, where: str) -> datetime | None:
    """timestamptz (aware), a naive column (UTC, README §9.9) or the SQLite equivalent's text."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise UnexpectedValue(f"Aipress24 {where} is not a timestamp", system=SYSTEM) from None
    if not isinstance(value, datetime):
        raise UnexpectedValue(f"Aipress24 {where} is not a timestamp", system=SYSTEM)
    if value.tzinfo is None or value.utcoffset() is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _required_utc(value: Any, *, where: str) -> datetime:
    moment = _utc(value, where=where)
    if moment is None:
        raise UnexpectedValue(f"Aipress24 {where} is NULL", system=SYSTEM)
    return moment


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):  # SQLite
        return bool(value)
    raise TypeError(f"expected a boolean, got {value!r}")


def _int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _decimal(value: Any, *, where: str) -> Decimal:
    """DECIMAL columns are selected as text on both backends, so no float ever holds them."""
    if not isinstance(value, str):
        raise UnexpectedValue(f"Aipress24 {where} is not a decimal", system=SYSTEM)
    try:
        return Decimal(value)
    except InvalidOperation:
        raise UnexpectedValue(f"Aipress24 {where} is not a decimal", system=SYSTEM) from None


def _enum(kind: type[EnumT], value: Any, *, where: str) -> EnumT:
    """Stored upper-case names (`wire_*`) and lower-case strings (`bw_*`) alike (README §9.8)."""
    try:
        return kind(str(value).strip().lower())
    except ValueError:
        raise UnexpectedValue(
            f"Aipress24 {where} has a value the reader does not know: {value!r}; "
            "see reconciliation/connectors/aipress24_types.py",
            system=SYSTEM,
        ) from None


# --- the SQL ------------------------------------------------------------------------------------
# Written once for both backends: ids and decimals are CAST to TEXT in SQL (ids never exist as
# numbers here), placeholders are `:name` (rewritten to `%(name)s` for psycopg), and nothing is
# ever formatted into a statement but the fixed fragments of this section.

_ORGANISATION_KEY = "COALESCE(o.modified_at, o.created_at)"
_ORGANISATIONS = """
SELECT CAST(o.id AS TEXT) AS id, o.name, o.slug, o.address, o.city, o.zip_code, o.country,
       o.country_code, o.billing_email, o.billing_vat_number, o.billing_address_line1,
       o.billing_address_line2, o.billing_postal_code, o.billing_city, o.billing_country,
       o.stripe_customer_id, CAST(o.bw_id AS TEXT) AS bw_id, o.bw_active, o.active,
       o.created_at, o.modified_at, o.deleted_at,
       COALESCE(o.modified_at, o.created_at) AS changed_at
FROM crp_organisation o
WHERE 1 = 1
"""
# The Business Walls (SIREN, VAT number) and subscriptions (Stripe customers) of a page's
# organisations, in one statement per page.
_ORGANISATION_WALLS = """
SELECT CAST(b.organisation_id AS TEXT) AS organisation_id, CAST(b.id AS TEXT) AS wall_id,
       b.siren, b.tva, b.updated_at, s.stripe_customer_id, s.created_at AS subscribed_at,
       CAST(s.id AS TEXT) AS subscription_id
FROM bw_business_wall b
LEFT JOIN bw_subscription s ON s.business_wall_id = b.id
WHERE b.organisation_id IN ({ids})
"""

_USER_KEY = "COALESCE(u.modified_at, u.created_at)"
_USERS = """
SELECT CAST(u.id AS TEXT) AS id, u.email, u.first_name, u.last_name, u.tel_mobile,
       CAST(u.organisation_id AS TEXT) AS organisation_id, u.address, u.city, u.zip_code,
       u.country, u.country_code, u.validation_status, u.validated_at, u.active,
       u.created_at, u.modified_at, u.deleted_at,
       COALESCE(u.modified_at, u.created_at) AS changed_at
FROM aut_user u
WHERE NOT u.is_clone
"""

_BUSINESS_WALLS = """
SELECT CAST(b.id AS TEXT) AS id, CAST(b.organisation_id AS TEXT) AS organisation_id,
       CAST(b.owner_id AS TEXT) AS owner_id, CAST(b.payer_id AS TEXT) AS payer_id, b.bw_type,
       b.status, b.is_free, b.name, b.name_official, b.name_entity, b.name_group, b.siren, b.tva,
       b.postal_address, b.code_postal, b.ville, b.pays_zip_ville, b.pays_zip_ville_detail,
       b.tel_standard, b.site_url, b.payer_is_owner, b.payer_first_name, b.payer_last_name,
       b.payer_service, b.payer_email, b.payer_phone, b.payer_address, b.activated_at,
       b.created_at, b.updated_at
FROM bw_business_wall b
WHERE 1 = 1
"""

_SUBSCRIPTIONS = """
SELECT CAST(s.id AS TEXT) AS id, CAST(s.business_wall_id AS TEXT) AS business_wall_id,
       CAST(b.organisation_id AS TEXT) AS organisation_id, s.status, s.pricing_field,
       s.pricing_tier, CAST(s.monthly_price AS TEXT) AS monthly_price,
       CAST(s.annual_price AS TEXT) AS annual_price, s.billing_cycle, s.stripe_customer_id,
       s.stripe_subscription_id, s.stripe_checkout_session_id, s.cgv_accepted_at,
       s.cgv_version, s.started_at, s.expires_at, s.cancelled_at, s.past_due_since,
       s.billing_first_name, s.billing_last_name, s.billing_company, s.billing_address,
       s.billing_city, s.billing_zip_code, s.billing_country, s.created_at, s.updated_at
FROM bw_subscription s
LEFT JOIN bw_business_wall b ON b.id = s.business_wall_id
WHERE 1 = 1
"""

_PURCHASES = """
SELECT CAST(p.id AS TEXT) AS id, CAST(p.status AS TEXT) AS status,
       CAST(p.product_type AS TEXT) AS product_type, p.amount_cents, p.currency,
       CAST(p.owner_id AS TEXT) AS buyer_id,
       CAST(u.organisation_id AS TEXT) AS buyer_organisation_id,
       CAST(p.post_id AS TEXT) AS post_id, c.title AS post_title,
       CAST(c.publisher_id AS TEXT) AS seller_organisation_id,
       (SELECT COUNT(*) FROM wire_article_purchase_gift g WHERE g.purchase_id = p.id)
           AS gift_count,
       p.stripe_checkout_session_id, p.stripe_payment_intent_id,
       p."timestamp" AS created_at, p.paid_at
FROM wire_article_purchase p
LEFT JOIN aut_user u ON u.id = p.owner_id
LEFT JOIN frt_content c ON c.id = p.post_id
WHERE 1 = 1
"""

# What the role of the reader must be allowed to SELECT (`grant_statements`): exactly the columns
# above, so that the user table's password, fs_uniquifier and login IPs stay out of reach.
COLUMNS_READ: Mapping[str, tuple[str, ...]] = {
    "crp_organisation": (
        "id", "name", "slug", "address", "city", "zip_code", "country", "country_code",
        "billing_email", "billing_vat_number", "billing_address_line1", "billing_address_line2",
        "billing_postal_code", "billing_city", "billing_country", "stripe_customer_id", "bw_id",
        "bw_active", "active", "created_at", "modified_at", "deleted_at",
    ),
    "aut_user": (
        "id", "email", "first_name", "last_name", "tel_mobile", "organisation_id", "address",
        "city", "zip_code", "country", "country_code", "validation_status", "validated_at",
        "active", "is_clone", "created_at", "modified_at", "deleted_at",
    ),
    "bw_business_wall": (
        "id", "organisation_id", "owner_id", "payer_id", "bw_type", "status", "is_free", "name",
        "name_official", "name_entity", "name_group", "siren", "tva", "postal_address",
        "code_postal", "ville", "pays_zip_ville", "pays_zip_ville_detail", "tel_standard",
        "site_url", "payer_is_owner", "payer_first_name", "payer_last_name", "payer_service",
        "payer_email", "payer_phone", "payer_address", "activated_at", "created_at",
        "updated_at",
    ),
    "bw_subscription": (
        "id", "business_wall_id", "status", "pricing_field", "pricing_tier", "monthly_price",
        "annual_price", "billing_cycle", "stripe_customer_id", "stripe_subscription_id",
        "stripe_checkout_session_id", "cgv_accepted_at", "cgv_version", "started_at",
        "expires_at", "cancelled_at", "past_due_since", "billing_first_name",
        "billing_last_name", "billing_company", "billing_address", "billing_city",
        "billing_zip_code", "billing_country", "created_at", "updated_at",
    ),
    "wire_article_purchase": (
        "id", "status", "product_type", "amount_cents", "currency", "owner_id", "post_id",
        "stripe_checkout_session_id", "stripe_payment_intent_id", "timestamp", "paid_at",
    ),
    "wire_article_purchase_gift": ("purchase_id",),
    "frt_content": ("id", "title", "publisher_id"),
}  # fmt: skip

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def grant_statements(role: str = "ap24sync_reader", *, database: str = "aipress24") -> list[str]:
    """The SQL that gives a PostgreSQL role what the reader needs and nothing more (run as the
    database owner, after `CREATE ROLE <role> LOGIN PASSWORD '…'`). Tested: every stream runs
    under a role given only these."""
    for name in (role, database):
        if not _IDENTIFIER.match(name):
            raise ValueError(f"not a plain lower-case SQL identifier: {name!r}")
    statements = [
        f"ALTER ROLE {role} SET default_transaction_read_only = on",
        f"GRANT CONNECT ON DATABASE {database} TO {role}",
        f"GRANT USAGE ON SCHEMA public TO {role}",
    ]
    for table, columns in COLUMNS_READ.items():
        quoted = ", ".join(f'"{column}"' if column == "timestamp" else column for column in columns)
        statements.append(f"GRANT SELECT ({quoted}) ON {table} TO {role}")
    return statements


# --- backends -----------------------------------------------------------------------------------

_NAMED_PARAMETER = re.compile(r":([a-z_][a-z0-9_]*)")
_CONFIGURATION_PROBLEMS = (
    "does not exist",
    "authentication failed",
    "no password supplied",
    "no pg_hba.conf entry",
    "permission denied",
)


class _Backend(ABC):
    name: str

    def __init__(self, target: DatabaseTarget, *, connect_timeout: float) -> None:
        self.target = target
        self.connect_timeout = connect_timeout

    @abstractmethod
    def connect(self) -> Any:
        """A new read-only connection."""

    def statement(self, sql: str) -> str:
        return sql

    def parameter(self, value: Any) -> Any:
        return value

    @abstractmethod
    def read_transaction(self, connection: Any) -> AbstractContextManager[None]:
        """One read-only transaction on `connection`."""

    @abstractmethod
    def is_usable(self, connection: Any) -> bool:
        """Whether `connection` can still be used after an error."""

    @abstractmethod
    def translate(self, exc: Exception) -> Ap24SyncError:
        """The project's error for a driver error."""

    def scrub(self, text: str) -> str:
        """One line of a driver's message, without the password whatever its length."""
        line = " ".join(str(text).split())
        password = self.target.password
        if password:
            for form in {password, quote(password, safe="")}:
                line = line.replace(form, REDACTED)
        return line


class _PostgresBackend(_Backend):
    name = "postgresql"

    def __init__(
        self, target: DatabaseTarget, *, connect_timeout: float, statement_timeout: float
    ) -> None:
        super().__init__(target, connect_timeout=connect_timeout)
        self.statement_timeout = statement_timeout

    def connect(self) -> Any:
        import psycopg

        target = self.target
        extra = dict(target.query)
        options = " ".join(
            part
            for part in (
                extra.pop("options", ""),
                "-c default_transaction_read_only=on",
                "-c TimeZone=UTC",
                f"-c statement_timeout={int(self.statement_timeout * 1000)}",
            )
            if part
        )
        arguments: dict[str, Any] = {
            "host": target.host,
            "port": target.port,
            "dbname": target.dbname,
            "user": target.user,
            "password": target.password,
            "connect_timeout": max(1, round(self.connect_timeout)),
            "application_name": APPLICATION_NAME,
            **extra,
            "options": options,
        }
        arguments = {key: value for key, value in arguments.items() if value is not None}
        try:
            connection = psycopg.connect(autocommit=True, **arguments)
        except psycopg.Error as exc:
            raise self._connect_failure(exc) from exc
        try:
            # Also at the session level, for poolers that drop start-up options.
            connection.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        except psycopg.Error as exc:
            connection.close()
            raise self.translate(exc) from exc
        connection.read_only = True  # each page's BEGIN says READ ONLY too
        connection.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        return connection

    def _connect_failure(self, exc: Exception) -> Ap24SyncError:
        detail = self.scrub(str(exc)).removeprefix("connection failed: ")
        detail = re.sub(r'^connection to server at "[^"]*", port \d+ failed: ', "", detail)
        detail = detail.replace("FATAL: ", "").split(" Is the server running")[0].strip()
        where = self.target.display
        if any(problem in detail.lower() for problem in _CONFIGURATION_PROBLEMS):
            return ConfigurationError(
                f"Aipress24 database {where} refused the connection: {detail}; check {SETTING}"
            )
        return TransientError(
            f"Aipress24 database is unreachable at {where}: {detail}", system=SYSTEM
        )

    def statement(self, sql: str) -> str:
        return _NAMED_PARAMETER.sub(r"%(\1)s", sql)

    @contextmanager
    def read_transaction(self, connection: Any) -> Iterator[None]:
        with connection.transaction():
            yield

    def is_usable(self, connection: Any) -> bool:
        return not (connection.closed or connection.broken)

    def translate(self, exc: Exception) -> Ap24SyncError:
        import psycopg
        from psycopg import errors

        detail = self.scrub(getattr(getattr(exc, "diag", None), "message_primary", None) or exc)
        if isinstance(exc, errors.QueryCanceled):
            return TransientError(
                f"Aipress24 database query was cancelled after the statement timeout "
                f"({self.statement_timeout:g} s): {detail}",
                system=SYSTEM,
            )
        if isinstance(exc, errors.InsufficientPrivilege):
            return ConfigurationError(
                f"the role in {SETTING} may not read what the reader needs ({detail}); "
                "grant it as docs/aipress24.md says"
            )
        if isinstance(exc, errors.UndefinedTable | errors.UndefinedColumn):
            return PermanentError(
                f"Aipress24's schema is not the one the reader expects: {detail}", system=SYSTEM
            )
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            return TransientError(
                f"Aipress24 database connection failed or was lost ({self.target.display}): "
                f"{detail}",
                system=SYSTEM,
            )
        return PermanentError(f"Aipress24 database refused a read: {detail}", system=SYSTEM)


class _SqliteBackend(_Backend):
    name = "sqlite"

    def connect(self) -> Any:
        path = self.target.path
        assert path is not None
        if not path.is_file():
            raise ConfigurationError(
                f"{SETTING} names the SQLite file {path}, which does not exist; build it with "
                "`python -m reconciliation.sandbox.aipress24 <path>`"
            )
        try:
            # check_same_thread=False only so that close() may close it from another thread:
            # the reader gives each thread its own connection.
            connection = sqlite3.connect(
                f"file:{quote(str(path))}?mode=ro",
                uri=True,
                timeout=self.connect_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            connection.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            raise self.translate(exc) from exc
        return connection

    def parameter(self, value: Any) -> Any:
        if isinstance(value, datetime):
            return sqlite_timestamp(value)
        return value

    @contextmanager
    def read_transaction(self, connection: Any) -> Iterator[None]:
        connection.execute("BEGIN")
        try:
            yield
        except BaseException:
            with suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def is_usable(self, connection: Any) -> bool:
        try:
            connection.total_changes  # noqa: B018 - raises once the connection is closed
        except sqlite3.ProgrammingError:
            return False
        return True

    def translate(self, exc: Exception) -> Ap24SyncError:
        detail = self.scrub(str(exc))
        lowered = detail.lower()
        if "locked" in lowered or "busy" in lowered:
            return TransientError(f"Aipress24 SQLite file is busy: {detail}", system=SYSTEM)
        if "no such table" in lowered or "no such column" in lowered:
            return PermanentError(
                f"Aipress24's schema is not the one the reader expects: {detail}", system=SYSTEM
            )
        if "unable to open" in lowered or "not a database" in lowered:
            return ConfigurationError(
                f"{SETTING} names {self.target.path}, which cannot be read as SQLite: {detail}"
            )
        return PermanentError(f"Aipress24 SQLite file refused a read: {detail}", system=SYSTEM)


def _backend_for(
    target: DatabaseTarget, *, connect_timeout: float, statement_timeout: float
) -> _Backend:
    if target.backend == "sqlite":
        return _SqliteBackend(target, connect_timeout=connect_timeout)
    return _PostgresBackend(
        target, connect_timeout=connect_timeout, statement_timeout=statement_timeout
    )


# --- the reader ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Stream:
    """An incremental stream: its SELECT, its cursor key and how its ids compare."""

    select: str
    key: str  # the timestamp expression
    key_alias: str  # the column of the SELECT holding it
    id_column: str
    integer_ids: bool  # bigint/int ids compare as numbers, UUIDs as their text


_ORGANISATIONS_STREAM = _Stream(_ORGANISATIONS, _ORGANISATION_KEY, "changed_at", "o.id", True)
_USERS_STREAM = _Stream(_USERS, _USER_KEY, "changed_at", "u.id", True)
_BUSINESS_WALLS_STREAM = _Stream(_BUSINESS_WALLS, "b.updated_at", "updated_at", "b.id", False)
_SUBSCRIPTIONS_STREAM = _Stream(_SUBSCRIPTIONS, "s.updated_at", "updated_at", "s.id", False)
_PAID_PURCHASES_STREAM = _Stream(_PURCHASES, "p.paid_at", "paid_at", "p.id", True)


def _integer_id(value: str) -> int:
    """A snowflake or sequence id, as the exact integer the database compares (never a float)."""
    if not isinstance(value, str) or not re.fullmatch(r"-?\d{1,19}", value):
        raise ValueError(f"not an Aipress24 integer id: {value!r}")
    return int(value)


class Aipress24Reader:
    """Read-only access to Aipress24's database; see the module docstring.

    `settle`: rows stamped later than `clock() - settle` wait for a later read. `clock` is the
    wall clock (tests move it). Timeouts are in seconds; the statement timeout is PostgreSQL's."""

    def __init__(
        self,
        *,
        url: str,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT,
        settle: timedelta = DEFAULT_SETTLE,
        clock: Callable[[], datetime] | None = None,
        breaker: Breaker | None = None,
    ) -> None:
        self._target = parse_database_url(url)
        self.breaker = breaker
        self._backend = _backend_for(
            self._target, connect_timeout=connect_timeout, statement_timeout=statement_timeout
        )
        self._settle = settle
        self._clock = clock or (lambda: datetime.now(UTC))
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[Any] = []
        self._connects = 0

    @classmethod
    def from_settings(cls, *, guarded: bool = True, **options: Any) -> Aipress24Reader:
        """A reader on `AIPRESS24_DATABASE_URL` (read now, never at import); a missing variable
        is one line: `AIPRESS24_DATABASE_URL is not set; see .env.example`. `guarded`: behind
        the process's `aipress24` circuit breaker (a diagnostic passes False)."""
        from reconciliation.resilience import breaker_for

        if guarded:
            options.setdefault("breaker", breaker_for(SYSTEM))
        return cls(url=setting_required(SETTING), **options)

    def __repr__(self) -> str:
        return f"Aipress24Reader({self._target.backend}: {self._target.display})"

    def __enter__(self) -> Aipress24Reader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def backend(self) -> str:
        return self._target.backend

    @property
    def connects(self) -> int:
        """How many connections this reader has opened (one per thread unless one was lost)."""
        return self._connects

    def raw_connection(self) -> Any:
        """This thread's DB-API connection, opened if needed: for diagnostics and for the tests
        that show the database refusing writes. The reader itself sends only its SELECTs."""
        connection = getattr(self._local, "connection", None)
        if connection is not None and self._backend.is_usable(connection):
            return connection
        if connection is not None:
            self._forget(connection)
        connection = self._backend.connect()
        with self._lock:
            self._connections.append(connection)
            self._connects += 1
        self._local.connection = connection
        return connection

    def close(self) -> None:
        """Close every connection this reader opened; the next read opens a new one."""
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            with suppress(Exception):  # closing what may already be gone
                connection.close()
        self._local = threading.local()

    def _forget(self, connection: Any) -> None:
        with self._lock:
            if connection in self._connections:
                self._connections.remove(connection)
        with suppress(Exception):  # closing what is already broken
            connection.close()
        self._local.connection = None

    # --- streams ------------------------------------------------------------------------------

    def organisations_changed(
        self, *, since: ChangeCursor | None = None, page_size: int = DEFAULT_PAGE_SIZE
    ) -> Page[Organisation, ChangeCursor | None]:
        """Organisations by `modified_at` (`created_at` while it is NULL), soft-deleted ones
        included (`customer_active` False), each with its Stripe customers and company ids."""
        return self._changes(_ORGANISATIONS_STREAM, since, page_size, self._organisations_from)

    def users_changed(
        self, *, since: ChangeCursor | None = None, page_size: int = DEFAULT_PAGE_SIZE
    ) -> Page[User, ChangeCursor | None]:
        """Users by `modified_at` (`created_at` while it is NULL), clone rows skipped,
        soft-deleted ones included (`customer_active` False). `modified_at` moves at every
        login (README §6): expect the same user again with nothing changed."""
        return self._changes(
            _USERS_STREAM, since, page_size, lambda rows, _: [_user(row) for row in rows]
        )

    def business_walls_changed(
        self, *, since: ChangeCursor | None = None, page_size: int = DEFAULT_PAGE_SIZE
    ) -> Page[BusinessWall, ChangeCursor | None]:
        """Business Walls by `updated_at`. A changed SIREN or VAT number shows here, not in the
        organisations stream (the organisation row does not change)."""
        return self._changes(
            _BUSINESS_WALLS_STREAM,
            since,
            page_size,
            lambda rows, _: [_business_wall(row) for row in rows],
        )

    def subscriptions_changed(
        self, *, since: ChangeCursor | None = None, page_size: int = DEFAULT_PAGE_SIZE
    ) -> Page[Subscription, ChangeCursor | None]:
        """Subscriptions by `updated_at`, each with its Business Wall's organisation."""
        return self._changes(
            _SUBSCRIPTIONS_STREAM,
            since,
            page_size,
            lambda rows, _: [_subscription(row) for row in rows],
        )

    def purchases_paid(
        self, *, since: ChangeCursor | None = None, page_size: int = DEFAULT_PAGE_SIZE
    ) -> Page[Purchase, ChangeCursor | None]:
        """Purchases by `paid_at`, set once when a purchase is paid: the new sales. A purchase
        refunded before it was first read comes with status `refunded`. Later changes (refunds)
        move no column: `purchases_all` is the pass that sees them."""
        return self._changes(
            _PAID_PURCHASES_STREAM,
            since,
            page_size,
            lambda rows, _: [_purchase(row) for row in rows],
        )

    def purchases_all(
        self, *, after: str | None = None, page_size: int = DEFAULT_PAGE_SIZE
    ) -> Page[Purchase, str | None]:
        """Every purchase whatever its status, by id, after the purchase id `after`: the
        scheduled full pass that detects status changes. `next_cursor` is the last id returned
        (the id given when the page is empty); start again with None for the next pass."""
        _check_page_size(page_size)
        where, params = "", {"limit": page_size + 1}
        if after is not None:
            where, params["after_id"] = " AND p.id > :after_id", _integer_id(after)
        sql = f"{_PURCHASES}{where} ORDER BY p.id LIMIT :limit"
        with self._reading() as fetch:
            rows = fetch(sql, params)
            purchases = [_purchase(row) for row in rows[:page_size]]
        next_cursor = purchases[-1].id if purchases else after
        return Page(rows=tuple(purchases), next_cursor=next_cursor, has_more=len(rows) > page_size)

    # --- lookups ------------------------------------------------------------------------------

    def organisation(self, organisation_id: str) -> Organisation | None:
        """One organisation by id, soft-deleted or not; None when there is none (hard deletes
        leave no trace, README §9.7)."""
        with self._reading() as fetch:
            rows = fetch(f"{_ORGANISATIONS} AND o.id = :id", {"id": _integer_id(organisation_id)})
            found = self._organisations_from(rows, fetch)
        return found[0] if found else None

    def user(self, user_id: str) -> User | None:
        """One user by id; None for a clone row or a user that does not exist."""
        with self._reading() as fetch:
            rows = fetch(f"{_USERS} AND u.id = :id", {"id": _integer_id(user_id)})
        return _user(rows[0]) if rows else None

    def purchase(self, purchase_id: str) -> Purchase | None:
        with self._reading() as fetch:
            rows = fetch(f"{_PURCHASES} AND p.id = :id", {"id": _integer_id(purchase_id)})
        return _purchase(rows[0]) if rows else None

    # --- machinery ----------------------------------------------------------------------------

    def _changes(
        self,
        stream: _Stream,
        since: ChangeCursor | None,
        page_size: int,
        read: Callable[[list[Row], _Fetch], list[Any]],
    ) -> Page[Any, ChangeCursor | None]:
        _check_page_size(page_size)
        key, id_column = stream.key, stream.id_column
        params: dict[str, Any] = {"until": self._clock() - self._settle, "limit": page_size + 1}
        where = f" AND {key} IS NOT NULL AND {key} <= :until"
        if since is not None:
            where += f" AND ({key} > :at OR ({key} = :at AND {id_column} > :after_id))"
            params["at"] = since.at
            params["after_id"] = _integer_id(since.id) if stream.integer_ids else since.id
        sql = f"{stream.select}{where} ORDER BY {key}, {id_column} LIMIT :limit"
        with self._reading() as fetch:
            rows = fetch(sql, params)
            items = read(rows[:page_size], fetch)
        next_cursor = since
        if items:
            last = rows[len(items) - 1]
            at = _required_utc(last[stream.key_alias], where=f"{stream.key_alias} of {last['id']}")
            next_cursor = ChangeCursor(at=at, id=last["id"])
        return Page(rows=tuple(items), next_cursor=next_cursor, has_more=len(rows) > page_size)

    @contextmanager
    def _reading(self) -> Iterator[_Fetch]:
        """One read transaction behind the circuit breaker (asked first: CircuitOpenError and no
        connection while it is open; told how it went: an unreachable or lost database is a
        failure, any answer — an error about a role, a table — is a success for it)."""
        breaker = self.breaker
        if breaker is None:
            with self._transaction() as fetch:
                yield fetch
            return
        ticket = breaker.before_call(endpoint="read")
        try:
            with self._transaction() as fetch:
                yield fetch
        except TransientError as exc:
            if breaker.record_failure(ticket, exc):
                raise breaker.open_error(exc, endpoint="read") from exc
            raise
        except Ap24SyncError:
            breaker.record_success(ticket)
            raise
        breaker.record_success(ticket)

    @contextmanager
    def _transaction(self) -> Iterator[_Fetch]:
        """One read transaction on this thread's connection; driver errors translated, and a
        connection that broke dropped so that the next read reconnects."""
        backend = self._backend
        connection = self.raw_connection()

        def fetch(sql: str, params: Mapping[str, Any]) -> list[Row]:
            cursor = connection.cursor()
            try:
                cursor.execute(
                    backend.statement(sql),
                    {name: backend.parameter(value) for name, value in params.items()},
                )
                names = [column[0] for column in cursor.description]
                return [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]
            finally:
                cursor.close()

        try:
            with backend.read_transaction(connection):
                yield fetch
        except Ap24SyncError:
            raise
        except Exception as exc:
            translated = _translated(backend, exc)
            if translated is None:
                raise
            if not backend.is_usable(connection) or isinstance(translated, TransientError):
                self._forget(connection)
            raise translated from exc

    def _organisations_from(self, rows: list[Row], fetch: _Fetch) -> list[Organisation]:
        if not rows:
            return []
        params = {f"id{index}": _integer_id(row["id"]) for index, row in enumerate(rows)}
        placeholders = ", ".join(f":{name}" for name in params)
        walls: dict[str, list[Row]] = {}
        for wall in fetch(_ORGANISATION_WALLS.format(ids=placeholders), params):
            walls.setdefault(wall["organisation_id"], []).append(wall)
        return [_organisation(row, walls.get(row["id"], [])) for row in rows]


_Fetch = Callable[[str, Mapping[str, Any]], list[Row]]


def _translated(backend: _Backend, exc: Exception) -> Ap24SyncError | None:
    import psycopg

    if isinstance(exc, sqlite3.Error | psycopg.Error):
        return backend.translate(exc)
    return None


def _check_page_size(page_size: int) -> None:
    if not isinstance(page_size, int) or not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be 1 to {MAX_PAGE_SIZE}, not {page_size!r}")


# --- rows ---------------------------------------------------------------------------------------


def _organisation(row: Row, walls: Sequence[Row]) -> Organisation:
    where = f"crp_organisation {row['id']}"
    identity = _identity_wall(row.get("bw_id"), walls)
    subscribed = [wall for wall in walls if _text(wall["stripe_customer_id"])]
    subscribed.sort(
        key=lambda wall: (
            _required_utc(wall["subscribed_at"], where=where),
            wall["subscription_id"],
        )
    )
    customer_ids: list[str] = []
    for wall in subscribed:
        if wall["stripe_customer_id"] not in customer_ids:
            customer_ids.append(wall["stripe_customer_id"])
    return Organisation(
        id=row["id"],
        name=row["name"],
        slug=row["slug"],
        address=_text(row["address"]),
        city=_text(row["city"]),
        zip_code=_text(row["zip_code"]),
        country=_text(row["country"]),
        country_code=_text(row["country_code"]),
        billing_email=_text(row["billing_email"]),
        billing_vat_number=_text(row["billing_vat_number"]),
        billing_address_line1=_text(row["billing_address_line1"]),
        billing_address_line2=_text(row["billing_address_line2"]),
        billing_postal_code=_text(row["billing_postal_code"]),
        billing_city=_text(row["billing_city"]),
        billing_country=_text(row["billing_country"]),
        stripe_customer_id=_text(row["stripe_customer_id"]),
        subscription_stripe_customer_ids=tuple(customer_ids),
        business_wall_id=_text(row["bw_id"]),
        business_wall_type=_text(row["bw_active"]),
        siren=_text(identity["siren"]) if identity else None,
        identity_business_wall_id=identity["wall_id"] if identity else None,
        business_wall_vat_number=_text(identity["tva"]) if identity else None,
        active=_bool(row["active"]),
        created_at=_required_utc(row["created_at"], where=f"{where} created_at"),
        modified_at=_utc(row["modified_at"], where=f"{where} modified_at"),
        deleted_at=_utc(row["deleted_at"], where=f"{where} deleted_at"),
        changed_at=_required_utc(row["changed_at"], where=f"{where} modified_at"),
    )


def _identity_wall(active_wall_id: str | None, walls: Sequence[Row]) -> Row | None:
    """The Business Wall whose SIREN and VAT number stand for the organisation: the active one
    (`crp_organisation.bw_id`), else the most recently updated one where either was typed."""
    by_id = {wall["wall_id"]: wall for wall in walls}
    if active_wall_id and active_wall_id in by_id:
        return by_id[active_wall_id]
    typed = [wall for wall in by_id.values() if _text(wall["siren"]) or _text(wall["tva"])]
    if not typed:
        return None
    where = "bw_business_wall updated_at"
    return max(typed, key=lambda wall: (_utc(wall["updated_at"], where=where), wall["wall_id"]))


def _user(row: Row) -> User:
    where = f"aut_user {row['id']}"
    return User(
        id=row["id"],
        email=_text(row["email"]),
        first_name=row["first_name"],
        last_name=row["last_name"],
        tel_mobile=_text(row["tel_mobile"]),
        organisation_id=row["organisation_id"],
        address=_text(row["address"]),
        city=_text(row["city"]),
        zip_code=_text(row["zip_code"]),
        country=_text(row["country"]),
        country_code=_text(row["country_code"]),
        validation_status=_text(row["validation_status"]),
        validated_at=_utc(row["validated_at"], where=f"{where} validated_at"),
        active=_bool(row["active"]),
        created_at=_required_utc(row["created_at"], where=f"{where} created_at"),
        modified_at=_utc(row["modified_at"], where=f"{where} modified_at"),
        deleted_at=_utc(row["deleted_at"], where=f"{where} deleted_at"),
        changed_at=_required_utc(row["changed_at"], where=f"{where} modified_at"),
    )


def _business_wall(row: Row) -> BusinessWall:
    where = f"bw_business_wall {row['id']}"
    return BusinessWall(
        id=row["id"],
        organisation_id=row["organisation_id"],
        owner_id=row["owner_id"],
        payer_id=row["payer_id"],
        bw_type=_enum(BusinessWallType, row["bw_type"], where=f"{where} bw_type"),
        status=_enum(BusinessWallStatus, row["status"], where=f"{where} status"),
        is_free=_bool(row["is_free"]),
        name=_text(row["name"]),
        name_official=_text(row["name_official"]),
        name_entity=_text(row["name_entity"]),
        name_group=_text(row["name_group"]),
        siren=_text(row["siren"]),
        vat_number=_text(row["tva"]),
        postal_address=_text(row["postal_address"]),
        postal_code=_text(row["code_postal"]),
        city=_text(row["ville"]),
        country_code=_text(row["pays_zip_ville"]),
        country_zip_city=_text(row["pays_zip_ville_detail"]),
        tel_standard=_text(row["tel_standard"]),
        site_url=_text(row["site_url"]),
        payer_is_owner=_bool(row["payer_is_owner"]),
        payer_first_name=_text(row["payer_first_name"]),
        payer_last_name=_text(row["payer_last_name"]),
        payer_service=_text(row["payer_service"]),
        payer_email=_text(row["payer_email"]),
        payer_phone=_text(row["payer_phone"]),
        payer_address=_text(row["payer_address"]),
        activated_at=_utc(row["activated_at"], where=f"{where} activated_at"),
        created_at=_required_utc(row["created_at"], where=f"{where} created_at"),
        updated_at=_required_utc(row["updated_at"], where=f"{where} updated_at"),
    )


def _subscription(row: Row) -> Subscription:
    where = f"bw_subscription {row['id']}"
    return Subscription(
        id=row["id"],
        business_wall_id=row["business_wall_id"],
        organisation_id=row["organisation_id"],
        status=_enum(SubscriptionStatus, row["status"], where=f"{where} status"),
        pricing_field=row["pricing_field"],
        pricing_tier=row["pricing_tier"],
        monthly_price=_decimal(row["monthly_price"], where=f"{where} monthly_price"),
        annual_price=_decimal(row["annual_price"], where=f"{where} annual_price"),
        billing_cycle=row["billing_cycle"],
        stripe_customer_id=_text(row["stripe_customer_id"]),
        stripe_subscription_id=_text(row["stripe_subscription_id"]),
        stripe_checkout_session_id=_text(row["stripe_checkout_session_id"]),
        cgv_accepted_at=_utc(row["cgv_accepted_at"], where=f"{where} cgv_accepted_at"),
        cgv_version=_text(row["cgv_version"]),
        started_at=_utc(row["started_at"], where=f"{where} started_at"),
        expires_at=_utc(row["expires_at"], where=f"{where} expires_at"),
        cancelled_at=_utc(row["cancelled_at"], where=f"{where} cancelled_at"),
        past_due_since=_utc(row["past_due_since"], where=f"{where} past_due_since"),
        billing_first_name=_text(row["billing_first_name"]),
        billing_last_name=_text(row["billing_last_name"]),
        billing_company=_text(row["billing_company"]),
        billing_address=_text(row["billing_address"]),
        billing_city=_text(row["billing_city"]),
        billing_zip_code=_text(row["billing_zip_code"]),
        billing_country=_text(row["billing_country"]),
        created_at=_required_utc(row["created_at"], where=f"{where} created_at"),
        updated_at=_required_utc(row["updated_at"], where=f"{where} updated_at"),
    )


def _purchase(row: Row) -> Purchase:
    where = f"wire_article_purchase {row['id']}"
    return Purchase(
        id=row["id"],
        status=_enum(PurchaseStatus, row["status"], where=f"{where} status"),
        product_type=_enum(ProductType, row["product_type"], where=f"{where} product_type"),
        amount_cents=_int(row["amount_cents"]),
        currency=str(row["currency"]).strip().upper(),
        buyer_id=row["buyer_id"],
        buyer_organisation_id=row["buyer_organisation_id"],
        post_id=row["post_id"],
        post_title=_text(row["post_title"]),
        seller_organisation_id=row["seller_organisation_id"],
        gift_count=_int(row["gift_count"]) or 0,
        stripe_checkout_session_id=_text(row["stripe_checkout_session_id"]),
        stripe_payment_intent_id=_text(row["stripe_payment_intent_id"]),
        created_at=_required_utc(row["created_at"], where=f"{where} timestamp"),
        paid_at=_utc(row["paid_at"], where=f"{where} paid_at"),
    )
