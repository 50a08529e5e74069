"""What each Stripe case becomes in Dolibarr (docs/mapping.md, "Outcomes"), over HTTP against
the sandboxes, on the session's generated dataset (its personas play every case)."""

from __future__ import annotations

import copy
from decimal import Decimal

import pytest

from reconciliation.connectors.dolibarr_types import InvoiceStatus, NewLine
from reconciliation.models import Mismatch, MismatchKind, SyncRecord, SyncState
from reconciliation.services.records import record_observe
from reconciliation.sync.engine import sync_due
from reconciliation.sync.stripe_pull import stripe_pull_all
from tests.sync_support import context_for, sync_until_settled

pytestmark = pytest.mark.django_db


@pytest.fixture
def context(dolibarr_client, dolibarr_sandbox, stripe_connector):
    stripe_pull_all(connector=stripe_connector)
    return context_for(dolibarr_client, stripe_connector, url=dolibarr_sandbox.api_url)


def _record(kind, **match):
    for record in SyncRecord.objects.filter(kind=kind).order_by("id"):
        if all(test(record.snapshot) for test in match.values()):
            return record
    raise AssertionError(f"no {kind} record matching {sorted(match)}")


def _observe(record, snapshot):
    changed, _ = record_observe(
        source="stripe", kind=record.kind, external_id=record.external_id, snapshot=snapshot
    )
    return changed


def _invoice(client, ref_ext):
    [invoice] = client.find_invoices(ref_ext=ref_ext)
    return invoice


def test_a_void_invoice_that_never_reached_dolibarr_is_skipped(context, dolibarr_client):
    record = _record("invoice", status=lambda s: s["status"] == "void")
    sync_until_settled(context)
    record.refresh_from_db()
    assert record.state == SyncState.SKIPPED
    assert "voided in Stripe" in record.last_error
    assert dolibarr_client.find_invoices(ref_ext=record.external_id) == []


def test_an_open_invoice_is_validated_without_payment(context, dolibarr_client):
    record = _record("invoice", status=lambda s: s["status"] == "open")
    sync_until_settled(context)
    invoice = _invoice(dolibarr_client, record.external_id)
    assert (invoice.status, invoice.paid) == (InvoiceStatus.VALIDATED, False)
    assert dolibarr_client.invoice_payments(invoice_id=invoice.id) == []
    record.refresh_from_db()
    assert (record.state, record.dolibarr_id) == (SyncState.SYNCED, invoice.id)


def test_an_invoice_voided_after_validation_is_closed_as_abandoned(context, dolibarr_client):
    record = _record("invoice", status=lambda s: s["status"] == "open")
    sync_until_settled(context)
    voided = copy.deepcopy(record.snapshot)
    voided["status"] = "void"
    _observe(record, voided)

    sync_until_settled(context)

    invoice = _invoice(dolibarr_client, record.external_id)
    assert (invoice.status, invoice.paid, invoice.close_code) == (2, False, "abandon")
    record.refresh_from_db()
    assert record.state == SyncState.SYNCED


def test_an_uncollectible_invoice_is_closed_as_bad_customer(context, dolibarr_client):
    record = _record("invoice", status=lambda s: s["status"] == "open")
    uncollectible = copy.deepcopy(record.snapshot)
    uncollectible["status"] = "uncollectible"
    _observe(record, uncollectible)

    sync_until_settled(context)

    invoice = _invoice(dolibarr_client, record.external_id)
    assert (invoice.status, invoice.paid, invoice.close_code) == (2, False, "badcustomer")
    assert dolibarr_client.invoice_payments(invoice_id=invoice.id) == []


def test_an_invoice_paid_later_gets_its_payment_once(context, dolibarr_client):
    record = _record(
        "invoice",
        status=lambda s: s["status"] == "paid",
        total=lambda s: s["total"] > 0,
        currency=lambda s: s["currency"] == "eur",
    )
    paid = record.snapshot
    open_first = copy.deepcopy(paid)
    open_first.update(status="open", payments={"object": "list", "data": [], "has_more": False})
    _observe(record, open_first)
    sync_until_settled(context)
    assert _invoice(dolibarr_client, record.external_id).status == InvoiceStatus.VALIDATED

    _observe(record, paid)
    sync_until_settled(context)
    _observe(record, {**paid, "metadata": {"touched": "1"}})
    sync_until_settled(context)

    invoice = _invoice(dolibarr_client, record.external_id)
    assert (invoice.status, invoice.paid) == (InvoiceStatus.CLOSED, True)
    [payment] = dolibarr_client.invoice_payments(invoice_id=invoice.id)
    assert payment.amount == invoice.total_ttc


