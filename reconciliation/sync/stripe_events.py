"""Stripe events (webhooks and `/v1/events`): make the objects they concern pending again.

An event only says *which* object changed. Its `data.object` is a snapshot of the moment it was
sent, and events arrive late, twice or out of order, so processing never stores it: it re-fetches
the object from Stripe with the same expansions as the stream pull (`stripe_pull.STREAMS`) and
hands it to `record_observe`. The record therefore always holds Stripe's current state, in the
same shape a pull would have stored, and a changed object becomes due now whatever order its
events came in. An event is processed once (`processed_at`); a failure keeps the event with its
error, for the admin action "Reprocess selected events" and for the next events pull.

The events pull reads `/v1/events` oldest first after the event cursor and moves the cursor only
past events that were stored and processed: the first failure ends the run (a failed run never
moves a cursor), and the next run starts again before that event. An open Stripe breaker
(`CircuitOpenError`) leaves the event as it was, unprocessed and not failed, and ends the run as
deferred.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any

from django.utils import timezone

from reconciliation.audit import audit_record
from reconciliation.connectors.stripe import StripeConnector
from reconciliation.errors import (
    Ap24SyncError,
    CircuitOpenError,
    InvalidTransition,
    NotFoundError,
    RemoteError,
)
from reconciliation.models import InboundEvent, RunState, Source, SyncRun, Trigger
from reconciliation.services.events import (
    inbound_event_failed,
    inbound_event_processed,
    inbound_event_store,
)
from reconciliation.services.records import Observed, record_observe
from reconciliation.services.runs import run_finish, run_start

logger = logging.getLogger(__name__)

EVENTS_JOB = "stripe_events"
# A first events pull (no cursor yet) reads this far back. The streams' own first pull already
# stored every object as it is now; the window only covers changes made between that pull and
# this one, so a day is plenty and keeps the first run cheap (one re-fetch per event).
FIRST_RUN_WINDOW = timedelta(hours=24)

# One retrieve per record kind of `stripe_pull.STREAMS`, with the expansions that stream lists
# the kind with, so that a snapshot made from an event equals the pulled one (tested per kind).
RETRIEVE: dict[str, Callable[[StripeConnector, str], dict[str, Any]]] = {
    "customer": lambda c, object_id: c.customer(object_id),
    "invoice": lambda c, object_id: c.invoice(object_id, with_payments=True),
    "charge": lambda c, object_id: c.charge(object_id),
    "payment_intent": lambda c, object_id: c.payment_intent(object_id),
    "refund": lambda c, object_id: c.refund(object_id),
    "balance_transaction": lambda c, object_id: c.balance_transaction(object_id),
    "payout": lambda c, object_id: c.payout(object_id),
}


class EventFailed(Ap24SyncError):
    """An event could not be processed; the events pull stops before it."""


class Result(StrEnum):
    PROCESSED = "processed"
    ALREADY_PROCESSED = "already_processed"
    FAILED = "failed"
    NOT_STRIPE = "not_stripe"


@dataclass(frozen=True)
class Target:
    """A Stripe object an event concerns. `with_refunds`: also every refund of that charge
    (`charge.refunded` names the charge, and the refund objects are records of their own)."""

    kind: str
    object_id: str
    with_refunds: bool = False


@dataclass
class EventOutcome:
    event: InboundEvent
    result: Result
    effect: str = ""
    error: str = ""
    observed: list[tuple[str, str, Observed]] = field(default_factory=list)

    @property
    def message(self) -> str:
        label = f"{self.event.event_id} ({self.event.event_type})"
        if self.result == Result.FAILED:
            return f"{label}: failed: {self.error}"
        if self.result == Result.ALREADY_PROCESSED:
            return f"{label}: already processed, nothing done"
        if self.result == Result.NOT_STRIPE:
            return f"{label}: a {self.event.source} event, not reprocessed here"
        return f"{label}: processed; {self.effect}"


def _id_of(value: Any) -> str | None:
    """An id that Stripe gives either as a string or, when expanded, as an object."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def event_targets(payload: dict[str, Any]) -> list[Target]:
    """The objects an event concerns, from `data.object`'s type and links. Only ids are read
    from the payload; everything stored comes from a re-fetch. An empty list means the event
    type has no effect on the records (subscriptions, prices, balance notices …)."""
    event_type = str(payload.get("type") or "")
    obj = (payload.get("data") or {}).get("object") or {}
    object_type = obj.get("object")
    if object_type in RETRIEVE:
        object_id = _id_of(obj.get("id"))
        if object_id is None:
            raise ValueError(f"event {payload.get('id')} has a {object_type} without an id")
        return [Target(object_type, object_id, with_refunds=event_type == "charge.refunded")]
    linked = {
        "invoice_payment": ("invoice", "invoice"),  # invoice_payment.paid: the invoice's payments
        "dispute": ("charge", "charge"),  # charge.dispute.*: the disputed charge
        "discount": ("customer", "customer"),  # customer.discount.*: `customer.discount`
    }.get(object_type)
    if linked is None:
        return []
    kind, link = linked
    object_id = _id_of(obj.get(link))
    return [Target(kind, object_id)] if object_id else []


