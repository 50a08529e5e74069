"""Stripe invoices -> Dolibarr invoices, with the payments that paid them.

For a new paid invoice the work is four Dolibarr calls: create the draft with its lines, read
back the total Dolibarr computed, validate, pay. The look-ups that guard them (is the invoice
there? is the payment there?) are made for a whole batch of records at once (`sync.known`).

- The draft is validated only when Dolibarr's `total_ttc` equals Stripe's total to the cent: a
  validated invoice takes a definitive number and cannot be deleted (DESIGN §4). Otherwise it
  stays a draft and a `total_differs` mismatch says by how much.
- Validation and payments run in the numbered lane (parallel validations fail on the number's
  unique key, parallel payments share a `PAY…` ref: README, "Concurrency"). A payment is
  created only after the invoice was validated in this same hold or seen validated (a draft
  can be paid, 153), through `paymentsdistributed` with the exact amount, `ref_ext` = the
  payment intent and `num_payment` = the charge, so the bank line names the charge (163).
- Zero-total invoices are validated and then closed as paid (they stay unpaid otherwise, 131);
  void ones are closed `abandon` if they were validated (a validated invoice cannot be
  deleted), skipped if they never reached Dolibarr; uncollectible ones are closed
  `badcustomer` (135-138).
- An invoice in another currency than the company's is a multicurrency document in its own
  currency (when the module is on and the currency configured; `stripe_common.currency_problem`):
  created with `multicurrency_code`, checked and paid in that currency on that currency's Stripe
  account, and closed as paid if Dolibarr's conversion leaves a rounding cent open.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from reconciliation.connectors.dolibarr import INVOICE_STATE_PROPERTIES
from reconciliation.connectors.dolibarr_types import Invoice, InvoiceStatus
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
from reconciliation.sync.invoice_lines import invoice_encoding, stripe_totals
from reconciliation.sync.known import (
    Wanted,
    find_invoices,
    known_payments,
    payment_intents_of,
    payment_reference,
    run_cache,
    wants,
)
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

DOLIBARR_KIND = "invoice"


@dataclass(frozen=True)
class PaymentDue:
    """One payment Stripe collected for the invoice, as Dolibarr must record it."""

    ref_ext: str  # the payment intent (or charge) id
    amount: Decimal
    date: datetime
    num_payment: str


def paid_payments(invoice: dict[str, Any]) -> list[PaymentDue]:
    """The invoice's paid invoice payments, one per payment intent (amounts summed if Stripe
    lists one twice)."""
    currency = invoice["currency"]
    grouped: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
    for item in payment_intents_of(invoice):
        reference = payment_reference(item)
        if item.get("status") == "paid" and reference and int(item.get("amount_paid") or 0) > 0:
            grouped.setdefault(reference, []).append(item)
    result = []
    for reference, items in grouped.items():
        paid_at = stripe_datetime(
            *((item.get("status_transitions") or {}).get("paid_at") for item in items),
            (invoice.get("status_transitions") or {}).get("paid_at"),
            invoice.get("created"),
        )
        result.append(
            PaymentDue(
                ref_ext=reference,
                amount=sum(
                    (stripe_amount(item["amount_paid"], currency) for item in items), Decimal(0)
                ),
                date=paid_at,
                num_payment=_charge_of(reference),
            )
        )
    return result


def _charge_of(reference: str) -> str:
    """The charge that collected a payment intent (`latest_charge` of its record), so that the
    bank line's `num_chq` names the charge (163); the payment intent itself when unknown."""
    if not reference.startswith("pi_"):
        return reference
    snapshot = snapshot_of(source=Source.STRIPE, kind="payment_intent", external_id=reference)
    charge = (snapshot or {}).get("latest_charge")
    if isinstance(charge, dict):
        charge = charge.get("id")
    return charge if isinstance(charge, str) and charge else reference


@wants("stripe", "invoice")
def _invoice_wants(record: SyncRecord) -> Wanted:
    invoice = record.snapshot
    references = {
        payment_reference(item)
        for item in payment_intents_of(invoice)
        if item.get("status") == "paid" and payment_reference(item)
    }
    return Wanted(invoices={invoice["id"]}, payments=references)


