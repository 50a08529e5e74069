"""Aipress24 one-off purchases -> Dolibarr order, invoice, payment, and credit notes.

A paid purchase (an article consulted, offered, its proof of publication, reproduction rights)
has no Stripe invoice: Checkout in payment mode leaves a payment intent only (README §2.6). So
the console bills it from Aipress24's row, and takes the money from Stripe (docs/aipress24-sync.md):

1. the order `ap24-purchase-<id>` for the customer (the buyer's organisation now, else the buyer
   as an individual), one line of the service product of its type (`AP24-CONSULTATION` …, created
   once if Dolibarr lacks it) at the net amount (`amount_cents`) with the configured VAT rate of
   that type (`AIPRESS24_VAT_RATES`), validated;
2. the invoice created from the order, given the order's `ref_ext` (Dolibarr does not copy it,
   42), validated only when Dolibarr's total equals what Stripe collected for the payment intent
   to the cent — otherwise left a draft with a `total_differs` mismatch;
3. the payment of that payment intent (`ref_ext` = `pi_…`), on the Stripe bank account;
4. the order marked invoiced;
5. for each succeeded Stripe refund of the payment intent, a credit note (`ref_ext` = `re_…`)
   against the invoice, validated, with its refund payment. Stripe is the source of the refund
   (Aipress24 stores no refund amount, and marks a partial refund as a whole REFUNDED, §2.6).

Every step looks before it writes, so a retry after a timeout finds what the lost answer
created: the order and the invoice by `ref_ext`, and an invoice created from the order whose
`ref_ext` was never set by the order's linked objects. Numbered writes (validations, payments)
run in the numbered lane. Pending and failed purchases create nothing; a purchase Aipress24
marks refunded while Stripe shows no refund goes to a person (`refund_missing`).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from reconciliation.connectors.dolibarr import INVOICE_STATE_PROPERTIES
from reconciliation.connectors.dolibarr_types import Invoice, NewLine, Order, ProductType
from reconciliation.errors import ConfigurationError, PermanentError
from reconciliation.models import MismatchKind, Source, SyncRecord, SyncState
from reconciliation.money import currency_code, minor_to_decimal
from reconciliation.sync.aipress24_customers import observe_current
from reconciliation.sync.aipress24_mapping import (
    PRODUCT_LABELS,
    organisation_ref_ext,
    product_ref,
    purchase_lines,
    purchase_ref_ext,
    snapshot_of_row,
    user_ref_ext,
    vat_rate,
)
from reconciliation.sync.base import (
    MismatchSpec,
    NeedsReview,
    Outcome,
    Skipped,
    SyncContext,
    Synced,
    handler,
)
from reconciliation.sync.dependencies import dependency
from reconciliation.sync.invoice_lines import _net_for_gross
from reconciliation.sync.known import Wanted, find_invoices, run_cache, wants
from reconciliation.sync.stripe_common import duplicates

DOLIBARR_KIND = "invoice"
PAID_STATUSES = ("paid", "refunded")


@wants("aipress24", "purchase")
def _purchase_wants(record: SyncRecord) -> Wanted:
    if record.snapshot.get("status") not in PAID_STATUSES:
        return Wanted()
    return Wanted(invoices={purchase_ref_ext(record.external_id)})


def current_purchase(record: SyncRecord, context: SyncContext) -> dict[str, Any] | None:
    """The purchase as Aipress24 holds it now (through the reader, stored on the record), or
    the pull's snapshot without a reader; None when the row is gone."""
    reader = context.aipress24
    if reader is None:
        return record.snapshot
    row = reader.purchase(record.external_id)
    if row is None:
        return None
    return observe_current(record, context, snapshot_of_row(row))


def customer_of(purchase: dict[str, Any]) -> tuple[str, str]:
    """(record kind, external id) of who pays: the buyer's organisation now, as Aipress24
    itself credits purchases (README §3), else the buyer as an individual."""
    if purchase.get("buyer_organisation_id"):
        return "organisation", purchase["buyer_organisation_id"]
    return "user", purchase["buyer_id"]