def _is_deleted_draft(payload: dict[str, Any]) -> bool:
    obj = (payload.get("data") or {}).get("object") or {}
    return obj.get("object") == "invoice" and obj.get("status") == "draft"


def stripe_event_apply(
    *, payload: dict[str, Any], connector: StripeConnector
) -> tuple[str, list[tuple[str, str, Observed]]]:
    """Re-fetch and observe what one event concerns. Returns a one-line effect and what was
    observed. Network reads run between the short transactions of `record_observe`."""
    event_type = str(payload.get("type") or "")
    if event_type.endswith(".deleted"):
        # Nothing leaves the books because Stripe deleted an object: a deleted customer keeps
        # its thirdparty and invoices; a deleted draft invoice was never billed.
        return f"no effect: {event_type} (Dolibarr keeps what was synced)", []
    targets = event_targets(payload)
    if not targets:
        return f"no effect: {event_type} does not concern a synced object", []
    notes: list[str] = []
    observed: list[tuple[str, str, Observed]] = []
    for target in targets:
        try:
            snapshot = RETRIEVE[target.kind](connector, target.object_id)
        except NotFoundError:
            if not (target.kind == "invoice" and _is_deleted_draft(payload)):
                raise
            # Only drafts can be deleted at Stripe, which then answers 404 for them.
            notes.append(f"invoice {target.object_id} no longer exists (a deleted draft)")
            continue
        if snapshot.get("deleted"):
            # Stripe answers a deleted customer with a stub {"id", "object", "deleted": true}.
            notes.append(f"{target.kind} {target.object_id} was deleted at Stripe; kept")
            continue
        snapshots = [(target.kind, snapshot)]
        if target.with_refunds:
            snapshots += [
                ("refund", refund) for refund in connector.refunds(charge=target.object_id)
            ]
        for kind, obj in snapshots:
            _, outcome = record_observe(
                source=Source.STRIPE, kind=kind, external_id=obj["id"], snapshot=obj
            )
            observed.append((kind, obj["id"], outcome))
            notes.append(f"{kind} {obj['id']} {outcome.value}")
    return ", ".join(notes), observed


def stripe_event_process(*, event_id: int, connector: StripeConnector) -> EventOutcome:
    """Process one stored Stripe event once. Any failure is kept on the event (its text shown in
    the admin) rather than raised, so that a webhook task, the events pull and the admin action
    all see the same outcome; a second processing of a processed event does nothing.

    An open Stripe breaker is not the event's failure: nothing was tried, so the event is left
    untouched (no error, no attempt counted) and the CircuitOpenError raised; the events pull
    processes it once Stripe is back."""
    event = InboundEvent.objects.get(pk=event_id)
    if event.processed_at is not None:
        return EventOutcome(event, Result.ALREADY_PROCESSED)
    if event.source != Source.STRIPE:
        raise ValueError(f"event {event.event_id} comes from {event.source}, not from Stripe")
    try:
        payload = json.loads(event.body)
        if not isinstance(payload, dict):
            raise ValueError("the stored body is not a JSON object")
        effect, observed = stripe_event_apply(payload=payload, connector=connector)
    except CircuitOpenError:
        raise
    except Exception as exc:  # every failure must end on the event, visible and retryable
        error = str(exc) if isinstance(exc, RemoteError) else f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, RemoteError | ValueError | KeyError):
            logger.exception("processing Stripe event %s failed", event.event_id)
        else:
            logger.warning("processing Stripe event %s failed: %s", event.event_id, error)
        try:
            event = inbound_event_failed(event_id=event.pk, error=error)
        except InvalidTransition:  # processed meanwhile by another worker
            return EventOutcome(InboundEvent.objects.get(pk=event.pk), Result.ALREADY_PROCESSED)
        return EventOutcome(event, Result.FAILED, error=error)
    try:
        event = inbound_event_processed(event_id=event.pk, effect=effect)
    except InvalidTransition:  # another worker finished it first; the records are the same
        return EventOutcome(InboundEvent.objects.get(pk=event.pk), Result.ALREADY_PROCESSED)
    return EventOutcome(event, Result.PROCESSED, effect=effect, observed=observed)


