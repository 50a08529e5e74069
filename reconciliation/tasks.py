"""django-q2 entry points: each builds its connector from the settings and calls one service."""

from __future__ import annotations

from reconciliation.connectors.stripe import StripeConnector
from reconciliation.models import Trigger
from reconciliation.sync.stripe_pull import stripe_stream_pull


def stripe_stream_pull_task(stream: str, *, full: bool = False, trigger: str = Trigger.SCHEDULE):
    run = stripe_stream_pull(
        connector=StripeConnector.from_settings(), stream=stream, trigger=trigger, full=full
    )
    return {"run": run.pk, "counts": run.counts}
