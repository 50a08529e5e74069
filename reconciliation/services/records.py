"""SyncRecord state changes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from reconciliation.audit import audit_event, audit_record, audit_records
from reconciliation.errors import InvalidTransition
from reconciliation.models import (
    Mismatch,
    MismatchState,
    SyncRecord,
    SyncState,
    snapshot_hash,
)
from reconciliation.services.mismatches import mismatch_detected, mismatches_close_for_record
from reconciliation.sync.base import MismatchSpec


def _state_of(record: SyncRecord) -> dict:
    return {
        "state": record.state,
        "attempts": record.attempts,
        "dolibarr_id": record.dolibarr_id,
        "dolibarr_ref": record.dolibarr_ref,
        "last_error": record.last_error,
    }


class Observed(StrEnum):
    NEW = "new"
    CHANGED = "changed"
    UNCHANGED = "unchanged"


def record_observe(
    *, source: str, kind: str, external_id: str, snapshot: dict
) -> tuple[SyncRecord, Observed]:
    """Store what the source says about an object. New objects start pending; a changed snapshot
    makes a settled record pending again; an unchanged one changes nothing (and writes nothing)."""
    external_id = str(external_id)
    with transaction.atomic():
        record = (
            SyncRecord.objects.select_for_update()
            .filter(source=source, kind=kind, external_id=external_id)
            .first()
        )
        if record is None:
            record = SyncRecord.objects.create(
                source=source,
                kind=kind,
                external_id=external_id,
                snapshot=snapshot,
                snapshot_hash=snapshot_hash(snapshot),
            )
            audit_record(action="record.observed", target=record, after=_state_of(record))
            return record, Observed.NEW
        before = _state_of(record)
        if record.observe(snapshot):
            record.save()
            audit_record(
                action="record.source_changed",
                target=record,
                before=before,
                after=_state_of(record),
            )
            return record, Observed.CHANGED
        return record, Observed.UNCHANGED


def records_observe(
    *, source: str, kind: str, objects: Sequence[tuple[str, dict]]
) -> list[Observed]:
    """`record_observe` for a page of objects of one kind, in one transaction and a handful of
    statements (a backfill pulls thousands): the same records, states and audit events, one
    outcome per object in order. Should another writer create one of these records meanwhile
    (a webhook), the page is stored one object at a time instead."""
    latest = {str(external_id): snapshot for external_id, snapshot in objects}
    try:
        with transaction.atomic():
            outcomes = _observe_page(source, kind, latest)
    except IntegrityError:
        outcomes = {
            external_id: record_observe(
                source=source, kind=kind, external_id=external_id, snapshot=snapshot
            )[1]
            for external_id, snapshot in latest.items()
        }
    return [outcomes[str(external_id)] for external_id, _ in objects]


def _observe_page(source: str, kind: str, latest: dict[str, dict]) -> dict[str, Observed]:
    existing = {
        record.external_id: record
        for record in SyncRecord.objects.select_for_update().filter(
            source=source, kind=kind, external_id__in=list(latest)
        )
    }
    outcomes: dict[str, Observed] = {}
    events = []
    changed: list[SyncRecord] = []
    for external_id, snapshot in latest.items():
        record = existing.get(external_id)
        if record is None:
            continue
        before = _state_of(record)
        if record.observe(snapshot):
            changed.append(record)
            events.append(
                audit_event(
                    action="record.source_changed",
                    target=record,
                    before=before,
                    after=_state_of(record),
                )
            )
            outcomes[external_id] = Observed.CHANGED
        else:
            outcomes[external_id] = Observed.UNCHANGED
    if changed:
        now = timezone.now()
        for record in changed:
            record.updated_at = now  # `auto_now` is not applied by bulk_update
        SyncRecord.objects.bulk_update(
            changed,
            ["snapshot", "snapshot_hash", "state", "attempts", "next_attempt_at", "updated_at"],
        )
    created = SyncRecord.objects.bulk_create(
        [
            SyncRecord(
                source=source,
                kind=kind,
                external_id=external_id,
                snapshot=snapshot,
                snapshot_hash=snapshot_hash(snapshot),
            )
            for external_id, snapshot in latest.items()
            if external_id not in existing
        ]
    )
    for record in created:
        events.append(audit_event(action="record.observed", target=record, after=_state_of(record)))
        outcomes[record.external_id] = Observed.NEW
    audit_records(events)
    return outcomes


def record_claim(*, record_id: int) -> SyncRecord:
    """Take a pending record for work (pending -> in_progress)."""
    with transaction.atomic():
        record = SyncRecord.objects.select_for_update().get(pk=record_id)
        record.claim(now=timezone.now())
        record.save()
    return record


# What a state change writes: never the snapshot, which can be large and does not change here.
_STATE_FIELDS = [
    "state",
    "dolibarr_kind",
    "dolibarr_id",
    "dolibarr_ref",
    "attempts",
    "next_attempt_at",
    "last_attempt_at",
    "last_error",
    "synced_at",
    "updated_at",
]


def _finish(record_id: int, action: str, apply, reason: str = "") -> SyncRecord:
    with transaction.atomic():
        record = SyncRecord.objects.select_for_update().defer("snapshot").get(pk=record_id)
        before = _state_of(record)
        apply(record)
        record.save(update_fields=_STATE_FIELDS)
        audit_record(
            action=action, target=record, before=before, after=_state_of(record), reason=reason
        )
    return record


def record_mark_synced(
    *, record_id: int, dolibarr_kind: str, dolibarr_id: int, dolibarr_ref: str = ""
) -> SyncRecord:
    """The Dolibarr id is saved in the same transaction as the state change; the record's open
    mismatches (a review, a failure) are closed with it, since what they reported is settled."""
    with transaction.atomic():
        record = _finish(
            record_id,
            "record.synced",
            lambda r: r.mark_synced(
                dolibarr_kind=dolibarr_kind,
                dolibarr_id=dolibarr_id,
                dolibarr_ref=dolibarr_ref,
                now=timezone.now(),
            ),
        )
        mismatches_close_for_record(
            record_id=record_id, note=f"{record} synced to Dolibarr {dolibarr_kind} {dolibarr_id}"
        )
    return record


def record_mark_retry_later(*, record_id: int, error: str, delay: timedelta) -> SyncRecord:
    return _finish(
        record_id,
        "record.retry_scheduled",
        lambda r: r.mark_retry_later(error=error, delay=delay, now=timezone.now()),
        reason=error,
    )


def record_mark_failed(*, record_id: int, error: str) -> SyncRecord:
    return _finish(record_id, "record.failed", lambda r: r.mark_failed(error=error), reason=error)


def record_mark_needs_review(*, record_id: int, reason: str) -> SyncRecord:
    return _finish(
        record_id,
        "record.needs_review",
        lambda r: r.mark_needs_review(reason=reason),
        reason=reason,
    )


def record_mark_waiting(*, record_id: int, reason: str, delay: timedelta) -> SyncRecord:
    """A dependency is not synced yet: back to pending after `delay`. The attempt the claim
    counted is given back, so waiting never brings a record closer to `failed`."""

    def wait(record: SyncRecord) -> None:
        record.mark_retry_later(error=reason, delay=delay, now=timezone.now())
        record.attempts = max(0, record.attempts - 1)

    return _finish(record_id, "record.waiting", wait, reason=reason)


def record_mark_needs_review_with_mismatch(
    *,
    record_id: int,
    reason: str,
    mismatch: MismatchSpec,
    dolibarr_kind: str = "",
    dolibarr_id: int | None = None,
) -> SyncRecord:
    """Needs review, and the mismatch that says why, in one transaction: a record is never left
    waiting for a person without the mismatch that person will look at."""

    def review(record: SyncRecord) -> None:
        record.mark_needs_review(reason=reason)
        if dolibarr_id is not None:
            record.dolibarr_kind, record.dolibarr_id = dolibarr_kind, dolibarr_id

    with transaction.atomic():
        record = _finish(record_id, "record.needs_review", review, reason=reason)
        _mismatch_from_spec(record, mismatch)
    return record


def record_mark_failed_with_mismatch(
    *, record_id: int, error: str, mismatch: MismatchSpec
) -> SyncRecord:
    """Failed (permanent error, or out of attempts) with its `sync_failed` mismatch, together."""
    with transaction.atomic():
        record = record_mark_failed(record_id=record_id, error=error)
        _mismatch_from_spec(record, mismatch)
    return record


def _mismatch_from_spec(record: SyncRecord, spec: MismatchSpec) -> None:
    mismatch_detected(
        kind=spec.kind,
        fingerprint_parts=spec.fingerprint_parts,
        summary=spec.summary,
        severity=spec.severity,
        record=record,
        amount_difference=spec.amount_difference,
        currency=spec.currency,
        source_snapshot=spec.source_snapshot,
        dolibarr_snapshot=spec.dolibarr_snapshot,
        proposed_fix=spec.proposed_fix,
        proposed_fix_params=spec.proposed_fix_params,
    )


@dataclass(frozen=True)
class Settled:
    """One record's simple outcome for `records_mark_settled`: synced to `dolibarr_id`, or
    skipped (`dolibarr_id` None) for `reason`."""

    record_id: int
    dolibarr_kind: str = ""
    dolibarr_id: int | None = None
    dolibarr_ref: str = ""
    reason: str = ""


def records_mark_settled(outcomes: Sequence[Settled]) -> None:
    """Several records synced or skipped in one transaction, with one audit event each, exactly
    as `record_mark_synced` / `record_mark_skipped` one by one would (the open mismatches of a
    synced record are closed too) — in a handful of statements instead of five per record."""
    if not outcomes:
        return
    by_id = {outcome.record_id: outcome for outcome in outcomes}
    now = timezone.now()
    with transaction.atomic():
        records = list(
            SyncRecord.objects.select_for_update().defer("snapshot").filter(pk__in=list(by_id))
        )
        events = []
        for record in records:
            outcome = by_id[record.pk]
            before = _state_of(record)
            if outcome.dolibarr_id is not None:
                record.mark_synced(
                    dolibarr_kind=outcome.dolibarr_kind,
                    dolibarr_id=outcome.dolibarr_id,
                    dolibarr_ref=outcome.dolibarr_ref,
                    now=now,
                )
                action = "record.synced"
            else:
                record.mark_skipped(reason=outcome.reason)
                action = "record.skipped"
            record.updated_at = now
            events.append(
                audit_event(
                    action=action,
                    target=record,
                    before=before,
                    after=_state_of(record),
                    reason=outcome.reason,
                )
            )
        _write_state(records)
        audit_records(events)
        synced = [record for record in records if record.state == SyncState.SYNCED]
        with_mismatches = set(
            Mismatch.objects.filter(
                record__in=synced, state__in=[MismatchState.OPEN, MismatchState.APPROVED]
            ).values_list("record_id", flat=True)
        )
        for record in synced:
            if record.pk in with_mismatches:
                mismatches_close_for_record(
                    record_id=record.pk,
                    note=f"{record} synced to Dolibarr {record.dolibarr_kind} {record.dolibarr_id}",
                )


def _write_state(records: Sequence[SyncRecord]) -> None:
    """Write the state fields of many records: one parametrised UPDATE executed for each
    (`executemany`). Django's `bulk_update` builds a CASE per field and record, which costs far
    more CPU in the worker than the statements cost the database."""
    fields = [SyncRecord._meta.get_field(name) for name in _STATE_FIELDS]
    quote = connection.ops.quote_name
    assignments = ", ".join(f"{quote(field.column)} = %s" for field in fields)
    # Only the model's own table and column names, quoted, are formatted in; values are bound.
    sql = (
        f"UPDATE {quote(SyncRecord._meta.db_table)} SET {assignments} "  # noqa: S608
        f"WHERE {quote(SyncRecord._meta.pk.column)} = %s"
    )
    rows = [
        [field.get_db_prep_save(getattr(record, field.attname), connection) for field in fields]
        + [record.pk]
        for record in records
    ]
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)


def record_mark_skipped(*, record_id: int, reason: str) -> SyncRecord:
    return _finish(
        record_id, "record.skipped", lambda r: r.mark_skipped(reason=reason), reason=reason
    )


def record_retry(*, record: SyncRecord, actor, reason: str = "") -> SyncRecord:
    """A person asks for another attempt (failed / needs review / skipped / synced -> pending)."""
    with transaction.atomic():
        locked = SyncRecord.objects.select_for_update().get(pk=record.pk)
        before = _state_of(locked)
        locked.mark_pending_for_retry()
        locked.save()
        audit_record(
            action="record.retry_requested",
            actor=actor,
            target=locked,
            before=before,
            after=_state_of(locked),
            reason=reason,
        )
    return locked


def record_retry_now(
    *, record_id: int, actor=None, actor_label: str = "", reason: str = ""
) -> tuple[SyncRecord, bool]:
    """Make one record due now, whatever it was: settled (failed, needs review, skipped,
    synced) it goes back to pending as with `record_retry`; pending with a later next attempt
    it is brought forward. A record in progress is refused: its worker decides its state.
    Returns the record and whether anything changed (a record already due is left alone)."""
    with transaction.atomic():
        record = SyncRecord.objects.select_for_update().defer("snapshot").get(pk=record_id)
        before = {**_state_of(record), "next_attempt_at": record.next_attempt_at}
        if record.state == SyncState.IN_PROGRESS:
            raise InvalidTransition(
                f"record {record.pk} ({record}) is being worked on (attempt started "
                f"{record.last_attempt_at:%Y-%m-%d %H:%M:%S}); retry it once that attempt ends"
            )
        if record.state == SyncState.PENDING:
            if record.next_attempt_at is None or record.next_attempt_at <= timezone.now():
                return record, False
            record.next_attempt_at = None
        else:
            record.mark_pending_for_retry()
        record.save(update_fields=_STATE_FIELDS)
        audit_record(
            action="record.retry_requested",
            actor=actor,
            actor_label=actor_label,
            target=record,
            before=before,
            after={**_state_of(record), "next_attempt_at": None},
            reason=reason,
        )
    return record, True


# How each source's snapshots say when the object was created there, for `records_reverify`.
CREATED_AT_KEYS = {"stripe": "created"}  # Stripe: Unix seconds


def records_reverify(
    *,
    source: str,
    created_from: datetime,
    created_before: datetime,
    kind: str | None = None,
    actor=None,
    actor_label: str = "",
    reason: str = "",
) -> list[int]:
    """Every synced record of `source` (and `kind`) whose object was created at the source in
    [`created_from`, `created_before`) goes back to pending, due now, so that its handler looks
    its Dolibarr objects up again and adopts, corrects or flags them. One audit event says how
    many and which; the records' own state changes are written in one statement. Returns the
    ids made due."""
    key = CREATED_AT_KEYS.get(source)
    if key is None:
        raise ValueError(
            f"{source} snapshots carry no creation time ap24sync knows; re-verify "
            f"{', '.join(CREATED_AT_KEYS)} records, or retry {source} records one by one"
        )
    window = {
        f"snapshot__{key}__gte": int(created_from.timestamp()),
        f"snapshot__{key}__lt": int(created_before.timestamp()),
    }
    now = timezone.now()
    with transaction.atomic():
        chosen = SyncRecord.objects.filter(source=source, state=SyncState.SYNCED, **window)
        if kind:
            chosen = chosen.filter(kind=kind)
        records = list(chosen.select_for_update().defer("snapshot").order_by("pk"))
        for record in records:
            record.mark_pending_for_retry()
            record.updated_at = now
        if records:
            _write_state(records)
        ids = [record.pk for record in records]
        audit_record(
            action="records.reverify_requested",
            actor=actor,
            actor_label=actor_label,
            target=("syncrecord", f"{source}:{kind or '*'}"),
            after={
                "count": len(ids),
                "source": source,
                "kind": kind or "",
                "created_from": created_from,
                "created_before": created_before,
                "records": ids[:REVERIFY_AUDIT_IDS],
                "records_listed": min(len(ids), REVERIFY_AUDIT_IDS),
            },
            reason=reason,
        )
    return ids


# Record ids listed in a re-verification's audit event (its count is always complete).
REVERIFY_AUDIT_IDS = 1000


def records_claim_due(
    *,
    limit: int = 1,
    lease: timedelta = timedelta(minutes=15),
    source: str | None = None,
    kinds: list[str] | None = None,
) -> list[SyncRecord]:
    """Claim up to `limit` due records for this worker (pending -> in_progress) in one short
    transaction, oldest due first (`next_attempt_at`, never-tried first… then by id). On
    PostgreSQL the rows are locked with SKIP LOCKED, so concurrent workers never claim the same
    record; SQLite serialises the claim transactions themselves (IMMEDIATE), and the state is
    re-checked under the lock either way.

    A record left `in_progress` longer than `lease` belongs to a worker that died: it is due
    again (its next attempt looks the remote objects up before writing anything).

    Cheap whatever the backlog: the ids are locked per kind through the `syncrecord_claim_order`
    index (`limit` entries each, no sort of the whole backlog), plus the rare expired leases;
    the best `limit` of them are claimed and the rest unlocked at commit, untouched."""
    now = timezone.now()
    with transaction.atomic():
        keys = _claim_candidates(now=now, lease=lease, limit=limit, source=source, kinds=kinds)
        chosen = list(dict.fromkeys(pk for _, pk in sorted(keys)))[:limit]
        locked = sorted(
            SyncRecord.objects.filter(pk__in=chosen),
            key=lambda record: chosen.index(record.pk),
        )
        for record in locked:
            if record.state == SyncState.IN_PROGRESS:
                record.state = SyncState.PENDING  # reclaimed from a dead worker
                audit_record(
                    action="record.lease_expired",
                    target=record,
                    reason=f"in progress since {record.last_attempt_at:%Y-%m-%d %H:%M:%S}",
                )
            record.claim(now=now)
        # What `claim` did to each, in one statement.
        SyncRecord.objects.filter(pk__in=[record.pk for record in locked]).update(
            state=SyncState.IN_PROGRESS,
            attempts=F("attempts") + 1,
            last_attempt_at=now,
            updated_at=now,
        )
    return locked


# Sorts after every real time: a never-tried record (next_attempt_at NULL) comes after the ones
# due at a time, as `ORDER BY next_attempt_at` puts NULLs last.
_NEVER = datetime.max.replace(tzinfo=UTC)


def _claim_candidates(
    *, now, lease: timedelta, limit: int, source: str | None, kinds: list[str] | None
) -> list[tuple[tuple[datetime, int], int]]:
    """Lock up to `limit` claimable ids per kind (and of expired leases), with their sort keys.
    Each query reads an index in claim order and stops at `limit` (SKIP LOCKED passes over the
    rows other workers hold)."""
    base = SyncRecord.objects.all()
    if source:
        base = base.filter(source=source)
    due = Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
    queries = [
        base.filter(due, state=SyncState.PENDING, kind=kind)
        for kind in (kinds if kinds else _pending_kinds(base))
    ]
    stale = base.filter(state=SyncState.IN_PROGRESS, last_attempt_at__lt=now - lease)
    if kinds:
        stale = stale.filter(kind__in=kinds)
    queries.append(stale)
    found: list[tuple[tuple[datetime, int], int]] = []
    for query in queries:
        rows = (
            query.select_for_update(skip_locked=True)
            .order_by("next_attempt_at", "id")
            .values_list("next_attempt_at", "id")[:limit]
        )
        found.extend(((when or _NEVER, pk), pk) for when, pk in rows)
    return found


def _pending_kinds(base) -> list[str]:
    """The kinds that have pending records (a claim without `kinds`): one small grouped read."""
    pending = base.filter(state=SyncState.PENDING).order_by()
    return list(pending.values_list("kind", flat=True).distinct())


__all__ = [
    "Observed",
    "Settled",
    "SyncState",
    "record_claim",
    "record_mark_failed",
    "record_mark_failed_with_mismatch",
    "record_mark_needs_review",
    "record_mark_needs_review_with_mismatch",
    "record_mark_retry_later",
    "record_mark_skipped",
    "record_mark_synced",
    "record_mark_waiting",
    "record_observe",
    "record_retry",
    "record_retry_now",
    "records_claim_due",
    "records_mark_settled",
    "records_observe",
    "records_reverify",
]
