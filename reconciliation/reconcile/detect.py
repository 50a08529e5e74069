"""Every difference between the sources and Dolibarr, found by reading both in bulk.

The source side is the console's own records (the last snapshot of every Stripe and Aipress24
object); the Dolibarr side is read with list endpoints, `properties=` and `or`-joined `ref_ext`
look-ups — a chunk of 500 records costs a handful of calls, never one per object. What each
record should have become in Dolibarr is compared with what Dolibarr holds:

- a billable record synced (or pending past the grace period) whose document is not in
  Dolibarr: `missing_in_dolibarr` (fix: retry the record);
- a Dolibarr invoice carrying our `ref_ext` that no source record knows: `missing_at_source`;
- two Dolibarr documents, payments or thirdparties for one source identity:
  `duplicate_in_dolibarr` (thirdparties: fix `merge_thirdparties`);
- a payment billed by both a Stripe invoice and an Aipress24 purchase: `duplicate_in_dolibarr`
  (billed twice);
- a Dolibarr total that is not the source's, to the cent: `total_differs`;
- paid at the source and unpaid in Dolibarr, or the reverse: `status_differs` (fix: retry the
  record, which writes the payment);
- a payment with the source's `ref_ext` on an invoice that is not paid: `payment_unlinked`;
- a succeeded refund of a billed payment without its credit note: `refund_missing` (fix: retry);
- a paid payout whose transfer is missing or of another amount: `payout_unbalanced`;
- Stripe's balance against Dolibarr's Stripe account balance: `balance_differs`.

`currency_unsupported`, `customer_conflict` and `sync_failed` are found by the sync itself,
when it writes a record (the reconciliation leaves those records to their own mismatch).

Each finding uses the fingerprint the sync would give the same difference, so that a
difference found by both is one mismatch. Each subject checked and found in step is returned
too (`clean`): its open mismatch, if any, is closed by the job — and only that, so a run over a
window never closes what it did not look at.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.utils import timezone

from reconciliation.connectors.dolibarr import INVOICE_STATE_PROPERTIES
from reconciliation.connectors.dolibarr_types import Invoice, Payment
from reconciliation.connectors.sqlfilters import any_of, criterion, like
from reconciliation.models import (
    MismatchKind,
    Source,
    SourceAlias,
    SyncRecord,
    SyncState,
)
from reconciliation.money import currency_code, is_known_currency, minor_to_decimal
from reconciliation.services.mismatches import mismatch_fingerprint
from reconciliation.sync.aipress24_mapping import (
    organisation_ref_ext,
    purchase_ref_ext,
    user_ref_ext,
)
from reconciliation.sync.base import DolibarrSetup, MismatchSpec
from reconciliation.sync.known import (
    payment_intent_index,
    payment_intents_of,
    payment_reference,
)
from reconciliation.sync.stripe_balance import stripe_balance_compare
from reconciliation.sync.stripe_customers import thirdparty_ref_ext

# A record still pending this long after it was first seen is not "on its way" any more.
GRACE = timedelta(hours=1)
CHUNK = 500
BILLED_STRIPE_STATUSES = ("open", "paid", "uncollectible")
_OUR_INVOICE_REF_EXT = re.compile(r"^(in_[A-Za-z0-9]+|re_[A-Za-z0-9]+|ap24-purchase-\d+)$")
_PAYOUT_ID = re.compile(r"po_[A-Za-z0-9]+")


@dataclass(frozen=True)
class Finding:
    spec: MismatchSpec
    record_id: int | None = None


@dataclass
class Detection:
    """What one pass found, and the subjects it checked and found in step."""

    findings: list[Finding] = field(default_factory=list)
    clean: set[str] = field(default_factory=set)
    checked: Counter[str] = field(default_factory=Counter)
    _fingerprints: set[str] = field(default_factory=set, repr=False)

    def found(self, spec: MismatchSpec, record: SyncRecord | None = None) -> None:
        """One finding per fingerprint: a payment billed twice is seen from both billers."""
        fingerprint = mismatch_fingerprint(kind=spec.kind, parts=spec.fingerprint_parts)
        if fingerprint in self._fingerprints:
            return
        self._fingerprints.add(fingerprint)
        self.findings.append(Finding(spec, record.pk if record is not None else None))

    def in_step(self, kind: str, parts: tuple[str, ...]) -> None:
        self.clean.add(mismatch_fingerprint(kind=kind, parts=parts))

    def fingerprints_found(self) -> set[str]:
        return {
            mismatch_fingerprint(kind=f.spec.kind, parts=f.spec.fingerprint_parts)
            for f in self.findings
        }


@dataclass(frozen=True)
class Window:
    """The records and documents looked at: those touched since `since`, or all of them."""

    since: datetime | None = None

    def records(self, **filters: Any):
        queryset = SyncRecord.objects.filter(**filters)
        if self.since is not None:
            queryset = queryset.filter(updated_at__gte=self.since)
        return queryset.order_by("pk")


def detect(
    *,
    dolibarr: Any,
    setup: DolibarrSetup,
    stripe: Any = None,
    since: datetime | None = None,
    now: datetime | None = None,
) -> Detection:
    """Run every rule over the window; reads only (Dolibarr, Stripe and the local records)."""
    detection = Detection()
    window = Window(since)
    now = now or timezone.now()
    billed_pis = _billed_payment_intents(window)
    _stripe_invoices(detection, window, dolibarr, now, billed_pis)
    _purchases(detection, window, dolibarr, now, billed_pis)
    _refunds(detection, window, dolibarr)
    _customers(detection, window, dolibarr)
    _orphans(detection, window, dolibarr)
    _unbilled_payments(detection, window)
    _payouts(detection, window, dolibarr, setup)
    if stripe is not None:
        _balances(detection, dolibarr, stripe, setup)
    return detection


# --- helpers --------------------------------------------------------------------------------


def _chunks(queryset, size: int = CHUNK) -> Iterator[list[SyncRecord]]:
    chunk: list[SyncRecord] = []
    for record in queryset.iterator(chunk_size=size):
        chunk.append(record)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _expected(record: SyncRecord, now: datetime) -> bool:
    """Whether the record's document must be in Dolibarr by now: synced, or pending (not in
    progress, not waiting for a person — those carry their own mismatch) past the grace."""
    if record.state == SyncState.SYNCED:
        return True
    return record.state == SyncState.PENDING and record.created_at <= now - GRACE


def _document_snapshot(document: Invoice) -> dict[str, Any]:
    return {
        "id": document.id,
        "ref": document.ref,
        "ref_ext": document.ref_ext,
        "status": document.status,
        "paid": document.paid,
        "total_ht": str(document.total_ht),
        "total_ttc": str(document.total_ttc),
        "multicurrency_code": document.multicurrency_code,
        "multicurrency_total_ttc": str(document.multicurrency_total_ttc),
    }


def _missing(detection: Detection, record: SyncRecord, ref_ext: str, what: str) -> None:
    parts = ("reconcile", record.source, record.kind, record.external_id)
    when = (
        "was synced but is no longer in Dolibarr (deleted there?)"
        if record.state == SyncState.SYNCED
        else f"has been pending since {record.created_at:%Y-%m-%d %H:%M} UTC"
    )
    detection.found(
        MismatchSpec(
            kind=MismatchKind.MISSING_IN_DOLIBARR,
            fingerprint_parts=parts,
            summary=f"No Dolibarr {what} carries ref_ext {ref_ext}: {record} {when}",
            severity="critical",
            source_snapshot=record.snapshot,
            proposed_fix="retry_record",
            proposed_fix_params={"record_id": record.pk, "creates": what},
        ),
        record,
    )


def _duplicate_documents(
    detection: Detection, record: SyncRecord, parts: tuple[str, ...], what: str, docs: list
) -> None:
    ids = [doc.id for doc in docs]
    detection.found(
        MismatchSpec(
            kind=MismatchKind.DUPLICATE_IN_DOLIBARR,
            fingerprint_parts=parts,
            summary=f"{len(ids)} Dolibarr {what}s carry ref_ext {docs[0].ref_ext} "
            f"(ids {', '.join(map(str, ids))})",
            source_snapshot=record.snapshot,
            dolibarr_snapshot={f"{what}_ids": ids},
            proposed_fix=f"remove_duplicate_{what}",
            proposed_fix_params={"keep": ids[0], "remove": ids[1:]},
        ),
        record,
    )


def _total_differs(
    detection: Detection,
    record: SyncRecord,
    parts: tuple[str, ...],
    document: Invoice,
    expected: Decimal,
    actual: Decimal | None,
    currency: str,
    basis: str,
) -> None:
    actual = actual if actual is not None else Decimal(0)
    state = "draft" if document.is_draft else "validated"
    detection.found(
        MismatchSpec(
            kind=MismatchKind.TOTAL_DIFFERS,
            fingerprint_parts=parts,
            summary=f"Dolibarr document {document.ref or document.id} ({state}) {basis} "
            f"{actual.normalize():f} {currency}, the source {expected:f}",
            amount_difference=actual - expected,
            currency=currency,
            source_snapshot=record.snapshot,
            dolibarr_snapshot=_document_snapshot(document),
            proposed_fix="correct_draft_lines" if document.is_draft else "credit_note_difference",
            proposed_fix_params={
                "dolibarr_id": document.id,
                "expected_total": str(expected),
                "dolibarr_total": str(actual),
            },
        ),
        record,
    )


def _payments_check(
    detection: Detection,
    record: SyncRecord,
    document: Invoice,
    refs: Sequence[str],
    payments: dict[str, list[Payment]],
    amount: Decimal,
    currency: str,
) -> None:
    """A paid source document: each payment of it is in Dolibarr once, and the document is
    marked paid; a missing payment is `status_differs`, a present one on an unpaid document
    `payment_unlinked`, a doubled one `duplicate_in_dolibarr`."""
    status_parts = ("reconcile", "status", record.source, record.kind, record.external_id)
    missing = [ref for ref in refs if not payments.get(ref)]
    for ref in refs:
        hits = payments.get(ref) or []
        parts = ("reconcile", "payment_duplicate", ref)
        if len(hits) > 1:
            ids = [hit.id for hit in hits]
            detection.found(
                MismatchSpec(
                    kind=MismatchKind.DUPLICATE_IN_DOLIBARR,
                    fingerprint_parts=parts,
                    summary=f"{len(ids)} Dolibarr payments carry ref_ext {ref} (ids "
                    f"{', '.join(map(str, ids))}): the money is counted {len(ids)} times",
                    severity="critical",
                    currency=currency,
                    source_snapshot=record.snapshot,
                    dolibarr_snapshot={"payment_ids": ids},
                    proposed_fix="remove_duplicate_payment",
                    proposed_fix_params={"keep": ids[0], "remove": ids[1:]},
                ),
                record,
            )
        else:
            detection.in_step(MismatchKind.DUPLICATE_IN_DOLIBARR, parts)
    if missing:
        detection.found(
            MismatchSpec(
                kind=MismatchKind.STATUS_DIFFERS,
                fingerprint_parts=status_parts,
                summary=f"Paid at the source ({', '.join(missing)}), but Dolibarr "
                f"{document.ref or document.id} has no payment for it",
                severity="critical",
                amount_difference=-amount,
                currency=currency,
                source_snapshot=record.snapshot,
                dolibarr_snapshot=_document_snapshot(document),
                proposed_fix="retry_record",
                proposed_fix_params={"record_id": record.pk, "creates": "payment"},
            ),
            record,
        )
    else:
        detection.in_step(MismatchKind.STATUS_DIFFERS, status_parts)
    unlinked_parts = ("reconcile", "payment", record.source, record.external_id)
    if not missing and refs and not document.paid and not document.is_draft:
        found_ids = [payments[ref][0].id for ref in refs]
        detection.found(
            MismatchSpec(
                kind=MismatchKind.PAYMENT_UNLINKED,
                fingerprint_parts=unlinked_parts,
                summary=f"Dolibarr holds the payment{'s' if len(refs) > 1 else ''} "
                f"{', '.join(refs)} (ids {', '.join(map(str, found_ids))}), but "
                f"{document.ref or document.id} is not paid: the payment is not linked to it",
                amount_difference=-amount,
                currency=currency,
                source_snapshot=record.snapshot,
                dolibarr_snapshot={**_document_snapshot(document), "payment_ids": found_ids},
                proposed_fix="link_payment_to_invoice",
                proposed_fix_params={"invoice_id": document.id, "payment_ids": found_ids},
            ),
            record,
        )
    else:
        detection.in_step(MismatchKind.PAYMENT_UNLINKED, unlinked_parts)


def _paid_in_dolibarr_only(
    detection: Detection, record: SyncRecord, document: Invoice, currency: str
) -> None:
    parts = ("reconcile", "status", record.source, record.kind, record.external_id)
    if document.paid:
        detection.found(
            MismatchSpec(
                kind=MismatchKind.STATUS_DIFFERS,
                fingerprint_parts=parts,
                summary=f"Dolibarr {document.ref or document.id} is paid, but "
                f"{record} is {record.snapshot.get('status')} at the source",
                currency=currency,
                source_snapshot=record.snapshot,
                dolibarr_snapshot=_document_snapshot(document),
            ),
            record,
        )
    else:
        detection.in_step(MismatchKind.STATUS_DIFFERS, parts)


# --- rules ----------------------------------------------------------------------------------


def _billed_payment_intents(window: Window) -> dict[str, set[tuple[str, str]]]:
    """Payment intent -> the billing records that name it (Stripe invoices, purchases): one
    payment billed by two records is billed twice."""
    billed: dict[str, set[tuple[str, str]]] = defaultdict(set)
    invoices = window.records(source=Source.STRIPE, kind="invoice").values_list(
        "external_id", "snapshot"
    )
    for external_id, snapshot in invoices.iterator(chunk_size=2000):
        for item in payment_intents_of(snapshot or {}):
            reference = payment_reference(item)
            if reference and item.get("status") == "paid":
                billed[reference].add(("stripe invoice", external_id))
    purchases = window.records(source=Source.AIPRESS24, kind="purchase").values_list(
        "external_id", "snapshot"
    )
    for external_id, snapshot in purchases.iterator(chunk_size=2000):
        intent = (snapshot or {}).get("stripe_payment_intent_id")
        if intent and (snapshot or {}).get("status") in ("paid", "refunded"):
            billed[intent].add(("aipress24 purchase", external_id))
    return billed


def _billed_twice(
    detection: Detection,
    record: SyncRecord,
    reference: str,
    billed: dict[str, set[tuple[str, str]]],
) -> None:
    parts = ("reconcile", "billed_twice", reference)
    billers = sorted(billed.get(reference, ()))
    if len(billers) > 1:
        detection.found(
            MismatchSpec(
                kind=MismatchKind.DUPLICATE_IN_DOLIBARR,
                fingerprint_parts=parts,
                summary=f"Payment {reference} is billed twice: "
                + " and ".join(f"{what} {ident}" for what, ident in billers),
                severity="critical",
                source_snapshot={"payment": reference, "billed_by": billers},
                proposed_fix="credit_note_for_duplicate_billing",
                proposed_fix_params={"payment": reference, "billed_by": billers},
            ),
            record,
        )
    else:
        detection.in_step(MismatchKind.DUPLICATE_IN_DOLIBARR, parts)


def _stripe_invoices(
    detection: Detection, window: Window, dolibarr: Any, now: datetime, billed: dict
) -> None:
    records = window.records(source=Source.STRIPE, kind="invoice").exclude(
        state__in=[SyncState.NEEDS_REVIEW, SyncState.FAILED, SyncState.SKIPPED]
    )
    for chunk in _chunks(records):
        wanted = [
            record
            for record in chunk
            if (record.snapshot or {}).get("status") in BILLED_STRIPE_STATUSES
            and is_known_currency(record.snapshot.get("currency") or "")
            and _expected(record, now)
        ]
        if not wanted:
            continue
        documents = dolibarr.find_invoices_by_ref_exts(
            ref_exts=[record.external_id for record in wanted],
            properties=INVOICE_STATE_PROPERTIES,
        )
        refs_by_record = {
            record.pk: [
                reference
                for item in payment_intents_of(record.snapshot)
                if item.get("status") == "paid" and (reference := payment_reference(item))
            ]
            for record in wanted
            if record.snapshot.get("status") == "paid"
        }
        all_refs = sorted({ref for refs in refs_by_record.values() for ref in refs})
        payments = dolibarr.find_payments_by_ref_exts(ref_exts=all_refs) if all_refs else {}
        for record in wanted:
            detection.checked["stripe invoice"] += 1
            invoice = record.snapshot
            currency = currency_code(invoice["currency"])
            docs = documents.get(record.external_id) or []
            missing_parts = ("reconcile", record.source, record.kind, record.external_id)
            if not docs:
                _missing(detection, record, record.external_id, "invoice")
                continue
            detection.in_step(MismatchKind.MISSING_IN_DOLIBARR, missing_parts)
            duplicate_parts = ("stripe", "invoice", record.external_id, "invoice")
            if len(docs) > 1:
                _duplicate_documents(detection, record, duplicate_parts, "invoice", docs)
                continue
            detection.in_step(MismatchKind.DUPLICATE_IN_DOLIBARR, duplicate_parts)
            document = docs[0]
            expected = minor_to_decimal(int(invoice.get("total") or 0), currency)
            total_parts = ("stripe", "invoice", record.external_id)
            actual = document.total_in(currency)
            if actual != expected:
                _total_differs(
                    detection, record, total_parts, document, expected, actual, currency, "totals"
                )
            else:
                detection.in_step(MismatchKind.TOTAL_DIFFERS, total_parts)
            if invoice.get("status") == "paid":
                refs = refs_by_record.get(record.pk, [])
                if expected > 0:
                    _payments_check(detection, record, document, refs, payments, expected, currency)
                for reference in refs:
                    _billed_twice(detection, record, reference, billed)
            else:
                _paid_in_dolibarr_only(detection, record, document, currency)


def _purchases(
    detection: Detection, window: Window, dolibarr: Any, now: datetime, billed: dict
) -> None:
    records = window.records(source=Source.AIPRESS24, kind="purchase").exclude(
        state__in=[SyncState.NEEDS_REVIEW, SyncState.FAILED, SyncState.SKIPPED]
    )
    for chunk in _chunks(records):
        wanted = [
            record
            for record in chunk
            if (record.snapshot or {}).get("status") in ("paid", "refunded")
            and record.snapshot.get("stripe_payment_intent_id")
            and record.snapshot.get("amount_cents") is not None
            and _expected(record, now)
        ]
        if not wanted:
            continue
        documents = dolibarr.find_invoices_by_ref_exts(
            ref_exts=[purchase_ref_ext(record.external_id) for record in wanted],
            properties=INVOICE_STATE_PROPERTIES,
        )
        payments = dolibarr.find_payments_by_ref_exts(
            ref_exts=sorted({record.snapshot["stripe_payment_intent_id"] for record in wanted})
        )
        for record in wanted:
            detection.checked["aipress24 purchase"] += 1
            purchase = record.snapshot
            currency = currency_code(purchase.get("currency") or "EUR")
            ref_ext = purchase_ref_ext(record.external_id)
            docs = documents.get(ref_ext) or []
            if not docs:
                _missing(detection, record, ref_ext, "invoice")
                continue
            detection.in_step(
                MismatchKind.MISSING_IN_DOLIBARR,
                ("reconcile", record.source, record.kind, record.external_id),
            )
            duplicate_parts = ("aipress24", "purchase", record.external_id, "invoice")
            if len(docs) > 1:
                _duplicate_documents(detection, record, duplicate_parts, "invoice", docs)
                continue
            detection.in_step(MismatchKind.DUPLICATE_IN_DOLIBARR, duplicate_parts)
            document = docs[0]
            # What Aipress24 knows is the net amount; the VAT-inclusive total was checked
            # against Stripe's collected amount before the invoice was validated.
            net = minor_to_decimal(int(purchase["amount_cents"]), currency)
            total_parts = ("aipress24", "purchase", record.external_id, "total")
            if document.total_ht != net:
                _total_differs(
                    detection,
                    record,
                    total_parts,
                    document,
                    net,
                    document.total_ht,
                    currency,
                    "totals net",
                )
            else:
                detection.in_step(MismatchKind.TOTAL_DIFFERS, total_parts)
            intent = purchase["stripe_payment_intent_id"]
            amount = document.total_ttc if document.total_ttc is not None else net
            _payments_check(detection, record, document, [intent], payments, amount, currency)
            _billed_twice(detection, record, intent, billed)


def _refunds(detection: Detection, window: Window, dolibarr: Any) -> None:
    """Each succeeded refund of a payment billed in Dolibarr has its credit note, of its
    amount, with its refund payment."""
    records = window.records(source=Source.STRIPE, kind="refund").exclude(
        state__in=[SyncState.NEEDS_REVIEW, SyncState.FAILED, SyncState.IN_PROGRESS]
    )
    now = timezone.now()
    for chunk in _chunks(records):
        refunds = [
            record
            for record in chunk
            if (record.snapshot or {}).get("status") == "succeeded"
            # Skipped ones included: a purchase's refund is written by its purchase record.
            and (record.state != SyncState.PENDING or _expected(record, now))
        ]
        if not refunds:
            continue
        billers = _billers_of(
            {r.snapshot.get("payment_intent") or r.snapshot.get("charge") for r in refunds}
        )
        wanted = [
            record
            for record in refunds
            if (record.snapshot.get("payment_intent") or record.snapshot.get("charge")) in billers
        ]
        if not wanted:
            continue
        documents = dolibarr.find_invoices_by_ref_exts(
            ref_exts=[record.external_id for record in wanted],
            properties=INVOICE_STATE_PROPERTIES,
        )
        payments = dolibarr.find_payments_by_ref_exts(
            ref_exts=[record.external_id for record in wanted]
        )
        for record in wanted:
            detection.checked["stripe refund"] += 1
            refund = record.snapshot
            paid_by = refund.get("payment_intent") or refund.get("charge")
            biller = billers[paid_by]
            currency = currency_code(refund.get("currency") or "EUR")
            amount = minor_to_decimal(int(refund.get("amount") or 0), currency)
            docs = documents.get(record.external_id) or []
            missing_parts = ("reconcile", "refund", record.external_id)
            if not docs:
                detection.found(
                    MismatchSpec(
                        kind=MismatchKind.REFUND_MISSING,
                        fingerprint_parts=missing_parts,
                        summary=f"Stripe refund {record.external_id} of {amount:f} {currency} "
                        f"({paid_by}, billed by {biller[0]} {biller[1]}) has no credit note in "
                        "Dolibarr",
                        severity="critical",
                        amount_difference=amount,
                        currency=currency,
                        source_snapshot=refund,
                        proposed_fix="retry_record",
                        proposed_fix_params={"record_id": biller[2], "creates": "credit_note"},
                    ),
                    record,
                )
                continue
            detection.in_step(MismatchKind.REFUND_MISSING, missing_parts)
            duplicate_parts = ("stripe", "refund", record.external_id, "credit_note")
            if len(docs) > 1:
                _duplicate_documents(detection, record, duplicate_parts, "credit_note", docs)
                continue
            detection.in_step(MismatchKind.DUPLICATE_IN_DOLIBARR, duplicate_parts)
            document = docs[0]
            total_parts = ("stripe", "refund", record.external_id)
            actual = document.total_in(currency)
            if actual != -amount:
                _total_differs(
                    detection, record, total_parts, document, -amount, actual, currency, "totals"
                )
            else:
                detection.in_step(MismatchKind.TOTAL_DIFFERS, total_parts)
            _payments_check(
                detection, record, document, [record.external_id], payments, amount, currency
            )


def _billers_of(references: Iterable[str | None]) -> dict[str, tuple[str, str, int]]:
    """Payment reference -> (what bills it, its id, its record id), for the references billed
    by a synced Stripe invoice or a synced Aipress24 purchase."""
    references = {ref for ref in references if ref}
    found: dict[str, tuple[str, str, int]] = {}
    if not references:
        return found
    aliases = SourceAlias.objects.filter(
        system=Source.STRIPE,
        kind="payment_intent",
        external_id__in=references,
        record__state=SyncState.SYNCED,
    ).values_list("external_id", "record__external_id", "record_id")
    for reference, purchase_id, record_id in aliases:
        found[reference] = ("aipress24 purchase", purchase_id, record_id)
    remaining = references - set(found)
    if remaining:
        index = payment_intent_index()
        invoice_ids = {index[ref]: ref for ref in remaining if ref in index}
        synced_invoices = dict(
            SyncRecord.objects.filter(
                source=Source.STRIPE,
                kind="invoice",
                external_id__in=list(invoice_ids),
                state=SyncState.SYNCED,
            ).values_list("external_id", "pk")
        )
        for invoice_id, record_id in synced_invoices.items():
            found[invoice_ids[invoice_id]] = ("stripe invoice", invoice_id, record_id)
    return found


def _customers(detection: Detection, window: Window, dolibarr: Any) -> None:
    """Each synced customer identity is one thirdparty in Dolibarr. An identity several records
    share (an organisation and its Stripe customers) is checked once, for the record that owns
    it: the Aipress24 one when there is one."""
    kinds = (
        (Source.AIPRESS24, "organisation"),
        (Source.AIPRESS24, "user"),
        (Source.STRIPE, "customer"),
    )
    seen: set[str] = set()
    for source, kind in kinds:
        records = window.records(source=source, kind=kind, state=SyncState.SYNCED)
        for chunk in _chunks(records):
            identities = {record.pk: _identity(record) for record in chunk}
            asked = sorted(set(identities.values()) - seen)
            found = dolibarr.find_thirdparties_by_ref_exts(ref_exts=asked) if asked else {}
            for record in chunk:
                ref_ext = identities[record.pk]
                if ref_ext in seen:
                    continue
                seen.add(ref_ext)
                detection.checked["customer identity"] += 1
                hits = found.get(ref_ext) or []
                missing_parts = ("reconcile", "thirdparty_missing", ref_ext)
                duplicate_parts = ("reconcile", "thirdparty", ref_ext)
                if not hits:
                    detection.found(
                        MismatchSpec(
                            kind=MismatchKind.MISSING_IN_DOLIBARR,
                            fingerprint_parts=missing_parts,
                            summary=f"No Dolibarr thirdparty carries ref_ext {ref_ext}: {record} "
                            "was synced to one that is no longer in Dolibarr (deleted there?)",
                            severity="critical",
                            source_snapshot=record.snapshot,
                            proposed_fix="retry_record",
                            proposed_fix_params={"record_id": record.pk, "creates": "thirdparty"},
                        ),
                        record,
                    )
                    continue
                detection.in_step(MismatchKind.MISSING_IN_DOLIBARR, missing_parts)
                if len(hits) > 1:
                    ids = sorted(hit.id for hit in hits)
                    detection.found(
                        MismatchSpec(
                            kind=MismatchKind.DUPLICATE_IN_DOLIBARR,
                            fingerprint_parts=duplicate_parts,
                            summary=f"{len(ids)} Dolibarr thirdparties carry ref_ext {ref_ext} "
                            f"(ids {', '.join(map(str, ids))}): merge them into {ids[0]}",
                            source_snapshot=record.snapshot,
                            dolibarr_snapshot={"thirdparty_ids": ids},
                            proposed_fix="merge_thirdparties",
                            proposed_fix_params={"keep": ids[0], "merge": ids[1:]},
                        ),
                        record,
                    )
                else:
                    detection.in_step(MismatchKind.DUPLICATE_IN_DOLIBARR, duplicate_parts)


def _identity(record: SyncRecord) -> str:
    if record.source == Source.STRIPE:
        return thirdparty_ref_ext(record.snapshot)
    if record.kind == "organisation":
        return organisation_ref_ext(record.external_id)
    return user_ref_ext(record.external_id)


def _orphans(detection: Detection, window: Window, dolibarr: Any) -> None:
    """Dolibarr invoices and credit notes carrying one of our `ref_ext`s that no record knows
    (created by hand with a copied ref_ext, or left from a source object deleted since)."""
    patterns = [like("t.ref_ext", prefix) for prefix in ("in_%", "re_%", "ap24-purchase-%")]
    if window.since is None:
        listings = [any_of(*patterns)]
    else:
        # One listing per prefix: this build's sqlfilters cannot mix `and` and `or`.
        since = criterion("t.datec", ">=", window.since)
        listings = [pattern & since for pattern in patterns]
    page: list[Invoice] = []
    for filters in listings:
        for document in dolibarr.iter_invoices(
            filters=filters, properties=INVOICE_STATE_PROPERTIES
        ):
            if document.ref_ext and _OUR_INVOICE_REF_EXT.match(document.ref_ext):
                page.append(document)
            if len(page) >= CHUNK:
                _orphan_page(detection, page)
                page = []
    _orphan_page(detection, page)


def _record_key(ref_ext: str) -> tuple[str, str, str]:
    if ref_ext.startswith("ap24-purchase-"):
        return Source.AIPRESS24, "purchase", ref_ext.removeprefix("ap24-purchase-")
    if ref_ext.startswith("re_"):
        return Source.STRIPE, "refund", ref_ext
    return Source.STRIPE, "invoice", ref_ext


def _orphan_page(detection: Detection, documents: list[Invoice]) -> None:
    if not documents:
        return
    wanted: dict[tuple[str, str], set[str]] = defaultdict(set)
    for document in documents:
        source, kind, external_id = _record_key(document.ref_ext)
        wanted[(source, kind)].add(external_id)
    known: set[tuple[str, str, str]] = set()
    for (source, kind), ids in wanted.items():
        known |= {
            (source, kind, external_id)
            for external_id in SyncRecord.objects.filter(
                source=source, kind=kind, external_id__in=ids
            ).values_list("external_id", flat=True)
        }
    for document in documents:
        detection.checked["dolibarr document"] += 1
        key = _record_key(document.ref_ext)
        parts = ("reconcile", "orphan", "invoice", str(document.id))
        if key in known:
            detection.in_step(MismatchKind.MISSING_AT_SOURCE, parts)
            continue
        detection.found(
            MismatchSpec(
                kind=MismatchKind.MISSING_AT_SOURCE,
                fingerprint_parts=parts,
                summary=f"Dolibarr {'credit note' if document.is_credit_note else 'invoice'} "
                f"{document.ref or document.id} carries ref_ext {document.ref_ext}, which no "
                f"{key[0]} {key[1]} known to the console has",
                amount_difference=document.total_ttc,
                dolibarr_snapshot=_document_snapshot(document),
                proposed_fix="",
                proposed_fix_params={"dolibarr_id": document.id, "ref_ext": document.ref_ext},
            )
        )


def _unbilled_payments(detection: Detection, window: Window) -> None:
    """Money Stripe collected that no record bills: a succeeded payment intent that pays no
    Stripe invoice and is no Aipress24 purchase's (its record was skipped as billed from a
    purchase, and no purchase names it). It is in Stripe's balance and nowhere in Dolibarr."""
    candidates = [
        record
        for record in window.records(
            source=Source.STRIPE, kind="payment_intent", state=SyncState.SKIPPED
        ).iterator(chunk_size=2000)
        if (record.snapshot or {}).get("status") == "succeeded"
    ]
    if not candidates:
        return
    by_invoice = payment_intent_index()
    by_purchase = set(
        SourceAlias.objects.filter(
            system=Source.STRIPE,
            kind="payment_intent",
            external_id__in=[record.external_id for record in candidates],
        ).values_list("external_id", flat=True)
    )
    for record in candidates:
        detection.checked["stripe payment"] += 1
        parts = ("reconcile", "unbilled", record.external_id)
        if record.external_id in by_invoice or record.external_id in by_purchase:
            detection.in_step(MismatchKind.MISSING_IN_DOLIBARR, parts)
            continue
        intent = record.snapshot
        currency = currency_code(intent.get("currency") or "EUR")
        amount = minor_to_decimal(int(intent.get("amount_received") or 0), currency)
        metadata = intent.get("metadata") or {}
        named = metadata.get("purchase_id") or metadata.get("ap24_purchase_id")
        detection.found(
            MismatchSpec(
                kind=MismatchKind.MISSING_IN_DOLIBARR,
                fingerprint_parts=parts,
                summary=f"Stripe collected {amount:f} {currency} ({record.external_id}"
                + (f", Aipress24 purchase {named}" if named else "")
                + ") that no Stripe invoice and no Aipress24 purchase known to the console "
                "bills: it is in Stripe's balance and nowhere in Dolibarr",
                severity="critical",
                amount_difference=-amount,
                currency=currency,
                source_snapshot=intent,
                proposed_fix="",
                proposed_fix_params={"payment_intent": record.external_id, "purchase": named},
            ),
            record,
        )


