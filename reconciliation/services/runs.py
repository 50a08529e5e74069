"""SyncRun and Cursor changes."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from reconciliation.audit import audit_record
from reconciliation.models import Cursor, RunState, SyncRun, Trigger


def run_start(*, job: str, trigger: str = Trigger.SCHEDULE, actor=None) -> SyncRun:
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


def cursor_value(*, stream: str) -> str:
    return Cursor.objects.filter(stream=stream).values_list("value", flat=True).first() or ""