@handler("stripe", "invoice")
def stripe_invoice_sync(record: SyncRecord, context: SyncContext) -> Outcome:
    invoice = record.snapshot
    invoice_id = invoice["id"]
    status = invoice.get("status")
    if status == "draft":
        return Skipped("a draft in Stripe: nothing is billed until it is finalized")
    if status == "void":
        return _void(record, invoice, context)
    problem = currency_problem(
        context,
        kind="invoice",
        object_id=invoice_id,
        currency=invoice.get("currency") or "",
        amount=int(invoice.get("total") or 0),
        snapshot=invoice,
    )
    if problem is not None:
        return problem
    customer = dependency(
        context, source=Source.STRIPE, kind="customer", external_id=invoice["customer"]
    )
    if not customer.synced:
        return customer.waiting(f"customer {invoice['customer']}")

    currency = currency_code(invoice["currency"])
    expected = stripe_totals(invoice).ttc
    current = single_document(
        find_invoices(context, record, invoice_id), kind="invoice", what="invoice", snapshot=invoice
    )
    if isinstance(current, NeedsReview):
        return current
    document_currency = in_document_currency(context, currency)
    if current is None:
        created = _create_draft(invoice, customer.dolibarr_id, context, document_currency)
        if isinstance(created, Skipped):
            return created
        current = context.dolibarr.get_invoice(
            invoice_id=created, properties=INVOICE_STATE_PROPERTIES
        )
    if document_currency is not None and current.is_draft:
        wrong = wrong_document_currency(
            kind="invoice",
            object_id=invoice_id,
            document=current,
            currency=currency,
            snapshot=invoice,
        )
        if wrong is not None:
            return wrong
    if current.total_in(currency) != expected:
        return total_differs(
            kind="invoice",
            object_id=invoice_id,
            expected=expected,
            document=current,
            currency=currency,
            snapshot=invoice,
        )

    payments = paid_payments(invoice)
    outcome, ref = _validate_and_pay(record, context, invoice, current, payments, currency)
    if outcome is not None:
        return outcome
    if status == "paid" and expected == 0 and current.status != InvoiceStatus.CLOSED:
        context.dolibarr.close_zero_total_invoice(invoice_id=current.id)
    elif status == "paid":
        collected = sum((payment.amount for payment in payments), Decimal(0))
        if collected != expected:
            return _paid_without_payments(invoice, current, collected, expected, currency)
        if document_currency is not None:
            close_conversion_remainder(context, current.id, collected, currency)
    elif status == "uncollectible" and current.close_code != "badcustomer":
        context.dolibarr.close_invoice_unpaid(
            invoice_id=current.id,
            close_code="badcustomer",
            close_note=f"Marked uncollectible in Stripe ({invoice_id})",
        )
    return Synced(DOLIBARR_KIND, current.id, ref)


def _create_draft(
    invoice: dict[str, Any],
    thirdparty_id: int,
    context: SyncContext,
    document_currency: str | None,
):
    customer = snapshot_of(source=Source.STRIPE, kind="customer", external_id=invoice["customer"])
    encoding = invoice_encoding(
        invoice, tax_rates=run_cache(context).tax_rates(context.stripe), customer=customer
    )
    if encoding is None:
        return Skipped("the Stripe invoice has no lines: there is nothing to write")
    number = invoice.get("number") or ""
    return context.dolibarr.create_invoice(
        thirdparty_id=thirdparty_id,
        lines=encoding.lines,
        ref_ext=invoice["id"],
        date=stripe_datetime(
            invoice.get("effective_at"),
            (invoice.get("status_transitions") or {}).get("finalized_at"),
            invoice.get("created"),
        ),
        ref_client=number or None,
        mode_reglement_id=context.setup.card_payment_type_id,
        bank_account_id=context.setup.stripe_account_for(currency_code(invoice["currency"])),
        note_private=f"Stripe invoice {invoice['id']} {number}".strip(),
        multicurrency_code=document_currency,
    )


def _validate_and_pay(
    record: SyncRecord,
    context: SyncContext,
    invoice: dict[str, Any],
    current: Invoice,
    payments: list[PaymentDue],
    currency: str,
) -> tuple[Outcome | None, str]:
    """Validate (if still a draft) and create the missing payments, in one hold of the lane.
    Payments the batched look-up did not answer for are looked up here, inside the lane.
    Returns an outcome when something needs review, and the invoice's definitive ref."""
    ref = "" if current.is_draft else (current.ref or "")
    missing: list[PaymentDue] = []
    unknown: list[PaymentDue] = []
    noted: list[tuple[str, int, str]] = []  # payments that exist: (ref_ext, id, ref)
    for payment in payments:
        hits = known_payments(context, record, payment.ref_ext)
        if hits is None:
            unknown.append(payment)
        elif len(hits) > 1:
            return _duplicate_payment(invoice, payment, hits), ref
        elif not hits:
            missing.append(payment)
        else:
            noted.append((payment.ref_ext, hits[0].id, hits[0].ref or ""))
    if not (current.is_draft or missing or unknown):
        _note_payments(context, noted)
        return None, ref
    dolibarr = context.dolibarr
    with context.lane.hold():
        if current.is_draft:
            validated = dolibarr.validate_invoice(invoice_id=current.id)
            if validated.value is not None and validated.value.ref:
                ref = validated.value.ref
        for payment in unknown:
            hits = dolibarr.find_payments(ref_ext=payment.ref_ext)
            if len(hits) > 1:
                return _duplicate_payment(invoice, payment, hits), ref
            if not hits:
                missing.append(payment)
            else:
                noted.append((payment.ref_ext, hits[0].id, hits[0].ref or ""))
        for payment in missing:
            payment_id = dolibarr.create_payment(
                amounts={current.id: payment.amount},
                date=payment.date,
                payment_type_id=context.setup.card_payment_type_id,
                bank_account_id=context.setup.stripe_account_for(currency),
                ref_ext=payment.ref_ext,
                num_payment=payment.num_payment,
                comment=f"Stripe {payment.ref_ext} for invoice {invoice.get('number') or ''}",
                currency=currency,
                in_document_currency=in_document_currency(context, currency) is not None,
            )
            noted.append((payment.ref_ext, payment_id, ""))
    _note_payments(context, noted)
    return None, ref


