"""Stripe fees and payouts on Dolibarr's Stripe bank account (reconciliation/sync/stripe_payouts.py)
and the balance comparison (stripe_balance.py), over HTTP against both sandboxes.

The handlers are called directly with a SyncContext built here (the raw client, a lane made of a
threading.Lock), on records stored by `record_observe` from the seeded Stripe dataset.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest

from reconciliation.connectors.sqlfilters import equals
from reconciliation.connectors.stripe import StripeConnector
from reconciliation.errors import TransientError
from reconciliation.models import MismatchKind, Source, SyncRecord, SyncState
from reconciliation.money import minor_to_decimal
from reconciliation.sandbox.seed import dolibarr_bank_account_create
from reconciliation.sandbox.stripe import StripeSandbox
from reconciliation.services.records import record_observe
from reconciliation.sync.base import (
    DolibarrSetup,
    NeedsReview,
    Skipped,
    SyncContext,
    Synced,
    Waiting,
    handler_for,
)
from reconciliation.sync.engine import build_context, sync_due
from reconciliation.sync.lane import LocalLane
from reconciliation.sync.stripe_balance import stripe_balance_compare
from reconciliation.sync.stripe_payouts import (
    FEE_TYPE_CODE,
    fee_line_wanted,
    fee_lines_lookup,
    stripe_fee_sync,
    stripe_payout_sync,
)
from reconciliation.sync.stripe_pull import stripe_pull_all
from tests.fixtures_stripe import STRIPE_TEST_KEY

pytestmark = pytest.mark.django_db

WRITES = ("POST /bankaccounts/{id}/lines", "POST /bankaccounts/transfer")


class ThreadLane:
    """The numbered-write lane of one process, enough for handlers called directly."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    @contextmanager
    def hold(self) -> Iterator[None]:
        with self._lock:
            yield


def create_payout_account(sandbox, api_key: str) -> int:
    """The client has no create-bank-account method (ap24sync never creates accounts)."""
    return dolibarr_bank_account_create(api_url=sandbox.api_url, api_key=api_key)


@pytest.fixture
def payout_account_id(dolibarr_sandbox, dolibarr_api_key) -> int:
    return create_payout_account(dolibarr_sandbox, dolibarr_api_key)


@pytest.fixture
def setup(dolibarr_client, payout_account_id) -> DolibarrSetup:
    stripe_account = dolibarr_client.find_bank_account(ref="STRIPE")
    assert stripe_account is not None
    return DolibarrSetup(
        company_currency="EUR",
        multicurrency_enabled=False,
        card_payment_type_id=dolibarr_client.payment_type_id(code="CB"),
        stripe_bank_account_id=stripe_account.id,
        payout_bank_account_id=payout_account_id,
    )


@pytest.fixture
def ctx(dolibarr_client, stripe_connector, setup) -> SyncContext:
    dolibarr_client.reset_call_counts()
    return SyncContext(
        dolibarr=dolibarr_client, stripe=stripe_connector, lane=ThreadLane(), setup=setup
    )


def observed(kind: str, snapshot: dict[str, Any]):
    record, _ = record_observe(
        source=Source.STRIPE, kind=kind, external_id=snapshot["id"], snapshot=snapshot
    )
    return record


def fee_transaction(dataset, currency: str = "eur") -> dict[str, Any]:
    return next(
        t
        for t in dataset.collections["balance_transactions"]
        if t["type"] == "charge" and t["currency"] == currency and t["fee"] > 0
    )


def paid_payout(dataset) -> dict[str, Any]:
    return next(
        p
        for p in dataset.collections["payouts"]
        if p["status"] == "paid" and p["currency"] == "eur"
    )


def writes(client) -> int:
    return sum(client.call_counts[endpoint] for endpoint in WRITES)


def lines_with_cheque_number(client, account_id: int, number: str):
    return client.bank_lines(bank_account_id=account_id, filters=equals("num_chq", number))


# --- Fee lines --------------------------------------------------------------------------------


def test_both_handlers_are_registered():
    assert handler_for("stripe", "balance_transaction") is stripe_fee_sync
    assert handler_for("stripe", "payout") is stripe_payout_sync


