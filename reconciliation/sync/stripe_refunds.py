"""Stripe refunds -> Dolibarr credit notes with their refund payment.

A refund of a payment that paid a Stripe invoice becomes a credit note (`type 2`,
`fk_facture_source` = the invoice, `ref_ext` = `re_…`), validated in the numbered lane once its
total equals the refund to the cent, then its refund payment through `paymentsdistributed` with
a **positive** amount (stored negative: money out; the other payment route records the wrong
sign, 64-66) and `ref_ext` = `re_…`.

Lines: a full refund copies the invoice's lines; a partial refund follows the pro-rata rule of
`invoice_lines.partial_refund_encoding` (exact to the cent, or the refund goes to review).
A refund of a payment that no Stripe invoice names (an article bought from Aipress24) is
skipped here: that sale is billed from its Aipress24 purchase (docs/aipress24-sync.md), which
owns its credit note.
"""

from __future__ import annotations

from typing import Any

from reconciliation.connectors.dolibarr import INVOICE_STATE_PROPERTIES
from reconciliation.models import MismatchKind, Source, SyncRecord
from reconciliation.money import currency_code
from reconciliation.sync.base import (
    MismatchSpec,
    NeedsReview,
    Outcome,
    Skipped,
    SyncContext,
    Synced,
    handler,
)
from reconciliation.sync.dependencies import dependency, snapshot_of
from reconciliation.sync.invoice_lines import (
    full_refund_encoding,
    partial_refund_encoding,
)
from reconciliation.sync.known import Wanted, find_invoices, known_payments, run_cache, wants
from reconciliation.sync.stripe_common import (
    close_conversion_remainder,
    currency_problem,
    duplicates,
    in_document_currency,
    single_document,
    stripe_amount,
    stripe_datetime,
    total_differs,
    wrong_document_currency,
)

DOLIBARR_KIND = "credit_note"

PURCHASE_FLOW = (
    "no Stripe invoice names the refunded payment: the sale is billed from its Aipress24 "
    "purchase (docs/aipress24-sync.md), which writes its credit note"
)


@wants("stripe", "refund")
def _refund_wants(record: SyncRecord) -> Wanted:
    refund_id = record.snapshot["id"]
    return Wanted(invoices={refund_id}, payments={refund_id})