@handler("aipress24", "purchase")
def aipress24_purchase_sync(record: SyncRecord, context: SyncContext) -> Outcome:
    purchase = current_purchase(record, context)
    if purchase is None:
        return Skipped("no longer in Aipress24 (a pending purchase whose checkout failed)")
    status = purchase.get("status")
    if status not in PAID_STATUSES:
        return Skipped(f"{status} in Aipress24: nothing was paid, nothing is billed")
    intent_id = purchase.get("stripe_payment_intent_id")
    if not intent_id or purchase.get("amount_cents") is None:
        return _review(
            record,
            MismatchKind.STATUS_DIFFERS,
            "no_payment_intent",
            f"Purchase {record.external_id} is {status} in Aipress24 without a Stripe payment "
            "intent or amount: nothing can be billed from it",
            purchase,
        )
    currency = currency_code(purchase.get("currency") or "EUR")
    if not context.setup.is_company_currency(currency):
        return _review(
            record,
            MismatchKind.CURRENCY_UNSUPPORTED,
            "currency",
            f"Purchase {record.external_id} is in {currency}; purchases are billed in "
            f"Dolibarr's company currency ({context.setup.company_currency}) only",
            purchase,
            currency=currency,
        )
    kind, customer_id = customer_of(purchase)
    customer = dependency(context, source=Source.AIPRESS24, kind=kind, external_id=customer_id)
    if not (customer.synced or _known_thirdparty_in_review(customer)):
        return customer.waiting(f"its customer ({kind} {customer_id})")
    if context.stripe is None:
        raise ConfigurationError("purchases are paid through Stripe: set STRIPE_API_KEY")

    intent = context.stripe.payment_intent(intent_id)
    if intent.get("status") != "succeeded":
        return _review(
            record,
            MismatchKind.STATUS_DIFFERS,
            "not_collected",
            f"Purchase {record.external_id} is {status} in Aipress24 but its payment intent "
            f"{intent_id} is {intent.get('status')} in Stripe: nothing was collected",
            purchase,
        )
    collected = minor_to_decimal(int(intent.get("amount_received") or 0), currency)
    refunds = [
        refund
        for refund in context.stripe.refunds(payment_intent=intent_id)
        if refund.get("status") == "succeeded"
    ]
    ref_ext = purchase_ref_ext(record.external_id)

    order = _order(record, context, purchase, ref_ext, customer.dolibarr_id)
    if isinstance(order, NeedsReview):
        return order
    invoice = _invoice(record, context, purchase, ref_ext, order)
    if isinstance(invoice, NeedsReview):
        return invoice
    if invoice.total_ttc != collected:
        return _total_differs(record, purchase, invoice, collected, currency, intent_id)
    ref = invoice.ref or ""
    payments = context.dolibarr.find_payments(ref_ext=intent_id)
    if len(payments) > 1:
        return _duplicates(record, purchase, "payment", intent_id, [p.id for p in payments])
    if invoice.is_draft or not payments:
        with context.lane.hold():
            if invoice.is_draft:
                validated = context.dolibarr.validate_invoice(invoice_id=invoice.id)
                if validated.value is not None and validated.value.ref:
                    ref = validated.value.ref
            if not payments:
                payments = context.dolibarr.find_payments(ref_ext=intent_id)
            if not payments:
                context.dolibarr.create_payment(
                    amounts={invoice.id: collected},
                    date=_moment(purchase.get("paid_at")),
                    payment_type_id=context.setup.card_payment_type_id,
                    bank_account_id=context.setup.stripe_bank_account_id,
                    ref_ext=intent_id,
                    num_payment=intent_id,
                    comment=f"Stripe payment {intent_id} of Aipress24 purchase "
                    f"{record.external_id}",
                    currency=currency,
                )
    if not order.billed:
        context.dolibarr.set_order_invoiced(order_id=order.id)

    for refund in refunds:
        outcome = _credit_note(record, context, purchase, invoice, refund, currency)
        if outcome is not None:
            return outcome
    if status == "refunded" and not refunds:
        return _review(
            record,
            MismatchKind.REFUND_MISSING,
            "refund",
            f"Purchase {record.external_id} is refunded in Aipress24, but Stripe shows no "
            f"succeeded refund of {intent_id}: no credit note was written",
            purchase,
            dolibarr_kind=DOLIBARR_KIND,
            dolibarr_id=invoice.id,
            proposed_fix="check_refund_in_stripe",
            params={"payment_intent": intent_id, "invoice_id": invoice.id},
        )
    return Synced(DOLIBARR_KIND, invoice.id, ref)