def test_a_fee_is_written_once_with_its_exact_amount(ctx, dolibarr_client, stripe_dataset):
    txn = fee_transaction(stripe_dataset)
    outcome = stripe_fee_sync(observed("balance_transaction", txn), ctx)

    assert isinstance(outcome, Synced)
    line = dolibarr_client.get_bank_line(line_id=outcome.dolibarr_id)
    assert line.amount == -minor_to_decimal(txn["fee"], "EUR")
    assert line.account_id == ctx.setup.stripe_bank_account_id
    assert line.num_chq == txn["id"]
    assert line.type_code == FEE_TYPE_CODE
    assert txn["id"] in line.label
    assert txn["source"] in line.label
    created = datetime.fromtimestamp(txn["created"], UTC).date()
    available = datetime.fromtimestamp(txn["available_on"], UTC).date()
    assert line.date_operation.date() == created
    assert line.date_value.date() == available


def test_handling_a_fee_twice_writes_nothing_the_second_time(ctx, dolibarr_client, stripe_dataset):
    record = observed("balance_transaction", fee_transaction(stripe_dataset))
    first = stripe_fee_sync(record, ctx)
    dolibarr_client.reset_call_counts()

    second = stripe_fee_sync(record, ctx)

    assert second == first
    assert writes(dolibarr_client) == 0
    assert dolibarr_client.call_counts["GET /bankaccounts/{id}/lines"] == 1


def test_after_a_lost_response_the_retry_finds_the_line(
    ctx, dolibarr_client, dolibarr_sandbox, stripe_dataset
):
    txn = fee_transaction(stripe_dataset)
    record = observed("balance_transaction", txn)
    write = dolibarr_client.add_bank_line

    def write_and_lose_the_answer(**arguments):
        dolibarr_sandbox.faults.update(lost_response_rate=1.0)
        try:
            return write(**arguments)
        finally:
            dolibarr_sandbox.faults.update(lost_response_rate=0.0)

    dolibarr_client.add_bank_line = write_and_lose_the_answer
    with pytest.raises(TransientError) as lost:
        stripe_fee_sync(record, ctx)
    assert lost.value.outcome_unknown
    del dolibarr_client.add_bank_line
    dolibarr_client.reset_call_counts()

    outcome = stripe_fee_sync(record, ctx)

    assert isinstance(outcome, Synced)
    assert writes(dolibarr_client) == 0
    account = ctx.setup.stripe_bank_account_id
    assert [line.id for line in lines_with_cheque_number(dolibarr_client, account, txn["id"])] == [
        outcome.dolibarr_id
    ]


def test_a_fee_in_another_currency_is_flagged_not_converted(ctx, dolibarr_client, stripe_dataset):
    txn = fee_transaction(stripe_dataset, currency="gbp")
    dolibarr_client.reset_call_counts()

    outcome = stripe_fee_sync(observed("balance_transaction", txn), ctx)

    assert isinstance(outcome, NeedsReview)
    assert outcome.mismatch.kind == MismatchKind.CURRENCY_UNSUPPORTED
    assert outcome.mismatch.currency == "GBP"
    assert outcome.mismatch.amount_difference == -minor_to_decimal(txn["fee"], "GBP")
    assert outcome.mismatch.fingerprint_parts == ("stripe_fee", txn["id"])
    assert sum(dolibarr_client.call_counts.values()) == 0


def test_a_transaction_without_fee_is_skipped(ctx, dolibarr_client, stripe_dataset):
    refund = next(
        t for t in stripe_dataset.collections["balance_transactions"] if t["type"] == "refund"
    )
    outcome = stripe_fee_sync(observed("balance_transaction", refund), ctx)
    assert isinstance(outcome, Skipped)
    assert sum(dolibarr_client.call_counts.values()) == 0


def test_a_payout_transaction_is_left_to_its_payout(ctx, dolibarr_client, stripe_dataset):
    txn = next(
        t for t in stripe_dataset.collections["balance_transactions"] if t["type"] == "payout"
    )
    record = observed("balance_transaction", txn)
    outcome = stripe_fee_sync(record, ctx)
    assert isinstance(outcome, Skipped)
    assert txn["source"] in outcome.reason
    assert fee_line_wanted(record) is None
    assert sum(dolibarr_client.call_counts.values()) == 0


