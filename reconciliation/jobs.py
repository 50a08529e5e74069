"""The jobs that keep Dolibarr in step, their cadences, and the one way to run them.

`JOBS` is the registry: each `Job` has a name, what it does, the function that does it and a
default cadence (`JOB_CADENCES` overrides it). `manage.py setup_schedules` turns the registry
into django-q2 `Schedule` rows (`schedules_install`), and every schedule, manual run and
operator command runs a job through `job_run`, which:

- takes the job's `JobLease` row (a conditional UPDATE, or the INSERT of a first run), so that
  two runs of one job never overlap, whichever cluster or machine starts them; a run that finds
  the job held is recorded as `deferred` with who holds it and since when;
- renews the lease from a heartbeat thread while the job works, and releases it at the end; a
  crashed holder stops renewing, its lease expires after `JOB_LEASE_SECONDS`, and the next run
  proceeds (closing the crashed run as failed, so that the history says what happened);
- records the run as a `SyncRun` (trigger, times, counts, cursor before and after, error):
  `succeeded`, `failed` with a one-line error, or `deferred` when a remote's circuit breaker is
  open (`CircuitOpenError`);
- tells the admins once when a job's last two finished runs both failed, and once when it
  succeeds again (`reconciliation.alerts`, `IncidentKind.JOB_FAILING`).

docs/jobs.md has the table of jobs, the lease and its renewal, and the operator commands.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from reconciliation.errors import Ap24SyncError, CircuitOpenError, ConfigurationError
from reconciliation.logs import redact
from reconciliation.models import IncidentKind, JobLease, RunState, SyncRun
from reconciliation.services.runs import run_adopting, run_deferred, run_finish, run_start

logger = logging.getLogger(__name__)

# What every schedule installed by `setup_schedules` calls, with the job's name as argument.
SCHEDULE_TASK = "reconciliation.tasks.job_task"
ERROR_MAX_CHARS = 500


class JobError(Ap24SyncError):
    """A job asked for in a way it cannot run: unknown, an option it does not take, a dry run
    it cannot do. The message says what to do instead."""


# --- cadences -----------------------------------------------------------------------------


_EVERY = re.compile(r"^every\s+(\d+)\s*(m|h)$")
_DAILY = re.compile(r"^daily\s+(\d{1,2}):(\d{2})$")
# django-q2 keeps `minutes` in a PositiveSmallIntegerField.
_MAX_MINUTES = 32767


@dataclass(frozen=True)
class Cadence:
    """`every N m|h` (a MINUTES schedule) or `daily HH:MM` (a DAILY schedule, UTC)."""

    minutes: int | None = None
    at: time | None = None

    @classmethod
    def parse(cls, text: str) -> Cadence:
        """Raises ValueError saying what is wrong."""
        cleaned = " ".join(str(text).strip().lower().split())
        if match := _EVERY.match(cleaned):
            number, unit = int(match[1]), match[2]
            minutes = number * 60 if unit == "h" else number
            if not 1 <= minutes <= _MAX_MINUTES:
                raise ValueError(f"{text!r} is out of range (1 minute to {_MAX_MINUTES // 60} h)")
            return cls(minutes=minutes)
        if match := _DAILY.match(cleaned):
            hour, minute = int(match[1]), int(match[2])
            if hour > 23 or minute > 59:
                raise ValueError(f"{text!r} is not a time of day")
            return cls(at=time(hour, minute))
        raise ValueError(f"{text!r} is not a cadence")

    def __str__(self) -> str:
        if self.at is not None:
            return f"daily {self.at:%H:%M}"
        assert self.minutes is not None
        return (
            f"every {self.minutes // 60}h" if self.minutes % 60 == 0 else f"every {self.minutes}m"
        )

    def next_daily_run(self, *, now: datetime) -> datetime:
        """The next `HH:MM` UTC after `now`."""
        assert self.at is not None
        today = datetime.combine(now.astimezone(UTC).date(), self.at, tzinfo=UTC)
        return today if today > now else today + timedelta(days=1)


# --- the registry -----------------------------------------------------------------------------


class JobProgress:
    """What a job tells whoever runs it. This one, a scheduled run's, only logs its lines;
    `manage.py run_job` shows them and draws the bars."""

    def __init__(self, job: str = "") -> None:
        self.job = job

    def line(self, text: str) -> None:
        logger.info("%s: %s", self.job, text)

    def bar(
        self, *, desc: str, total: int | None = None, unit: str = " rec"
    ) -> AbstractContextManager[Callable[[int], Any]]:
        """A context whose value is called with the number of items just done."""
        return nullcontext(lambda done: None)


@dataclass(frozen=True)
class JobCall:
    """One run of a job as its function sees it."""

    job: Job
    trigger: str
    dry_run: bool
    options: Mapping[str, Any]
    progress: JobProgress


@dataclass
class JobResult:
    """What a job function returns: counts for its SyncRun, and anything its caller may show
    (a dry run's plan)."""

    counts: dict[str, int] = field(default_factory=dict)
    detail: Any = None


@dataclass(frozen=True)
class Job:
    """A job of the registry.

    `options`: the keyword options `job_run` passes on to it (`full` …); `cannot_dry_run`: why
    it has no dry run (empty when it has one); `adopts`: other run names its function opens
    (`run_start`) that are this job's own run rather than a step of it (`services.runs`)."""

    name: str
    description: str
    function: Callable[[JobCall], JobResult | None]
    cadence: str
    options: frozenset[str] = frozenset()
    cannot_dry_run: str = ""
    adopts: tuple[str, ...] = ()

    @property
    def can_dry_run(self) -> bool:
        return not self.cannot_dry_run


def _stripe_events(call: JobCall) -> JobResult:
    from reconciliation.connectors.stripe import StripeConnector
    from reconciliation.sync.stripe_events import stripe_events_pull

    connector = StripeConnector.from_settings()
    with call.progress.bar(desc="events", unit=" evt") as update:
        run = stripe_events_pull(connector=connector, trigger=call.trigger, progress=update)
    return JobResult(counts=dict(run.counts))


def _stripe_sync(call: JobCall, *, full: bool = False) -> JobResult:
    from reconciliation.sync.stripe_sync import stripe_sync

    with ExitStack() as bars:
        update: list[Callable[[int], Any]] = []

        def pulled(name: str, counts: dict[str, int]) -> None:
            summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing"
            call.progress.line(f"pulled {name}: {summary}")

        def processing(total: int) -> None:
            desc = "dry run" if call.dry_run else "sync"
            update.append(bars.enter_context(call.progress.bar(desc=desc, total=total)))

        result = stripe_sync(
            streams=call.options.get("streams"),
            full=full or bool(call.options.get("full")),
            dry_run=call.dry_run,
            trigger=call.trigger,
            on_pulled=pulled,
            before_processing=processing,
            progress=lambda done: update[0](done) if update else None,
        )
    counts: dict[str, int] = {}
    for stream_counts in result.pulled.values():
        for key in ("seen", "new", "changed"):
            counts[key] = counts.get(key, 0) + int(stream_counts.get(key, 0))
    counts.update({name: int(value) for name, value in result.processed.items() if value})
    return JobResult(counts=counts, detail=result)


def _stripe_full_rescan(call: JobCall) -> JobResult:
    return _stripe_sync(call, full=True)


def _sync_retry(call: JobCall) -> JobResult:
    from reconciliation.sync.engine import build_context, describe_outcome, sync_due
    from reconciliation.sync.remote import PlanningDolibarr
    from reconciliation.sync.stripe_sync import StripeSyncResult, records_due_count

    context = build_context(dry_run=call.dry_run)
    desc = "dry run" if call.dry_run else "sync"
    with call.progress.bar(desc=desc, total=records_due_count(kinds=None)) as update:
        processed = sync_due(context=context, progress=update)
    result = StripeSyncResult(processed=processed)
    if isinstance(context.dolibarr, PlanningDolibarr):
        result.plan = list(context.dolibarr.plan)
        result.planned_outcomes = [
            (label, describe_outcome(outcome)) for label, outcome in context.dolibarr.outcomes
        ]
    counts = {name: int(value) for name, value in processed.items() if value}
    return JobResult(counts=counts, detail=result)


def _aipress24_sync(call: JobCall, *, full: bool = False) -> JobResult:
    from reconciliation.connectors.aipress24 import Aipress24Reader
    from reconciliation.sync.aipress24_pull import aipress24_pull_all
    from reconciliation.sync.engine import build_context, sync_due
    from reconciliation.sync.stripe_sync import records_due_count

    def pulled(name: str, counts: dict[str, int]) -> None:
        summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing"
        call.progress.line(f"pulled aipress24 {name}: {summary}")

    reader = Aipress24Reader.from_settings()
    try:
        streams = aipress24_pull_all(
            reader=reader,
            trigger=call.trigger,
            full=full or bool(call.options.get("full")),
            on_pulled=pulled,
        )
        context = build_context(dry_run=call.dry_run, aipress24=reader)
        desc = "dry run" if call.dry_run else "sync"
        with call.progress.bar(desc=desc, total=records_due_count(kinds=None)) as update:
            processed = sync_due(context=context, progress=update)
    finally:
        reader.close()
    counts: dict[str, int] = {}
    for stream_counts in streams.values():
        for key in ("seen", "new", "changed"):
            counts[key] = counts.get(key, 0) + int(stream_counts.get(key, 0))
    counts.update({name: int(value) for name, value in processed.items() if value})
    return JobResult(counts=counts)


def _aipress24_full_pass(call: JobCall) -> JobResult:
    return _aipress24_sync(call, full=True)


def _reconcile(call: JobCall, *, full: bool = False) -> JobResult:
    from reconciliation.connectors.dolibarr import DolibarrClient
    from reconciliation.connectors.stripe import StripeConnector
    from reconciliation.reconcile.job import default_since, reconcile
    from reconciliation.sync.engine import dolibarr_setup

    full = full or bool(call.options.get("full"))
    since = None if full else default_since()
    call.progress.line(
        "reconciling all time" if since is None else f"reconciling since {since:%Y-%m-%d %H:%M}"
    )
    with DolibarrClient.from_settings() as client:
        setup = dolibarr_setup(client=client)
        stripe = StripeConnector.from_settings() if settings.STRIPE_API_KEY else None
        result = reconcile(
            dolibarr=client, setup=setup, stripe=stripe, since=since, trigger=call.trigger
        )
    return JobResult(counts={k: int(v) for k, v in result.counts.items() if v}, detail=result)


def _reconcile_full(call: JobCall) -> JobResult:
    return _reconcile(call, full=True)


def _breakers_check(call: JobCall) -> JobResult:
    # Imported when the job runs, so that the registry (and setup_schedules) loads whatever
    # state the resilience module is in.
    from reconciliation.resilience import breakers_check_alerts

    return JobResult(counts={"open_too_long": int(breakers_check_alerts() or 0)})


_NO_DOLIBARR_WRITES = (
    "it writes nothing to Dolibarr itself (it only reads {what}); run it for real, or "
    "dry-run stripe_sync or sync_retry to see the Dolibarr writes"
)

# Jobs of other sources (reconciliation, the monthly recurring invoices) are added here when
# their issues land.
JOBS: dict[str, Job] = {
    job.name: job
    for job in (
        Job(
            name="stripe_events",
            description="Stripe's /v1/events since the event cursor: the objects they concern "
            "become pending again",
            function=_stripe_events,
            cadence="every 5m",
            cannot_dry_run=_NO_DOLIBARR_WRITES.format(what="Stripe's events"),
        ),
        Job(
            name="stripe_sync",
            description="incremental pull of every Stripe stream, then write what is due to "
            "Dolibarr",
            function=_stripe_sync,
            cadence="every 15m",
            options=frozenset({"full", "streams"}),
        ),
        Job(
            name="stripe_full_rescan",
            description="full pull of every Stripe stream (what changed after its creation "
            "and no event told), then write what is due",
            function=_stripe_full_rescan,
            cadence="daily 02:30",
            adopts=("stripe_sync",),
        ),
        Job(
            name="aipress24_sync",
            description="incremental pull of Aipress24's organisations, users, Business Walls, "
            "subscriptions and paid purchases, then write what is due to Dolibarr",
            function=_aipress24_sync,
            cadence="every 15m",
            options=frozenset({"full"}),
        ),
        Job(
            name="aipress24_full_pass",
            description="every Aipress24 row read again — the purchases by id, which is how a "
            "refund is seen (it moves no column) — then write what is due",
            function=_aipress24_full_pass,
            cadence="daily 03:00",
        ),
        Job(
            name="reconcile",
            description="compare what changed in the last RECONCILE_WINDOW_DAYS days with "
            "Dolibarr: open a mismatch for every difference, close those found in step",
            function=_reconcile,
            cadence="every 1h",
            options=frozenset({"full"}),
            cannot_dry_run="it writes nothing to Dolibarr (it only reads both sides)",
        ),
        Job(
            name="reconcile_full",
            description="the reconciliation over all time",
            function=_reconcile_full,
            cadence="daily 04:30",
            cannot_dry_run="it writes nothing to Dolibarr (it only reads both sides)",
            adopts=("reconcile",),
        ),
        Job(
            name="sync_retry",
            description="write the records whose next attempt has come (retries, waits, "
            "retries asked for by a person)",
            function=_sync_retry,
            cadence="every 5m",
        ),
        Job(
            name="breakers_check",
            description="e-mail the admins about circuit breakers open too long, and when "
            "they close",
            function=_breakers_check,
            # Every 5 minutes: the alert comes at most 5 minutes after the threshold, and the
            # run history does not fill with 1,440 checks a day.
            cadence="every 5m",
            cannot_dry_run="it only checks the circuit breakers and sends alerts",
        ),
    )
}


def job_register(job: Job) -> Job:
    """Add a job to the registry (or replace the one of that name)."""
    JOBS[job.name] = job
    return job


def job_get(name: str) -> Job:
    try:
        return JOBS[name]
    except KeyError:
        raise JobError(f"unknown job {name!r}; one of {', '.join(JOBS)}") from None


def job_cadences() -> dict[str, Cadence]:
    """Every job's cadence: its default, or its `JOB_CADENCES` override. Raises
    ConfigurationError naming the variable when an override names no job or is no cadence."""
    overrides = dict(settings.JOB_CADENCES or {})
    unknown = sorted(set(overrides) - set(JOBS))
    if unknown:
        raise ConfigurationError(
            f"JOB_CADENCES names {unknown[0]!r}, which is not a job; jobs: {', '.join(JOBS)}"
        )
    cadences = {}
    for name, job in JOBS.items():
        text = overrides.get(name, job.cadence)
        try:
            cadences[name] = Cadence.parse(text)
        except ValueError as exc:
            source = "JOB_CADENCES" if name in overrides else f"the default cadence of {name}"
            raise ConfigurationError(
                f"{source}: {name}={text!r}: {exc}; write it as 'every 15m', 'every 2h' or "
                "'daily 02:30' (UTC); see docs/jobs.md"
            ) from None
    return cadences


# --- schedules ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduleChange:
    job: str
    change: str  # created, updated, unchanged, removed
    cadence: str
    before: str = ""

    def line(self) -> str:
        if self.change == "updated" and self.before and self.before != self.cadence:
            return f"{self.job}: updated ({self.before} -> {self.cadence})"
        if self.change == "removed":
            return f"{self.job}: removed (no longer a job)"
        return f"{self.job}: {self.change} ({self.cadence})"


def _schedule_cadence(schedule) -> str:
    """The cadence a Schedule row stands for, in the `JOB_CADENCES` syntax ('' if none)."""
    from django_q.models import Schedule

    if schedule.schedule_type == Schedule.MINUTES and schedule.minutes:
        return str(Cadence(minutes=schedule.minutes))
    if schedule.schedule_type == Schedule.DAILY and schedule.next_run:
        moment = schedule.next_run.astimezone(UTC)
        return str(Cadence(at=time(moment.hour, moment.minute)))
    return ""


def _schedule_matches(schedule, name: str, cadence: Cadence) -> bool:
    from django_q.models import Schedule

    same_task = (
        schedule.func == SCHEDULE_TASK
        and schedule.args == repr(name)
        and not schedule.kwargs
        and not schedule.hook
        and not schedule.cluster
        and schedule.repeats == -1
    )
    if not same_task:
        return False
    if cadence.minutes is not None:
        return schedule.schedule_type == Schedule.MINUTES and schedule.minutes == cadence.minutes
    moment = schedule.next_run.astimezone(UTC) if schedule.next_run else None
    return (
        schedule.schedule_type == Schedule.DAILY
        and moment is not None
        and (moment.hour, moment.minute, moment.second) == (cadence.at.hour, cadence.at.minute, 0)
    )


def _schedule_fields(name: str, cadence: Cadence, *, now: datetime, previous=None) -> dict:
    from django_q.models import Schedule

    fields: dict[str, Any] = {
        "name": name,
        "func": SCHEDULE_TASK,
        "args": repr(name),
        "kwargs": None,
        "hook": None,
        "cluster": None,
        "repeats": -1,
    }
    if cadence.minutes is not None:
        interval = now + timedelta(minutes=cadence.minutes)
        # A new schedule runs at once; a changed one keeps its next run if that comes sooner.
        next_run = now if previous is None else min(previous.next_run or now, interval)
        fields.update(schedule_type=Schedule.MINUTES, minutes=cadence.minutes, next_run=next_run)
    else:
        fields.update(
            schedule_type=Schedule.DAILY, minutes=None, next_run=cadence.next_daily_run(now=now)
        )
    return fields


def schedules_install(*, now: datetime | None = None) -> list[ScheduleChange]:
    """Make the django-q2 schedules those of the registry: one per job, named after it, calling
    `SCHEDULE_TASK`. Idempotent: an unchanged job's row is not written at all (its next run
    stays); a changed cadence updates the row; a schedule of a job no longer registered is
    removed. Schedules calling anything else are not ours and left alone."""
    from django_q.models import Schedule

    cadences = job_cadences()  # a bad override changes nothing
    now = now or timezone.now()
    changes: list[ScheduleChange] = []
    with transaction.atomic():
        ours: dict[str, list] = {}
        for schedule in Schedule.objects.select_for_update().filter(func=SCHEDULE_TASK):
            ours.setdefault(schedule.name or "", []).append(schedule)
        for name, cadence in cadences.items():
            rows = sorted(ours.pop(name, []), key=lambda row: row.pk)
            if not rows:
                Schedule.objects.create(**_schedule_fields(name, cadence, now=now))
                changes.append(ScheduleChange(name, "created", str(cadence)))
                continue
            kept, extra = rows[0], rows[1:]
            for duplicate in extra:
                duplicate.delete()
            if not extra and _schedule_matches(kept, name, cadence):
                changes.append(ScheduleChange(name, "unchanged", str(cadence)))
                continue
            before = _schedule_cadence(kept)
            for key, value in _schedule_fields(name, cadence, now=now, previous=kept).items():
                setattr(kept, key, value)
            kept.save()
            changes.append(ScheduleChange(name, "updated", str(cadence), before=before))
        for name, rows in sorted(ours.items()):
            for row in rows:
                row.delete()
            changes.append(ScheduleChange(name or "(unnamed)", "removed", ""))
    return changes


# --- leases ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeaseTaken:
    """The lease is ours. `previous`: the expired lease it replaced (a crashed holder's)."""

    holder: str
    previous: JobLease | None = None


@dataclass(frozen=True)
class LeaseHeld:
    holder: str
    acquired_at: datetime | None

    def reason(self) -> str:
        since = _when(self.acquired_at) if self.acquired_at else "a moment ago"
        return f"already running on {self.holder} since {since}"


def holder_id(*, dry_run: bool = False) -> str:
    """Who takes a lease: host, process and thread, and a token (a pid can be reused)."""
    thread = threading.current_thread().name
    token = uuid.uuid4().hex[:6]
    suffix = ", dry run" if dry_run else ""
    return f"{socket.gethostname()} pid {os.getpid()} thread {thread} #{token}{suffix}"[:200]


def lease_take(*, job: str, holder: str, seconds: int) -> LeaseTaken | LeaseHeld:
    """Take the job's lease if it is free or expired: one conditional UPDATE (whoever's UPDATE
    matches first wins; the others' match nothing), or the INSERT of the job's first run
    (the primary key lets one INSERT through; IntegrityError = another run won)."""
    for _ in range(3):
        now = timezone.now()
        current = JobLease.objects.filter(job=job).first()
        expires_at = now + timedelta(seconds=seconds)
        if current is None:
            try:
                with transaction.atomic():
                    JobLease.objects.create(
                        job=job, holder=holder, acquired_at=now, expires_at=expires_at
                    )
                return LeaseTaken(holder)
            except IntegrityError:
                continue  # another run inserted it first: look at what it holds
        free = Q(holder="") | Q(expires_at__isnull=True) | Q(expires_at__lt=now)
        taken = JobLease.objects.filter(free, job=job).update(
            holder=holder, acquired_at=now, expires_at=expires_at, run=None
        )
        if taken:
            expired = bool(current.holder) and (
                current.expires_at is not None and current.expires_at < now
            )
            return LeaseTaken(holder, previous=current if expired else None)
        latest = JobLease.objects.filter(job=job).first()
        if latest is not None and latest.holder:
            return LeaseHeld(latest.holder, latest.acquired_at)
        # Released between our UPDATE and this read: try again.
    return LeaseHeld(holder="another run", acquired_at=None)


def lease_renew(*, job: str, holder: str, seconds: int) -> bool:
    """Push the lease's expiry forward; False when it is no longer ours."""
    return bool(
        JobLease.objects.filter(job=job, holder=holder).update(
            expires_at=timezone.now() + timedelta(seconds=seconds)
        )
    )


def lease_release(*, job: str, holder: str) -> None:
    JobLease.objects.filter(job=job, holder=holder).update(
        holder="", run=None, acquired_at=None, expires_at=None
    )


class _Heartbeat:
    """Renews a lease every third of its length from a thread of its own, so that a long
    stream pull or sync between progress points never lets it lapse. Stops at the end of the
    run; a renewal that finds the lease gone is logged (another run took it over)."""

    def __init__(self, *, job: str, holder: str, seconds: int) -> None:
        self.job, self.holder, self.seconds = job, holder, seconds
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, name=f"ap24sync-lease-{job}", daemon=True
        )

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        interval = max(1.0, self.seconds / 3)
        try:
            while not self._stop.wait(interval):
                try:
                    renewed = lease_renew(job=self.job, holder=self.holder, seconds=self.seconds)
                except Exception:  # a database hiccup: the next beat tries again
                    logger.exception("%s: could not renew its lease", self.job)
                    continue
                if not renewed:
                    self.lost = True
                    logger.error("%s: its lease was taken over while it ran", self.job)
                    return
        finally:
            connection.close()