@handler("stripe", "refund")
def stripe_refund_sync(record: SyncRecord, context: SyncContext) -> Outcome:
    refund = record.snapshot
    refund_id = refund["id"]
    status = refund.get("status")
    if status in ("failed", "canceled"):
        return Skipped(f"{status} in Stripe: no money went back")
    if status != "succeeded":
        return Skipped(f"{status} in Stripe: written once it has succeeded")
    problem = currency_problem(
        context,
        kind="refund",
        object_id=refund_id,
        currency=refund.get("currency") or "",
        amount=int(refund.get("amount") or 0),
        snapshot=refund,
    )
    if problem is not None:
        return problem
    paid_by = refund.get("payment_intent") or refund.get("charge")
    invoice_id = run_cache(context).invoice_of_payment_intent(paid_by) if paid_by else None
    if invoice_id is None:
        return Skipped(PURCHASE_FLOW)
    source = dependency(context, source=Source.STRIPE, kind="invoice", external_id=invoice_id)
    if not source.synced:
        return source.waiting(f"refunded invoice {invoice_id}")
    invoice = snapshot_of(source=Source.STRIPE, kind="invoice", external_id=invoice_id) or {}
    customer = dependency(
        context, source=Source.STRIPE, kind="customer", external_id=invoice.get("customer", "")
    )
    if not customer.synced:
        return customer.waiting(f"customer {invoice.get('customer')}")

    currency = currency_code(refund["currency"])
    amount = stripe_amount(refund["amount"], currency)
    document_currency = in_document_currency(context, currency)
    current = single_document(
        find_invoices(context, record, refund_id),
        kind="refund",
        what="credit_note",
        snapshot=refund,
    )
    if isinstance(current, NeedsReview):
        return current
    if current is None:
        encoding = _encoding(refund, invoice, context)
        if encoding is None:
            return _no_exact_encoding(refund, invoice_id, currency)
        created = context.dolibarr.create_credit_note(
            thirdparty_id=customer.dolibarr_id,
            source_invoice_id=source.dolibarr_id,
            lines=encoding.lines,
            ref_ext=refund_id,
            date=stripe_datetime(refund.get("created")),
            mode_reglement_id=context.setup.card_payment_type_id,
            bank_account_id=context.setup.stripe_account_for(currency),
            note_private=f"Stripe refund {refund_id} of {paid_by} (invoice {invoice_id})",
            multicurrency_code=document_currency,
        )
        current = context.dolibarr.get_invoice(
            invoice_id=created, properties=INVOICE_STATE_PROPERTIES
        )
    if document_currency is not None and current.is_draft:
        wrong = wrong_document_currency(
            kind="refund",
            object_id=refund_id,
            document=current,
            currency=currency,
            snapshot=refund,
        )
        if wrong is not None:
            return wrong
    # Dolibarr stores a credit note's amounts negative (63).
    if current.total_in(currency) != -amount:
        return total_differs(
            kind="refund",
            object_id=refund_id,
            expected=-amount,
            document=current,
            currency=currency,
            snapshot=refund,
            what=DOLIBARR_KIND,
        )

    hits = known_payments(context, record, refund_id)
    if hits is not None and len(hits) > 1:
        return _duplicate_payment(refund, hits)
    ref = "" if current.is_draft else (current.ref or "")
    if current.is_draft or hits is None or not hits:
        with context.lane.hold():
            if current.is_draft:
                validated = context.dolibarr.validate_invoice(invoice_id=current.id)
                if validated.value is not None and validated.value.ref:
                    ref = validated.value.ref
            if hits is None:
                hits = context.dolibarr.find_payments(ref_ext=refund_id)
                if len(hits) > 1:
                    return _duplicate_payment(refund, hits)
            if not hits:
                context.dolibarr.create_payment(
                    amounts={current.id: amount},
                    date=stripe_datetime(refund.get("created")),
                    payment_type_id=context.setup.card_payment_type_id,
                    bank_account_id=context.setup.stripe_account_for(currency),
                    ref_ext=refund_id,
                    num_payment=refund_id,
                    comment=f"Stripe refund {refund_id} of {paid_by}",
                    currency=currency,
                    in_document_currency=document_currency is not None,
                )
    if document_currency is not None:
        close_conversion_remainder(context, current.id, -amount, currency)
    return Synced(DOLIBARR_KIND, current.id, ref)


def _encoding(refund: dict[str, Any], invoice: dict[str, Any], context: SyncContext):
    tax_rates = run_cache(context).tax_rates(context.stripe)
    customer = snapshot_of(
        source=Source.STRIPE, kind="customer", external_id=invoice.get("customer", "")
    )
    amount = int(refund["amount"])
    if amount == int(invoice.get("total") or 0):
        full = full_refund_encoding(invoice, tax_rates=tax_rates, customer=customer)
        if full is not None and full.totals.ttc == stripe_amount(amount, refund["currency"]):
            return full
    return partial_refund_encoding(invoice, amount=amount, tax_rates=tax_rates, customer=customer)


def _no_exact_encoding(refund: dict[str, Any], invoice_id: str, currency: str) -> NeedsReview:
    amount = stripe_amount(refund["amount"], currency)
    summary = (
        f"Refund {refund['id']} of {amount:f} {currency} on invoice {invoice_id}: no credit-note "
        "lines reproduce it to the cent with Dolibarr's per-line rounding; nothing was written"
    )
    return NeedsReview(
        reason=summary,
        mismatch=MismatchSpec(
            kind=MismatchKind.TOTAL_DIFFERS,
            fingerprint_parts=("stripe", "refund", refund["id"]),
            summary=summary,
            currency=currency,
            source_snapshot=refund,
            proposed_fix="enter_credit_note_manually",
            proposed_fix_params={"invoice": invoice_id, "amount": str(amount)},
        ),
    )


def _duplicate_payment(refund: dict[str, Any], hits: list) -> NeedsReview:
    return duplicates(
        kind="refund",
        object_id=refund["id"],
        ref_ext=refund["id"],
        what="payment",
        ids=[hit.id for hit in hits],
        snapshot=refund,
    )