def _known_thirdparty_in_review(customer) -> bool:
    """A customer waiting for a person over one of its fields (a `customer_conflict`) still has
    its one thirdparty: its purchases are billed to it meanwhile."""
    return (
        customer.state == SyncState.NEEDS_REVIEW
        and customer.dolibarr_kind == "thirdparty"
        and customer.dolibarr_id is not None
    )


# --- the order and the invoice -------------------------------------------------------------


def _order(
    record: SyncRecord,
    context: SyncContext,
    purchase: dict[str, Any],
    ref_ext: str,
    thirdparty_id: int,
) -> Order | NeedsReview:
    dolibarr = context.dolibarr
    orders = dolibarr.find_orders(ref_ext=ref_ext)
    if len(orders) > 1:
        return _duplicates(record, purchase, "order", ref_ext, [order.id for order in orders])
    if orders:
        order = orders[0]
    else:
        lines = purchase_lines(purchase, product_id=_product_id(context, purchase["product_type"]))
        order_id = dolibarr.create_order(
            thirdparty_id=thirdparty_id,
            date=_moment(purchase.get("paid_at")),
            lines=lines,
            ref_ext=ref_ext,
            ref_client=f"Aipress24 {record.external_id}",
            mode_reglement_id=context.setup.card_payment_type_id,
            note_private=f"Aipress24 purchase {record.external_id} ({purchase['product_type']}), "
            f"paid with Stripe payment intent {purchase.get('stripe_payment_intent_id')}",
        )
        order = dolibarr.get_order(order_id=order_id)
    if order.status == 0:
        with context.lane.hold():
            validated = dolibarr.validate_order(order_id=order.id)
        order = (
            validated.value
            if validated.value is not None
            else dolibarr.get_order(order_id=order.id)
        )
    return order


def _invoice(
    record: SyncRecord,
    context: SyncContext,
    purchase: dict[str, Any],
    ref_ext: str,
    order: Order,
) -> Invoice | NeedsReview:
    dolibarr = context.dolibarr
    found = find_invoices(context, record, ref_ext)
    if len(found) > 1:
        return _duplicates(record, purchase, "invoice", ref_ext, [item.id for item in found])
    if found:
        invoice_id = found[0].id
    else:
        # An invoice created from this order whose `ref_ext` was never set (the answer to the
        # creation was lost): the order's linked objects still name it.
        linked = _linked_invoices(dolibarr.get_order(order_id=order.id))
        if len(linked) > 1:
            return _duplicates(record, purchase, "invoice", ref_ext, linked)
        if linked:
            invoice_id = linked[0]
        else:
            invoice_id = dolibarr.create_invoice_from_order(order_id=order.id).id
        dolibarr.update_invoice(
            invoice_id=invoice_id,
            changes={
                "ref_ext": ref_ext,
                "fk_account": context.setup.stripe_bank_account_id,
                "mode_reglement_id": context.setup.card_payment_type_id,
            },
        )
    return dolibarr.get_invoice(invoice_id=invoice_id, properties=INVOICE_STATE_PROPERTIES)


def _linked_invoices(order: Order) -> list[int]:
    links = order.raw.get("linkedObjectsIds") or {}
    invoices = links.get("facture") if isinstance(links, dict) else None
    values = invoices.values() if isinstance(invoices, dict) else (invoices or [])
    return sorted({int(value) for value in values})


