"""Invoices, refunds, fees and payouts in currencies other than Dolibarr's company currency,
end to end over HTTP against the sandbox Stripe and a sandbox Dolibarr with its Multicurrency
module on (pounds and dollars known to it, yen not).

Configured as finance would: each Stripe balance currency has its own Dolibarr bank account
(`DOLIBARR_STRIPE_BANK_ACCOUNTS`); pound payouts land on a pound bank account, dollar payouts
have none (`DOLIBARR_PAYOUT_BANK_ACCOUNTS`)."""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command

from reconciliation.connectors.dolibarr import DolibarrClient
from reconciliation.connectors.dolibarr_types import InvoiceStatus, InvoiceType
from reconciliation.connectors.stripe import StripeConnector
from reconciliation.models import AuditEvent, Mismatch, MismatchKind, SyncRecord, SyncState
from reconciliation.money import minor_to_decimal
from reconciliation.sandbox.dolibarr import DolibarrSandbox
from reconciliation.sandbox.seed import dolibarr_bank_account_create
from reconciliation.sandbox.stripe import StripeSandbox
from reconciliation.sandbox.stripe_data import generate
from reconciliation.services.records import record_observe
from reconciliation.sync.base import ForeignCurrency
from reconciliation.sync.stripe_balance import stripe_balance_compare
from reconciliation.sync.stripe_pull import stripe_pull_all
from tests.fixtures_stripe import STRIPE_TEST_KEY
from tests.sync_support import context_for, sync_until_settled

pytestmark = pytest.mark.django_db

RATES = {"GBP": Decimal("0.85"), "USD": Decimal("1.08")}
ACCOUNTS = {  # ref -> currency
    "STRIPE-GBP": "GBP",
    "STRIPE-USD": "USD",
    "STRIPE-JPY": "JPY",
    "BANK-GBP": "GBP",
    "MAIN": "EUR",
}


@pytest.fixture(scope="module")
def dataset():
    """4 paid invoices in pounds (2 refunded), 4 in dollars (2 refunded), 1 in yen."""
    return generate(
        seed=13, customers=12, start=datetime(2026, 1, 1, tzinfo=UTC), months=4, refund_share=0.5
    )


@pytest.fixture
def stripe_sandbox(dataset):
    sandbox = StripeSandbox(api_key=STRIPE_TEST_KEY, data=dataset)
    sandbox.start()
    yield sandbox
    sandbox.stop()


@pytest.fixture
def stripe(stripe_sandbox):
    return StripeConnector(
        api_key=STRIPE_TEST_KEY,
        api_base=stripe_sandbox.base_url,
        max_network_retries=0,
        timeout=5.0,
    )


@pytest.fixture
def sandbox(dolibarr_api_key):
    sandbox = DolibarrSandbox(api_key=dolibarr_api_key, multicurrency=RATES)
    sandbox.start()
    for ref, currency in ACCOUNTS.items():
        dolibarr_bank_account_create(
            api_url=sandbox.api_url,
            api_key=dolibarr_api_key,
            ref=ref,
            label=f"{ref} account",
            currency=currency,
        )
    yield sandbox
    sandbox.stop()


@pytest.fixture
def client(sandbox, dolibarr_api_key):
    client = DolibarrClient(
        base_url=sandbox.api_url, api_key=dolibarr_api_key, backoff_base=0, read_timeout=5
    )
    yield client
    client.close()


@pytest.fixture
def configured(settings):
    settings.DOLIBARR_MULTICURRENCY = True
    settings.DOLIBARR_STRIPE_BANK_ACCOUNTS = {
        "GBP": "STRIPE-GBP",
        "USD": "STRIPE-USD",
        "JPY": "STRIPE-JPY",
    }
    settings.DOLIBARR_PAYOUT_BANK_ACCOUNTS = {"GBP": "BANK-GBP"}
    settings.DOLIBARR_PAYOUT_BANK_ACCOUNT = "MAIN"
    return settings


@pytest.fixture
def context(configured, client, sandbox, stripe):
    stripe_pull_all(connector=stripe)
    return context_for(client, stripe, url=sandbox.api_url)


def _source(dataset, collection, currency):
    return [item for item in dataset.collections[collection] if item["currency"] == currency]


def _account(client, ref):
    return client.find_bank_account(ref=ref).id


def test_the_setup_finds_each_configured_currency_or_says_why_it_cannot_be_written(context):
    foreign = context.setup.foreign_currencies
    assert foreign["GBP"].problem is None
    assert foreign["GBP"].payout_bank_account_id is not None
    assert foreign["USD"].problem is None
    assert foreign["USD"].payout_bank_account_id is None
    assert "multicurrency module has no JPY" in foreign["JPY"].problem


