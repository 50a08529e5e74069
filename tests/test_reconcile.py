"""The reconciliation job against the sandboxes: a Stripe history and the Aipress24 sample synced
into the sandbox Dolibarr over HTTP, then each kind of difference made on purpose — in
Dolibarr through its API, or at the source through the record the console holds — and the job
must find exactly those, with the right fix, once, and close them when they are gone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import requests

from reconciliation.connectors.stripe import StripeConnector
from reconciliation.models import (
    AuditEvent,
    Mismatch,
    MismatchKind,
    MismatchState,
    SyncRecord,
)
from reconciliation.reconcile.job import reconcile
from reconciliation.sandbox.seed import PAYOUT_ACCOUNT_REF, dolibarr_bank_account_create
from reconciliation.sandbox.stripe import StripeSandbox
from reconciliation.sandbox.stripe_aipress24 import aipress24_stripe_dataset
from reconciliation.sandbox.stripe_data import generate
from reconciliation.services.records import record_observe
from reconciliation.sync.aipress24_pull import aipress24_pull_all
from reconciliation.sync.engine import build_context, dolibarr_setup
from reconciliation.sync.lane import LocalLane
from reconciliation.sync.stripe_pull import stripe_pull_all
from tests.fixtures_stripe import STRIPE_TEST_KEY
from tests.sync_support import sync_until_settled

pytestmark = pytest.mark.django_db

VAT_RATES = {
    "consultation": Decimal("2.1"),
    "consultation_gift": Decimal("2.1"),
    "justificatif": Decimal("20"),
    "cession": Decimal("20"),
}
RIVAGE = "7379523049881604098"
ETANG_BLEU_SLUG = "editions-de-l-etang-bleu"


@pytest.fixture(scope="module")
def stripe_history():
    return generate(seed=11, customers=4, start=datetime(2026, 1, 1, tzinfo=UTC), months=2)


class Books:
    """Both sides synced, and the means to make them differ."""

    def __init__(self, dolibarr, sandbox, stripe, reader, api_key):
        self.dolibarr = dolibarr
        self.sandbox = sandbox
        self.stripe = stripe
        self.reader = reader
        self.api_key = api_key

    baseline: set = frozenset()
    baseline_ids: set = frozenset()

    def new(self, result) -> list[tuple[str, tuple]]:
        """What this run found beyond the known state of the synced books (`baseline`)."""
        return sorted(set(_found(result)) - self.baseline)

    def run(self, *, since=None):
        return reconcile(
            dolibarr=self.dolibarr,
            setup=dolibarr_setup(client=self.dolibarr),
            stripe=self.stripe,
            since=since,
        )

    def http(self, method: str, path: str, **kwargs):
        response = requests.request(
            method,
            f"{self.sandbox.api_url}{path}",
            headers={"DOLAPIKEY": self.api_key},
            timeout=10,
            **kwargs,
        )
        response.raise_for_status()
        return response

    def record(self, source: str, kind: str, **snapshot_has) -> SyncRecord:
        for record in SyncRecord.objects.filter(source=source, kind=kind, state="synced"):
            if all(record.snapshot.get(key) == value for key, value in snapshot_has.items()):
                return record
        raise AssertionError(f"no synced {source} {kind} with {snapshot_has}")

    def tamper(self, record: SyncRecord, **changes) -> dict:
        """The source now says something else (the record's snapshot, as the next pull would
        store it); returns the old snapshot for `restore`."""
        before = dict(record.snapshot)
        SyncRecord.objects.filter(pk=record.pk).update(snapshot={**record.snapshot, **changes})
        return before

    def restore(self, record: SyncRecord, snapshot: dict) -> None:
        SyncRecord.objects.filter(pk=record.pk).update(snapshot=snapshot)


@pytest.fixture
def books(
    settings, stripe_history, aipress24_sqlite, dolibarr_client, dolibarr_sandbox, dolibarr_api_key
):
    settings.AIPRESS24_VAT_RATES = {key: str(value) for key, value in VAT_RATES.items()}
    # Where the finance team's Stripe payouts land (created in Dolibarr by hand, in real life).
    dolibarr_bank_account_create(api_url=dolibarr_sandbox.api_url, api_key=dolibarr_api_key)
    settings.DOLIBARR_PAYOUT_BANK_ACCOUNT = PAYOUT_ACCOUNT_REF
    reader = aipress24_sqlite.reader(settle=timedelta(0))
    dataset = aipress24_stripe_dataset(reader, vat_rates=VAT_RATES, base=stripe_history)
    sandbox = StripeSandbox(api_key=STRIPE_TEST_KEY, data=dataset)
    with sandbox:
        stripe = StripeConnector(
            api_key=STRIPE_TEST_KEY, api_base=sandbox.base_url, max_network_retries=0, timeout=5.0
        )
        aipress24_pull_all(reader=reader, full=True)
        stripe_pull_all(connector=stripe)
        context = build_context(
            client=dolibarr_client,
            stripe=stripe,
            lane=LocalLane(dolibarr_sandbox.api_url, timeout=30),
            aipress24=reader,
        )
        sync_until_settled(context)
        books = Books(dolibarr_client, dolibarr_sandbox, stripe, reader, dolibarr_api_key)
        books.baseline = set(_found(books.run()))
        books.baseline_ids = set(Mismatch.objects.values_list("pk", flat=True))
        try:
            yield books
        finally:
            reader.close()


def _open(books: Books, kind: str):
    """The open mismatches of `kind` beyond the baseline's."""
    return Mismatch.objects.filter(state=MismatchState.OPEN, kind=kind).exclude(
        pk__in=books.baseline_ids
    )