def test_a_stripe_fee_transaction_is_written_at_its_net(ctx, dolibarr_client, stripe_dataset):
    txn = copy.deepcopy(fee_transaction(stripe_dataset))
    txn.update(
        id="txn_radarfee0001",
        type="stripe_fee",
        source=None,
        description="Radar (2026-03)",
        amount=-700,
        fee=0,
        fee_details=[],
        net=-700,
    )
    outcome = stripe_fee_sync(observed("balance_transaction", txn), ctx)

    assert isinstance(outcome, Synced)
    line = dolibarr_client.get_bank_line(line_id=outcome.dolibarr_id)
    assert line.amount == Decimal("-7.00")
    assert "Radar (2026-03)" in line.label


def test_a_fee_line_edited_in_dolibarr_is_flagged(ctx, dolibarr_client, stripe_dataset):
    txn = fee_transaction(stripe_dataset)
    dolibarr_client.add_bank_line(
        bank_account_id=ctx.setup.stripe_bank_account_id,
        date=datetime.fromtimestamp(txn["created"], UTC).date(),
        type_code=FEE_TYPE_CODE,
        label="typed by hand",
        amount=Decimal("-1.00"),
        cheque_number=txn["id"],
    )
    dolibarr_client.reset_call_counts()

    outcome = stripe_fee_sync(observed("balance_transaction", txn), ctx)

    assert isinstance(outcome, NeedsReview)
    assert outcome.mismatch.kind == MismatchKind.TOTAL_DIFFERS
    assert outcome.mismatch.amount_difference == Decimal("-1.00") + minor_to_decimal(
        txn["fee"], "EUR"
    )
    assert writes(dolibarr_client) == 0


def test_fee_lines_are_looked_up_forty_at_a_time(ctx, dolibarr_client, stripe_dataset):
    txn = fee_transaction(stripe_dataset)
    written = stripe_fee_sync(observed("balance_transaction", txn), ctx)
    others = [f"txn_absent{number:04d}" for number in range(44)]
    dolibarr_client.reset_call_counts()

    found = fee_lines_lookup(
        dolibarr=dolibarr_client,
        bank_account_id=ctx.setup.stripe_bank_account_id,
        txn_ids=[txn["id"], *others],
    )

    assert dolibarr_client.call_counts["GET /bankaccounts/{id}/lines"] == 2
    assert fee_line_wanted(observed("balance_transaction", txn)) == txn["id"]
    assert [line.id for line in found[txn["id"]]] == [written.dolibarr_id]
    assert all(found[other] == [] for other in others)


def test_a_batched_answer_is_trusted_on_the_first_attempt_only(
    ctx, dolibarr_client, stripe_dataset
):
    txn = fee_transaction(stripe_dataset)
    record = observed("balance_transaction", txn)
    record.attempts = 1
    ctx.known = SimpleNamespace(fee_lines={txn["id"]: []})

    first = stripe_fee_sync(record, ctx)
    assert dolibarr_client.call_counts["GET /bankaccounts/{id}/lines"] == 0
    assert writes(dolibarr_client) == 1

    record.attempts = 2  # the same (now stale) batched answer must not be believed again
    again = stripe_fee_sync(record, ctx)
    assert again == first
    assert dolibarr_client.call_counts["GET /bankaccounts/{id}/lines"] == 1
    assert writes(dolibarr_client) == 1


# --- Payouts ----------------------------------------------------------------------------------


def test_a_paid_payout_is_transferred_once(ctx, dolibarr_client, stripe_dataset):
    payout = paid_payout(stripe_dataset)
    record = observed("payout", payout)
    amount = minor_to_decimal(payout["amount"], "EUR")

    first = stripe_payout_sync(record, ctx)
    dolibarr_client.reset_call_counts()
    second = stripe_payout_sync(record, ctx)

    assert isinstance(first, Synced)
    assert second == first
    assert writes(dolibarr_client) == 0
    outgoing = dolibarr_client.get_bank_line(line_id=first.dolibarr_id)
    assert outgoing.account_id == ctx.setup.stripe_bank_account_id
    assert outgoing.amount == -amount
    assert payout["id"] in outgoing.label
    assert outgoing.date_operation == datetime.fromtimestamp(payout["arrival_date"], UTC)
    assert dolibarr_client.bank_balance(bank_account_id=ctx.setup.payout_bank_account_id) == amount