def _payouts(detection: Detection, window: Window, dolibarr: Any, setup: DolibarrSetup) -> None:
    """Each paid payout the console synced has its transfer out of the Stripe account, of its
    amount (one read of each account's lines, not one per payout)."""
    records = [
        record
        for record in window.records(
            source=Source.STRIPE, kind="payout", state=SyncState.SYNCED
        ).iterator(chunk_size=2000)
        if (record.snapshot or {}).get("status") == "paid"
    ]
    by_currency: dict[str, list[SyncRecord]] = defaultdict(list)
    for record in records:
        by_currency[currency_code(record.snapshot.get("currency") or "EUR")].append(record)
    for currency, payouts in by_currency.items():
        account = setup.stripe_account_for(currency)
        if account is None:
            continue
        out: dict[str, Decimal] = defaultdict(Decimal)
        for line in dolibarr.bank_lines(bank_account_id=account):
            if line.amount is not None and line.amount < 0:
                for payout_id in set(_PAYOUT_ID.findall(line.label or "")):
                    out[payout_id] += line.amount
        for record in payouts:
            detection.checked["stripe payout"] += 1
            amount = minor_to_decimal(int(record.snapshot.get("amount") or 0), currency)
            parts = ("stripe_payout", record.external_id)
            written = -out.get(record.external_id, Decimal(0))
            if written == amount:
                detection.in_step(MismatchKind.PAYOUT_UNBALANCED, parts)
                continue
            detection.found(
                MismatchSpec(
                    kind=MismatchKind.PAYOUT_UNBALANCED,
                    fingerprint_parts=parts,
                    summary=f"Stripe payout {record.external_id} of {amount:f} {currency} left "
                    f"the Stripe account in Dolibarr as {written:f}",
                    severity="critical",
                    amount_difference=written - amount,
                    currency=currency,
                    source_snapshot=record.snapshot,
                    dolibarr_snapshot={"bank_account_id": account, "written": str(written)},
                    proposed_fix="retry_record" if written == 0 else "",
                    proposed_fix_params={"record_id": record.pk, "creates": "transfer"},
                ),
                record,
            )


