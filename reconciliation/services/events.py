"""InboundEvent changes: store once, then mark processed or failed."""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.utils import timezone

from reconciliation.audit import audit_record
from reconciliation.models import InboundEvent


def inbound_event_store(
    *,
    source: str,
    event_id: str,
    event_type: str,
    body: str,
    headers: dict,
    verified: bool,
    received_via: str = "webhook",
) -> tuple[InboundEvent, bool]:
    """Store an event once. Returns (event, created); a replay returns the stored event.
    `received_via` names the channel in the audit trail ("webhook", "events pull")."""
    try:
        with transaction.atomic():
            event = InboundEvent.objects.create(
                source=source,
                event_id=event_id,
                event_type=event_type,
                body=body,
                headers=headers,
                verified=verified,
            )
            audit_record(
                action="event.received",
                actor_label=f"{source} {received_via}",
                target=event,
                after={"event_type": event_type, "verified": verified},
            )
    except IntegrityError:
        return InboundEvent.objects.get(source=source, event_id=event_id), False
    return event, True


def inbound_event_processed(*, event_id: int, effect: str = "") -> InboundEvent:
    """`effect` says what processing changed ("invoice in_… changed", "no effect: …"), kept in
    the audit trail so that an event handled without effect is explained too."""
    with transaction.atomic():
        event = InboundEvent.objects.select_for_update().get(pk=event_id)
        event.mark_processed(now=timezone.now())
        event.save()
        audit_record(action="event.processed", target=event, reason=effect)
    return event


def inbound_event_failed(*, event_id: int, error: str) -> InboundEvent:
    with transaction.atomic():
        event = InboundEvent.objects.select_for_update().get(pk=event_id)
        event.mark_processing_failed(error=error)
        event.save()
        audit_record(action="event.processing_failed", target=event, reason=error)
    return event