def _found(result) -> list[tuple[str, tuple]]:
    return sorted((f.spec.kind, f.spec.fingerprint_parts) for f in result.detection.findings)


# --- in step ------------------------------------------------------------------------------------


def test_synced_books_show_only_the_stripe_payments_no_record_bills(books, stripe_history):
    """The generated Stripe history holds article purchases of its own that no Aipress24 row
    knows: their money is in Stripe's balance and nowhere in Dolibarr. That, and the balance
    difference it makes, is all the reconciliation finds in books the console synced."""
    result = books.run()

    orphan_payments = sorted(
        intent["id"]
        for intent in stripe_history.collections["payment_intents"]
        if intent["status"] == "succeeded"
        and (intent.get("metadata") or {}).get("ap24_kind") == "article_purchase"
    )
    assert _found(result) == sorted(
        [
            *(("missing_in_dolibarr", ("reconcile", "unbilled", pi)) for pi in orphan_payments),
            ("balance_differs", ("reconcile", "balance", "EUR")),
        ]
    )
    balance = Mismatch.objects.get(kind=MismatchKind.BALANCE_DIFFERS)
    unbilled = Mismatch.objects.filter(kind=MismatchKind.MISSING_IN_DOLIBARR)
    refunded = sum(
        Decimal(refund["amount"]) / 100
        for refund in stripe_history.collections["refunds"]
        if refund["payment_intent"] in orphan_payments
    )
    assert balance.amount_difference == sum(m.amount_difference for m in unbilled) + refunded
    assert result.counts["checked aipress24 purchase"] == 12
    assert result.counts["checked stripe invoice"] > 0


# --- each kind ----------------------------------------------------------------------------------


def test_a_thirdparty_deleted_in_dolibarr_is_missing_with_a_retry_fix(books):
    # Étang Bleu pays by subscription only: its thirdparty holds no document and can go.
    record = books.record("aipress24", "organisation", slug=ETANG_BLEU_SLUG)
    books.http("DELETE", f"/thirdparties/{record.dolibarr_id}")

    result = books.run()

    assert books.new(result) == [
        (
            "missing_in_dolibarr",
            ("reconcile", "thirdparty_missing", f"ap24-org-{record.external_id}"),
        )
    ]
    mismatch = _open(books, MismatchKind.MISSING_IN_DOLIBARR).get()
    assert (mismatch.proposed_fix, mismatch.proposed_fix_params["record_id"]) == (
        "retry_record",
        record.pk,
    )


