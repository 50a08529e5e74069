"""Stripe charges and payment intents: pointers to the Dolibarr payment, never writers.

The money a charge collected is written through its invoice (`stripe_invoices`), which knows
the amount to put on which Dolibarr invoice: a charge carries no `invoice` field in API
2026-10-28 (DESIGN §10), and two writers of one payment would be one too many. So a charge or
payment intent record only says where its money is:

- succeeded and paying a Stripe invoice: Synced to the Dolibarr payment (`ref_ext` = the payment
  intent) once the invoice sync wrote it, Waiting before;
- failed, canceled, still requiring payment: Skipped with Stripe's failure code (no money);
- disputed: needs review — the money may go back, and only a person knows how the dispute ends;
- not paying any Stripe invoice (an article bought in Aipress24): Skipped, billed from the
  Aipress24 purchase (docs/aipress24-sync.md);
- in a currency Dolibarr cannot take (not the company's, and not written as a multicurrency
  document): Skipped, the invoice carries the currency mismatch.
"""

from __future__ import annotations

from typing import Any

from reconciliation.models import MismatchKind, Source, SyncRecord
from reconciliation.money import currency_code, is_known_currency
from reconciliation.sync.base import (
    MismatchSpec,
    NeedsReview,
    Outcome,
    Skipped,
    SyncContext,
    Synced,
    Waiting,
    handler,
)
from reconciliation.sync.dependencies import WAIT_FOR_PENDING, dependency
from reconciliation.sync.known import Wanted, known_payments, run_cache, wants
from reconciliation.sync.stripe_common import duplicates, foreign_currency_reason, stripe_amount

DOLIBARR_KIND = "payment"

PURCHASE_FLOW = (
    "no Stripe invoice names this payment: billed from the Aipress24 purchase "
    "(docs/aipress24-sync.md)"
)


def _reference(kind: str, payment: dict[str, Any]) -> str:
    if kind == "charge":
        return payment.get("payment_intent") or payment["id"]
    return payment["id"]


@wants("stripe", "charge", points_at_payments=True)
def _charge_wants(record: SyncRecord) -> Wanted:
    charge = record.snapshot
    if charge.get("status") != "succeeded" or charge.get("disputed"):
        return Wanted()
    return Wanted(payments={_reference("charge", charge)})


@wants("stripe", "payment_intent", points_at_payments=True)
def _payment_intent_wants(record: SyncRecord) -> Wanted:
    if record.snapshot.get("status") != "succeeded":
        return Wanted()
    return Wanted(payments={record.snapshot["id"]})


@handler("stripe", "charge")
def stripe_charge_sync(record: SyncRecord, context: SyncContext) -> Outcome:
    charge = record.snapshot
    status = charge.get("status")
    if status == "failed":
        code = charge.get("failure_code") or "no failure code"
        return Skipped(f"failed in Stripe ({code}): no money was collected")
    if status != "succeeded":
        return Skipped(f"{status} in Stripe: no money collected yet")
    if charge.get("disputed"):
        return _disputed(charge)
    return _payment_of_invoice(record, context, "charge", charge)


@handler("stripe", "payment_intent")
def stripe_payment_intent_sync(record: SyncRecord, context: SyncContext) -> Outcome:
    intent = record.snapshot
    status = intent.get("status")
    if status != "succeeded":
        error = intent.get("last_payment_error") or {}
        code = error.get("decline_code") or error.get("code")
        detail = f" ({code})" if code else ""
        return Skipped(f"{status} in Stripe{detail}: no money was collected")
    return _payment_of_invoice(record, context, "payment_intent", intent)


def _payment_of_invoice(
    record: SyncRecord, context: SyncContext, kind: str, payment: dict[str, Any]
) -> Outcome:
    reference = _reference(kind, payment)
    invoice_id = run_cache(context).invoice_of_payment_intent(reference)
    if invoice_id is None:
        return Skipped(PURCHASE_FLOW)
    currency = payment.get("currency") or ""
    company = context.setup.company_currency
    if not is_known_currency(currency) or (
        foreign_currency_reason(context.setup, currency_code(currency), needs_payout_account=False)
        is not None
    ):
        return Skipped(
            f"in {currency.upper()}, not {company}: the currency mismatch is on invoice "
            f"{invoice_id}, whose payment this is"
        )
    noted = run_cache(context).noted_payment(reference)
    if noted is not None:
        # Its invoice's record wrote or found it earlier in this run.
        return Synced(DOLIBARR_KIND, noted[0], noted[1])
    hits = known_payments(context, record, reference)
    from_batch = hits is not None
    if hits is None:
        hits = context.dolibarr.find_payments(ref_ext=reference)
    invoice = dependency(context, source=Source.STRIPE, kind="invoice", external_id=invoice_id)
    if not hits and from_batch and invoice.synced:
        # The payment is written by the invoice's record, not this one: the batched look-up
        # may predate it (another worker paid the invoice since). Ask again before waiting.
        hits = context.dolibarr.find_payments(ref_ext=reference)
    if len(hits) > 1:
        return duplicates(
            kind=kind,
            object_id=payment["id"],
            ref_ext=reference,
            what="payment",
            ids=[hit.id for hit in hits],
            snapshot=payment,
        )
    if hits:
        return Synced(DOLIBARR_KIND, hits[0].id, hits[0].ref or "")
    if invoice.synced:
        # The invoice is synced without this payment: Stripe's invoice snapshot does not list
        # it as paid yet; the invoice's next snapshot will.
        return Waiting(
            f"invoice {invoice_id} is synced but does not list {reference} as paid yet",
            delay=WAIT_FOR_PENDING,
        )
    return invoice.waiting(f"invoice {invoice_id}, which this payment paid,")


def _disputed(charge: dict[str, Any]) -> NeedsReview:
    currency = charge.get("currency") or ""
    amount = (
        stripe_amount(charge.get("amount") or 0, currency) if is_known_currency(currency) else None
    )
    summary = (
        f"Charge {charge['id']} is disputed in Stripe: its payment stays in Dolibarr until the "
        "dispute ends; a lost dispute needs a credit note and refund payment"
    )
    return NeedsReview(
        reason=summary,
        mismatch=MismatchSpec(
            kind=MismatchKind.STATUS_DIFFERS,
            fingerprint_parts=("stripe", "charge", charge["id"], "dispute"),
            summary=summary,
            amount_difference=amount,
            currency=currency.upper(),
            source_snapshot=charge,
            proposed_fix="credit_note_if_dispute_lost",
            proposed_fix_params={
                "charge": charge["id"],
                "payment_intent": charge.get("payment_intent"),
                "amount": str(amount) if amount is not None else None,
            },
        ),
    )