def stripe_events_reprocess(
    *,
    events: Iterable[InboundEvent],
    actor,
    connector: StripeConnector | None = None,
) -> list[EventOutcome]:
    """A person asks for another attempt at events that failed or were never processed. Each
    attempt is audited with its actor; processed events are reported and left alone. The
    connector is built from the settings only when something needs Stripe."""
    outcomes = []
    for event in events:
        if event.processed_at is not None:
            outcomes.append(EventOutcome(event, Result.ALREADY_PROCESSED))
            continue
        if event.source != Source.STRIPE:
            outcomes.append(EventOutcome(event, Result.NOT_STRIPE))
            continue
        if connector is None:
            connector = StripeConnector.from_settings()
        audit_record(
            action="event.reprocess_requested",
            actor=actor,
            target=event,
            before={"error": event.error, "attempts": event.attempts},
        )
        outcomes.append(stripe_event_process(event_id=event.pk, connector=connector))
    return outcomes


# --- the /v1/events pull ----------------------------------------------------------------------


@dataclass(frozen=True)
class EventCursor:
    """The last processed event: its id (Stripe's cursor) and its `created` (a fallback when
    Stripe no longer holds that event: it keeps events 30 days). Stored as `evt_…@1767225600`."""

    event_id: str
    created: int | None

    @classmethod
    def parse(cls, value: str) -> EventCursor | None:
        if not value:
            return None
        event_id, _, created = value.partition("@")
        return cls(event_id, int(created) if created.isdigit() else None)

    def __str__(self) -> str:
        return f"{self.event_id}@{self.created}" if self.created is not None else self.event_id


def _events_after(
    connector: StripeConnector, cursor: EventCursor | None, first_window: timedelta
) -> Iterator[dict[str, Any]]:
    """Events after the cursor, oldest first. A cursor Stripe has forgotten falls back to the
    events created since its time (already processed ones are then skipped cheaply)."""
    if cursor is None:
        yield from connector.events_since(None, created_gte=timezone.now() - first_window)
        return
    try:
        yield from connector.events_since(cursor.event_id)
    except NotFoundError:
        if cursor.created is None:
            raise
        logger.warning(
            "%s: Stripe no longer holds event %s; reading events since its time instead",
            EVENTS_JOB,
            cursor.event_id,
        )
        yield from connector.events_since(None, created_gte=cursor.created)


def stripe_events_pull(
    *,
    connector: StripeConnector,
    trigger: str = Trigger.SCHEDULE,
    first_window: timedelta = FIRST_RUN_WINDOW,
    progress: Callable[[int], None] | None = None,
) -> SyncRun:
    """One run of the events stream: store each event (as a webhook would: same source and
    id, so the two never process one event twice), process it, and move the cursor past it.

    A listing failure or the first event that fails ends the run as failed, with the cursor
    where it was, and raises (RemoteError, or EventFailed) so that the scheduler sees it; the
    failed event keeps its error. An open Stripe breaker ends it as deferred, cursor unchanged,
    and raises the CircuitOpenError. With nothing new the run costs one Stripe call."""
    run = run_start(job=EVENTS_JOB, trigger=trigger)
    cursor = EventCursor.parse(run.cursor_before)
    newest = cursor
    counts: Counter[str] = Counter()
    failure: EventOutcome | None = None
    try:
        for payload in _events_after(connector, cursor, first_window):
            event, created = inbound_event_store(
                source=Source.STRIPE,
                event_id=payload["id"],
                event_type=payload.get("type", ""),
                body=json.dumps(payload, ensure_ascii=False),
                headers={},
                verified=True,  # read from Stripe's API with our own key
                received_via="events pull",
            )
            counts["seen"] += 1
            counts["stored" if created else "known"] += 1
            outcome = stripe_event_process(event_id=event.pk, connector=connector)
            counts[outcome.result.value] += 1
            if progress is not None:
                progress(1)
            if outcome.result == Result.FAILED:
                failure = outcome
                break
            newest = EventCursor(payload["id"], int(payload.get("created") or 0) or None)
    except RemoteError as exc:
        deferred = isinstance(exc, CircuitOpenError)
        logger.warning(
            "%s %s after %d events: %s",
            EVENTS_JOB,
            "deferred" if deferred else "failed",
            counts["seen"],
            exc,
        )
        state = RunState.DEFERRED if deferred else RunState.FAILED
        run_finish(run=run, state=state, counts=dict(counts), error=str(exc))
        raise
    if failure is not None:
        error = f"{failure.message}; the cursor stays before it"
        run_finish(run=run, state=RunState.FAILED, counts=dict(counts), error=error)
        raise EventFailed(error)
    return run_finish(
        run=run, counts=dict(counts), cursor_after=str(newest) if newest else run.cursor_before
    )


__all__ = [
    "EVENTS_JOB",
    "FIRST_RUN_WINDOW",
    "RETRIEVE",
    "EventCursor",
    "EventFailed",
    "EventOutcome",
    "Result",
    "Target",
    "event_targets",
    "stripe_event_apply",
    "stripe_event_process",
    "stripe_events_pull",
    "stripe_events_reprocess",
]
