"""Circuit breakers, over HTTP against the sandbox Dolibarr and the sandbox Stripe: they open after
five consecutive failures, send nothing while open, let one probe through after the cool-down,
share their state between workers, and tell the admins once per outage.

Each "worker" is its own `Breaker` instance (its own in-process memory), as on another machine;
they share the database row. A test clock moves past the cool-down, so no test sleeps."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
import requests
from django.core import mail
from django.db import connection
from django.utils import timezone

from reconciliation.connectors.dolibarr import DolibarrClient
from reconciliation.connectors.stripe import StripeConnector
from reconciliation.errors import (
    AuthenticationError,
    CircuitOpenError,
    NotFoundError,
    TransientError,
)
from reconciliation.models import (
    BreakerState,
    CircuitBreaker,
    Cursor,
    InboundEvent,
    Incident,
    IncidentKind,
    RunState,
    SyncRecord,
    SyncRun,
)
from reconciliation.resilience import Breaker, breaker_states, breakers_check_alerts, clean_error
from reconciliation.services.events import inbound_event_store
from reconciliation.services.records import record_observe
from reconciliation.sync.engine import sync_due
from reconciliation.sync.stripe_events import stripe_event_process, stripe_events_pull
from reconciliation.sync.stripe_pull import stripe_stream_pull
from tests.fixtures_stripe import STRIPE_TEST_KEY
from tests.sync_support import context_for

pytestmark = pytest.mark.django_db

COOL_DOWN = 60


class Clock:
    """The wall clock the breakers see; `advance` is time passing."""

    def __init__(self, start=None) -> None:
        self.now = start or timezone.now()

    def __call__(self):
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class DuringRequest(requests.Session):
    """A session that runs `during` while its first request is in flight: after the client let
    the attempt through, before it reaches the server."""

    def __init__(self, during: Callable[[], object]) -> None:
        super().__init__()
        self._during: Callable[[], object] | None = during

    def request(self, *args, **kwargs):
        during, self._during = self._during, None
        if during is not None:
            during()
        return super().request(*args, **kwargs)


class WorkerDied(BaseException):
    """The process dies in the middle of a call."""


class DiesDuringRequest(requests.Session):
    def request(self, *args, **kwargs):
        raise WorkerDied


@pytest.fixture(autouse=True)
def breaker_settings(settings):
    settings.BREAKER_FAILURES = 5
    settings.BREAKER_COOL_DOWN_SECONDS = COOL_DOWN
    settings.ALERT_BREAKER_OPEN_MINUTES = 15
    settings.ADMINS = [("Finance admin", "admin@example.org")]
    return settings


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def worker(clock) -> Breaker:
    return Breaker("dolibarr", clock=clock)


@pytest.fixture
def other_worker(clock) -> Breaker:
    return Breaker("dolibarr", clock=clock)


@pytest.fixture
def make_client(dolibarr_sandbox, dolibarr_api_key) -> Iterator[Callable[..., DolibarrClient]]:
    clients: list[DolibarrClient] = []

    def make(breaker: Breaker, *, max_retries: int = 0, **options) -> DolibarrClient:
        options.setdefault("api_key", dolibarr_api_key)
        client = DolibarrClient(
            base_url=dolibarr_sandbox.api_url,
            backoff_base=0,
            read_timeout=5,
            max_retries=max_retries,
            breaker=breaker,
            **options,
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client, worker) -> DolibarrClient:
    return make_client(worker)


def _row() -> CircuitBreaker:
    return CircuitBreaker.objects.get(pk="dolibarr")


def _fail(client: DolibarrClient, times: int) -> None:
    for _ in range(times):
        with pytest.raises(TransientError):
            client.status()


def _open(client: DolibarrClient, sandbox) -> None:
    sandbox.faults.update(error_rate=1.0)
    _fail(client, 5)
    assert _row().state == BreakerState.OPEN


# --- opening -----------------------------------------------------------------------------------


def test_four_failures_leave_the_breaker_closed(client, dolibarr_sandbox):
    dolibarr_sandbox.faults.update(error_rate=1.0)
    _fail(client, 4)
    assert (_row().state, _row().consecutive_failures) == (BreakerState.CLOSED, 4)


def test_the_fifth_consecutive_failure_opens_the_breaker(client, dolibarr_sandbox):
    dolibarr_sandbox.faults.update(error_rate=1.0)
    _fail(client, 4)
    with pytest.raises(CircuitOpenError, match="circuit breaker is open"):
        client.status()
    row = _row()
    assert (row.state, row.consecutive_failures) == (BreakerState.OPEN, 5)
    assert "500" in row.last_error


def test_a_success_in_between_resets_the_count(client, dolibarr_sandbox):
    dolibarr_sandbox.faults.update(error_rate=1.0)
    _fail(client, 4)
    dolibarr_sandbox.faults.update(error_rate=0.0)
    client.status()
    dolibarr_sandbox.faults.update(error_rate=1.0)
    _fail(client, 4)
    assert (_row().state, _row().consecutive_failures) == (BreakerState.CLOSED, 4)


def test_a_connection_refused_counts_as_a_failure(client, dolibarr_sandbox):
    dolibarr_sandbox.stop()
    _fail(client, 4)
    with pytest.raises(CircuitOpenError):
        client.status()
    assert "unreachable" in _row().last_error


def test_answers_4xx_do_not_count(make_client, worker, dolibarr_sandbox):
    client = make_client(worker)
    wrong_key = make_client(worker, api_key="not-the-key-0123456789")
    for _ in range(6):
        with pytest.raises(NotFoundError):
            client.get_thirdparty(thirdparty_id=999_999)
        with pytest.raises(AuthenticationError):
            wrong_key.status()
    assert client.status().version
    assert breaker_states()[0].state == BreakerState.CLOSED
    assert not CircuitBreaker.objects.filter(consecutive_failures__gt=0).exists()


def test_a_retry_loop_stops_as_soon_as_the_breaker_opens(make_client, worker, dolibarr_sandbox):
    client = make_client(worker, max_retries=10)
    dolibarr_sandbox.faults.update(error_rate=1.0)
    with pytest.raises(CircuitOpenError):
        client.status()
    assert client.call_counts["GET /status"] == 5


# --- open: fail fast ------------------------------------------------------------------------


def test_an_open_breaker_fails_fast_without_a_request(client, dolibarr_sandbox):
    _open(client, dolibarr_sandbox)
    dolibarr_sandbox.faults.update(error_rate=0.0)
    received, sent = dolibarr_sandbox.request_count, dict(client.call_counts)
    for _ in range(3):
        with pytest.raises(CircuitOpenError, match="no call was made"):
            client.status()
    assert dolibarr_sandbox.request_count == received
    assert dict(client.call_counts) == sent


def test_an_open_breaker_refuses_a_write_before_its_body_is_sent(client, dolibarr_sandbox):
    _open(client, dolibarr_sandbox)
    received = dolibarr_sandbox.request_count
    with pytest.raises(CircuitOpenError):
        client.create_thirdparty(name="Acme", ref_ext="cus_acme")
    assert dolibarr_sandbox.request_count == received


# --- the probe ---------------------------------------------------------------------------------


def test_before_the_cool_down_no_probe_is_sent(client, dolibarr_sandbox, clock):
    _open(client, dolibarr_sandbox)
    dolibarr_sandbox.faults.update(error_rate=0.0)
    clock.advance(COOL_DOWN - 1)
    received = dolibarr_sandbox.request_count
    with pytest.raises(CircuitOpenError):
        client.status()
    assert dolibarr_sandbox.request_count == received


def test_after_the_cool_down_one_successful_probe_closes_the_breaker(
    client, dolibarr_sandbox, clock
):
    _open(client, dolibarr_sandbox)
    dolibarr_sandbox.faults.update(error_rate=0.0)
    clock.advance(COOL_DOWN + 1)
    received = dolibarr_sandbox.request_count
    client.status()
    row = _row()
    assert dolibarr_sandbox.request_count == received + 1
    assert (row.state, row.consecutive_failures, row.opened_at) == (BreakerState.CLOSED, 0, None)
    assert row.last_success_at == clock.now
    client.status()  # and calls go out again


def test_a_failed_probe_keeps_it_open_for_another_cool_down(client, dolibarr_sandbox, clock):
    _open(client, dolibarr_sandbox)
    opened_at = _row().opened_at
    clock.advance(COOL_DOWN + 1)
    with pytest.raises(CircuitOpenError):
        client.status()  # the probe, sent and failed
    received = dolibarr_sandbox.request_count
    with pytest.raises(CircuitOpenError, match="no call was made"):
        client.status()
    assert dolibarr_sandbox.request_count == received
    row = _row()
    assert (row.state, row.opened_at) == (BreakerState.OPEN, opened_at)  # the outage's start
    clock.advance(COOL_DOWN + 1)
    dolibarr_sandbox.faults.update(error_rate=0.0)
    client.status()
    assert _row().state == BreakerState.CLOSED


def test_two_workers_never_probe_together(
    make_client, worker, other_worker, dolibarr_sandbox, clock
):
    _open(make_client(worker), dolibarr_sandbox)
    dolibarr_sandbox.faults.update(error_rate=0.0)
    clock.advance(COOL_DOWN + 1)
    other = make_client(other_worker)
    while_probing: list[int] = []

    def the_other_worker_calls() -> None:
        received = dolibarr_sandbox.request_count
        with pytest.raises(CircuitOpenError):
            other.status()
        while_probing.append(dolibarr_sandbox.request_count - received)
        assert _row().state == BreakerState.HALF_OPEN

    prober = make_client(worker, session=DuringRequest(the_other_worker_calls))
    prober.status()
    assert while_probing == [0]
    assert _row().state == BreakerState.CLOSED


def test_a_probe_whose_worker_died_is_taken_over_after_the_cool_down(
    make_client, worker, other_worker, dolibarr_sandbox, clock
):
    _open(make_client(worker), dolibarr_sandbox)
    dolibarr_sandbox.faults.update(error_rate=0.0)
    clock.advance(COOL_DOWN + 1)
    with pytest.raises(WorkerDied):
        make_client(worker, session=DiesDuringRequest()).status()
    other = make_client(other_worker)
    with pytest.raises(CircuitOpenError):
        other.status()  # the dead worker's claim still holds
    clock.advance(COOL_DOWN + 1)
    other.status()
    assert _row().state == BreakerState.CLOSED


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="threads racing on the row need PostgreSQL"
)
def test_threads_racing_for_the_probe_claim_it_once(make_client, dolibarr_sandbox, clock):
    _open(make_client(Breaker("dolibarr", clock=clock)), dolibarr_sandbox)
    clock.advance(COOL_DOWN + 1)
    breakers = [Breaker("dolibarr", clock=clock) for _ in range(8)]
    start = threading.Barrier(len(breakers))
    probes: list[bool] = []

    def race(breaker: Breaker) -> None:
        start.wait()
        try:
            probes.append(breaker.before_call().is_probe)
        except CircuitOpenError:
            probes.append(False)
        finally:
            connection.close()

    threads = [threading.Thread(target=race, args=(breaker,)) for breaker in breakers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(probes) == [False] * 7 + [True]


# --- shared by the workers ----------------------------------------------------------------------


def test_a_breaker_opened_by_one_worker_stops_another(
    make_client, worker, other_worker, dolibarr_sandbox
):
    _open(make_client(worker), dolibarr_sandbox)
    other = make_client(other_worker)
    received = dolibarr_sandbox.request_count
    with pytest.raises(CircuitOpenError):
        other.status()
    assert dolibarr_sandbox.request_count == received


def test_failures_of_two_workers_add_up(make_client, worker, other_worker, dolibarr_sandbox):
    first, second = make_client(worker), make_client(other_worker)
    dolibarr_sandbox.faults.update(error_rate=1.0)
    _fail(first, 3)
    _fail(second, 1)
    with pytest.raises(CircuitOpenError):
        second.status()
    received = dolibarr_sandbox.request_count
    with pytest.raises(CircuitOpenError, match="no call was made"):
        first.status()
    assert dolibarr_sandbox.request_count == received


def test_a_probe_by_one_worker_closes_it_for_the_others(
    make_client, worker, other_worker, dolibarr_sandbox, clock
):
    first, second = make_client(worker), make_client(other_worker)
    _open(first, dolibarr_sandbox)
    dolibarr_sandbox.faults.update(error_rate=0.0)
    clock.advance(COOL_DOWN + 1)
    first.status()
    second.status()
    assert second.call_counts["GET /status"] == 1


# --- the hot path -----------------------------------------------------------------------------


def test_a_closed_breaker_costs_no_query_per_call(
    make_client, dolibarr_sandbox, django_assert_num_queries
):
    # A cache far longer than the test, so that a slow machine cannot make it refresh mid-way.
    client = make_client(Breaker("dolibarr", closed_cache_seconds=3600))
    client.status()  # reads the row once and notes the success
    with django_assert_num_queries(0):
        for _ in range(25):
            client.status()


def test_a_closed_breaker_reads_its_row_again_once_its_memory_expires(
    make_client, dolibarr_sandbox, django_assert_num_queries
):
    client = make_client(Breaker("dolibarr", closed_cache_seconds=0))
    client.status()
    with django_assert_num_queries(1):
        client.status()


def test_a_breaker_whose_state_cannot_be_read_lets_calls_through(
    client, dolibarr_sandbox, django_db_blocker
):
    with django_db_blocker.block():
        assert client.status().version
    assert client.call_counts["GET /status"] == 1


def test_the_first_success_after_failures_is_written_once(client, dolibarr_sandbox):
    dolibarr_sandbox.faults.update(error_rate=1.0)
    _fail(client, 2)
    dolibarr_sandbox.faults.update(error_rate=0.0)
    client.status()
    assert _row().consecutive_failures == 0
    assert _row().last_success_at is not None


# --- Stripe ------------------------------------------------------------------------------------


@pytest.fixture
def stripe_worker(clock) -> Breaker:
    return Breaker("stripe", clock=clock)


@pytest.fixture
def guarded_stripe(stripe_sandbox, stripe_worker) -> StripeConnector:
    return StripeConnector(
        api_key=STRIPE_TEST_KEY,
        api_base=stripe_sandbox.base_url,
        max_network_retries=0,
        timeout=5.0,
        breaker=stripe_worker,
    )


def _stripe_row() -> CircuitBreaker:
    return CircuitBreaker.objects.get(pk="stripe")


def _open_stripe(connector: StripeConnector, sandbox) -> None:
    sandbox.faults.update(error_rate=1.0)
    for _ in range(4):
        with pytest.raises(TransientError):
            connector.balance()
    with pytest.raises(CircuitOpenError):
        connector.balance()
    assert _stripe_row().state == BreakerState.OPEN


def test_stripe_opens_after_five_failures_and_then_sends_nothing(guarded_stripe, stripe_sandbox):
    _open_stripe(guarded_stripe, stripe_sandbox)
    stripe_sandbox.faults.update(error_rate=0.0)
    sent = sum(guarded_stripe.call_counts.values())
    with pytest.raises(CircuitOpenError):
        list(guarded_stripe.invoices())
    assert sum(guarded_stripe.call_counts.values()) == sent == 5


def test_stripe_sdk_retries_stop_as_soon_as_the_breaker_opens(stripe_sandbox, stripe_worker):
    connector = StripeConnector(
        api_key=STRIPE_TEST_KEY,
        api_base=stripe_sandbox.base_url,
        max_network_retries=10,
        timeout=5.0,
        breaker=stripe_worker,
        backoff_base=0,
    )
    stripe_sandbox.faults.update(error_rate=1.0)
    with pytest.raises(CircuitOpenError):
        connector.balance()
    assert connector.call_counts["GET /v1/balance"] == 5


def test_stripe_answers_4xx_do_not_count(guarded_stripe):
    for _ in range(6):
        with pytest.raises(NotFoundError):
            guarded_stripe.invoice("in_does_not_exist")
    assert not CircuitBreaker.objects.filter(pk="stripe", consecutive_failures__gt=0).exists()


def test_stripe_after_the_cool_down_a_probe_closes_it(guarded_stripe, stripe_sandbox, clock):
    _open_stripe(guarded_stripe, stripe_sandbox)
    stripe_sandbox.faults.update(error_rate=0.0)
    clock.advance(COOL_DOWN + 1)
    assert guarded_stripe.balance()
    assert _stripe_row().state == BreakerState.CLOSED


def test_a_stream_pull_while_stripe_is_open_is_deferred(guarded_stripe, stripe_sandbox):
    _open_stripe(guarded_stripe, stripe_sandbox)
    with pytest.raises(CircuitOpenError):
        stripe_stream_pull(connector=guarded_stripe, stream="customers")
    run = SyncRun.objects.get(job="stripe_customers")
    assert run.state == RunState.DEFERRED
    assert "circuit breaker" in run.error
    assert not Cursor.objects.filter(stream="stripe_customers").exists()


def test_an_event_met_by_an_open_breaker_is_left_untouched(
    guarded_stripe, stripe_sandbox, stripe_dataset
):
    payload = next(e for e in stripe_dataset.collections["events"] if e["type"] == "invoice.paid")
    event, _ = inbound_event_store(
        source="stripe",
        event_id=payload["id"],
        event_type=payload["type"],
        body=json.dumps(payload),
        headers={},
        verified=True,
    )
    _open_stripe(guarded_stripe, stripe_sandbox)
    with pytest.raises(CircuitOpenError):
        stripe_event_process(event_id=event.pk, connector=guarded_stripe)
    event = InboundEvent.objects.get(pk=event.pk)
    assert (event.processed_at, event.error, event.attempts) == (None, "", 0)


def test_an_events_pull_while_stripe_is_open_is_deferred(guarded_stripe, stripe_sandbox):
    _open_stripe(guarded_stripe, stripe_sandbox)
    with pytest.raises(CircuitOpenError):
        stripe_events_pull(connector=guarded_stripe)
    assert SyncRun.objects.get(job="stripe_events").state == RunState.DEFERRED


# --- jobs defer ----------------------------------------------------------------------------------


def test_a_sync_run_while_dolibarr_is_open_claims_nothing(
    client, dolibarr_sandbox, stripe_connector, stripe_dataset
):
    customer = stripe_dataset.collections["customers"][0]
    record_observe(source="stripe", kind="customer", external_id=customer["id"], snapshot=customer)
    context = context_for(client, stripe_connector, url=dolibarr_sandbox.api_url)
    _open(client, dolibarr_sandbox)
    with pytest.raises(CircuitOpenError):
        sync_due(context=context)
    record = SyncRecord.objects.get()
    assert (record.state, record.attempts, record.last_error) == ("pending", 0, "")


# --- alerts ------------------------------------------------------------------------------------


@pytest.fixture
def long_ago_clock() -> Clock:
    """A breaker that opened twenty minutes ago."""
    return Clock(timezone.now() - timedelta(minutes=20))


def test_a_breaker_open_less_long_than_the_limit_alerts_nobody(client, dolibarr_sandbox):
    _open(client, dolibarr_sandbox)
    assert breakers_check_alerts() == 0
    assert mail.outbox == []


def test_a_breaker_open_longer_than_the_limit_alerts_the_admins_once(
    make_client, dolibarr_sandbox, long_ago_clock
):
    _open(make_client(Breaker("dolibarr", clock=long_ago_clock)), dolibarr_sandbox)
    for _ in range(3):
        assert breakers_check_alerts() == 1
    opened = _row().opened_at
    assert [m.subject for m in mail.outbox] == [
        f"[ap24sync] Dolibarr unavailable (circuit breaker open since {opened:%H:%M} UTC)"
    ]
    body = mail.outbox[0].body
    assert "deferred" in body
    assert "nothing is lost" in body
    assert "500" in body  # the last error
    assert "See docs/runbook.md, 'Remote unavailable'." in body
    assert Incident.objects.get().kind == IncidentKind.BREAKER_OPEN


def test_with_no_delay_the_alert_goes_when_the_breaker_opens(client, dolibarr_sandbox, settings):
    settings.ALERT_BREAKER_OPEN_MINUTES = 0
    _open(client, dolibarr_sandbox)
    assert len(mail.outbox) == 1
    assert mail.outbox[0].subject.startswith("[ap24sync] Dolibarr unavailable")


def test_the_alert_never_quotes_the_api_key(
    make_client, worker, dolibarr_sandbox, dolibarr_api_key, settings
):
    settings.ALERT_BREAKER_OPEN_MINUTES = 0
    settings.DOLIBARR_API_KEY = dolibarr_api_key
    _open(make_client(worker), dolibarr_sandbox)
    message = mail.outbox[0]
    assert dolibarr_api_key not in message.subject + message.body


def test_errors_are_stored_without_credentials_or_keys():
    # Built at run time, so that no secret scanner mistakes the test's fake key for a live one.
    key = "sk_" + "live_" + "51Habc123XYZ"
    cleaned = clean_error(f"GET https://bob:hunter2@erp.example.org/api failed; key {key} refused")
    assert "hunter2" not in cleaned
    assert key not in cleaned
    assert "erp.example.org" in cleaned


def test_the_probe_that_closes_it_sends_one_recovery_mail_after_an_alert(
    client, dolibarr_sandbox, clock, settings
):
    settings.ALERT_BREAKER_OPEN_MINUTES = 0
    _open(client, dolibarr_sandbox)
    dolibarr_sandbox.faults.update(error_rate=0.0)
    clock.advance(COOL_DOWN * 3)
    client.status()
    breakers_check_alerts()
    assert [m.subject for m in mail.outbox][1:] == [
        "[ap24sync] Dolibarr available again (unavailable 3 min)"
    ]
    assert Incident.objects.get().resolved_at is not None


def test_a_short_outage_nobody_was_told_about_sends_no_recovery_mail(
    client, dolibarr_sandbox, clock
):
    _open(client, dolibarr_sandbox)
    dolibarr_sandbox.faults.update(error_rate=0.0)
    clock.advance(COOL_DOWN + 1)
    client.status()
    assert mail.outbox == []


def test_an_incident_left_open_by_a_worker_that_died_is_closed_by_the_check(
    make_client, dolibarr_sandbox, settings, long_ago_clock
):
    settings.ALERT_BREAKER_OPEN_MINUTES = 0
    _open(make_client(Breaker("dolibarr", clock=long_ago_clock)), dolibarr_sandbox)
    # The closing worker died between closing the breaker and resolving its incident.
    CircuitBreaker.objects.filter(pk="dolibarr").update(state=BreakerState.CLOSED, opened_at=None)
    breakers_check_alerts()
    assert [m.subject for m in mail.outbox][1:] == [
        "[ap24sync] Dolibarr available again (unavailable 20 min)"
    ]


# --- the status page's view -------------------------------------------------------------------


def test_breaker_states_show_every_remote_even_without_a_row(client, dolibarr_sandbox):
    assert [(s.system, s.state) for s in breaker_states()] == [
        ("dolibarr", "closed"),
        ("stripe", "closed"),
    ]
    _open(client, dolibarr_sandbox)
    dolibarr = breaker_states()[0]
    assert (dolibarr.state, dolibarr.consecutive_failures) == ("open", 5)
    assert dolibarr.next_probe_at == dolibarr.opened_at + timedelta(seconds=COOL_DOWN)