def test_a_zero_total_invoice_is_validated_and_closed_as_paid(context, dolibarr_client):
    record = _record("invoice", total=lambda s: s["total"] == 0)
    sync_until_settled(context)
    invoice = _invoice(dolibarr_client, record.external_id)
    assert invoice.total_ttc == 0
    assert (invoice.status, invoice.paid) == (InvoiceStatus.CLOSED, True)
    assert dolibarr_client.invoice_payments(invoice_id=invoice.id) == []


def test_a_failed_payment_is_skipped_with_its_failure_code(context):
    record = _record("charge", status=lambda s: s["status"] == "failed")
    sync_until_settled(context)
    record.refresh_from_db()
    assert record.state == SyncState.SKIPPED
    assert "card_declined" in record.last_error


def test_a_succeeded_charge_points_at_its_dolibarr_payment(context, dolibarr_client):
    sync_until_settled(context)
    record = _record(
        "charge",
        status=lambda s: s["status"] == "succeeded",
        currency=lambda s: s["currency"] == "eur",
        amount=lambda s: s["amount"] > 1000,
    )
    record.refresh_from_db()
    [payment] = dolibarr_client.find_payments(ref_ext=record.snapshot["payment_intent"])
    assert (record.state, record.dolibarr_kind, record.dolibarr_id) == (
        SyncState.SYNCED,
        "payment",
        payment.id,
    )
    assert payment.num_payment == record.external_id


def test_a_payment_without_stripe_invoice_is_left_to_the_aipress24_purchase(context):
    record = _record("payment_intent", purchase=lambda s: "ap24_purchase_id" in s["metadata"])
    sync_until_settled(context)
    record.refresh_from_db()
    assert record.state == SyncState.SKIPPED
    assert "Aipress24 purchase (docs/aipress24-sync.md)" in record.last_error


def test_a_partial_refund_is_a_credit_note_and_a_refund_payment_to_the_cent(
    context, dolibarr_client, stripe_dataset
):
    invoice_payments = stripe_dataset.collections["invoice_payments"]
    paid_by_invoice = {p["payment"]["payment_intent"]: p for p in invoice_payments}
    record = _record("refund", invoice=lambda s: s["payment_intent"] in paid_by_invoice)
    refund = record.snapshot
    assert refund["amount"] < paid_by_invoice[refund["payment_intent"]]["amount_paid"]

    sync_until_settled(context)

    credit_note = _invoice(dolibarr_client, refund["id"])
    source = _invoice(dolibarr_client, paid_by_invoice[refund["payment_intent"]]["invoice"])
    assert credit_note.type == 2
    assert credit_note.source_invoice_id == source.id
    assert credit_note.total_ttc == -Decimal(refund["amount"]) / 100
    assert (credit_note.status, credit_note.paid) == (InvoiceStatus.CLOSED, True)
    [payment] = dolibarr_client.invoice_payments(invoice_id=credit_note.id)
    assert payment.amount == credit_note.total_ttc
    assert payment.ref_ext == refund["id"]


def test_a_refund_of_an_article_bought_without_invoice_is_left_to_the_purchase(context):
    record = _record("refund", amount=lambda s: s["amount"] == 500)
    sync_until_settled(context)
    record.refresh_from_db()
    assert record.state == SyncState.SKIPPED
    assert "Aipress24 purchase (docs/aipress24-sync.md)" in record.last_error


def test_invoices_in_yen_and_dollars_are_flagged_and_never_written(context, dolibarr_client):
    sync_until_settled(context)
    for currency in ("jpy", "usd"):
        record = _record("invoice", currency=lambda s, c=currency: s["currency"] == c)
        record.refresh_from_db()
        assert record.state == SyncState.NEEDS_REVIEW
        mismatch = record.mismatches.get()
        assert mismatch.kind == MismatchKind.CURRENCY_UNSUPPORTED
        assert mismatch.currency == currency.upper()
        assert dolibarr_client.find_invoices(ref_ext=record.external_id) == []
    yen = _record("invoice", currency=lambda s: s["currency"] == "jpy")
    assert "2400 JPY" in yen.mismatches.get().summary


def test_a_total_dolibarr_cannot_reproduce_keeps_the_draft_and_flags_it(context, dolibarr_client):
    record = _record(
        "invoice",
        status=lambda s: s["status"] == "paid",
        lines=lambda s: len(s["lines"]["data"]) == 1,
        currency=lambda s: s["currency"] == "eur",
        discount=lambda s: not s["discounts"],
        tax=lambda s: s["total"] > s["total_excluding_tax"],
    )
    skewed = copy.deepcopy(record.snapshot)
    [line] = skewed["lines"]["data"]
    # Stripe says one cent more tax than the rate gives: no line encoding reproduces it.
    line["taxes"][0]["amount"] += 1
    line["taxes"][0]["tax_rate_details"]["tax_rate"] = {"percentage": 20.0}
    skewed["total"] += 1
    _observe(record, skewed)

    sync_until_settled(context)

    record.refresh_from_db()
    invoice = _invoice(dolibarr_client, record.external_id)
    assert invoice.is_draft
    assert record.dolibarr_id == invoice.id
    assert dolibarr_client.invoice_payments(invoice_id=invoice.id) == []
    assert record.state == SyncState.NEEDS_REVIEW
    mismatch = record.mismatches.get()
    assert mismatch.kind == MismatchKind.TOTAL_DIFFERS
    assert mismatch.amount_difference == Decimal("-0.01")


