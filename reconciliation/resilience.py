"""Circuit breakers: one per remote system (dolibarr, stripe; later aipress24, taler), shared by
every worker of every machine through its `CircuitBreaker` row.

A breaker counts the transient failures of HTTP attempts (connection refused or lost, timeout,
429, 5xx; never a 4xx, which is an answer). After `BREAKER_FAILURES` in a row it opens: every call
then fails fast with `CircuitOpenError`, without touching the network, and the jobs defer instead
of hammering a remote that is down. Once `BREAKER_COOL_DOWN_SECONDS` have passed, one worker
claims the probe (a conditional UPDATE on `probe_started_at`, so two workers never probe
together; a claim older than the cool-down may be taken again, in case its worker died) and lets
one attempt through: an answer closes the breaker, a failure keeps it open for another cool-down.

The hot path costs no query: a worker that read "closed, no failures" trusts it for
`CLOSED_CACHE_SECONDS`, and writes only on failures, on the first success after failures, and once
a minute to keep `last_success_at` current for the status page. The price is staleness: for up to
a second after another machine opened the breaker, this process may send a call, which (the
remote being down) fails, is counted, and reads the open state back.

`opened_at` is when the outage began, kept across failed probes: the admins are alerted
(`breakers_check_alerts`, every minute and at the moment a breaker opens) once it has lasted
`ALERT_BREAKER_OPEN_MINUTES`, and told how long it lasted when the probe closes it.
docs/decisions.md, "Circuit breakers", says why this is not pybreaker.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from reconciliation.alerts import incident_open, incident_resolve
from reconciliation.errors import CircuitOpenError, TransientError
from reconciliation.logs import REDACTED, redact
from reconciliation.models import BreakerState, CircuitBreaker, Incident, IncidentKind

logger = logging.getLogger(__name__)

# The systems shown even before their breaker has a row.
SYSTEMS: Final = ("dolibarr", "stripe")
LABELS: Final = {
    "dolibarr": "Dolibarr",
    "stripe": "Stripe",
    "aipress24": "Aipress24",
    "taler": "Taler",
}

# How long a worker trusts "closed, no failures" without reading the row again.
CLOSED_CACHE_SECONDS: Final = 1.0
# How often a worker whose calls succeed refreshes `last_success_at` (the status page's "last
# success" is this fresh).
SUCCESS_NOTE_SECONDS: Final = 60.0
LAST_ERROR_MAX_CHARS: Final = 500

_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/@\s]+@")
_STRIPE_KEYS = re.compile(r"\b(?:[srp]k|whsec|rk)_(?:test|live)?_?[A-Za-z0-9*]{6,}")


@dataclass(frozen=True)
class Attempt:
    """One HTTP attempt let through by `Breaker.before_call`. `probe_started_at` is set when it is
    the half-open probe: its outcome decides the breaker."""

    probe_started_at: datetime | None = None

    @property
    def is_probe(self) -> bool:
        return self.probe_started_at is not None


_PLAIN: Final = Attempt()


@dataclass(frozen=True)
class BreakerStatus:
    """A breaker as the status page shows it."""

    system: str
    label: str
    state: str
    consecutive_failures: int
    opened_at: datetime | None
    probe_started_at: datetime | None
    last_failure_at: datetime | None
    last_success_at: datetime | None
    last_error: str
    # When the next probe may go (open breakers only).
    next_probe_at: datetime | None


def label(system: str) -> str:
    return LABELS.get(system, system.capitalize())


def clean_error(error: BaseException | str) -> str:
    """An error as stored on the breaker and quoted in alerts: one line, no configured secret,
    no credentials in a URL, no Stripe key."""
    text = " ".join(str(error).split())
    text = redact(text)
    text = _URL_CREDENTIALS.sub(rf"\1{REDACTED}@", text)
    text = _STRIPE_KEYS.sub(REDACTED, text)
    if len(text) > LAST_ERROR_MAX_CHARS:
        text = text[: LAST_ERROR_MAX_CHARS - 1] + "…"
    return text


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


class Breaker:
    """The circuit breaker of one system, as seen from this process. Thread-safe; one instance per
    process is enough (`breaker_for`), but any number of instances share the state through the
    database, as the workers of several machines do.

    The connectors call `before_call()` before each HTTP attempt (it raises CircuitOpenError
    while the breaker is open), then `record_success(attempt)` when the remote answered (any
    status but 429 and 5xx) or `record_failure(attempt, error)` when it did not; the latter says
    whether the breaker is now open, so that a retry loop stops at once.

    `clock` is the wall clock (tests move it past the cool-down); thresholds are read from the
    settings when needed, so that a changed setting applies without a restart."""

    def __init__(
        self,
        system: str,
        *,
        clock: Callable[[], datetime] = timezone.now,
        closed_cache_seconds: float = CLOSED_CACHE_SECONDS,
    ) -> None:
        self.system = system
        self.label = label(system)
        self._clock = clock
        self._closed_cache_seconds = closed_cache_seconds
        self._lock = threading.Lock()
        # Monotonic time until which "closed, no failures" is trusted without a query.
        self._closed_until = 0.0
        # The row may count failures that a success must reset.
        self._failures_seen = False
        self._success_noted_at = -math.inf
        self._storage_failure_logged_at = -math.inf

    def __repr__(self) -> str:
        return f"<Breaker {self.system}>"

    # -- the connectors' side -----------------------------------------------------------------

    def before_call(self, *, endpoint: str = "") -> Attempt:
        """Let one HTTP attempt through, or raise CircuitOpenError without any network call.
        After the cool-down, the one worker that claims the probe gets an Attempt that is it."""
        if time.monotonic() < self._closed_until:
            return _PLAIN
        try:
            return self._before_call(endpoint)
        except CircuitOpenError:
            raise
        except Exception as exc:  # the breaker's own storage: see `_storage_failed`
            self._storage_failed(exc)
            return _PLAIN

    def _before_call(self, endpoint: str) -> Attempt:
        row = self._read()
        if row is None or row.state == BreakerState.CLOSED:
            self._remember_closed(failures=row.consecutive_failures if row else 0)
            return _PLAIN
        now = self._clock()
        if self._probe_due(row, now) and self._claim_probe(now):
            logger.info(
                "%s circuit breaker half-open: one probe call (%s)",
                self.label,
                endpoint or "first call",
                extra={"system": self.system, "endpoint": endpoint},
            )
            return Attempt(probe_started_at=now)
        raise self._open_error(row, endpoint)

    def check(self, *, endpoint: str = "") -> None:
        """Raise CircuitOpenError when a call now would fail fast (open, and no probe due);
        claims nothing and sends nothing. A job calls it before claiming work."""
        if time.monotonic() < self._closed_until:
            return
        try:
            row = self._read()
        except Exception as exc:  # the breaker's own storage: see `_storage_failed`
            self._storage_failed(exc)
            return
        if row is None or row.state == BreakerState.CLOSED:
            self._remember_closed(failures=row.consecutive_failures if row else 0)
            return
        if not self._probe_due(row, self._clock()):
            raise self._open_error(row, endpoint)

    def record_success(self, attempt: Attempt) -> None:
        """The remote answered. A probe's answer closes the breaker; any other answer resets the
        failure count, written only when there is one to reset."""
        try:
            self._record_success(attempt)
        except Exception as exc:  # the breaker's own storage: see `_storage_failed`
            self._storage_failed(exc)

    def _record_success(self, attempt: Attempt) -> None:
        if attempt.is_probe:
            self._close(attempt)
            return
        if self._failures_seen:
            now = self._clock()
            CircuitBreaker.objects.filter(
                pk=self.system, state=BreakerState.CLOSED, consecutive_failures__gt=0
            ).update(consecutive_failures=0, last_success_at=now, updated_at=now)
            with self._lock:
                self._failures_seen = False
                self._success_noted_at = time.monotonic()
            return
        if time.monotonic() - self._success_noted_at >= SUCCESS_NOTE_SECONDS:
            self._note_success()

    def record_failure(self, attempt: Attempt, error: BaseException | str) -> bool:
        """A transient failure (no answer, 429, 5xx). Returns True when the breaker is open after
        it: the caller stops retrying and raises `open_error`."""
        try:
            return self._record_failure(attempt, error)
        except Exception as exc:  # the breaker's own storage: see `_storage_failed`
            self._storage_failed(exc)
            return False

    def _record_failure(self, attempt: Attempt, error: BaseException | str) -> bool:
        now = self._clock()
        text = clean_error(error)
        with self._lock:
            self._closed_until = 0.0
            self._failures_seen = True
        if attempt.is_probe:
            reopened = CircuitBreaker.objects.filter(
                pk=self.system,
                state=BreakerState.HALF_OPEN,
                probe_started_at=attempt.probe_started_at,
            ).update(
                state=BreakerState.OPEN,
                consecutive_failures=F("consecutive_failures") + 1,
                last_failure_at=now,
                last_error=text,
                updated_at=now,
            )
            if reopened:
                logger.warning(
                    "%s circuit breaker stays open: the probe failed (%s)",
                    self.label,
                    text,
                    extra={"system": self.system},
                )
                return True
            # Someone else decided meanwhile (another probe closed it): an ordinary failure.
        self._count_failure(now, text)
        row = self._read()
        if row is None:
            return False
        if row.state != BreakerState.CLOSED:
            return True
        if row.consecutive_failures < self._threshold():
            return False
        opened = CircuitBreaker.objects.filter(
            pk=self.system, state=BreakerState.CLOSED, consecutive_failures__gte=self._threshold()
        ).update(state=BreakerState.OPEN, opened_at=now, probe_started_at=None, updated_at=now)
        if opened:
            logger.error(
                "%s circuit breaker opened after %d consecutive failures (last: %s); calls fail "
                "fast and jobs defer until a probe finds it back",
                self.label,
                row.consecutive_failures,
                text,
                extra={"system": self.system},
            )
            _alert_quietly(self.system)
        return True

    def open_error(self, cause: BaseException, *, endpoint: str = "") -> CircuitOpenError:
        """The CircuitOpenError for an attempt whose own failure found the breaker open (it
        opened it, or it was the probe): the cause first, and what it says about a write's
        outcome kept (`outcome_unknown`)."""
        transient = cause if isinstance(cause, TransientError) else None
        return CircuitOpenError(
            f"{clean_error(cause)}; the {self.label} circuit breaker is open: further calls "
            "fail fast and jobs defer until a probe finds it back",
            system=self.system,
            status=transient.status if transient else None,
            endpoint=endpoint or (transient.endpoint if transient else ""),
            outcome_unknown=transient.outcome_unknown if transient else False,
        )

    def forget(self) -> None:
        """Drop what this process remembers; the next call reads the row."""
        with self._lock:
            self._closed_until = 0.0
            self._failures_seen = False
            self._success_noted_at = -math.inf

    # -- reading ------------------------------------------------------------------------------

    def status(self) -> BreakerStatus:
        return _status_of(self.system, self._read())

    # -- internals ----------------------------------------------------------------------------

    def _storage_failed(self, exc: Exception) -> None:
        """The breaker's row cannot be read or written (the database is down, or this thread may
        not use it): the call goes through, as with no breaker. A breaker must not turn an
        outage of ap24sync's own database into one of every remote (the doctor still reaches
        Dolibarr). Logged at most once a minute; trusted closed for the cache period."""
        with self._lock:
            self._closed_until = time.monotonic() + self._closed_cache_seconds
            log_now = time.monotonic() - self._storage_failure_logged_at >= SUCCESS_NOTE_SECONDS
            if log_now:
                self._storage_failure_logged_at = time.monotonic()
        if log_now:
            logger.warning(
                "%s circuit breaker state unavailable (%s: %s); calls go through unguarded",
                self.label,
                type(exc).__name__,
                clean_error(exc),
                extra={"system": self.system},
            )

    def _threshold(self) -> int:
        return max(1, settings.BREAKER_FAILURES)

    def _cool_down(self) -> timedelta:
        return timedelta(seconds=max(0, settings.BREAKER_COOL_DOWN_SECONDS))

    def _read(self) -> CircuitBreaker | None:
        return CircuitBreaker.objects.filter(pk=self.system).first()

    def _remember_closed(self, *, failures: int) -> None:
        with self._lock:
            if failures:
                # Failures are being counted (here or elsewhere): read the row on every call
                # until a success resets them, so that an opening is seen at once.
                self._closed_until = 0.0
                self._failures_seen = True
            else:
                self._closed_until = time.monotonic() + self._closed_cache_seconds

    def _probe_due(self, row: CircuitBreaker, now: datetime) -> bool:
        cool_down = self._cool_down()
        if row.opened_at is not None and now - row.opened_at < cool_down:
            return False
        return row.probe_started_at is None or now - row.probe_started_at > cool_down

    def _claim_probe(self, now: datetime) -> bool:
        """One conditional UPDATE: whoever changes `probe_started_at` first probes. A claim is
        free when there is none or when it is older than the cool-down (its worker died or its
        probe failed)."""
        cool_down = self._cool_down()
        claimed = (
            CircuitBreaker.objects.filter(
                pk=self.system, state__in=[BreakerState.OPEN, BreakerState.HALF_OPEN]
            )
            .filter(Q(opened_at__isnull=True) | Q(opened_at__lte=now - cool_down))
            # Strictly older: a claim made this very instant is never free, even without a
            # cool-down.
            .filter(Q(probe_started_at__isnull=True) | Q(probe_started_at__lt=now - cool_down))
            .update(state=BreakerState.HALF_OPEN, probe_started_at=now, updated_at=now)
        )
        return bool(claimed)

    def _close(self, attempt: Attempt) -> None:
        now = self._clock()
        row = self._read()
        closed = CircuitBreaker.objects.filter(
            pk=self.system, state__in=[BreakerState.OPEN, BreakerState.HALF_OPEN]
        ).update(
            state=BreakerState.CLOSED,
            consecutive_failures=0,
            opened_at=None,
            probe_started_at=None,
            last_success_at=now,
            updated_at=now,
        )
        with self._lock:
            self._failures_seen = False
            self._success_noted_at = time.monotonic()
            self._closed_until = time.monotonic() + self._closed_cache_seconds
        if not closed or row is None:
            return
        since = row.opened_at or attempt.probe_started_at or now
        logger.warning(
            "%s circuit breaker closed: the probe succeeded after %s of unavailability",
            self.label,
            _duration(now - since),
            extra={"system": self.system},
        )
        _resolve_quietly(self.system, since=since, now=now)

    def _count_failure(self, now: datetime, text: str) -> None:
        changes = {
            "consecutive_failures": F("consecutive_failures") + 1,
            "last_failure_at": now,
            "last_error": text,
            "updated_at": now,
        }
        if CircuitBreaker.objects.filter(pk=self.system).update(**changes):
            return
        try:
            with transaction.atomic():
                CircuitBreaker.objects.create(
                    system=self.system,
                    consecutive_failures=1,
                    last_failure_at=now,
                    last_error=text,
                )
        except IntegrityError:  # another worker created it meanwhile
            CircuitBreaker.objects.filter(pk=self.system).update(**changes)

    def _note_success(self) -> None:
        now = self._clock()
        with self._lock:
            self._success_noted_at = time.monotonic()
        if CircuitBreaker.objects.filter(pk=self.system).update(last_success_at=now):
            return
        try:
            with transaction.atomic():
                CircuitBreaker.objects.create(system=self.system, last_success_at=now)
        except IntegrityError:
            pass

    def _open_error(self, row: CircuitBreaker, endpoint: str) -> CircuitOpenError:
        since = f" since {_utc(row.opened_at):%H:%M} UTC" if row.opened_at else ""
        last = f" (last error: {row.last_error})" if row.last_error else ""
        where = f" ({endpoint})" if endpoint else ""
        return CircuitOpenError(
            f"{self.label} is unavailable: its circuit breaker has been open{since} after "
            f"{row.consecutive_failures} consecutive failures{last}; no call was made{where}",
            system=self.system,
            endpoint=endpoint,
        )


_breakers: dict[str, Breaker] = {}
_breakers_guard = threading.Lock()


def breaker_for(system: str) -> Breaker:
    """This process's breaker for `system` (the connectors' `from_settings` use it)."""
    with _breakers_guard:
        breaker = _breakers.get(system)
        if breaker is None:
            breaker = _breakers[system] = Breaker(system)
        return breaker


def breaker_states(*, systems: Iterable[str] = SYSTEMS) -> list[BreakerStatus]:
    """Every breaker for the status page: the `systems` first (closed and never failed when they
    have no row yet), then any other system that has a row. One query."""
    rows = {row.system: row for row in CircuitBreaker.objects.all()}
    wanted = list(systems)
    ordered = wanted + sorted(set(rows) - set(wanted))
    return [_status_of(system, rows.get(system)) for system in ordered]


def _status_of(system: str, row: CircuitBreaker | None) -> BreakerStatus:
    if row is None:
        return BreakerStatus(
            system=system,
            label=label(system),
            state=BreakerState.CLOSED,
            consecutive_failures=0,
            opened_at=None,
            probe_started_at=None,
            last_failure_at=None,
            last_success_at=None,
            last_error="",
            next_probe_at=None,
        )
    next_probe_at = None
    if row.state != BreakerState.CLOSED:
        cool_down = timedelta(seconds=max(0, settings.BREAKER_COOL_DOWN_SECONDS))
        moments = [m for m in (row.opened_at, row.probe_started_at) if m is not None]
        next_probe_at = max(moments) + cool_down if moments else None
    return BreakerStatus(
        system=system,
        label=label(system),
        state=row.state,
        consecutive_failures=row.consecutive_failures,
        opened_at=row.opened_at,
        probe_started_at=row.probe_started_at,
        last_failure_at=row.last_failure_at,
        last_success_at=row.last_success_at,
        last_error=row.last_error,
        next_probe_at=next_probe_at,
    )


# --- alerts -------------------------------------------------------------------------------------


def breakers_check_alerts(*, systems: Iterable[str] | None = None) -> int:
    """Alert the admins (once per outage, `incident_open`) about each breaker open longer than
    `ALERT_BREAKER_OPEN_MINUTES`, and close the incident of any breaker found closed again whose
    closing worker did not (it died between the two). Returns how many breakers are open longer
    than the limit. Scheduled every minute, and called when a breaker opens."""
    now = timezone.now()
    limit = timedelta(minutes=max(0, settings.ALERT_BREAKER_OPEN_MINUTES))
    rows = CircuitBreaker.objects.all()
    if systems is not None:
        rows = rows.filter(pk__in=list(systems))
    alerted = 0
    for row in rows:
        if row.state == BreakerState.CLOSED:
            continue
        if row.opened_at is None or now - row.opened_at < limit:
            continue
        incident_open(
            kind=IncidentKind.BREAKER_OPEN,
            subject=row.system,
            title=(
                f"{label(row.system)} unavailable (circuit breaker open since "
                f"{_utc(row.opened_at):%H:%M} UTC)"
            ),
            message=_outage_message(row),
            details={
                "opened_at": row.opened_at,
                "consecutive_failures": row.consecutive_failures,
                "last_error": clean_error(row.last_error),
            },
        )
        alerted += 1
    closed = set(
        CircuitBreaker.objects.filter(state=BreakerState.CLOSED).values_list("system", flat=True)
    )
    stale = Incident.objects.filter(
        kind=IncidentKind.BREAKER_OPEN, resolved_at__isnull=True, subject__in=closed
    )
    if systems is not None:
        stale = stale.filter(subject__in=list(systems))
    for incident in stale:
        _resolve(
            incident.subject, since=incident.details.get("opened_at") or incident.opened_at, now=now
        )
    return alerted


def _outage_message(row: CircuitBreaker) -> str:
    name = label(row.system)
    cool_down = settings.BREAKER_COOL_DOWN_SECONDS
    last = clean_error(row.last_error) or "none recorded"
    when = f" at {_utc(row.last_failure_at):%H:%M:%S} UTC" if row.last_failure_at else ""
    return "\n".join(
        [
            f"ap24sync cannot reach {name}: its circuit breaker opened at "
            f"{_utc(row.opened_at):%Y-%m-%d %H:%M} UTC after "
            f"{row.consecutive_failures} consecutive failed calls.",
            "",
            f"Last error{when}: {last}",
            "",
            f"Meanwhile ap24sync sends nothing to {name}: the jobs that need it are deferred and "
            "their records stay pending, so nothing is lost. Every "
            f"{cool_down} s one probe call checks whether {name} is back; when it answers, the "
            "breaker closes, the backlog drains by itself and you get one more e-mail.",
            "",
            "See docs/runbook.md, 'Remote unavailable'.",
        ]
    )


def _resolve(system: str, *, since: datetime | str, now: datetime) -> None:
    if isinstance(since, str):
        since = datetime.fromisoformat(since)
    name = label(system)
    incident_resolve(
        kind=IncidentKind.BREAKER_OPEN,
        subject=system,
        title=f"{name} available again (unavailable {_minutes(now - since)} min)",
        message="\n".join(
            [
                f"{name} answers again: a probe call succeeded at {_utc(now):%Y-%m-%d %H:%M} UTC "
                "and the circuit breaker is closed.",
                "",
                f"It was unavailable from {_utc(since):%H:%M} UTC ({_duration(now - since)}). "
                "The deferred jobs run at their next turn and drain the backlog; nothing needs "
                "to be done by hand.",
                "",
                "See docs/runbook.md, 'Remote unavailable'.",
            ]
        ),
    )


def _alert_quietly(system: str) -> None:
    """At the moment a breaker opens: the alert check for it. A failure here must not break the
    call being made; the scheduled check tries again within a minute."""
    try:
        breakers_check_alerts(systems=[system])
    except Exception:  # the database or the mail: logged, retried by the schedule
        logger.exception("could not check the alert of the %s circuit breaker", system)


def _resolve_quietly(system: str, *, since: datetime, now: datetime) -> None:
    try:
        _resolve(system, since=since, now=now)
    except Exception:  # the scheduled check resolves it
        logger.exception("could not resolve the incident of the %s circuit breaker", system)


def _minutes(elapsed: timedelta) -> int:
    return max(1, round(elapsed.total_seconds() / 60))


def _duration(elapsed: timedelta) -> str:
    seconds = max(0, int(elapsed.total_seconds()))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


__all__ = [
    "CLOSED_CACHE_SECONDS",
    "SYSTEMS",
    "Attempt",
    "Breaker",
    "BreakerStatus",
    "breaker_for",
    "breaker_states",
    "breakers_check_alerts",
    "clean_error",
]
