"""Mismatch state changes: detection (open or refresh by fingerprint), approve, resolve, ignore,
and automatic closing when a difference no longer holds."""

from __future__ import annotations

import hashlib
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from reconciliation.audit import audit_record
from reconciliation.models import Mismatch, MismatchState


def mismatch_fingerprint(*, kind: str, parts: tuple[str, ...]) -> str:
    """The identity of a difference: its kind and the identities of the objects involved."""
    text = "\x1f".join((kind, *map(str, parts)))
    return hashlib.sha256(text.encode()).hexdigest()


def _state_of(mismatch: Mismatch) -> dict:
    return {
        "state": mismatch.state,
        "proposed_fix": mismatch.proposed_fix,
        "amount_difference": mismatch.amount_difference,
        "note": mismatch.note,
    }


def mismatch_detected(
    *,
    kind: str,
    fingerprint_parts: tuple[str, ...],
    summary: str,
    severity: str = "warning",
    record=None,
    amount_difference: Decimal | None = None,
    currency: str = "",
    source_snapshot: dict | None = None,
    dolibarr_snapshot: dict | None = None,
    proposed_fix: str = "",
    proposed_fix_params: dict | None = None,
) -> Mismatch:
    """Open a mismatch, or refresh the one with the same fingerprint. A resolved one that is seen
    again is reopened; an ignored one stays ignored (a person decided) but its facts refresh."""
    fingerprint = mismatch_fingerprint(kind=kind, parts=fingerprint_parts)
    now = timezone.now()
    facts = {
        "kind": kind,
        "severity": severity,
        "record": record,
        "summary": summary[:300],
        "amount_difference": amount_difference,
        "currency": currency,
        "source_snapshot": source_snapshot or {},
        "dolibarr_snapshot": dolibarr_snapshot or {},
        "proposed_fix": proposed_fix,
        "proposed_fix_params": proposed_fix_params or {},
        "last_seen_at": now,
    }
    with transaction.atomic():
        mismatch = Mismatch.objects.select_for_update().filter(fingerprint=fingerprint).first()
        if mismatch is None:
            mismatch = Mismatch.objects.create(fingerprint=fingerprint, detected_at=now, **facts)
            audit_record(action="mismatch.opened", target=mismatch, after=_state_of(mismatch))
            return mismatch
        before = _state_of(mismatch)
        for field, value in facts.items():
            setattr(mismatch, field, value)
        if mismatch.state == MismatchState.RESOLVED:
            mismatch.reopen(now=now)
            mismatch.save()
            audit_record(
                action="mismatch.reopened",
                target=mismatch,
                before=before,
                after=_state_of(mismatch),
            )
        else:
            mismatch.save()
        return mismatch


def mismatch_approve(*, mismatch: Mismatch, actor) -> Mismatch:
    with transaction.atomic():
        locked = Mismatch.objects.select_for_update().get(pk=mismatch.pk)
        before = _state_of(locked)
        locked.approve(by=actor, now=timezone.now())
        locked.save()
        audit_record(
            action="mismatch.approved",
            actor=actor,
            target=locked,
            before=before,
            after=_state_of(locked),
        )
    return locked


def mismatch_resolve(*, mismatch: Mismatch, actor, note: str = "") -> Mismatch:
    """A person (or, with actor None, the engine after applying an approved fix) settles it."""
    with transaction.atomic():
        locked = Mismatch.objects.select_for_update().get(pk=mismatch.pk)
        before = _state_of(locked)
        locked.resolve(by=actor, now=timezone.now(), note=note)
        locked.save()
        audit_record(
            action="mismatch.resolved",
            actor=actor,
            target=locked,
            before=before,
            after=_state_of(locked),
            reason=note,
        )
    return locked


def mismatch_ignore(*, mismatch: Mismatch, actor, reason: str) -> Mismatch:
    with transaction.atomic():
        locked = Mismatch.objects.select_for_update().get(pk=mismatch.pk)
        before = _state_of(locked)
        locked.ignore(by=actor, now=timezone.now(), reason=reason)
        locked.save()
        audit_record(
            action="mismatch.ignored",
            actor=actor,
            target=locked,
            before=before,
            after=_state_of(locked),
            reason=reason,
        )
    return locked


def _close_open(pk: int, *, note: str, reason: str) -> bool:
    """Resolve one open mismatch as no longer holding, with its audit event; False when it is
    not open any more (a person or a fix got there first)."""
    with transaction.atomic():
        locked = Mismatch.objects.select_for_update().get(pk=pk)
        if locked.state != MismatchState.OPEN:
            return False
        before = _state_of(locked)
        locked.resolve(by=None, now=timezone.now(), note=note)
        locked.save()
        audit_record(
            action="mismatch.closed_automatically",
            target=locked,
            before=before,
            after=_state_of(locked),
            reason=reason,
        )
    return True


def mismatches_close_gone(*, kind: str, still_present: set[str]) -> int:
    """Close every open mismatch of `kind` whose fingerprint the last detection did not see.
    Returns how many were closed."""
    candidates = Mismatch.objects.filter(kind=kind, state=MismatchState.OPEN).exclude(
        fingerprint__in=still_present
    )
    return sum(
        _close_open(pk, note="No longer detected", reason="The difference no longer holds")
        for pk in list(candidates.values_list("pk", flat=True))
    )


def mismatches_close_for_record(*, record_id: int, note: str) -> int:
    """Close the open (or approved) mismatches of a record whose difference is gone because the
    record synced. Returns how many were closed."""
    closed = 0
    with transaction.atomic():
        for mismatch in Mismatch.objects.select_for_update().filter(
            record_id=record_id, state__in=[MismatchState.OPEN, MismatchState.APPROVED]
        ):
            before = _state_of(mismatch)
            mismatch.resolve(by=None, now=timezone.now(), note=note)
            mismatch.save()
            audit_record(
                action="mismatch.closed_automatically",
                target=mismatch,
                before=before,
                after=_state_of(mismatch),
                reason=note,
            )
            closed += 1
    return closed


def mismatches_close_fingerprints(*, fingerprints: set[str], note: str) -> int:
    """Close the open mismatches whose subject a detection checked and found in step (their
    fingerprints). Approved ones are left to the fix being applied; ignored ones stay as a
    person left them. Returns how many were closed, each with its audit event."""
    closed = 0
    pending = sorted(fingerprints)
    for start in range(0, len(pending), 500):
        candidates = Mismatch.objects.filter(
            fingerprint__in=pending[start : start + 500], state=MismatchState.OPEN
        ).values_list("pk", flat=True)
        closed += sum(_close_open(pk, note=note, reason=note) for pk in list(candidates))
    return closed