def test_a_dolibarr_invoice_with_our_ref_ext_unknown_at_the_source_is_an_orphan(books):
    thirdparty = books.record("aipress24", "organisation", slug="agence-rivage-conseil")
    books.http(
        "POST",
        "/invoices",
        json={
            "socid": thirdparty.dolibarr_id,
            "type": 0,
            "ref_ext": "in_1OrphanNoSuchStripeInvoice",
            "lines": [{"desc": "Saisie manuelle", "qty": 1, "subprice": "10", "tva_tx": "20"}],
        },
    )

    result = books.run()

    assert [kind for kind, _ in books.new(result)] == ["missing_at_source"]
    orphan = _open(books, MismatchKind.MISSING_AT_SOURCE).get()
    assert "in_1OrphanNoSuchStripeInvoice" in orphan.summary


def test_a_second_thirdparty_with_the_same_identity_is_a_duplicate_to_merge(books):
    record = books.record("aipress24", "organisation", slug="agence-rivage-conseil")
    second = books.dolibarr.create_thirdparty(
        name="Agence Rivage Conseil (doublon)", ref_ext=f"ap24-org-{RIVAGE}", code_client="-1"
    )

    books.run()

    mismatch = _open(books, MismatchKind.DUPLICATE_IN_DOLIBARR).get()
    assert mismatch.proposed_fix == "merge_thirdparties"
    assert mismatch.proposed_fix_params == {"keep": record.dolibarr_id, "merge": [second]}


def test_a_source_total_one_cent_off_is_a_total_difference(books):
    record = books.record("stripe", "invoice", status="paid", currency="eur")
    books.tamper(record, total=int(record.snapshot["total"]) + 1)

    books.run()

    mismatch = _open(books, MismatchKind.TOTAL_DIFFERS).get()
    assert mismatch.record_id == record.pk
    assert mismatch.amount_difference == Decimal("-0.01")


def test_an_invoice_paid_at_the_source_without_its_dolibarr_payment_is_a_status_difference(books):
    record = books.record("stripe", "invoice", status="paid", currency="eur")
    payment = {"payment": {"type": "payment_intent", "payment_intent": "pi_NeverInDolibarr"}}
    books.tamper(
        record, payments={"data": [{**payment, "status": "paid", "object": "invoice_payment"}]}
    )

    books.run()

    mismatch = _open(books, MismatchKind.STATUS_DIFFERS).get()
    assert (mismatch.record_id, mismatch.proposed_fix) == (record.pk, "retry_record")


def test_a_dolibarr_payment_not_on_its_unpaid_invoice_is_unlinked(books):
    purchase = books.record("aipress24", "purchase", product_type="cession")
    (invoice,) = books.dolibarr.find_invoices(ref_ext=f"ap24-purchase-{purchase.external_id}")
    books.http("POST", f"/invoices/{invoice.id}/settounpaid")

    books.run()

    mismatch = _open(books, MismatchKind.PAYMENT_UNLINKED).get()
    assert mismatch.record_id == purchase.pk


def test_a_refund_without_its_credit_note_is_a_missing_refund(books):
    purchase = books.record("aipress24", "purchase", product_type="cession")
    refund = {
        "id": "re_1StripeOnlyRefund",
        "object": "refund",
        "status": "succeeded",
        "amount": 1000,
        "currency": "eur",
        "payment_intent": purchase.snapshot["stripe_payment_intent_id"],
        "charge": None,
    }
    record, _ = record_observe(
        source="stripe", kind="refund", external_id=refund["id"], snapshot=refund
    )
    SyncRecord.objects.filter(pk=record.pk).update(created_at=datetime(2026, 1, 1, tzinfo=UTC))

    books.run()

    mismatch = _open(books, MismatchKind.REFUND_MISSING).get()
    assert mismatch.proposed_fix_params == {"record_id": purchase.pk, "creates": "credit_note"}


def test_a_payout_of_another_amount_than_its_transfer_is_unbalanced(books):
    record = books.record("stripe", "payout", status="paid", currency="eur")
    books.tamper(record, amount=int(record.snapshot["amount"]) + 100)

    books.run()

    mismatch = _open(books, MismatchKind.PAYOUT_UNBALANCED).get()
    assert (mismatch.record_id, mismatch.amount_difference) == (record.pk, Decimal("-1.00"))


