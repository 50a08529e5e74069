"""Where the records a handler depends on stand (the customer of an invoice, the invoice of a
refund), read from the local records — or, in a dry run, from the plan made so far."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from reconciliation.models import SyncRecord, SyncState
from reconciliation.sync.base import Outcome, SyncContext, Synced, Waiting

# How long a record waits for a dependency that is itself still on its way, and for one that
# a person has to settle first (needs review, failed, skipped): no point asking every minute.
WAIT_FOR_PENDING = timedelta(minutes=1)
WAIT_FOR_PERSON = timedelta(hours=1)
# A dependency in progress is being written right now by another worker: ask again soon.
WAIT_FOR_IN_PROGRESS = timedelta(seconds=5)


@dataclass(frozen=True)
class Dependency:
    """`state` None: there is no such record at all."""

    state: str | None
    dolibarr_id: int | None = None
    dolibarr_kind: str = ""

    @property
    def synced(self) -> bool:
        return self.state == SyncState.SYNCED and self.dolibarr_id is not None

    def waiting(self, what: str) -> Waiting:
        if self.state is None:
            return Waiting(f"{what} has no sync record yet", delay=WAIT_FOR_PENDING)
        if self.state == SyncState.IN_PROGRESS:
            return Waiting(f"{what} is not synced yet (in progress)", delay=WAIT_FOR_IN_PROGRESS)
        if self.state == SyncState.PENDING:
            return Waiting(f"{what} is not synced yet (pending)", delay=WAIT_FOR_PENDING)
        return Waiting(f"{what} is {self.state}: it must be settled first", delay=WAIT_FOR_PERSON)


def dependency(context: SyncContext, *, source: str, kind: str, external_id: str) -> Dependency:
    planned: dict[tuple[str, str, str], Outcome] | None = getattr(
        context.dolibarr, "planned_outcomes", None
    )
    if planned is not None:
        outcome = planned.get((source, kind, external_id))
        if isinstance(outcome, Synced):
            return Dependency(SyncState.SYNCED, outcome.dolibarr_id, outcome.dolibarr_kind)
    row = (
        SyncRecord.objects.filter(source=source, kind=kind, external_id=external_id)
        .values_list("state", "dolibarr_id", "dolibarr_kind")
        .first()
    )
    if row is None:
        return Dependency(None)
    return Dependency(*row)


def snapshot_of(*, source: str, kind: str, external_id: str) -> dict | None:
    return (
        SyncRecord.objects.filter(source=source, kind=kind, external_id=external_id)
        .values_list("snapshot", flat=True)
        .first()
    )
