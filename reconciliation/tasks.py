"""django-q2 entry points: each builds its connector from the settings and calls one service."""

from __future__ import annotations

from reconciliation.connectors.stripe import StripeConnector
from reconciliation.models import Trigger
from reconciliation.sync.stripe_events import stripe_event_process, stripe_events_pull
from reconciliation.sync.stripe_pull import stripe_stream_pull
from reconciliation.sync.stripe_sync import stripe_sync


def stripe_stream_pull_task(stream: str, *, full: bool = False, trigger: str = Trigger.SCHEDULE):
    run = stripe_stream_pull(
        connector=StripeConnector.from_settings(), stream=stream, trigger=trigger, full=full
    )
    return {"run": run.pk, "counts": run.counts}


def stripe_event_process_task(event_pk: int):
    """Queued by the Stripe webhook once the event is stored."""
    outcome = stripe_event_process(event_id=event_pk, connector=StripeConnector.from_settings())
    return {"event": outcome.event.event_id, "result": outcome.result.value}


def stripe_events_pull_task(*, trigger: str = Trigger.SCHEDULE):
    run = stripe_events_pull(connector=StripeConnector.from_settings(), trigger=trigger)
    return {"run": run.pk, "counts": run.counts}


def stripe_sync_task(
    *, streams: list[str] | None = None, full: bool = False, trigger: str = Trigger.SCHEDULE
):
    """Pull the Stripe streams, then write what is due to Dolibarr."""
    result = stripe_sync(streams=streams, full=full, trigger=trigger)
    return {"pulled": result.pulled, "processed": dict(result.processed)}