def _balances(detection: Detection, dolibarr: Any, stripe: Any, setup: DolibarrSetup) -> None:
    currencies = [setup.company_currency, *sorted(setup.foreign_currencies)]
    for currency in currencies:
        if setup.stripe_account_for(currency) is None:
            continue
        comparison = stripe_balance_compare(
            stripe=stripe, dolibarr=dolibarr, setup=setup, currency=currency
        )
        detection.checked["stripe balance"] += 1
        parts = ("reconcile", "balance", comparison.currency)
        if comparison.balanced:
            detection.in_step(MismatchKind.BALANCE_DIFFERS, parts)
            continue
        detection.found(
            MismatchSpec(
                kind=MismatchKind.BALANCE_DIFFERS,
                fingerprint_parts=parts,
                summary=f"Dolibarr's Stripe account holds {comparison.dolibarr_balance:f} "
                f"{comparison.currency}; Stripe's balance plus payouts in flight is "
                f"{comparison.expected_dolibarr_balance:f} (difference "
                f"{comparison.difference:f})",
                severity="critical",
                amount_difference=comparison.difference,
                currency=comparison.currency,
                source_snapshot={
                    "available": str(comparison.stripe_available),
                    "pending": str(comparison.stripe_pending),
                    "payouts_in_flight": str(comparison.payouts_in_flight),
                    "payouts_in_flight_ids": list(comparison.payouts_in_flight_ids),
                },
                dolibarr_snapshot={
                    "bank_account_id": comparison.bank_account_id,
                    "balance": str(comparison.dolibarr_balance),
                },
            )
        )
