"""Pull Stripe objects into sync records, incrementally by `created`.

Each stream keeps its high-water mark (the newest `created` seen) in a Cursor. A run reads what
was created since that mark minus an overlap window, because Stripe's `created` has a one-second
grain and an object created in the last second of one run may be listed only by the next. Objects
seen again are harmless: an unchanged snapshot writes nothing. Objects that change after their
creation (an invoice paid later) come back through events and webhooks (the Stripe sync issue),
and through a full rescan (`full=True`).

Network reads happen between transactions: each page of objects (`OBSERVE_PAGE`, Stripe's own
page size) is stored in one short transaction by `records_observe`, never while a page is being
fetched.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from reconciliation.connectors.stripe import StripeConnector
from reconciliation.errors import CircuitOpenError, RemoteError
from reconciliation.models import RunState, Source, SyncRun, Trigger
from reconciliation.services.records import records_observe
from reconciliation.services.runs import run_finish, run_start

logger = logging.getLogger(__name__)

OVERLAP_SECONDS = 300
# Objects stored per transaction: Stripe lists 100 a page.
OBSERVE_PAGE = 100


@dataclass(frozen=True)
class Stream:
    name: str
    kind: str
    fetch: Callable[..., Iterator[dict[str, Any]]]

    @property
    def job(self) -> str:
        return f"stripe_{self.name}"


STREAMS: dict[str, Stream] = {
    stream.name: stream
    for stream in (
        Stream("customers", "customer", lambda c, **w: c.customers(**w)),
        Stream("invoices", "invoice", lambda c, **w: c.invoices(with_payments=True, **w)),
        Stream("charges", "charge", lambda c, **w: c.charges(**w)),
        Stream("payment_intents", "payment_intent", lambda c, **w: c.payment_intents(**w)),
        Stream("refunds", "refund", lambda c, **w: c.refunds(**w)),
        Stream(
            "balance_transactions",
            "balance_transaction",
            lambda c, **w: c.balance_transactions(**w),
        ),
        Stream("payouts", "payout", lambda c, **w: c.payouts(**w)),
    )
}


def stripe_stream_pull(
    *,
    connector: StripeConnector,
    stream: str,
    trigger: str = Trigger.SCHEDULE,
    full: bool = False,
    progress: Callable[[int], None] | None = None,
    since: datetime | None = None,
) -> SyncRun:
    """One run of one stream. A remote failure ends the run as failed (cursor unchanged) and is
    re-raised so that the scheduler sees it; what was stored before the failure stays stored.
    An open Stripe breaker (CircuitOpenError) ends it the same way, but as deferred.
    `since` rescans from that moment instead of the cursor (which never moves back)."""
    spec = STREAMS[stream]
    run = run_start(job=spec.job, trigger=trigger)
    mark = int(run.cursor_before) if run.cursor_before else None
    if since is not None:
        created_gte = int(since.timestamp())
    elif mark is not None and not full:
        created_gte = max(0, mark - OVERLAP_SECONDS)
    else:
        created_gte = None
    counts: Counter[str] = Counter()
    newest = mark or 0
    page: list[dict[str, Any]] = []

    def store() -> None:
        # One page of objects in one transaction (`records_observe`), not one per object.
        nonlocal newest
        if not page:
            return
        outcomes = records_observe(
            source=Source.STRIPE, kind=spec.kind, objects=[(obj["id"], obj) for obj in page]
        )
        counts["seen"] += len(page)
        counts.update(outcome.value for outcome in outcomes)
        newest = max([newest, *(int(obj.get("created") or 0) for obj in page)])
        if progress is not None:
            progress(len(page))
        page.clear()

    try:
        for obj in spec.fetch(connector, created_gte=created_gte):
            page.append(obj)
            if len(page) >= OBSERVE_PAGE:
                store()
        store()
    except RemoteError as exc:
        store()  # what was read before the failure is kept
        deferred = isinstance(exc, CircuitOpenError)
        logger.warning(
            "%s %s after %d objects: %s",
            spec.job,
            "deferred" if deferred else "failed",
            counts["seen"],
            exc,
        )
        state = RunState.DEFERRED if deferred else RunState.FAILED
        run_finish(run=run, state=state, counts=dict(counts), error=str(exc))
        raise
    return run_finish(
        run=run, counts=dict(counts), cursor_after=str(newest) if newest else run.cursor_before
    )


def stripe_pull_all(
    *, connector: StripeConnector, trigger: str = Trigger.SCHEDULE, full: bool = False
) -> dict[str, int]:
    """Every stream once, in dependency order; returns objects seen per stream."""
    seen = {}
    for name in STREAMS:
        run = stripe_stream_pull(connector=connector, stream=name, trigger=trigger, full=full)
        seen[name] = run.counts.get("seen", 0)
    return seen