@contextmanager
def job_lease(name: str, *, dry_run: bool = False) -> Iterator[str]:
    """Hold the job's lease around work done outside `job_run` (the older per-command entry
    points, `manage.py stripe_sync` and friends), renewed while it runs: they then never
    overlap a scheduled run either. Raises JobError when another run holds it."""
    job_get(name)
    seconds = int(settings.JOB_LEASE_SECONDS)
    holder = holder_id(dry_run=dry_run)
    lease = lease_take(job=name, holder=holder, seconds=seconds)
    if isinstance(lease, LeaseHeld):
        raise JobError(f"{name} is {lease.reason()}; try again when it has finished")
    try:
        if lease.previous is not None:
            _close_abandoned(lease.previous)
        with _Heartbeat(job=name, holder=holder, seconds=seconds):
            yield holder
    finally:
        lease_release(job=name, holder=holder)


# --- running ------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobOutcome:
    """How a `job_run` ended. `run` is None for a dry run, which records no job run."""

    job: str
    state: str
    run: SyncRun | None
    error: str = ""
    counts: dict[str, Any] = field(default_factory=dict)
    detail: Any = None

    @property
    def succeeded(self) -> bool:
        return self.state == RunState.SUCCEEDED


def _when(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def one_line_error(exc: BaseException) -> str:
    """What a run records: our own errors say what and how to fix; anything else is named as
    an internal error. One line, short, with every configured secret removed."""
    if isinstance(exc, Ap24SyncError):
        text = str(exc) or type(exc).__name__
    else:
        text = f"internal error: {type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    if len(text) > ERROR_MAX_CHARS:
        text = text[: ERROR_MAX_CHARS - 1] + "…"
    return redact(text)


def _circuit_open(exc: BaseException) -> CircuitOpenError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, CircuitOpenError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def job_run(
    name: str,
    *,
    trigger: str,
    dry_run: bool = False,
    progress: JobProgress | None = None,
    actor=None,
    **options: Any,
) -> JobOutcome:
    """Run a job now, unless another run holds it. Never raises for what the job itself hit:
    the outcome (and its SyncRun) says succeeded, failed or deferred. Raises JobError for a
    job that does not exist or cannot run as asked.

    A dry run takes the lease too (its pull moves the same cursors, and its plan holds only
    if no real run writes meanwhile) but records no job run and sends no alert."""
    job = job_get(name)
    unknown = sorted(set(options) - job.options)
    if unknown:
        raise JobError(f"{name} takes no {unknown[0]} option")
    if dry_run and not job.can_dry_run:
        raise JobError(f"{name} cannot dry-run: {job.cannot_dry_run}")
    progress = progress or JobProgress(name)
    seconds = int(settings.JOB_LEASE_SECONDS)
    holder = holder_id(dry_run=dry_run)

    lease = lease_take(job=name, holder=holder, seconds=seconds)
    if isinstance(lease, LeaseHeld):
        reason = lease.reason()
        logger.info("%s deferred: %s", name, reason)
        run = None if dry_run else run_deferred(job=name, trigger=trigger, reason=reason)
        return JobOutcome(name, RunState.DEFERRED, run, error=reason)
    try:
        if lease.previous is not None:
            _close_abandoned(lease.previous)
        call = JobCall(
            job=job, trigger=trigger, dry_run=dry_run, options=options, progress=progress
        )
        with _Heartbeat(job=name, holder=holder, seconds=seconds):
            if dry_run:
                return _dry_run(job, call)
            return _run(job, call, holder=holder, actor=actor)
    finally:
        lease_release(job=name, holder=holder)


def _close_abandoned(previous: JobLease) -> None:
    """The run of a holder that stopped renewing its lease (a killed worker, a lost machine)
    never finished itself: say so on it."""
    if previous.run_id is None:
        return
    stale = SyncRun.objects.filter(pk=previous.run_id, state=RunState.RUNNING).first()
    if stale is None:
        return
    expired = _when(previous.expires_at) if previous.expires_at else "unknown"
    run_finish(
        run=stale,
        state=RunState.FAILED,
        error=f"abandoned: {previous.holder} stopped renewing its lease, which expired at "
        f"{expired}; presumed crashed",
    )
    logger.warning("%s: took over the expired lease of %s", previous.job, previous.holder)


def _dry_run(job: Job, call: JobCall) -> JobOutcome:
    try:
        result = job.function(call) or JobResult()
    except Exception as exc:  # reported to the caller as the run's error
        state = RunState.DEFERRED if _circuit_open(exc) else RunState.FAILED
        return JobOutcome(job.name, state, None, error=one_line_error(exc))
    return JobOutcome(
        job.name, RunState.SUCCEEDED, None, counts=result.counts, detail=result.detail
    )


def _run(job: Job, call: JobCall, *, holder: str, actor) -> JobOutcome:
    run = run_start(job=job.name, trigger=call.trigger, actor=actor)
    JobLease.objects.filter(job=job.name, holder=holder).update(run=run)
    result = JobResult()
    state, error = RunState.SUCCEEDED, ""
    interrupted: BaseException | None = None
    with run_adopting(run=run, names={job.name, *job.adopts}) as adoption:
        try:
            result = job.function(call) or JobResult()
        except Exception as exc:  # every failure ends on the run, in one line
            error = one_line_error(exc)
            if _circuit_open(exc):
                state = RunState.DEFERRED
                logger.warning("%s deferred: %s", job.name, error)
            else:
                state = RunState.FAILED
                # Our own errors say what to fix; anything else needs its traceback.
                log = logger.error if isinstance(exc, Ap24SyncError) else logger.exception
                log("%s failed: %s", job.name, error)
        except BaseException as exc:  # Ctrl-C, a worker's shutdown: say so on the run, stop
            interrupted = exc
            state, error = RunState.FAILED, f"interrupted ({type(exc).__name__})"
    if interrupted is not None:
        run_finish(run=run, state=state, counts=adoption.counts, error=error)
        raise interrupted
    if state == RunState.SUCCEEDED and adoption.state:
        # The wrapped function closed its run as failed or deferred without raising.
        state, error = adoption.state, one_line_error(Ap24SyncError(adoption.error))
    counts = {**adoption.counts, **result.counts}
    finished = run_finish(
        run=run,
        state=state,
        counts=counts,
        cursor_after=adoption.cursor_after if state == RunState.SUCCEEDED else "",
        error=error,
    )
    _alert(job, finished)
    return JobOutcome(
        job.name, state, finished, error=error, counts=finished.counts, detail=result.detail
    )


# --- alerts ---------------------------------------------------------------------------------

RUNBOOK = 'see docs/runbook.md, "Job failing"'


def _alert(job: Job, run: SyncRun) -> None:
    """Two failed runs in a row open the job's incident (one mail); a success closes it (one
    mail). Deferred runs count neither way. An alert that cannot be sent never fails the job."""
    from reconciliation.alerts import incident_open, incident_resolve

    try:
        if run.state == RunState.SUCCEEDED:
            incident_resolve(
                kind=IncidentKind.JOB_FAILING,
                subject=job.name,
                title=f"Job {job.name} succeeds again",
                message=(
                    f"The job {job.name} succeeded at {_when(run.finished_at)} (run {run.pk}, "
                    f"{run.trigger}) after failing. What it does is being done again: "
                    f"{job.description}. Nothing to do."
                ),
            )
            return
        if run.state != RunState.FAILED:
            return
        last = list(
            SyncRun.objects.filter(
                job=job.name, state__in=[RunState.SUCCEEDED, RunState.FAILED]
            ).order_by("-finished_at", "-pk")[:2]
        )
        if len(last) < 2 or any(r.state != RunState.FAILED for r in last):
            return
        lines = "\n".join(
            f"  {_when(r.finished_at)} (run {r.pk}, {r.trigger}): {r.error}" for r in last
        )
        incident_open(
            kind=IncidentKind.JOB_FAILING,
            subject=job.name,
            title=f"Job {job.name} failed twice in a row",
            message=(
                f"The job {job.name} failed on its last two runs:\n{lines}\n\n"
                f"Until it succeeds this is not done: {job.description}. Nothing is lost: the "
                "records wait, and the job tries again at its next scheduled run. You get one "
                "more e-mail when it succeeds again.\n\n"
                f"What to do: {RUNBOOK}."
            ),
            details={"runs": [r.pk for r in last], "errors": [r.error for r in last]},
        )
    except Exception:  # the run is recorded; a broken alert must not hide that
        logger.exception("%s: could not evaluate its failure alert", job.name)


__all__ = [
    "JOBS",
    "SCHEDULE_TASK",
    "Cadence",
    "Job",
    "JobCall",
    "JobError",
    "JobOutcome",
    "JobProgress",
    "JobResult",
    "LeaseHeld",
    "LeaseTaken",
    "ScheduleChange",
    "holder_id",
    "job_cadences",
    "job_get",
    "job_register",
    "job_run",
    "lease_release",
    "lease_renew",
    "lease_take",
    "one_line_error",
    "schedules_install",
]