def test_a_pound_invoice_is_written_in_pounds_to_the_penny_and_paid_on_the_pound_account(
    context, client, dataset
):
    sync_until_settled(context)
    pound_account = _account(client, "STRIPE-GBP")
    for source in _source(dataset, "invoices", "gbp"):
        [document] = client.find_invoices(ref_ext=source["id"])
        invoice = client.get_invoice(invoice_id=document.id)
        assert invoice.multicurrency_code == "GBP"
        assert invoice.multicurrency_total_ttc == minor_to_decimal(source["total"], "GBP")
        assert invoice.bank_account_id == pound_account
        assert (invoice.status, invoice.paid) == (InvoiceStatus.CLOSED, True)


def test_the_company_currency_figures_of_a_pound_invoice_are_dolibarrs_conversion(
    context, client, dataset
):
    sync_until_settled(context)
    source = _source(dataset, "invoices", "gbp")[0]
    [document] = client.find_invoices(ref_ext=source["id"])
    invoice = client.get_invoice(invoice_id=document.id)
    assert invoice.multicurrency_tx == RATES["GBP"]
    converted = minor_to_decimal(source["total"], "GBP") / RATES["GBP"]
    assert abs(invoice.total_ttc - converted) <= Decimal("0.01") * len(invoice.lines)


def test_a_refund_in_pounds_gets_a_credit_note_in_pounds_paid_back_from_the_pound_account(
    context, client, dataset
):
    sync_until_settled(context)
    refunds = _source(dataset, "refunds", "gbp")
    assert refunds
    for refund in refunds:
        [document] = client.find_invoices(ref_ext=refund["id"])
        credit_note = client.get_invoice(invoice_id=document.id)
        assert credit_note.type == InvoiceType.CREDIT_NOTE
        assert credit_note.multicurrency_code == "GBP"
        assert credit_note.multicurrency_total_ttc == -minor_to_decimal(refund["amount"], "GBP")
        [payment] = client.find_payments(ref_ext=refund["id"])
        assert payment.id


def test_the_pound_stripe_account_in_dolibarr_balances_with_stripes_pound_balance(
    context, client, stripe
):
    sync_until_settled(context)
    comparison = stripe_balance_compare(
        stripe=stripe, dolibarr=client, setup=context.setup, currency="GBP"
    )
    assert comparison.balanced, comparison
    lines = client.bank_lines(bank_account_id=comparison.bank_account_id)
    assert {line.amount > 0 for line in lines} == {True, False}  # money in, fees and payouts out


def test_pound_payouts_are_transfers_to_the_pound_bank_account(context, client, dataset):
    sync_until_settled(context)
    paid = [p for p in _source(dataset, "payouts", "gbp") if p["status"] == "paid"]
    assert paid
    received = client.bank_balance(bank_account_id=_account(client, "BANK-GBP"))
    assert received == sum(minor_to_decimal(p["amount"], "GBP") for p in paid)


def test_dollar_payouts_without_a_dollar_payout_account_are_flagged_and_not_written(
    context, client, dataset
):
    sync_until_settled(context)
    for payout in _source(dataset, "payouts", "usd"):
        record = SyncRecord.objects.get(kind="payout", external_id=payout["id"])
        assert record.state == SyncState.NEEDS_REVIEW
        mismatch = record.mismatches.get()
        assert mismatch.kind == MismatchKind.CURRENCY_UNSUPPORTED
        assert "DOLIBARR_PAYOUT_BANK_ACCOUNTS" in mismatch.summary
    assert client.bank_balance(bank_account_id=_account(client, "MAIN")) == sum(
        minor_to_decimal(p["amount"], "EUR")
        for p in _source(dataset, "payouts", "eur")
        if p["status"] == "paid"
    )


def test_dollar_invoices_are_written_in_dollars_although_their_payouts_wait(
    context, client, dataset
):
    sync_until_settled(context)
    for source in _source(dataset, "invoices", "usd"):
        [document] = client.find_invoices(ref_ext=source["id"])
        invoice = client.get_invoice(invoice_id=document.id)
        assert invoice.multicurrency_code == "USD"
        assert invoice.multicurrency_total_ttc == minor_to_decimal(source["total"], "USD")


def test_yen_which_dolibarr_does_not_know_is_flagged_and_never_written(context, client, dataset):
    sync_until_settled(context)
    [invoice] = _source(dataset, "invoices", "jpy")
    record = SyncRecord.objects.get(kind="invoice", external_id=invoice["id"])
    assert record.state == SyncState.NEEDS_REVIEW
    mismatch = record.mismatches.get()
    assert mismatch.kind == MismatchKind.CURRENCY_UNSUPPORTED
    assert "multicurrency module has no JPY" in mismatch.summary
    assert client.find_invoices(ref_ext=invoice["id"]) == []
    jpy_lines = client.bank_lines(bank_account_id=_account(client, "STRIPE-JPY"))
    assert [line.label for line in jpy_lines] == ["(InitialBankBalance)"]


