"""Health, for machines and for people.

`/healthz` is for load balancers and uptime probes: it says only up or down (the database and
the django-q2 broker answer, or not) and never which part failed, a host, a version or an
error: it answers anyone, without login. The detail goes to the log.

The status page (`/admin/status/`) is for staff: each remote's circuit breaker, the queue, the
records due, each job's last run and lease, and the open incidents, in a constant number of
queries. docs/runbook.md says how to read both.

The checks here are lighter than `reconciliation.doctor`'s: the doctor plans migrations (it
loads every migration file) and gives Redis three seconds; a probe that runs every few seconds
needs one trivial query and a ping bounded on connect and on read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.db import connections
from django.db.models import Count, F, Min, Window
from django.db.models.functions import Coalesce, RowNumber
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from django.utils import formats, timezone
from django.utils.translation import gettext as _
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe
from django_q import brokers
from django_q.brokers.orm import ORM

from reconciliation.models import (
    CircuitBreaker,
    Incident,
    JobLease,
    Source,
    SyncRecord,
    SyncRun,
    SyncState,
)

logger = logging.getLogger(__name__)

# A probe that waits longer than the load balancer's own timeout is worse than a "down".
REDIS_TIMEOUT_SECONDS = 1.0
# Shown on the status page even before their breaker has a row; any other system with a row
# (aipress24, taler) is shown as well.
REMOTE_SYSTEMS = ("dolibarr", "stripe")


# --- /healthz -------------------------------------------------------------------------------


def _failure(exc: BaseException) -> str:
    """The exception's class and first line: drivers name the host and port, never a password;
    the log filter removes any configured secret anyway."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def database_answers(*, alias: str = "default") -> bool:
    try:
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # any driver error means down
        logger.warning("healthz: database %r does not answer (%s)", alias, _failure(exc))
        return False
    return True


def redis_answers(*, config: str | dict[str, Any]) -> bool:
    import redis

    timeouts = {
        "socket_connect_timeout": REDIS_TIMEOUT_SECONDS,
        "socket_timeout": REDIS_TIMEOUT_SECONDS,
    }
    try:
        if isinstance(config, str):
            client = redis.Redis.from_url(config, **timeouts)
        else:
            client = redis.Redis(**{**config, **timeouts})
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # refused, timed out, refused auth: all mean down
        # Never the URL: it may carry the Redis password.
        logger.warning("healthz: the Redis broker does not answer (%s)", _failure(exc))
        return False
    return True


def service_up() -> bool:
    """The database answers and so does the broker (the ORM broker is a database: the same
    one, usually, already checked; otherwise Redis, as django-q2 falls back to it)."""
    if not database_answers(alias="default"):
        return False
    q_cluster = settings.Q_CLUSTER
    orm_alias = q_cluster.get("orm")
    if orm_alias:
        return orm_alias == "default" or database_answers(alias=orm_alias)
    return redis_answers(config=q_cluster.get("redis", {}))


@csrf_exempt
@never_cache
@require_safe
def healthz(request: HttpRequest) -> HttpResponse:
    if service_up():
        return JsonResponse({"status": "up"})
    return JsonResponse({"status": "down"}, status=503)


# --- Status page ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteStatus:
    name: str
    breaker: CircuitBreaker


@dataclass(frozen=True)
class QueueStatus:
    broker: str
    depth: int | None  # None: the broker did not answer


@dataclass(frozen=True)
class DueRecords:
    count: int
    failed_count: int
    oldest: SyncRecord | None
    oldest_due_since: datetime | None


@dataclass(frozen=True)
class JobStatus:
    job: str
    last_run: SyncRun | None
    lease: JobLease | None
    lease_held: bool

    @property
    def duration(self) -> str:
        if self.last_run is None or self.last_run.duration is None:
            return ""
        return duration_text(self.last_run.duration)

    @property
    def counts(self) -> str:
        return counts_text(self.last_run.counts) if self.last_run else ""


@dataclass(frozen=True)
class StatusOverview:
    remotes: list[RemoteStatus]
    queue: QueueStatus
    due: DueRecords
    jobs: list[JobStatus]
    incidents: list[Incident]
    now: datetime


def duration_text(duration: timedelta) -> str:
    seconds = duration.total_seconds()
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def counts_text(counts: dict[str, Any], prefix: str = "") -> str:
    """`{"pulled": 12, "processed": {"synced": 3}}` → "processed.synced 3, pulled 12": sorted,
    since PostgreSQL's jsonb does not keep the keys' order."""
    parts = []
    for key, value in sorted(counts.items()):
        if isinstance(value, dict):
            nested = counts_text(value, prefix=f"{prefix}{key}.")
            if nested:
                parts.append(nested)
        elif isinstance(value, int) and not isinstance(value, bool):
            parts.append(f"{prefix}{key} {formats.number_format(value, force_grouping=True)}")
        else:
            parts.append(f"{prefix}{key} {value}")
    return ", ".join(parts)


