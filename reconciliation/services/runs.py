"""SyncRun and Cursor changes.

A job run (`reconciliation.jobs.job_run`) opens its own SyncRun and may wrap a function that
opens one too under the same name (`stripe_events_pull` opens `stripe_events`, `stripe_sync`
opens `stripe_sync` for its processing half). Inside `run_adopting`, such a `run_start` returns
the job's run instead of a second row, and its `run_finish` only notes the counts, cursor and
failure for the job run to finish with: the history then has one row per attempt of a job, and
a job's failure streak counts attempts, not halves of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from django.db import transaction
from django.utils import timezone

from reconciliation.audit import audit_record
from reconciliation.models import Cursor, RunState, SyncRun, Trigger


@dataclass
class Adoption:
    """What the wrapped function reported on the adopted run; the job run finishes with it."""

    run: SyncRun
    names: frozenset[str]
    counts: dict = field(default_factory=dict)
    cursor_after: str = ""
    # The last state other than succeeded that the function finished it with, and its error.
    state: str = ""
    error: str = ""


_adoption: ContextVar[Adoption | None] = ContextVar("ap24sync_run_adoption", default=None)


@contextmanager
def run_adopting(*, run: SyncRun, names: Iterable[str]) -> Iterator[Adoption]:
    """While the block runs (in this thread), `run_start` of any of `names` returns `run`."""
    adoption = Adoption(run=run, names=frozenset(names))
    token = _adoption.set(adoption)
    try:
        yield adoption
    finally:
        _adoption.reset(token)


def run_start(*, job: str, trigger: str = Trigger.SCHEDULE, actor=None) -> SyncRun:
    adoption = _adoption.get()
    if adoption is not None and job in adoption.names:
        return adoption.run
    cursor = Cursor.objects.filter(stream=job).values_list("value", flat=True).first() or ""
    with transaction.atomic():
        run = SyncRun.objects.create(
            job=job, trigger=trigger, cursor_before=cursor, started_by=actor
        )
        audit_record(
            action="run.started", actor=actor, target=run, after={"job": job, "trigger": trigger}
        )
    return run


def run_finish(
    *,
    run: SyncRun,
    state: str = RunState.SUCCEEDED,
    counts: dict | None = None,
    cursor_after: str = "",
    error: str = "",
) -> SyncRun:
    """Close a run and, when it succeeded with a new high-water mark, advance the job's cursor
    in the same transaction (a failed run never moves the cursor)."""
    adoption = _adoption.get()
    if adoption is not None and run.pk == adoption.run.pk:
        if counts:
            adoption.counts.update(counts)
            run.counts = dict(adoption.counts)
        if cursor_after:
            adoption.cursor_after = cursor_after
        if state != RunState.SUCCEEDED:
            adoption.state, adoption.error = state, error
        return run
    with transaction.atomic():
        locked = SyncRun.objects.select_for_update().get(pk=run.pk)
        locked.finish(
            state=state, now=timezone.now(), counts=counts, cursor_after=cursor_after, error=error
        )
        locked.save()
        if state == RunState.SUCCEEDED and cursor_after:
            Cursor.objects.update_or_create(stream=locked.job, defaults={"value": cursor_after})
        audit_record(
            action=f"run.{state}",
            target=locked,
            after={"counts": locked.counts, "cursor_after": locked.cursor_after},
            reason=error,
        )
    return locked


def run_deferred(*, job: str, trigger: str, reason: str, actor=None) -> SyncRun:
    """A run that did not start (its job was held elsewhere, a remote's breaker was open),
    recorded so that the history explains every attempt. It moves no cursor."""
    now = timezone.now()
    cursor = Cursor.objects.filter(stream=job).values_list("value", flat=True).first() or ""
    with transaction.atomic():
        run = SyncRun.objects.create(
            job=job,
            trigger=trigger,
            state=RunState.DEFERRED,
            started_at=now,
            finished_at=now,
            cursor_before=cursor,
            error=reason,
            started_by=actor,
        )
        audit_record(
            action="run.deferred",
            actor=actor,
            target=run,
            after={"job": job, "trigger": trigger},
            reason=reason,
        )
    return run


def cursor_value(*, stream: str) -> str:
    return Cursor.objects.filter(stream=stream).values_list("value", flat=True).first() or ""