def _product_id(context: SyncContext, product_type: str) -> int:
    """The service product of a purchase type, created once when Dolibarr lacks it; looked up
    once per run."""
    ref = product_ref(product_type)
    return run_cache(context).product(ref, lambda: _find_or_create_product(context, product_type))


def _find_or_create_product(context: SyncContext, product_type: str) -> int:
    ref = product_ref(product_type)
    dolibarr = context.dolibarr
    found = dolibarr.find_products(ref=ref)
    if found:
        return found[0].id
    try:
        return dolibarr.create_product(
            ref=ref,
            label=f"Aipress24 — {PRODUCT_LABELS.get(product_type, product_type)}",
            type=ProductType.SERVICE,
            price=Decimal(0),
            tva_tx=vat_rate(product_type),
            description="Sold on Aipress24; the price of each sale is on its order line",
        )
    except PermanentError:
        # Created meanwhile by another worker (a product ref is unique: the second is refused).
        found = dolibarr.find_products(ref=ref)
        if found:
            return found[0].id
        raise


# --- refunds --------------------------------------------------------------------------------


def _credit_note(
    record: SyncRecord,
    context: SyncContext,
    purchase: dict[str, Any],
    invoice: Invoice,
    refund: dict[str, Any],
    currency: str,
) -> NeedsReview | None:
    """The credit note of one Stripe refund, validated, with its refund payment."""
    dolibarr = context.dolibarr
    refund_id = refund["id"]
    amount = minor_to_decimal(int(refund["amount"]), currency)
    found = dolibarr.find_invoices(ref_ext=refund_id)
    if len(found) > 1:
        return _duplicates(record, purchase, "credit_note", refund_id, [item.id for item in found])
    if found:
        credit_id = found[0].id
    else:
        lines = _refund_lines(purchase, invoice, int(refund["amount"]), currency)
        if lines is None:
            return _review(
                record,
                MismatchKind.TOTAL_DIFFERS,
                f"refund-{refund_id}",
                f"Refund {refund_id} of {amount:f} {currency} on purchase {record.external_id}: "
                "no credit-note line reproduces it to the cent with Dolibarr's rounding; "
                "nothing was written",
                purchase,
                currency=currency,
                proposed_fix="enter_credit_note_manually",
                params={"invoice_id": invoice.id, "amount": str(amount)},
            )
        credit_id = dolibarr.create_credit_note(
            thirdparty_id=invoice.thirdparty_id,
            source_invoice_id=invoice.id,
            lines=lines,
            ref_ext=refund_id,
            date=_moment(refund.get("created")),
            mode_reglement_id=context.setup.card_payment_type_id,
            bank_account_id=context.setup.stripe_bank_account_id,
            note_private=f"Stripe refund {refund_id} of Aipress24 purchase {record.external_id}",
        )
    credit = dolibarr.get_invoice(invoice_id=credit_id, properties=INVOICE_STATE_PROPERTIES)
    if credit.total_ttc != -amount:
        return _review(
            record,
            MismatchKind.TOTAL_DIFFERS,
            f"refund-{refund_id}",
            f"Credit note {credit.id} totals {credit.total_ttc} {currency}, Stripe refund "
            f"{refund_id} {-amount}: left as it is",
            purchase,
            currency=currency,
        )
    payments = dolibarr.find_payments(ref_ext=refund_id)
    if len(payments) > 1:
        return _duplicates(record, purchase, "payment", refund_id, [p.id for p in payments])
    if credit.is_draft or not payments:
        with context.lane.hold():
            if credit.is_draft:
                dolibarr.validate_invoice(invoice_id=credit.id)
            if not payments:
                payments = dolibarr.find_payments(ref_ext=refund_id)
            if not payments:
                dolibarr.create_payment(
                    amounts={credit.id: amount},
                    date=_moment(refund.get("created")),
                    payment_type_id=context.setup.card_payment_type_id,
                    bank_account_id=context.setup.stripe_bank_account_id,
                    ref_ext=refund_id,
                    num_payment=refund_id,
                    comment=f"Stripe refund {refund_id} of Aipress24 purchase {record.external_id}",
                    currency=currency,
                )
    return None