def _note_payments(context: SyncContext, noted: list[tuple[str, int, str]]) -> None:
    """Tell the run which payments exist, so that the charges and payment intents that point
    at them need no look-up (`RunCache.note_payment`). Not in a dry run: a planned payment's
    id is a placeholder."""
    if context.dry_run:
        return
    cache = run_cache(context)
    for ref_ext, payment_id, ref in noted:
        if isinstance(payment_id, int) and payment_id > 0:
            cache.note_payment(ref_ext, payment_id, ref)


def _duplicate_payment(invoice: dict[str, Any], payment: PaymentDue, hits: list) -> NeedsReview:
    return duplicates(
        kind="invoice",
        object_id=invoice["id"],
        ref_ext=payment.ref_ext,
        what="payment",
        ids=[hit.id for hit in hits],
        snapshot=invoice,
    )


def _paid_without_payments(
    invoice: dict[str, Any], current: Invoice, collected: Decimal, expected: Decimal, currency
) -> NeedsReview:
    summary = (
        f"Stripe invoice {invoice['id']} is paid, but the payments Stripe lists cover "
        f"{collected:f} of {expected:f} {currency} (paid out of band or from a credit balance): "
        "Dolibarr invoice left unpaid"
    )
    return NeedsReview(
        reason=summary,
        mismatch=MismatchSpec(
            kind=MismatchKind.STATUS_DIFFERS,
            fingerprint_parts=("stripe", "invoice", invoice["id"], "paid"),
            summary=summary,
            amount_difference=expected - collected,
            currency=currency,
            source_snapshot=invoice,
            dolibarr_snapshot={"id": current.id, "status": current.status},
            proposed_fix="record_payment",
            proposed_fix_params={"dolibarr_id": current.id, "amount": str(expected - collected)},
        ),
        dolibarr_kind=DOLIBARR_KIND,
        dolibarr_id=current.id,
    )


def _void(record: SyncRecord, invoice: dict[str, Any], context: SyncContext) -> Outcome:
    invoice_id = invoice["id"]
    current = single_document(
        find_invoices(context, record, invoice_id), kind="invoice", what="invoice", snapshot=invoice
    )
    if current is None:
        return Skipped("voided in Stripe before it reached Dolibarr: nothing was billed")
    if isinstance(current, NeedsReview):
        return current
    if current.status == InvoiceStatus.CLOSED and current.close_code == "abandon":
        return Synced(DOLIBARR_KIND, current.id, current.ref or "")
    if current.is_draft or current.paid or current.status != InvoiceStatus.VALIDATED:
        state = "a draft" if current.is_draft else "closed or paid"
        summary = (
            f"Stripe invoice {invoice_id} was voided; Dolibarr invoice {current.id} is {state}"
        )
        return NeedsReview(
            reason=summary,
            mismatch=MismatchSpec(
                kind=MismatchKind.STATUS_DIFFERS,
                fingerprint_parts=("stripe", "invoice", invoice_id, "void"),
                summary=summary,
                source_snapshot=invoice,
                dolibarr_snapshot={"id": current.id, "status": current.status},
                proposed_fix="delete_draft" if current.is_draft else "credit_note",
                proposed_fix_params={"dolibarr_id": current.id},
            ),
            dolibarr_kind=DOLIBARR_KIND,
            dolibarr_id=current.id,
        )
    context.dolibarr.close_invoice_unpaid(
        invoice_id=current.id,
        close_code="abandon",
        close_note=f"Voided in Stripe ({invoice_id})",
    )
    return Synced(DOLIBARR_KIND, current.id, current.ref or "")