def test_two_dolibarr_invoices_with_the_same_ref_ext_are_flagged_not_chosen_from(
    context, dolibarr_client
):
    sync_due(context=context, kinds=["customer"])
    record = _record("invoice", status=lambda s: s["status"] == "open")
    thirdparty = SyncRecord.objects.get(kind="customer", external_id=record.snapshot["customer"])
    for _ in range(2):
        dolibarr_client.create_invoice(
            thirdparty_id=thirdparty.dolibarr_id,
            ref_ext=record.external_id,
            lines=[NewLine(qty=1, subprice=Decimal(1), tva_tx=Decimal(20), description="x")],
        )

    sync_until_settled(context)

    record.refresh_from_db()
    assert record.state == SyncState.NEEDS_REVIEW
    mismatch = record.mismatches.get()
    assert mismatch.kind == MismatchKind.DUPLICATE_IN_DOLIBARR
    assert len(mismatch.proposed_fix_params["remove"]) == 1


def test_a_disputed_charge_needs_review_with_a_proposed_fix(context):
    record = _record("charge", status=lambda s: s["status"] == "succeeded")
    _observe(record, {**record.snapshot, "disputed": True})
    sync_until_settled(context)
    record.refresh_from_db()
    assert record.state == SyncState.NEEDS_REVIEW
    mismatch = record.mismatches.get()
    assert mismatch.kind == MismatchKind.STATUS_DIFFERS
    assert mismatch.proposed_fix == "credit_note_if_dispute_lost"


def test_a_customer_whose_thirdparty_is_linked_to_another_stripe_customer_needs_review(
    context, dolibarr_client
):
    record = _record("customer", stripe_only=lambda s: not s["metadata"])
    thirdparty_id = dolibarr_client.create_thirdparty(name="Someone", ref_ext=record.external_id)
    dolibarr_client.link_stripe_customer(
        thirdparty_id=thirdparty_id, customer_id="cus_SomeoneElse", live=False
    )

    sync_due(context=context, kinds=["customer"])

    record.refresh_from_db()
    assert record.state == SyncState.NEEDS_REVIEW
    assert record.mismatches.get().kind == MismatchKind.CUSTOMER_CONFLICT
    assert dolibarr_client.stripe_link(thirdparty_id=thirdparty_id).customer_id == "cus_SomeoneElse"


def test_an_invoice_waits_for_its_customer_without_losing_an_attempt(context):
    record = _record("invoice", status=lambda s: s["status"] == "open")
    sync_due(context=context, kinds=["invoice"])
    record.refresh_from_db()
    assert record.state == SyncState.PENDING
    assert record.attempts == 0
    assert "customer" in record.last_error
    assert record.next_attempt_at is not None
    assert not Mismatch.objects.filter(record=record).exists()


def test_a_full_refund_copies_the_invoice_lines_into_the_credit_note(context, dolibarr_client):
    invoice_record = _record(
        "invoice",
        status=lambda s: s["status"] == "paid",
        currency=lambda s: s["currency"] == "eur",
        lines=lambda s: len(s["lines"]["data"]) > 1,
    )
    invoice = invoice_record.snapshot
    [paid_by] = [p["payment"]["payment_intent"] for p in invoice["payments"]["data"]]
    refund = {
        "id": "re_FullRefundTest",
        "object": "refund",
        "amount": invoice["total"],
        "currency": "eur",
        "status": "succeeded",
        "payment_intent": paid_by,
        "charge": None,
        "created": invoice["created"] + 86400,
    }
    record_observe(source="stripe", kind="refund", external_id=refund["id"], snapshot=refund)

    sync_until_settled(context)

    credit_note = dolibarr_client.get_invoice(invoice_id=_invoice(dolibarr_client, refund["id"]).id)
    source = dolibarr_client.get_invoice(invoice_id=_invoice(dolibarr_client, invoice["id"]).id)
    assert credit_note.total_ttc == -source.total_ttc
    assert len(credit_note.lines) == len(invoice["lines"]["data"])
    assert {line.tva_tx for line in credit_note.lines} == {line.tva_tx for line in source.lines}
    assert all(line.description.startswith("Remboursement : ") for line in credit_note.lines)