@pytest.mark.parametrize("status", ["pending", "in_transit"])
def test_a_payout_on_its_way_waits(ctx, dolibarr_client, stripe_dataset, status):
    payout = dict(paid_payout(stripe_dataset), status=status)
    outcome = stripe_payout_sync(observed("payout", payout), ctx)
    assert isinstance(outcome, Waiting)
    assert sum(dolibarr_client.call_counts.values()) == 0


def test_a_failed_payout_is_skipped(ctx, dolibarr_client, stripe_dataset):
    payout = dict(paid_payout(stripe_dataset), status="failed", failure_code="account_closed")
    outcome = stripe_payout_sync(observed("payout", payout), ctx)
    assert isinstance(outcome, Skipped)
    assert "account_closed" in outcome.reason
    assert writes(dolibarr_client) == 0


def test_a_payout_that_fails_after_its_transfer_is_flagged(ctx, dolibarr_client, stripe_dataset):
    payout = paid_payout(stripe_dataset)
    transferred = stripe_payout_sync(observed("payout", payout), ctx)

    outcome = stripe_payout_sync(observed("payout", dict(payout, status="failed")), ctx)

    assert isinstance(outcome, NeedsReview)
    assert outcome.mismatch.kind == MismatchKind.PAYOUT_UNBALANCED
    assert outcome.mismatch.proposed_fix == "reverse_payout_transfer"
    assert outcome.dolibarr_id == transferred.dolibarr_id


def test_a_payout_that_does_not_add_up_is_flagged_and_not_written(
    ctx, dolibarr_client, stripe_dataset
):
    payout = dict(paid_payout(stripe_dataset))
    payout["amount"] += 1

    outcome = stripe_payout_sync(observed("payout", payout), ctx)

    assert isinstance(outcome, NeedsReview)
    assert outcome.mismatch.kind == MismatchKind.PAYOUT_UNBALANCED
    assert outcome.mismatch.amount_difference == Decimal("0.01")
    assert writes(dolibarr_client) == 0


def test_a_payout_in_another_currency_is_flagged(ctx, dolibarr_client, stripe_dataset):
    payout = next(p for p in stripe_dataset.collections["payouts"] if p["currency"] == "usd")
    outcome = stripe_payout_sync(observed("payout", payout), ctx)
    assert isinstance(outcome, NeedsReview)
    assert outcome.mismatch.kind == MismatchKind.CURRENCY_UNSUPPORTED
    assert writes(dolibarr_client) == 0


def test_without_a_payout_account_a_paid_payout_asks_for_it(ctx, dolibarr_client, stripe_dataset):
    ctx.setup = DolibarrSetup(**{**ctx.setup.__dict__, "payout_bank_account_id": None})
    outcome = stripe_payout_sync(observed("payout", paid_payout(stripe_dataset)), ctx)
    assert isinstance(outcome, NeedsReview)
    assert outcome.mismatch.kind == MismatchKind.PAYOUT_UNBALANCED
    assert outcome.mismatch.proposed_fix == "configure_payout_bank_account"
    assert "DOLIBARR_PAYOUT_BANK_ACCOUNT" in outcome.mismatch.summary
    assert writes(dolibarr_client) == 0


# --- Balance comparison -----------------------------------------------------------------------


def test_the_balance_comparison_shows_what_dolibarr_misses(ctx, dolibarr_client, stripe_connector):
    empty = stripe_balance_compare(
        stripe=stripe_connector, dolibarr=dolibarr_client, setup=ctx.setup
    )
    stripe_balance = empty.stripe_available + empty.stripe_pending
    assert stripe_balance > 0
    assert empty.dolibarr_balance == 0
    assert empty.difference == -stripe_balance

    dolibarr_client.add_bank_line(
        bank_account_id=ctx.setup.stripe_bank_account_id,
        date=datetime(2026, 4, 1, tzinfo=UTC).date(),
        type_code="VIR",
        label="opening balance",
        amount=stripe_balance,
    )
    after = stripe_balance_compare(
        stripe=stripe_connector, dolibarr=dolibarr_client, setup=ctx.setup
    )
    assert after.balanced
    assert after.difference == Decimal(0)