def test_a_draft_dolibarr_put_in_the_company_currency_is_flagged_and_never_validated(
    context, client, dataset
):
    # The setup saw yen in the module, which then lost it before the invoice was written:
    # Dolibarr silently creates the draft in euros.
    jpy = ForeignCurrency(code="JPY", stripe_bank_account_id=_account(client, "STRIPE-JPY"))
    foreign = {**context.setup.foreign_currencies, "JPY": jpy}
    context.setup = replace(context.setup, foreign_currencies=foreign)
    sync_until_settled(context)

    [invoice] = _source(dataset, "invoices", "jpy")
    [draft] = client.find_invoices(ref_ext=invoice["id"])
    assert draft.is_draft
    mismatch = Mismatch.objects.get(record__external_id=invoice["id"])
    assert mismatch.kind == MismatchKind.CURRENCY_UNSUPPORTED
    assert mismatch.proposed_fix == "delete_draft"
    assert "instead of JPY" in mismatch.summary
    for payment in dataset.collections["invoice_payments"]:
        if payment["invoice"] == invoice["id"]:
            assert client.find_payments(ref_ext=payment["payment"]["payment_intent"]) == []


def test_every_foreign_invoice_paid_in_full_ends_paid(context, client, dataset):
    sync_until_settled(context)
    for currency in ("gbp", "usd"):
        for source in _source(dataset, "invoices", currency):
            [document] = client.find_invoices(ref_ext=source["id"])
            invoice = client.get_invoice(invoice_id=document.id)
            assert invoice.paid, (source["id"], invoice.remain_to_pay)


def test_a_pound_invoice_whose_conversion_leaves_a_cent_is_closed_as_paid_with_the_reason(
    context, client, dataset
):
    # Seven £6.00 articles: each line is 6 / 0.85 = 7.0588 -> 7.06 EUR, 49.42 in all, while the
    # £42.00 payment converts to 49.41 EUR. Dolibarr keeps the invoice open for 0.01 EUR.
    source = _source(dataset, "invoices", "gbp")[0]
    record = SyncRecord.objects.get(kind="invoice", external_id=source["id"])
    snapshot = copy.deepcopy(record.snapshot)
    [line] = snapshot["lines"]["data"]
    lines = []
    for number in range(7):
        article = copy.deepcopy(line)
        article.update(id=f"{line['id']}{number}", amount=600, subtotal=600, quantity=1)
        article["pricing"]["unit_amount_decimal"] = "600"
        lines.append(article)
    snapshot["lines"]["data"] = lines
    record_observe(source="stripe", kind="invoice", external_id=source["id"], snapshot=snapshot)

    sync_until_settled(context)

    [document] = client.find_invoices(ref_ext=source["id"])
    invoice = client.get_invoice(invoice_id=document.id)
    assert invoice.total_ttc == Decimal("49.42")
    assert invoice.multicurrency_total_ttc == Decimal("42.00")
    assert invoice.paid
    assert "Paid in full in GBP (42.00)" in invoice.close_note
    assert AuditEvent.objects.filter(
        action="dolibarr.invoice_closed_paid_in_currency", target_id=str(document.id)
    ).exists()


def test_rerunning_a_multicurrency_backlog_makes_no_dolibarr_call(context, client, stripe):
    sync_until_settled(context)
    client.reset_call_counts()
    stripe_pull_all(connector=stripe)
    sync_until_settled(context)
    assert sum(client.call_counts.values()) == 0


def test_a_dry_run_plans_pound_invoices_in_pounds_and_writes_nothing(
    configured, sandbox, dolibarr_api_key, stripe_sandbox, client, dataset
):
    configured.DOLIBARR_URL = sandbox.api_url
    configured.DOLIBARR_API_KEY = dolibarr_api_key
    configured.STRIPE_API_KEY = STRIPE_TEST_KEY
    configured.STRIPE_API_BASE = stripe_sandbox.base_url
    configured.STRIPE_MAX_NETWORK_RETRIES = 0
    out = StringIO()
    call_command("stripe_sync", "--dry-run", stdout=out, stderr=StringIO())
    output = out.getvalue()

    pound_invoice = _source(dataset, "invoices", "gbp")[0]["id"]
    assert f"  create invoice {pound_invoice} in GBP [invoice {pound_invoice}]" in output
    assert any(
        line.startswith("  create payment pi_")
        and line.endswith(f" in GBP [invoice {pound_invoice}]")
        for line in output.splitlines()
    )
    assert f"{pound_invoice}: flagged" not in output
    yen_invoice = _source(dataset, "invoices", "jpy")[0]["id"]
    assert f"{yen_invoice}: flagged currency_unsupported" in output
    assert client.list_invoices(limit=1).total == 0