def test_a_stripe_only_customer_change_updates_its_thirdparty(context, dolibarr_client):
    record = _record("customer", stripe_only=lambda s: not s["metadata"])
    sync_due(context=context, kinds=["customer"])
    _observe(record, {**record.snapshot, "email": "new-address@example.test"})

    sync_due(context=context, kinds=["customer"])

    [thirdparty] = dolibarr_client.find_thirdparties(ref_ext=record.external_id)
    assert thirdparty.email == "new-address@example.test"
    record.refresh_from_db()
    assert (record.state, record.dolibarr_id) == (SyncState.SYNCED, thirdparty.id)


def _second_customer_of(record, customer_id):
    """Another Stripe customer of the same Aipress24 organisation (README: two Stripe customer
    ids for one organisation)."""
    snapshot = {**record.snapshot, "id": customer_id, "tax_ids": {"object": "list", "data": []}}
    record_observe(source="stripe", kind="customer", external_id=customer_id, snapshot=snapshot)
    return SyncRecord.objects.get(kind="customer", external_id=customer_id)


def test_two_stripe_customers_of_one_organisation_share_one_thirdparty(context, dolibarr_client):
    first = _record("customer", organisation=lambda s: "ap24_org_id" in s["metadata"])
    second = _second_customer_of(first, "cus_SecondOfTheOrg")
    ref_ext = f"ap24-org-{first.snapshot['metadata']['ap24_org_id']}"

    sync_due(context=context, kinds=["customer"])

    [thirdparty] = dolibarr_client.find_thirdparties(ref_ext=ref_ext)
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.state, first.dolibarr_id) == (SyncState.SYNCED, thirdparty.id)
    assert (second.state, second.dolibarr_id) == (SyncState.SYNCED, thirdparty.id)
    assert not second.mismatches.exists()


def test_the_second_stripe_customer_of_an_organisation_leaves_the_first_ones_link(
    context, dolibarr_client
):
    first = _record("customer", organisation=lambda s: "ap24_org_id" in s["metadata"])
    _second_customer_of(first, "cus_SecondOfTheOrg")
    ref_ext = f"ap24-org-{first.snapshot['metadata']['ap24_org_id']}"

    sync_due(context=context, kinds=["customer"])

    [thirdparty] = dolibarr_client.find_thirdparties(ref_ext=ref_ext)
    # One Stripe link per thirdparty: the one that came first keeps it.
    assert dolibarr_client.stripe_link(thirdparty_id=thirdparty.id).customer_id == first.external_id


def _of_an_organisation(invoice_snapshot):
    customer = SyncRecord.objects.get(kind="customer", external_id=invoice_snapshot["customer"])
    return "ap24_org_id" in customer.snapshot["metadata"]


def test_an_invoice_of_an_organisations_second_stripe_customer_goes_to_its_thirdparty(
    context, dolibarr_client
):
    open_invoice = _record(
        "invoice",
        status=lambda s: s["status"] == "open",
        currency=lambda s: s["currency"] == "eur",
        organisation=_of_an_organisation,
    )
    first = SyncRecord.objects.get(kind="customer", external_id=open_invoice.snapshot["customer"])
    second = _second_customer_of(first, "cus_SecondOfTheOrg")
    snapshot = {
        **open_invoice.snapshot,
        "id": "in_OfTheSecondCustomer",
        "customer": second.external_id,
        "number": "SECOND-0001",
    }
    record_observe(source="stripe", kind="invoice", external_id=snapshot["id"], snapshot=snapshot)

    sync_until_settled(context)

    invoice = _invoice(dolibarr_client, "in_OfTheSecondCustomer")
    first.refresh_from_db()
    assert invoice.thirdparty_id == first.dolibarr_id
    assert invoice.status == InvoiceStatus.VALIDATED


def test_a_customer_whose_thirdparty_creation_went_unanswered_adopts_it_on_retry(
    context, dolibarr_client, dolibarr_sandbox
):
    record = _record("customer", organisation=lambda s: "ap24_org_id" in s["metadata"])
    ref_ext = f"ap24-org-{record.snapshot['metadata']['ap24_org_id']}"
    SyncRecord.objects.filter(kind="customer").exclude(pk=record.pk).delete()
    dolibarr_sandbox.faults.update(lost_response_rate=1.0)
    sync_due(context=context, kinds=["customer"])
    dolibarr_sandbox.faults.update(lost_response_rate=0.0)
    record.refresh_from_db()
    assert record.state == SyncState.PENDING
    SyncRecord.objects.filter(pk=record.pk).update(next_attempt_at=None)

    sync_due(context=context, kinds=["customer"])

    [thirdparty] = dolibarr_client.find_thirdparties(ref_ext=ref_ext)
    record.refresh_from_db()
    assert (record.state, record.dolibarr_id) == (SyncState.SYNCED, thirdparty.id)
