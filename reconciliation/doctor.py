"""Checks of the configuration and of each remote, one line each, saying what to fix."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from django.conf import settings
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from reconciliation.errors import (
    Ap24SyncError,
    AuthenticationError,
    ConfigurationError,
    RemoteError,
    TransientError,
)


@dataclass(frozen=True)
class Finding:
    name: str
    ok: bool
    message: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.message}"


def check_database() -> Finding:
    vendor = connection.vendor
    try:
        connection.ensure_connection()
        executor = MigrationExecutor(connection)
        pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except Exception as exc:  # any driver error is a finding, not a crash
        return Finding("database", False, f"{vendor} unreachable ({exc}); check DATABASE_URL")
    if pending:
        return Finding(
            "database", False, f"{len(pending)} migration(s) not applied; run manage.py migrate"
        )
    return Finding("database", True, f"{vendor}, migrations applied")


def check_broker() -> Finding:
    redis_url = settings.Q_CLUSTER.get("redis")
    if not redis_url:
        return Finding("broker", True, "django-q2 ORM broker (the database)")
    import redis

    try:
        redis.Redis.from_url(redis_url, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        return Finding("broker", False, f"Redis unreachable ({exc}); check REDIS_URL")
    return Finding("broker", True, "Redis answers")


def _remote_problem(system: str, exc: Exception, url_setting: str, key_setting: str) -> str:
    if isinstance(exc, AuthenticationError):
        return f"{system} refused the key ({exc}); check {key_setting}"
    if isinstance(exc, TransientError):
        return f"{exc}; check {url_setting} and that the server is up"
    return f"{system} answered an error ({exc})"


def check_dolibarr() -> Finding:
    from reconciliation.connectors.dolibarr import DolibarrClient

    try:
        with DolibarrClient.from_settings(guarded=False) as client:
            status = client.status()
    except ConfigurationError as exc:
        return Finding("dolibarr", False, str(exc))
    except RemoteError as exc:
        return Finding(
            "dolibarr", False, _remote_problem("Dolibarr", exc, "DOLIBARR_URL", "DOLIBARR_API_KEY")
        )
    return Finding("dolibarr", True, f"Dolibarr {status.version} at {settings.DOLIBARR_URL}")


def check_stripe() -> Finding:
    from reconciliation.connectors.stripe import StripeConnector

    try:
        connector = StripeConnector.from_settings(guarded=False)
        connector.balance()
    except ConfigurationError as exc:
        return Finding("stripe", False, str(exc))
    except RemoteError as exc:
        return Finding(
            "stripe", False, _remote_problem("Stripe", exc, "STRIPE_API_BASE", "STRIPE_API_KEY")
        )
    where = settings.STRIPE_API_BASE or "api.stripe.com"
    return Finding("stripe", True, f"Stripe answers at {where}")


def check_aipress24() -> Finding:
    """The reader opens its read-only session and reads one page; the VAT rate of every product
    type is a percentage (a purchase of a type without one could not be billed)."""
    from reconciliation.connectors.aipress24 import Aipress24Reader
    from reconciliation.connectors.aipress24_types import ProductType
    from reconciliation.sync.aipress24_mapping import vat_rate

    try:
        rates = {kind.value: vat_rate(kind.value) for kind in ProductType}
        with Aipress24Reader.from_settings(guarded=False) as reader:
            reader.organisations_changed(since=None, page_size=1)
            backend = reader.backend
    except ConfigurationError as exc:
        return Finding("aipress24", False, str(exc))
    except RemoteError as exc:
        return Finding(
            "aipress24",
            False,
            f"{exc}; check AIPRESS24_DATABASE_URL and that the database is up",
        )
    shown = ", ".join(f"{kind} {rate} %" for kind, rate in rates.items())
    return Finding("aipress24", True, f"Aipress24 readable ({backend}); VAT rates {shown}")


CHECKS: tuple[Callable[[], Finding], ...] = (
    check_database,
    check_broker,
    check_dolibarr,
    check_stripe,
    check_aipress24,
)


def run_checks() -> Iterator[Finding]:
    for check in CHECKS:
        try:
            yield check()
        except Ap24SyncError as exc:
            yield Finding(check.__name__.removeprefix("check_"), False, str(exc))
