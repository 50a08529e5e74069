"""The sync engine end to end, over HTTP against the sandbox Stripe and the sandbox Dolibarr:
exactly once, to the cent, whatever crashes, lost answers and faults happen on the way."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from reconciliation.connectors.dolibarr import DolibarrClient
from reconciliation.connectors.stripe import StripeConnector
from reconciliation.models import AuditEvent, Mismatch, MismatchKind, SyncRecord, SyncState
from reconciliation.money import minor_to_decimal
from reconciliation.sandbox.stripe import StripeSandbox
from reconciliation.sandbox.stripe_data import generate
from reconciliation.services.records import record_observe
from reconciliation.sync.base import Skipped, Synced, Waiting, handler
from reconciliation.sync.engine import retry_delay, sync_due
from reconciliation.sync.stripe_pull import stripe_pull_all
from tests.fixtures_stripe import STRIPE_TEST_KEY
from tests.sync_support import (
    Crash,
    CrashingClient,
    context_for,
    dolibarr_state,
    expire_leases,
    observed_snapshots,
    restart_from,
    sync_until_settled,
)

pytestmark = pytest.mark.django_db

SMALL = {"seed": 11, "customers": 3, "start": datetime(2026, 1, 1, tzinfo=UTC), "months": 2}


def _stripe(dataset):
    sandbox = StripeSandbox(api_key=STRIPE_TEST_KEY, data=dataset)
    sandbox.start()
    connector = StripeConnector(
        api_key=STRIPE_TEST_KEY, api_base=sandbox.base_url, max_network_retries=0, timeout=5.0
    )
    return sandbox, connector


@pytest.fixture(scope="module")
def small_dataset():
    return generate(**SMALL)


@pytest.fixture
def small_stripe(small_dataset):
    sandbox, connector = _stripe(small_dataset)
    yield connector
    sandbox.stop()


@pytest.fixture
def context(dolibarr_client, dolibarr_sandbox, stripe_connector):
    return context_for(dolibarr_client, stripe_connector, url=dolibarr_sandbox.api_url)


def _eur_invoices(dataset):
    return [i for i in dataset.collections["invoices"] if i["currency"] == "eur"]


def test_a_generated_scenario_syncs_every_eur_invoice_payment_and_credit_note_exactly_once(
    dolibarr_client, dolibarr_sandbox
):
    dataset = generate(seed=23, customers=70, start=datetime(2026, 1, 1, tzinfo=UTC), months=7)
    sandbox, stripe = _stripe(dataset)
    try:
        stripe_pull_all(connector=stripe)
        context = context_for(dolibarr_client, stripe, url=dolibarr_sandbox.api_url)
        sync_until_settled(context)
    finally:
        sandbox.stop()
    state = dolibarr_state(dolibarr_client)
    invoices = dataset.collections["invoices"]
    assert len(invoices) >= 200

    by_id = {invoice["id"]: invoice for invoice in invoices}
    for invoice in _eur_invoices(dataset):
        if invoice["status"] == "void":
            assert invoice["id"] not in state["invoices"]
            continue
        [(kind, status, _, total, _)] = state["invoices"][invoice["id"]]
        assert (kind, status) == (0, 2 if invoice["status"] == "paid" else 1)
        assert Decimal(total) == minor_to_decimal(invoice["total"], "EUR")
    pi_to_invoice = {}
    for payment in dataset.collections["invoice_payments"]:
        invoice = by_id[payment["invoice"]]
        pi_to_invoice[payment["payment"]["payment_intent"]] = invoice
        if invoice["currency"] == "eur" and payment["status"] == "paid":
            [(paid_invoice, amount)] = state["payments"][payment["payment"]["payment_intent"]]
            assert paid_invoice == invoice["id"]
            assert Decimal(amount) == minor_to_decimal(payment["amount_paid"], "EUR")
    refunded = [r for r in dataset.collections["refunds"] if r["payment_intent"] in pi_to_invoice]
    assert refunded
    for refund in refunded:
        if pi_to_invoice[refund["payment_intent"]]["currency"] != "eur":
            continue
        [(kind, status, _, total, _)] = state["invoices"][refund["id"]]
        assert (kind, status) == (2, 2)
        assert Decimal(total) == -minor_to_decimal(refund["amount"], "EUR")
        [(_, amount)] = state["payments"][refund["id"]]
        assert Decimal(amount) == -minor_to_decimal(refund["amount"], "EUR")
    assert all(len(found) == 1 for found in state["thirdparties"].values())

    other = {i["id"] for i in invoices if i["currency"] != "eur"}
    flagged = set(
        Mismatch.objects.filter(kind=MismatchKind.CURRENCY_UNSUPPORTED).values_list(
            "record__external_id", flat=True
        )
    )
    assert other
    assert other <= flagged
    assert not other & set(state["invoices"])


def test_rerunning_with_nothing_new_makes_no_dolibarr_call(
    context, dolibarr_client, stripe_connector
):
    stripe_pull_all(connector=stripe_connector)
    sync_until_settled(context)
    dolibarr_client.reset_call_counts()

    stripe_pull_all(connector=stripe_connector)
    counts = sync_due(context=context)

    assert counts["processed"] == 0
    assert sum(dolibarr_client.call_counts.values()) == 0


def test_a_new_paid_invoice_costs_four_calls_and_a_stripe_only_customer_two(
    dolibarr_client, dolibarr_sandbox, stripe_connector, stripe_dataset
):
    customer = next(c for c in stripe_dataset.collections["customers"] if not c["metadata"])
    invoice = next(
        i
        for i in stripe_dataset.collections["invoices"]
        if i["customer"] == customer["id"] and i["status"] == "paid" and i["total"]
    )
    record_observe(source="stripe", kind="customer", external_id=customer["id"], snapshot=customer)
    pulled = stripe_connector.invoice(invoice["id"], with_payments=True)
    record_observe(source="stripe", kind="invoice", external_id=invoice["id"], snapshot=pulled)
    context = context_for(dolibarr_client, stripe_connector, url=dolibarr_sandbox.api_url)
    dolibarr_client.reset_call_counts()

    sync_due(context=context, kinds=["customer"])
    customer_calls = dolibarr_client.call_counts.copy()
    dolibarr_client.reset_call_counts()
    sync_due(context=context, kinds=["invoice"])
    invoice_calls = dolibarr_client.call_counts.copy()

    batched = {"GET /thirdparties", "GET /invoices", "GET /paiements"}
    assert sum(n for call, n in customer_calls.items() if call not in batched) == 2
    assert sum(n for call, n in invoice_calls.items() if call not in batched) == 4
    assert invoice_calls["GET /invoices"] == invoice_calls["GET /paiements"] == 1
    assert invoice_calls["POST /invoices/paymentsdistributed"] == 1


def test_a_new_organisation_customer_costs_two_calls(
    dolibarr_client, dolibarr_sandbox, stripe_connector, stripe_dataset
):
    customer = next(
        c for c in stripe_dataset.collections["customers"] if "ap24_org_id" in c["metadata"]
    )
    record_observe(source="stripe", kind="customer", external_id=customer["id"], snapshot=customer)
    context = context_for(dolibarr_client, stripe_connector, url=dolibarr_sandbox.api_url)
    dolibarr_client.reset_call_counts()

    sync_due(context=context, kinds=["customer"])

    assert dolibarr_client.call_counts == {
        "GET /thirdparties": 1,  # the batched look-up
        "POST /thirdparties": 1,
        "POST /thirdparties/{id}/accounts/{site}": 1,
    }


def test_a_run_killed_after_any_write_resumes_to_the_same_state(
    dolibarr_client, dolibarr_sandbox, dolibarr_api_key, small_stripe
):
    stripe_pull_all(connector=small_stripe)
    snapshots = observed_snapshots()
    url = dolibarr_sandbox.api_url
    sync_until_settled(context_for(dolibarr_client, small_stripe, url=url))
    expected = dolibarr_state(dolibarr_client)
    writes = sum(n for call, n in dolibarr_client.call_counts.items() if not call.startswith("GET"))
    assert expected["invoices"]
    assert writes > 10

    for k in range(1, writes + 1):
        dolibarr_sandbox.reset()
        restart_from(snapshots)
        crashing = CrashingClient(dolibarr_client, after=k)
        with pytest.raises(Crash):
            sync_until_settled(context_for(crashing, small_stripe, url=url))
        expire_leases()
        sync_until_settled(context_for(dolibarr_client, small_stripe, url=url))
        assert dolibarr_state(dolibarr_client) == expected, f"killed after write {k}"
        assert not SyncRecord.objects.filter(
            state__in=[SyncState.PENDING, SyncState.IN_PROGRESS]
        ).exists()


def _faulty_client(sandbox, api_key, *, read_timeout=5.0):
    return DolibarrClient(
        base_url=sandbox.api_url,
        api_key=api_key,
        backoff_base=0,
        read_timeout=read_timeout,
        max_retries=2,
    )


def test_lost_responses_never_duplicate_or_lose_anything(
    dolibarr_client, dolibarr_sandbox, dolibarr_api_key, small_stripe
):
    stripe_pull_all(connector=small_stripe)
    snapshots = observed_snapshots()
    url = dolibarr_sandbox.api_url
    sync_until_settled(context_for(dolibarr_client, small_stripe, url=url))
    expected = dolibarr_state(dolibarr_client)

    dolibarr_sandbox.reset()
    restart_from(snapshots)
    client = _faulty_client(dolibarr_sandbox, dolibarr_api_key)
    context = context_for(client, small_stripe, url=url)
    dolibarr_sandbox.faults.update(lost_response_rate=0.3, seed=4)
    try:
        sync_until_settled(context)
    finally:
        dolibarr_sandbox.faults.update(lost_response_rate=0)

    assert dolibarr_state(dolibarr_client) == expected
    assert AuditEvent.objects.filter(action__endswith=".outcome_unknown").exists()


def test_twenty_percent_faults_converge_to_the_same_state(
    dolibarr_client, dolibarr_sandbox, dolibarr_api_key, small_stripe
):
    stripe_pull_all(connector=small_stripe)
    snapshots = observed_snapshots()
    url = dolibarr_sandbox.api_url
    sync_until_settled(context_for(dolibarr_client, small_stripe, url=url))
    expected = dolibarr_state(dolibarr_client)

    dolibarr_sandbox.reset()
    restart_from(snapshots)
    client = _faulty_client(dolibarr_sandbox, dolibarr_api_key, read_timeout=0.2)
    context = context_for(client, small_stripe, url=url)
    dolibarr_sandbox.faults.update(
        error_rate=0.08, timeout_rate=0.04, timeout_seconds=0.3, drop_rate=0.08, seed=9
    )
    try:
        sync_until_settled(context, rounds=60, max_attempts=100)
    finally:
        dolibarr_sandbox.faults.update(error_rate=0, timeout_rate=0, drop_rate=0)

    assert dolibarr_state(dolibarr_client) == expected
    assert SyncRecord.objects.filter(attempts__gt=1).exists()


def test_every_dolibarr_write_leaves_an_audit_event(context, dolibarr_client, stripe_connector):
    stripe_pull_all(connector=stripe_connector)
    sync_until_settled(context)

    written = Counter(
        AuditEvent.objects.filter(action__startswith="dolibarr.").values_list("action", flat=True)
    )
    calls = dolibarr_client.call_counts
    assert written["dolibarr.thirdparty_created"] == calls["POST /thirdparties"]
    assert (
        written["dolibarr.invoice_created"] + written["dolibarr.credit_note_created"]
        == calls["POST /invoices"]
    )
    assert written["dolibarr.invoice_validated"] == calls["POST /invoices/{id}/validate"]
    assert written["dolibarr.payment_created"] == calls["POST /invoices/paymentsdistributed"]
    assert written["dolibarr.stripe_link_set"] == calls["POST /thirdparties/{id}/accounts/{site}"]
    payment = AuditEvent.objects.filter(action="dolibarr.payment_created").first()
    assert payment.target_type == "dolibarr_payment"
    assert payment.target_id.isdigit()
    assert all(isinstance(v, str) for v in payment.after["amounts"].values())


# --- the engine's own rules, with handlers of a test-only kind -----------------------------

_BEHAVIOUR: dict[str, object] = {}


@handler("stripe", "test_behaviour")
def _test_handler(record, context):
    behaviour = _BEHAVIOUR[record.external_id]
    if isinstance(behaviour, Exception):
        raise behaviour
    return behaviour


def _record(external_id, behaviour):
    _BEHAVIOUR[external_id] = behaviour
    record, _ = record_observe(
        source="stripe", kind="test_behaviour", external_id=external_id, snapshot={"id": 1}
    )
    return record


def test_a_transient_error_is_retried_later_with_a_growing_delay(context):
    from reconciliation.errors import TransientError

    record = _record("t1", TransientError("Dolibarr is down", system="dolibarr"))
    sync_due(context=context, delay_for=lambda attempts: timedelta(minutes=attempts))
    record.refresh_from_db()
    assert record.state == SyncState.PENDING
    assert record.attempts == 1
    assert record.next_attempt_at > datetime.now(UTC) + timedelta(seconds=50)
    assert retry_delay(4) > retry_delay(1) * 5


def test_a_record_out_of_attempts_fails_with_a_sync_failed_mismatch(context):
    from reconciliation.errors import TransientError

    record = _record("t2", TransientError("Dolibarr is down", system="dolibarr"))
    sync_until_settled(context, max_attempts=3)
    record.refresh_from_db()
    assert record.state == SyncState.FAILED
    assert record.attempts == 3
    assert "gave up after 3 attempts" in record.last_error
    assert record.mismatches.get().kind == MismatchKind.SYNC_FAILED


def test_a_permanent_error_fails_the_record_at_once_with_its_text(context):
    from reconciliation.errors import PermanentError

    record = _record("p1", PermanentError("Dolibarr refused: bad country", system="dolibarr"))
    sync_due(context=context)
    record.refresh_from_db()
    assert record.state == SyncState.FAILED
    assert record.attempts == 1
    assert record.last_error == "Dolibarr refused: bad country"
    assert "bad country" in record.mismatches.get(kind=MismatchKind.SYNC_FAILED).summary


def test_waiting_for_a_dependency_does_not_use_up_attempts(context):
    record = _record("w1", Waiting("customer not synced yet", delay=timedelta(minutes=5)))
    for _ in range(3):
        SyncRecord.objects.filter(pk=record.pk).update(next_attempt_at=None)
        sync_due(context=context)
    record.refresh_from_db()
    assert record.state == SyncState.PENDING
    assert record.attempts == 0
    assert record.last_error == "customer not synced yet"


def test_a_record_without_handler_is_skipped_with_the_reason(context):
    record, _ = record_observe(
        source="stripe", kind="no_such_kind", external_id="x1", snapshot={"id": "x1"}
    )
    sync_due(context=context)
    record.refresh_from_db()
    assert record.state == SyncState.SKIPPED
    assert "no handler" in record.last_error


def test_synced_saves_the_dolibarr_id_with_the_state(context):
    record = _record("s1", Synced("invoice", 42, "FA2611-0001"))
    _record("k1", Skipped("nothing to do"))
    counts = sync_due(context=context)
    record.refresh_from_db()
    assert (record.state, record.dolibarr_kind, record.dolibarr_id) == ("synced", "invoice", 42)
    assert counts["synced"] == 1
    assert counts["skipped"] == 1
