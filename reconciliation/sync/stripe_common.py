"""What the Stripe handlers share: the currency rule, duplicate and total mismatches, dates."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from reconciliation.connectors.dolibarr_types import Invoice
from reconciliation.models import MismatchKind
from reconciliation.money import currency_code, is_known_currency, minor_to_decimal
from reconciliation.sync.base import MismatchSpec, NeedsReview, SyncContext


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
) -> NeedsReview | None:
    """None when the amount can be written as it is; else a `currency_unsupported` mismatch.

    Dolibarr computes every total in its company currency. An amount in another currency is
    never converted (no rate would be certain); it waits for a person. Multicurrency documents
    need the module's fields and a rate, which this version does not write either."""
    company = context.setup.company_currency
    if not is_known_currency(currency or ""):
        summary = f"{kind} {object_id} is in {currency!r}, a currency whose decimals are unknown"
        shown = ""
    else:
        code = currency_code(currency)
        if code == company:
            return None
        shown = code
        value = minor_to_decimal(int(amount), code)
        reason = (
            "ap24sync does not write multicurrency documents"
            if context.setup.multicurrency_enabled
            else "multicurrency is off"
        )
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


def duplicates(
    *, kind: str, object_id: str, ref_ext: str, what: str, ids: list[int], snapshot: dict[str, Any]
) -> NeedsReview:
    return NeedsReview(
        reason=f"{len(ids)} Dolibarr {what}s carry ref_ext {ref_ext}",
        mismatch=MismatchSpec(
            kind=MismatchKind.DUPLICATE_IN_DOLIBARR,
            fingerprint_parts=("stripe", kind, object_id, what),
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
    actual = document.total_ttc if document.total_ttc is not None else Decimal(0)
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