def remotes_status() -> list[RemoteStatus]:
    """A row per known remote (closed, never failed, when it has no breaker row yet) and per
    system that has a breaker row."""
    breakers = {breaker.system: breaker for breaker in CircuitBreaker.objects.all()}
    systems = list(REMOTE_SYSTEMS) + sorted(set(breakers) - set(REMOTE_SYSTEMS))
    labels = dict(Source.choices)
    return [
        RemoteStatus(
            name=str(labels.get(system, system)),
            breaker=breakers.get(system) or CircuitBreaker(system=system),
        )
        for system in systems
    ]


def queue_status() -> QueueStatus:
    """django-q2's queue depth; None when the broker cannot be reached (the page still
    renders)."""
    try:
        broker = brokers.get_broker()
        label = _("Database (ORM broker)") if isinstance(broker, ORM) else "Redis"
        _bound_redis_wait(broker)
        return QueueStatus(broker=label, depth=int(broker.queue_size()))
    except Exception as exc:  # a broker of any kind that does not answer
        logger.warning("status page: the broker does not answer (%s)", _failure(exc))
        return QueueStatus(broker=_("unknown"), depth=None)


def _bound_redis_wait(broker: brokers.Broker) -> None:
    # django-q2 builds its Redis client without timeouts; the page must not hang on a Redis
    # that accepts connections but never answers. The pool is new with each broker.
    pool = getattr(broker.connection, "connection_pool", None)
    if pool is not None:
        pool.connection_kwargs.setdefault("socket_connect_timeout", REDIS_TIMEOUT_SECONDS)
        pool.connection_kwargs.setdefault("socket_timeout", REDIS_TIMEOUT_SECONDS)


def due_records(*, now: datetime) -> DueRecords:
    """How many records are due and the one due the longest: due since its next attempt, or,
    without one, since it became pending (its last save)."""
    due_since = Coalesce("next_attempt_at", "updated_at")
    due = SyncRecord.objects.due(now=now)
    summary = due.aggregate(count=Count("pk"), oldest_due_since=Min(due_since))
    oldest = (
        due.annotate(due_since=due_since).order_by("due_since", "pk").first()
        if summary["count"]
        else None
    )
    return DueRecords(
        count=summary["count"],
        failed_count=SyncRecord.objects.filter(state=SyncState.FAILED).count(),
        oldest=oldest,
        oldest_due_since=summary["oldest_due_since"],
    )


def jobs_status(*, now: datetime) -> list[JobStatus]:
    """Every job that has run or holds a lease row: its latest run and its lease."""
    latest_runs = {
        run.job: run
        for run in SyncRun.objects.annotate(
            rank=Window(RowNumber(), partition_by=F("job"), order_by=F("started_at").desc())
        ).filter(rank=1)
    }
    leases = {lease.job: lease for lease in JobLease.objects.select_related("run")}
    return [
        JobStatus(
            job=job,
            last_run=latest_runs.get(job),
            lease=leases.get(job),
            lease_held=_lease_held(leases.get(job), now=now),
        )
        for job in sorted(set(latest_runs) | set(leases))
    ]


def _lease_held(lease: JobLease | None, *, now: datetime) -> bool:
    return bool(lease and lease.holder and lease.expires_at and lease.expires_at > now)


def incidents_open() -> list[Incident]:
    return list(Incident.objects.filter(resolved_at__isnull=True).order_by("-opened_at"))


def status_overview(*, now: datetime | None = None) -> StatusOverview:
    now = now or timezone.now()
    remotes = remotes_status()
    due = due_records(now=now)
    jobs = jobs_status(now=now)
    incidents = incidents_open()
    # Last: the ORM broker closes the request's connection when it is past CONN_MAX_AGE.
    queue = queue_status()
    return StatusOverview(
        remotes=remotes, queue=queue, due=due, jobs=jobs, incidents=incidents, now=now
    )


def status_page(request: HttpRequest) -> TemplateResponse:
    """Staff only: routed through `admin.site.admin_view` (login, staff check, no cache)."""
    context = {
        **admin.site.each_context(request),
        "title": _("Status"),
        "overview": status_overview(),
    }
    return TemplateResponse(request, "reconciliation/status.html", context)
