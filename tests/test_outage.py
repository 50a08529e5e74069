"""A Dolibarr outage in the middle of a backlog, against the sandbox Dolibarr over HTTP: the
breaker opens after five failures and nothing more is sent, the run is deferred without failing
or charging any record, the admins get one e-mail; once Dolibarr is back the probe closes the
breaker, the backlog drains, the admins get one more e-mail, and Dolibarr ends up holding exactly
what a run without the outage writes."""

from __future__ import annotations

from typing import Any

import pytest
import requests
from django.core import mail

from reconciliation.connectors.dolibarr import DolibarrClient
from reconciliation.errors import CircuitOpenError
from reconciliation.models import (
    BreakerState,
    CircuitBreaker,
    Mismatch,
    MismatchKind,
    SyncRecord,
    SyncState,
)
from reconciliation.resilience import Breaker
from reconciliation.sandbox.dolibarr import DolibarrSandbox
from reconciliation.sync.engine import sync_due
from reconciliation.sync.remote import WRITES
from reconciliation.sync.stripe_pull import stripe_pull_all
from tests.sync_support import (
    context_for,
    dolibarr_state,
    no_delay,
    observed_snapshots,
    restart_from,
    sync_until_settled,
)

pytestmark = pytest.mark.django_db

# Writes Dolibarr applies before it goes down: the customers and a few invoices are through.
WRITES_BEFORE_OUTAGE = 20


class DolibarrGoesDown:
    """The real client; right after its k-th write was applied, the sandbox Dolibarr stops, and
    the connections it had open close with it (the sandbox's own stop leaves open keep-alive
    connections served, which a stopped server would not)."""

    def __init__(
        self,
        client: DolibarrClient,
        *,
        sandbox: DolibarrSandbox,
        session: requests.Session,
        after: int,
    ) -> None:
        self._client = client
        self._sandbox = sandbox
        self._session = session
        self.after = after
        self.writes = 0
        self.calls_when_down: int | None = None

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if name not in WRITES:
            return attribute

        def write(**kwargs: Any) -> Any:
            result = attribute(**kwargs)
            self.writes += 1
            if self.writes == self.after:
                self._sandbox.stop()
                self._session.close()
                self.calls_when_down = _calls(self._client)
            return result

        return write


def _calls(client: DolibarrClient) -> int:
    return sum(client.call_counts.values())


def _record_states() -> list[tuple[str, str, str]]:
    return list(
        SyncRecord.objects.order_by("kind", "external_id").values_list(
            "kind", "external_id", "state"
        )
    )


@pytest.fixture
def outage_settings(settings):
    settings.BREAKER_FAILURES = 5
    # No probe while Dolibarr is down: the test lets one through once it is back.
    settings.BREAKER_COOL_DOWN_SECONDS = 3600
    settings.ALERT_BREAKER_OPEN_MINUTES = 0
    settings.ADMINS = [("Finance admin", "admin@example.org")]
    return settings


def test_a_dolibarr_outage_mid_run_defers_then_drains_to_the_same_books(
    outage_settings, dolibarr_sandbox, dolibarr_api_key, stripe_connector
):
    stripe_pull_all(connector=stripe_connector)
    snapshots = observed_snapshots()
    session = requests.Session()
    client = DolibarrClient(
        base_url=dolibarr_sandbox.api_url,
        api_key=dolibarr_api_key,
        session=session,
        backoff_base=0,
        read_timeout=5,
        breaker=Breaker("dolibarr"),
    )
    flaky = DolibarrGoesDown(
        client, sandbox=dolibarr_sandbox, session=session, after=WRITES_BEFORE_OUTAGE
    )
    context = context_for(flaky, stripe_connector, url=dolibarr_sandbox.api_url)

    # Dolibarr goes down mid-run: five failed attempts open the breaker, then nothing is sent.
    with pytest.raises(CircuitOpenError):
        sync_due(context=context, delay_for=no_delay)
    assert flaky.calls_when_down is not None
    assert _calls(client) - flaky.calls_when_down == 5
    breaker = CircuitBreaker.objects.get(pk="dolibarr")
    assert (breaker.state, breaker.consecutive_failures) == (BreakerState.OPEN, 5)

    # The run was deferred: nothing failed, nothing left in progress, and the records it gave
    # back were not charged an attempt; only the few that met a real failure before the breaker
    # opened were (an ordinary retry: one attempt each, fewer records than failures).
    states = set(SyncRecord.objects.values_list("state", flat=True))
    assert SyncState.FAILED not in states
    assert SyncState.IN_PROGRESS not in states
    assert not Mismatch.objects.filter(kind=MismatchKind.SYNC_FAILED).exists()
    synced_before = SyncRecord.objects.filter(state=SyncState.SYNCED).count()
    assert synced_before > 0
    pending = SyncRecord.objects.filter(state=SyncState.PENDING)
    assert pending.exists()
    given_back = pending.filter(attempts=0)
    charged = pending.exclude(attempts=0)
    assert given_back.exists()
    assert charged.count() < 5
    assert set(charged.values_list("attempts", flat=True)) == {1}

    # While it is open a new run sends nothing and claims nothing.
    calls, before = _calls(client), _record_states()
    with pytest.raises(CircuitOpenError):
        sync_due(context=context, delay_for=no_delay)
    assert _calls(client) == calls
    assert _record_states() == before

    # One e-mail for the outage.
    assert len(mail.outbox) == 1
    assert mail.outbox[0].subject.startswith(
        "[ap24sync] Dolibarr unavailable (circuit breaker open since "
    )

    # Dolibarr is back, with what it held; after the cool-down the probe closes the breaker
    # and the backlog drains.
    dolibarr_sandbox.start()
    outage_settings.BREAKER_COOL_DOWN_SECONDS = 0
    sync_until_settled(context)
    assert CircuitBreaker.objects.get(pk="dolibarr").state == BreakerState.CLOSED
    assert [m.subject for m in mail.outbox][1:] == [
        "[ap24sync] Dolibarr available again (unavailable 1 min)"
    ]
    assert not SyncRecord.objects.filter(state=SyncState.PENDING).exists()
    after_outage = dolibarr_state(client)
    states_after_outage = _record_states()

    # The same backlog, without an outage, on a fresh Dolibarr.
    restart_from(snapshots)
    calm = DolibarrSandbox(api_key=dolibarr_api_key)
    calm.start()
    try:
        with DolibarrClient(
            base_url=calm.api_url, api_key=dolibarr_api_key, backoff_base=0, read_timeout=5
        ) as calm_client:
            sync_until_settled(context_for(calm_client, stripe_connector, url=calm.api_url))
            without_outage = dolibarr_state(calm_client)
    finally:
        calm.stop()
    assert after_outage == without_outage
    assert states_after_outage == _record_states()
    assert after_outage["invoices"]  # the comparison compared something