def test_a_line_added_by_hand_to_the_stripe_account_is_a_balance_difference(books):
    setup = dolibarr_setup(client=books.dolibarr)
    books.dolibarr.add_bank_line(
        bank_account_id=setup.stripe_bank_account_id,
        date=datetime(2026, 3, 1, tzinfo=UTC),
        type_code="VIR",
        label="Saisie manuelle",
        amount=Decimal("12.34"),
    )

    before = Mismatch.objects.get(kind=MismatchKind.BALANCE_DIFFERS).amount_difference

    books.run()

    after = Mismatch.objects.get(kind=MismatchKind.BALANCE_DIFFERS)
    assert (after.currency, after.amount_difference - before) == ("EUR", Decimal("12.34"))


def test_a_payment_billed_by_a_stripe_invoice_and_a_purchase_is_billed_twice(books):
    invoice = books.record("stripe", "invoice", status="paid", currency="eur")
    purchase = books.record("aipress24", "purchase", product_type="cession")
    (paid,) = [p for p in invoice.snapshot["payments"]["data"] if p["status"] == "paid"]
    books.tamper(purchase, stripe_payment_intent_id=paid["payment"]["payment_intent"])

    result = books.run()

    billed_twice = [parts for kind, parts in books.new(result) if parts[1] == "billed_twice"]
    assert billed_twice == [("reconcile", "billed_twice", paid["payment"]["payment_intent"])]


# --- re-runs and closing ------------------------------------------------------------------------


def test_running_again_refreshes_the_same_mismatches_instead_of_adding_some(books):
    record = books.record("stripe", "invoice", status="paid", currency="eur")
    books.tamper(record, total=int(record.snapshot["total"]) + 1)
    books.run()

    second = books.run()

    assert Mismatch.objects.exclude(pk__in=books.baseline_ids).count() == 1
    assert second.counts["found"] == 0
    assert second.counts["seen again"] == len(books.baseline) + 1


def test_a_difference_that_is_gone_closes_its_mismatch_with_an_audit_event(books):
    record = books.record("stripe", "invoice", status="paid", currency="eur")
    before = books.tamper(record, total=int(record.snapshot["total"]) + 1)
    books.run()
    books.restore(record, before)

    result = books.run()

    mismatch = Mismatch.objects.exclude(pk__in=books.baseline_ids).get()
    assert (mismatch.state, result.counts["closed"]) == (MismatchState.RESOLVED, 1)
    assert AuditEvent.objects.filter(
        action="mismatch.closed_automatically", target_id=str(mismatch.pk)
    ).exists()


def test_a_run_over_a_window_leaves_older_mismatches_alone(books):
    record = books.record("stripe", "invoice", status="paid", currency="eur")
    before = books.tamper(record, total=int(record.snapshot["total"]) + 1)
    books.run()
    books.restore(record, before)
    SyncRecord.objects.filter(pk=record.pk).update(updated_at=datetime(2026, 1, 1, tzinfo=UTC))

    books.run(since=datetime.now(tz=UTC) - timedelta(days=1))

    assert Mismatch.objects.exclude(pk__in=books.baseline_ids).get().state == MismatchState.OPEN


def _pending_stripe_invoice(created_at: datetime) -> SyncRecord:
    invoice = {
        "id": "in_1NotWrittenYet",
        "object": "invoice",
        "status": "paid",
        "currency": "eur",
        "total": 1200,
        "customer": "cus_unknown",
    }
    record, _ = record_observe(
        source="stripe", kind="invoice", external_id=invoice["id"], snapshot=invoice
    )
    SyncRecord.objects.filter(pk=record.pk).update(created_at=created_at)
    return record


def test_a_record_still_in_its_grace_period_is_not_reported_missing(books):
    _pending_stripe_invoice(created_at=datetime.now(tz=UTC) - timedelta(minutes=5))

    result = books.run()

    assert books.new(result) == []


def test_a_record_pending_past_its_grace_period_is_reported_missing(books):
    record = _pending_stripe_invoice(created_at=datetime.now(tz=UTC) - timedelta(hours=2))

    result = books.run()

    assert books.new(result) == [
        ("missing_in_dolibarr", ("reconcile", "stripe", "invoice", "in_1NotWrittenYet"))
    ]
    assert _open(books, MismatchKind.MISSING_IN_DOLIBARR).get().record_id == record.pk
