"""What the Stripe handlers share: the currency rule, duplicate and total mismatches, dates."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from reconciliation.connectors.dolibarr_types import Invoice, InvoiceStatus
from reconciliation.models import MismatchKind
from reconciliation.money import currency_code, is_known_currency, minor_to_decimal
from reconciliation.sync.base import DolibarrSetup, MismatchSpec, NeedsReview, SyncContext


def stripe_datetime(*values: Any) -> datetime | None:
    """The first Unix timestamp among `values`, as an aware UTC datetime."""
    for value in values:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return datetime.fromtimestamp(value, tz=UTC)
    return None


def stripe_amount(minor: int, currency: str) -> Decimal:
    return minor_to_decimal(int(minor), currency)


def currency_problem(
    context: SyncContext,
    *,
    kind: str,
    object_id: str,
    currency: str,
    amount: int,
    snapshot: dict[str, Any],
    needs_payout_account: bool = False,
) -> NeedsReview | None:
    """None when the amount can be written as it is; else a `currency_unsupported` mismatch.

    An amount in the company currency is written as it is. One in another currency is written
    in that currency as a multicurrency document, on the Dolibarr bank account that stands for
    Stripe's balance in it — never converted by this console — when the multicurrency module is
    on (`DOLIBARR_MULTICURRENCY`), the currency is configured (`DOLIBARR_STRIPE_BANK_ACCOUNTS`,
    and `DOLIBARR_PAYOUT_BANK_ACCOUNTS` for payouts) and Dolibarr knows it. Otherwise it waits
    for a person, and the mismatch says which of these is missing."""
    setup = context.setup
    company = setup.company_currency
    if not is_known_currency(currency or ""):
        summary = f"{kind} {object_id} is in {currency!r}, a currency whose decimals are unknown"
        shown = ""
    else:
        code = currency_code(currency)
        reason = foreign_currency_reason(setup, code, needs_payout_account=needs_payout_account)
        if reason is None:
            return None
        shown = code
        value = minor_to_decimal(int(amount), code)
        summary = (
            f"{kind} {object_id} is {value} {code}; Dolibarr's company currency is {company} "
            f"and {reason}: nothing was converted or written"
        )
    return NeedsReview(
        reason=summary,
        mismatch=MismatchSpec(
            kind=MismatchKind.CURRENCY_UNSUPPORTED,
            fingerprint_parts=("stripe", kind, object_id),
            summary=summary,
            severity="info",
            currency=shown,
            source_snapshot=snapshot,
            proposed_fix="enter_manually",
            proposed_fix_params={"currency": shown, "company_currency": company},
        ),
    )


def foreign_currency_reason(
    setup: DolibarrSetup, code: str, *, needs_payout_account: bool
) -> str | None:
    """Why an amount in `code` cannot be written (None: it can)."""
    if setup.is_company_currency(code):
        return None
    if not setup.multicurrency_enabled:
        return "multicurrency is off (DOLIBARR_MULTICURRENCY)"
    foreign = setup.foreign_currencies.get(code)
    if foreign is None or foreign.stripe_bank_account_id is None:
        return (
            f"no Dolibarr bank account is configured for Stripe's {code} balance "
            "(DOLIBARR_STRIPE_BANK_ACCOUNTS)"
        )
    if foreign.problem:
        return foreign.problem
    if needs_payout_account and foreign.payout_bank_account_id is None:
        return (
            f"no Dolibarr bank account is configured for {code} payouts "
            "(DOLIBARR_PAYOUT_BANK_ACCOUNTS)"
        )
    return None


def in_document_currency(context: SyncContext, currency: str) -> str | None:
    """The multicurrency code to create a document with: None for the company currency (a
    plain document), else the ISO code."""
    code = currency_code(currency)
    return None if context.setup.is_company_currency(code) else code


def wrong_document_currency(
    *, kind: str, object_id: str, document: Invoice, currency: str, snapshot: dict[str, Any]
) -> NeedsReview | None:
    """None when the draft is in `currency`; else a review: Dolibarr replaces a currency its
    multicurrency module does not know by the company currency without a word, and the draft
    then holds the foreign amounts as if they were euros. It must not be validated."""
    actual = (document.multicurrency_code or "").upper()
    if actual == currency:
        return None
    summary = (
        f"Dolibarr created draft {document.id} for {kind} {object_id} in {actual or 'no currency'}"
        f" instead of {currency} (its multicurrency module does not take {currency}): the draft "
        "was not validated; delete it, add the currency in Dolibarr, then retry"
    )
    return NeedsReview(
        reason=summary,
        mismatch=MismatchSpec(
            kind=MismatchKind.CURRENCY_UNSUPPORTED,
            fingerprint_parts=("stripe", kind, object_id, "document-currency"),
            summary=summary,
            currency=currency,
            source_snapshot=snapshot,
            dolibarr_snapshot={"id": document.id, "multicurrency_code": actual},
            proposed_fix="delete_draft",
            proposed_fix_params={"dolibarr_id": document.id},
        ),
        dolibarr_kind="invoice",
        dolibarr_id=document.id,
    )


def close_conversion_remainder(
    context: SyncContext, invoice_id: int, collected: Decimal, currency: str
) -> None:
    """A multicurrency invoice (or credit note) paid in full in its currency may stay open in
    Dolibarr by a rounding cent of the company currency (each line and each payment is
    converted and rounded on its own); close it as paid, saying why. `collected` is what the
    payments cover in the document's currency (negative on a credit note). One read, and a
    write only when it is still open. Not planned in a dry run: whether Dolibarr leaves a
    remainder depends on its rate, which a plan does not know."""
    if context.dry_run:
        return
    state = context.dolibarr.get_invoice(invoice_id=invoice_id, properties=("paye", "statut"))
    if state.paid or state.status != InvoiceStatus.VALIDATED:
        return
    context.dolibarr.close_paid_in_document_currency(
        invoice_id=invoice_id,
        paid=collected,
        close_note=(
            f"Paid in full in {currency} ({collected:f}); the rest in the company currency is "
            "the conversion's rounding"
        ),
    )


def duplicates(
    *,
    kind: str,
    object_id: str,
    ref_ext: str,
    what: str,
    ids: list[int],
    snapshot: dict[str, Any],
    source: str = "stripe",
) -> NeedsReview:
    """Several Dolibarr objects for one source object: a person keeps one (Dolibarr does not
    deduplicate, 46, 47)."""
    return NeedsReview(
        reason=f"{len(ids)} Dolibarr {what}s carry ref_ext {ref_ext}",
        mismatch=MismatchSpec(
            kind=MismatchKind.DUPLICATE_IN_DOLIBARR,
            fingerprint_parts=(source, kind, object_id, what),
            summary=f"{len(ids)} Dolibarr {what}s carry ref_ext {ref_ext} "
            f"(ids {', '.join(map(str, ids))})",
            source_snapshot=snapshot,
            dolibarr_snapshot={f"{what}_ids": ids},
            proposed_fix=f"remove_duplicate_{what}",
            proposed_fix_params={"keep": ids[0], "remove": ids[1:]},
        ),
    )


def single_document(
    found: list[Invoice], *, kind: str, what: str, snapshot: dict[str, Any]
) -> Invoice | NeedsReview | None:
    """The one Dolibarr document carrying the source object's id as `ref_ext`, None when there
    is none, or a review when there are several (Dolibarr does not deduplicate: 46, 47)."""
    if len(found) > 1:
        return duplicates(
            kind=kind,
            object_id=snapshot["id"],
            ref_ext=snapshot["id"],
            what=what,
            ids=[item.id for item in found],
            snapshot=snapshot,
        )
    return found[0] if found else None


def total_differs(
    *,
    kind: str,
    object_id: str,
    expected: Decimal,
    document: Invoice,
    currency: str,
    snapshot: dict[str, Any],
    what: str = "invoice",
) -> NeedsReview:
    total = document.total_in(currency)
    actual = total if total is not None else Decimal(0)
    difference = actual - expected
    state = "draft" if document.is_draft else "validated"
    summary = (
        f"Dolibarr {what} {document.id} ({state}) totals {actual.normalize():f} {currency}, "
        f"Stripe {kind} {object_id} {expected:f}: "
        + ("left as a draft, not validated" if document.is_draft else "already validated")
    )
    return NeedsReview(
        reason=summary,
        mismatch=MismatchSpec(
            kind=MismatchKind.TOTAL_DIFFERS,
            fingerprint_parts=("stripe", kind, object_id),
            summary=summary,
            amount_difference=difference,
            currency=currency,
            source_snapshot=snapshot,
            dolibarr_snapshot={
                "id": document.id,
                "ref": document.ref,
                "status": document.status,
                "total_ht": str(document.total_ht),
                "total_tva": str(document.total_tva),
                "total_ttc": str(document.total_ttc),
                "multicurrency_code": document.multicurrency_code,
                "multicurrency_total_ttc": str(document.multicurrency_total_ttc),
            },
            proposed_fix="correct_draft_lines" if document.is_draft else "credit_note_difference",
            proposed_fix_params={
                "dolibarr_id": document.id,
                "expected_total": str(expected),
                "dolibarr_total": str(actual),
            },
        ),
        dolibarr_kind=what,
        dolibarr_id=document.id,
    )
