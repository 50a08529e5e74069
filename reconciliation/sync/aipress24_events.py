"""Events pushed by Aipress24 (`POST /webhooks/aipress24`, docs/aipress24-push.md): what a
push says, and making the record it names due now.

A push names one object and nothing else: the record's snapshot comes from the Aipress24 pull,
never from an event, so events that arrive late, twice or out of order cannot put old data in
a record. Processing only brings the record forward (`record_retry_now`), audited as the push
that asked for it; the sync then reads and writes it like any due record.

- An object the console has no record of yet is new to it: the event is processed with that
  note, and the next Aipress24 pull reads the object (the pull is the safety net; a push never
  creates a record, since it carries no snapshot).
- A record that needs review stays where it is: a person decides it, and a machine signal does
  not take that decision away (as a changed snapshot does not, `SyncRecord.observe`).
- A record in progress cannot be brought forward (its worker decides its state): processing
  fails with that reason, kept on the event, and can be retried like any failed event.

An event is processed at most once (`processed_at`): the event row is locked while its record
is changed and the event marked processed, in one transaction.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction

from reconciliation.audit import audit_record
from reconciliation.errors import Ap24SyncError, InvalidTransition
from reconciliation.models import InboundEvent, Source, SyncRecord, SyncState
from reconciliation.services.events import inbound_event_failed, inbound_event_processed
from reconciliation.services.records import record_retry_now
from reconciliation.sync.stripe_events import EventOutcome, Result

logger = logging.getLogger(__name__)

# The record kind each event type makes due (its `object_id` is the record's external id).
EVENT_KINDS = {
    "organisation.changed": "organisation",
    "user.changed": "user",
    "purchase.paid": "purchase",
    "subscription.changed": "subscription",
}
ACTOR_LABEL = "aipress24 push"
NO_RECORD_YET = "no record yet: the next aipress24 pull will read it"

# Ids are shown in logs, error answers and the admin: printable, no spaces, bounded like the
# columns they land in (InboundEvent.event_id, SyncRecord.external_id).
_ID = re.compile(r"[A-Za-z0-9._:-]{1,255}")
_ID_RULE = "1 to 255 characters among A-Z a-z 0-9 . _ : -"


class InvalidPushEvent(Ap24SyncError):
    """A push body that does not follow the contract; `field` names the culprit ("" for the
    body as a whole)."""

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class PushEvent:
    event_id: str
    event_type: str
    object_id: str
    occurred_at: datetime

    @property
    def kind(self) -> str:
        return EVENT_KINDS[self.event_type]


def _identifier(payload: dict, field: str) -> str:
    value = payload.get(field)
    if value is None:
        raise InvalidPushEvent(f"{field} is missing", field=field)
    if isinstance(value, int | float) and not isinstance(value, bool):
        # Aipress24's snowflake ids (~7.4e18) are above 2^53: a JSON number loses their last
        # digits in most JSON libraries, so the contract takes ids as strings only.
        # The number received is not echoed: it may already have lost those digits.
        raise InvalidPushEvent(
            f"{field} must be a JSON string, not a number: ids above 2^53 lose digits as JSON "
            f'numbers (send "{field}": "7413705309148774401")',
            field=field,
        )
    if not isinstance(value, str):
        raise InvalidPushEvent(f"{field} must be a JSON string", field=field)
    if not _ID.fullmatch(value):
        raise InvalidPushEvent(f"{field} must be {_ID_RULE}", field=field)
    return value


def _occurred_at(payload: dict) -> datetime:
    value = payload.get("occurred_at")
    if value is None:
        raise InvalidPushEvent("occurred_at is missing", field="occurred_at")
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None:
        raise InvalidPushEvent(
            "occurred_at must be an ISO 8601 string, e.g. 2026-07-02T09:30:00Z",
            field="occurred_at",
        )
    if moment.utcoffset() is None:
        # Aipress24 stores naive timestamps; a naive one here would be ambiguous.
        raise InvalidPushEvent(
            "occurred_at must carry its UTC offset, e.g. 2026-07-02T09:30:00Z",
            field="occurred_at",
        )
    return moment


def push_event_parse(body: bytes | str) -> PushEvent:
    """The event in a push body, or InvalidPushEvent naming what is wrong. Keys beyond the
    contract's four are ignored, so that Aipress24 can add some without breaking the push."""
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
        payload = json.loads(text)
    except ValueError as exc:  # UnicodeDecodeError included
        raise InvalidPushEvent(f"body is not UTF-8 JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise InvalidPushEvent("body must be a JSON object")
    event_id = _identifier(payload, "id")
    event_type = payload.get("type")
    if event_type is None:
        raise InvalidPushEvent("type is missing", field="type")
    if event_type not in EVENT_KINDS:
        shown = json.dumps(event_type)[:60]
        raise InvalidPushEvent(f"type {shown} is not one of {', '.join(EVENT_KINDS)}", field="type")
    return PushEvent(
        event_id=event_id,
        event_type=event_type,
        object_id=_identifier(payload, "object_id"),
        occurred_at=_occurred_at(payload),
    )


def aipress24_event_apply(*, push: PushEvent) -> str:
    """Make the record the event names due now. Returns a one-line effect for the audit trail.
    Runs inside the caller's transaction: the record is locked while its state is read."""
    label = f"{push.kind} {push.object_id}"
    record = (
        SyncRecord.objects.select_for_update()
        .filter(source=Source.AIPRESS24, kind=push.kind, external_id=push.object_id)
        .only("pk", "state")
        .first()
    )
    if record is None:
        return f"{label}: {NO_RECORD_YET}"
    if record.state == SyncState.NEEDS_REVIEW:
        return f"{label} needs review: left for a person (the next aipress24 pull reads it)"
    _, changed = record_retry_now(
        record_id=record.pk,
        actor_label=ACTOR_LABEL,
        reason=f"{push.event_type} event {push.event_id} (occurred {push.occurred_at.isoformat()})",
    )
    return f"{label} due now" if changed else f"{label} was already due"


def aipress24_event_process(*, event_id: int) -> EventOutcome:
    """Process one stored Aipress24 event once. A failure is kept on the event (visible in the
    admin, retryable) rather than raised, as for Stripe events; processing a processed event
    again does nothing."""
    event = InboundEvent.objects.get(pk=event_id)
    if event.processed_at is not None:
        return EventOutcome(event, Result.ALREADY_PROCESSED)
    if event.source != Source.AIPRESS24:
        raise ValueError(f"event {event.event_id} comes from {event.source}, not from Aipress24")
    try:
        with transaction.atomic():
            locked = InboundEvent.objects.select_for_update().get(pk=event_id)
            if locked.processed_at is not None:  # another worker finished it meanwhile
                return EventOutcome(locked, Result.ALREADY_PROCESSED)
            effect = aipress24_event_apply(push=push_event_parse(locked.body))
            event = inbound_event_processed(event_id=locked.pk, effect=effect)
    except Exception as exc:  # every failure must end on the event, visible and retryable
        expected = isinstance(exc, InvalidTransition | InvalidPushEvent)
        error = str(exc) if expected else f"{type(exc).__name__}: {exc}"
        if expected:
            logger.warning("processing Aipress24 event %s failed: %s", event.event_id, error)
        else:
            logger.exception("processing Aipress24 event %s failed", event.event_id)
        try:
            event = inbound_event_failed(event_id=event.pk, error=error)
        except InvalidTransition:  # processed meanwhile by another worker
            return EventOutcome(InboundEvent.objects.get(pk=event.pk), Result.ALREADY_PROCESSED)
        return EventOutcome(event, Result.FAILED, error=error)
    return EventOutcome(event, Result.PROCESSED, effect=effect)


def aipress24_events_reprocess(*, events: Iterable[InboundEvent], actor) -> list[EventOutcome]:
    """A person asks for another attempt at Aipress24 events that failed or were never
    processed (the admin's "Reprocess selected events", as `stripe_events_reprocess` for
    Stripe's). Each attempt is audited with its actor; processed events are reported and left
    alone. Only Aipress24 events: the caller sends each source's events to its own function."""
    outcomes = []
    for event in events:
        if event.source != Source.AIPRESS24:
            raise ValueError(f"event {event.event_id} comes from {event.source}, not Aipress24")
        if event.processed_at is not None:
            outcomes.append(EventOutcome(event, Result.ALREADY_PROCESSED))
            continue
        audit_record(
            action="event.reprocess_requested",
            actor=actor,
            target=event,
            before={"error": event.error, "attempts": event.attempts},
        )
        outcomes.append(aipress24_event_process(event_id=event.pk))
    return outcomes


__all__ = [
    "ACTOR_LABEL",
    "EVENT_KINDS",
    "NO_RECORD_YET",
    "InvalidPushEvent",
    "PushEvent",
    "aipress24_event_apply",
    "aipress24_event_process",
    "aipress24_events_reprocess",
    "push_event_parse",
]