def test_a_payout_in_flight_counts_on_stripe_side(ctx, dolibarr_client, stripe_dataset):
    """Stripe takes a payout out of its balance at creation; the transfer comes on arrival."""
    dataset = copy.deepcopy(stripe_dataset)
    payout = next(p for p in dataset.collections["payouts"] if p["currency"] == "eur")
    payout["status"] = "in_transit"
    with StripeSandbox(api_key=STRIPE_TEST_KEY, data=dataset) as sandbox:
        stripe = StripeConnector(
            api_key=STRIPE_TEST_KEY, api_base=sandbox.base_url, max_network_retries=0
        )
        comparison = stripe_balance_compare(
            stripe=stripe, dolibarr=dolibarr_client, setup=ctx.setup
        )

    assert comparison.payouts_in_flight_ids == (payout["id"],)
    assert comparison.payouts_in_flight == minor_to_decimal(payout["amount"], "EUR")
    assert comparison.expected_dolibarr_balance == (
        comparison.stripe_balance + comparison.payouts_in_flight
    )
    assert comparison.difference == -comparison.expected_dolibarr_balance


# --- End to end -------------------------------------------------------------------------------


def test_after_a_full_sync_the_stripe_account_holds_payments_refunds_fees_and_payouts(
    settings, dolibarr_client, dolibarr_sandbox, stripe_connector, stripe_dataset, payout_account_id
):
    """Pull + sync the session scenario; the Stripe bank account then holds, to the cent, the
    EUR payments of Stripe invoices, less their refunds, every EUR fee and every paid EUR
    payout. What it lacks against Stripe's own balance is exactly the articles bought without
    a Stripe invoice (billed from the Aipress24 purchase, issue 4), which the balance check
    shows."""
    settings.DOLIBARR_PAYOUT_BANK_ACCOUNT = "MAIN"
    context = build_context(
        client=dolibarr_client,
        stripe=stripe_connector,
        lane=LocalLane(dolibarr_sandbox.api_url, timeout=30),
    )
    stripe_pull_all(connector=stripe_connector)
    for _ in range(10):
        if not sync_due(context=context, delay_for=lambda attempts: timedelta(0))["processed"]:
            break

    data = stripe_dataset.collections
    invoiced = {
        p["payment"]["payment_intent"]
        for p in data["invoice_payments"]
        if p["status"] == "paid" and p["currency"] == "eur"
    }
    charges = [c for c in data["charges"] if c["currency"] == "eur" and c["status"] == "succeeded"]
    payments = sum(c["amount"] for c in charges if c["payment_intent"] in invoiced)
    refunds = sum(
        r["amount"]
        for r in data["refunds"]
        if r["currency"] == "eur" and r["payment_intent"] in invoiced
    )
    fees = sum(t["fee"] for t in data["balance_transactions"] if t["currency"] == "eur")
    payouts = [p for p in data["payouts"] if p["currency"] == "eur" and p["status"] == "paid"]
    paid_out = sum(p["amount"] for p in payouts)
    expected = minor_to_decimal(payments - refunds - fees - paid_out, "EUR")

    account = context.setup.stripe_bank_account_id
    assert dolibarr_client.bank_balance(bank_account_id=account) == expected
    assert dolibarr_client.bank_balance(bank_account_id=payout_account_id) == minor_to_decimal(
        paid_out, "EUR"
    )
    assert SyncRecord.objects.filter(kind="payout", state=SyncState.SYNCED).count() == len(payouts)

    not_invoiced = sum(c["amount"] for c in charges if c["payment_intent"] not in invoiced)
    not_invoiced -= sum(
        r["amount"]
        for r in data["refunds"]
        if r["currency"] == "eur" and r["payment_intent"] not in invoiced
    )
    comparison = stripe_balance_compare(
        stripe=stripe_connector, dolibarr=dolibarr_client, setup=context.setup
    )
    assert not_invoiced > 0
    assert comparison.difference == -minor_to_decimal(not_invoiced, "EUR")