def _refund_lines(
    purchase: dict[str, Any], invoice: Invoice, amount: int, currency: str
) -> tuple[NewLine, ...] | None:
    """A full refund repeats the purchase's line; a partial one is one line at its VAT rate
    whose net makes exactly the refunded amount (None when no net does)."""
    full = purchase_lines(purchase, product_id=None)
    if minor_to_decimal(amount, currency) == invoice.total_ttc:
        return full
    rate = vat_rate(purchase["product_type"])
    net = _net_for_gross(amount, rate)
    if net is None:
        return None
    return (
        NewLine(
            qty=Decimal(1),
            subprice=minor_to_decimal(net, currency),
            tva_tx=rate,
            description=f"Remboursement partiel — {full[0].description}",
        ),
    )


# --- outcomes -------------------------------------------------------------------------------


def _moment(value: Any):
    from datetime import UTC, datetime

    if value is None or value == "":
        return datetime.now(tz=UTC)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(int(value), tz=UTC)
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def _review(
    record: SyncRecord,
    kind: str,
    what: str,
    summary: str,
    purchase: dict[str, Any],
    *,
    currency: str = "",
    dolibarr_kind: str = "",
    dolibarr_id: int | None = None,
    proposed_fix: str = "",
    params: dict[str, Any] | None = None,
) -> NeedsReview:
    return NeedsReview(
        reason=summary,
        mismatch=MismatchSpec(
            kind=kind,
            fingerprint_parts=("aipress24", "purchase", record.external_id, what),
            summary=summary,
            currency=currency,
            source_snapshot=purchase,
            proposed_fix=proposed_fix,
            proposed_fix_params=params or {},
        ),
        dolibarr_kind=dolibarr_kind,
        dolibarr_id=dolibarr_id,
    )


def _duplicates(
    record: SyncRecord, purchase: dict[str, Any], what: str, ref_ext: str, ids: list[int]
) -> NeedsReview:
    return duplicates(
        source="aipress24",
        kind="purchase",
        object_id=record.external_id,
        ref_ext=ref_ext,
        what=what,
        ids=ids,
        snapshot=purchase,
    )


def _total_differs(
    record: SyncRecord,
    purchase: dict[str, Any],
    invoice: Invoice,
    collected: Decimal,
    currency: str,
    intent_id: str,
) -> NeedsReview:
    total = invoice.total_ttc if invoice.total_ttc is not None else Decimal(0)
    state = "draft" if invoice.is_draft else "validated"
    summary = (
        f"Dolibarr invoice {invoice.id} ({state}) of purchase {record.external_id} totals "
        f"{total.normalize():f} {currency}; Stripe collected {collected:f} for {intent_id} "
        f"(VAT {vat_rate(purchase['product_type'])} % from AIPRESS24_VAT_RATES): "
        + ("left as a draft, not validated, no payment" if invoice.is_draft else "validated")
    )
    return NeedsReview(
        reason=summary,
        mismatch=MismatchSpec(
            kind=MismatchKind.TOTAL_DIFFERS,
            fingerprint_parts=("aipress24", "purchase", record.external_id, "total"),
            summary=summary,
            amount_difference=total - collected,
            currency=currency,
            source_snapshot=purchase,
            dolibarr_snapshot={
                "id": invoice.id,
                "ref": invoice.ref,
                "total_ht": str(invoice.total_ht),
                "total_tva": str(invoice.total_tva),
                "total_ttc": str(invoice.total_ttc),
            },
            proposed_fix="correct_draft_lines" if invoice.is_draft else "credit_note_difference",
            proposed_fix_params={
                "dolibarr_id": invoice.id,
                "expected_total": str(collected),
                "dolibarr_total": str(total),
            },
        ),
        dolibarr_kind=DOLIBARR_KIND,
        dolibarr_id=invoice.id,
    )


__all__ = ["aipress24_purchase_sync", "customer_of", "organisation_ref_ext", "user_ref_ext"]
