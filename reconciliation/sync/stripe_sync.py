"""Stripe -> Dolibarr in one go: pull the streams into sync records, then process what is due.

The pull reads Stripe only and writes local records; the processing writes Dolibarr (or, in a
dry run, only plans what it would write). Each half records its own runs: one `SyncRun` per
pulled stream (its cursor) and one `stripe_sync` run for the processing, with its counts.
An open circuit breaker (`CircuitOpenError`, Stripe's during the pull, Dolibarr's during the
processing) ends the half it hits as deferred, not failed, and is raised to the caller.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from reconciliation.connectors.stripe import StripeConnector
from reconciliation.errors import Ap24SyncError, CircuitOpenError
from reconciliation.models import RunState, SyncRecord, Trigger
from reconciliation.services.runs import run_finish, run_start
from reconciliation.sync.base import SyncContext
from reconciliation.sync.engine import build_context, describe_outcome, sync_due
from reconciliation.sync.remote import PlannedWrite, PlanningDolibarr
from reconciliation.sync.stripe_pull import STREAMS, stripe_stream_pull

SYNC_JOB = "stripe_sync"


@dataclass
class StripeSyncResult:
    pulled: dict[str, dict[str, int]] = field(default_factory=dict)
    processed: Counter[str] = field(default_factory=Counter)
    plan: list[PlannedWrite] = field(default_factory=list)
    planned_outcomes: list[tuple[str, str]] = field(default_factory=list)


def stream_kinds(streams: Sequence[str] | None) -> list[str] | None:
    """The record kinds of the named streams (all when None)."""
    if not streams:
        return None
    unknown = sorted(set(streams) - set(STREAMS))
    if unknown:
        raise ValueError(f"unknown stream {unknown[0]!r}; one of {', '.join(STREAMS)}")
    return [STREAMS[name].kind for name in streams]


def records_due_count(*, kinds: Sequence[str] | None) -> int:
    due = SyncRecord.objects.due()
    return (due.filter(kind__in=kinds) if kinds else due).count()


def stripe_sync(
    *,
    streams: Sequence[str] | None = None,
    since: datetime | None = None,
    full: bool = False,
    dry_run: bool = False,
    trigger: str = Trigger.MANUAL,
    connector: StripeConnector | None = None,
    context: SyncContext | None = None,
    on_pulled: Callable[[str, dict[str, int]], Any] | None = None,
    before_processing: Callable[[int], Any] | None = None,
    progress: Callable[[int], Any] | None = None,
) -> StripeSyncResult:
    """Pull then process. `on_pulled(stream, counts)` after each stream, `before_processing(n)`
    with the number of due records, `progress(1)` per processed record (for a progress bar)."""
    kinds = stream_kinds(streams)
    connector = connector if connector is not None else StripeConnector.from_settings()
    result = StripeSyncResult()
    for name in streams or list(STREAMS):
        run = stripe_stream_pull(
            connector=connector, stream=name, trigger=trigger, full=full, since=since
        )
        result.pulled[name] = dict(run.counts)
        if on_pulled is not None:
            on_pulled(name, result.pulled[name])

    if context is None and dry_run:
        context = build_context(dry_run=True, stripe=connector)
    if context is None or not context.dry_run:
        return _process(result, kinds, connector, context, trigger, before_processing, progress)
    if before_processing is not None:
        before_processing(records_due_count(kinds=kinds))
    result.processed = sync_due(context=context, kinds=kinds, progress=progress)
    planner = context.dolibarr
    if isinstance(planner, PlanningDolibarr):
        result.plan = list(planner.plan)
        result.planned_outcomes = [
            (label, describe_outcome(outcome)) for label, outcome in planner.outcomes
        ]
    return result


def _process(
    result: StripeSyncResult,
    kinds: list[str] | None,
    connector: StripeConnector,
    context: SyncContext | None,
    trigger: str,
    before_processing: Callable[[int], Any] | None,
    progress: Callable[[int], Any] | None,
) -> StripeSyncResult:
    """The processing half, as its own run. Building the context reads Dolibarr (its setup), so
    it happens inside the run: a Dolibarr that is down or refuses the key is on the record."""
    run = run_start(job=SYNC_JOB, trigger=trigger)
    try:
        if context is None:
            context = build_context(stripe=connector)
        if before_processing is not None:
            before_processing(records_due_count(kinds=kinds))
        result.processed = sync_due(context=context, kinds=kinds, progress=progress)
    except Ap24SyncError as exc:
        state = RunState.DEFERRED if isinstance(exc, CircuitOpenError) else RunState.FAILED
        run_finish(run=run, state=state, error=str(exc))
        raise
    run_finish(run=run, counts=dict(result.processed))
    return result
