"""Batched look-ups: what Dolibarr already holds for a batch of claimed records, found with one
call per object kind instead of one per record.

Dolibarr does not deduplicate (README, "Idempotency / duplicates": the same `ref_ext` can be
POSTed twice), so every create is guarded by a look-up by `ref_ext`. Done one object at a time
that look-up alone would cost as much as the write it guards. The engine therefore asks each
claimed record which `ref_ext`s it will look up (`@wants`), looks all of them up at once
(`sqlfilters` criteria joined with `or`), and hands the hits to the handlers through
`SyncContext.known`.

A batched answer is trusted only on a record's **first** attempt, made right after the record
was claimed: the claim is exclusive (row lock + lease), so between the look-up and the write no
other worker writes the objects of that record. On any later attempt (a crash, a lost answer, a
transient failure may have left a write behind that the look-up raced with) the handler looks the
objects up again itself, inside the numbered lane for numbered writes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from reconciliation.models import Source, SyncRecord

if TYPE_CHECKING:
    from reconciliation.connectors.dolibarr_types import BankLine, Invoice, Payment, Thirdparty
    from reconciliation.sync.base import SyncContext


@dataclass
class Wanted:
    """The `ref_ext`s a record will look up, per Dolibarr object kind."""

    thirdparties: set[str] = field(default_factory=set)
    invoices: set[str] = field(default_factory=set)
    payments: set[str] = field(default_factory=set)

    def merge(self, other: Wanted) -> None:
        self.thirdparties |= other.thirdparties
        self.invoices |= other.invoices
        self.payments |= other.payments


WantsFunction = Callable[[SyncRecord], Wanted]
_WANTS: dict[tuple[str, str], WantsFunction] = {}
# Kinds that only point at a payment another record writes: the payments this run already saw
# or wrote (`RunCache.noted_payment`) are not looked up again for them.
_POINTERS: set[tuple[str, str]] = set()


def wants(
    source: str, kind: str, *, points_at_payments: bool = False
) -> Callable[[WantsFunction], WantsFunction]:
    """Register what a record kind looks up: `@wants("stripe", "invoice")`."""

    def register(function: WantsFunction) -> WantsFunction:
        _WANTS[(source, kind)] = function
        if points_at_payments:
            _POINTERS.add((source, kind))
        return function

    return register


class RunCache:
    """Facts read once per run and shared by every worker thread: Stripe's tax rates and which
    Stripe invoice a payment intent paid (charges carry no `invoice` field in API 2026-10-28:
    DESIGN §10)."""

    # A payment intent missing from the index is looked for again when the index is older
    # than this (an invoice may have been pulled since).
    INDEX_MAX_AGE_SECONDS = 60.0
    # Payments noted per run at most (about 100 bytes each): past it, pointers look up again.
    MAX_NOTED_PAYMENTS = 100_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tax_rates: dict[str, Decimal] | None = None
        self._invoice_by_payment_intent: dict[str, str] | None = None
        self._index_built_at = 0.0
        self._payments: dict[str, tuple[int, str]] = {}
        self._products: dict[str, int] = {}

    def product(self, ref: str, find: Callable[[], int]) -> int:
        """The id of the Dolibarr product `ref`, found (or created) once per run by `find`."""
        with self._lock:
            known = self._products.get(ref)
        if known is not None:
            return known
        product_id = find()
        with self._lock:
            return self._products.setdefault(ref, product_id)

    def note_payment(self, ref_ext: str, payment_id: int, ref: str = "") -> None:
        """A payment this run wrote, or found as the only one with its `ref_ext`: the charge
        and payment intent that point at it need not ask Dolibarr again. Only a payment
        that exists is noted (a positive fact never makes anything be written twice)."""
        with self._lock:
            if len(self._payments) < self.MAX_NOTED_PAYMENTS:
                self._payments[ref_ext] = (payment_id, ref)

    def noted_payment(self, ref_ext: str) -> tuple[int, str] | None:
        """(id, ref) of a payment noted by this run; the ref is empty when the run created it
        (Dolibarr answers a new payment with its id only)."""
        with self._lock:
            return self._payments.get(ref_ext)

    def tax_rates(self, stripe: Any) -> dict[str, Decimal]:
        """`txr_…` -> percentage, from one Stripe list call per run (empty without Stripe)."""
        with self._lock:
            if self._tax_rates is not None:
                return self._tax_rates
        rates: dict[str, Decimal] = {}
        if stripe is not None:
            for rate in stripe.tax_rates():
                percentage = stripe_percentage(rate.get("percentage"))
                if percentage is not None:
                    rates[rate["id"]] = percentage
        with self._lock:
            self._tax_rates = rates
        return rates

    def invoice_of_payment_intent(self, payment_intent_id: str) -> str | None:
        """The Stripe invoice (`in_…`) whose invoice payments name this payment intent, from the
        invoice records held locally (one query per run, not one per charge)."""
        with self._lock:
            index, built_at = self._invoice_by_payment_intent, self._index_built_at
        stale = time.monotonic() - built_at > self.INDEX_MAX_AGE_SECONDS
        if index is None or (payment_intent_id not in index and stale):
            index = payment_intent_index()
            with self._lock:
                self._invoice_by_payment_intent = index
                self._index_built_at = time.monotonic()
        return index.get(payment_intent_id)


def stripe_percentage(value: Any) -> Decimal | None:
    """Stripe's `percentage` fields are JSON floats (5.5): the one place a float is read. Its
    shortest repr is the JSON literal itself, so the Decimal is exact."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(str(value))


def payment_intents_of(invoice: dict[str, Any]) -> list[dict[str, Any]]:
    """The invoice payments of a Stripe invoice snapshot (`payments`, expanded by the pull)."""
    payments = invoice.get("payments") or {}
    items = payments.get("data") if isinstance(payments, dict) else payments
    return [item for item in items or () if isinstance(item, dict)]


def payment_reference(invoice_payment: dict[str, Any]) -> str | None:
    """What paid: the payment intent (`pi_…`) or, for a charge-only payment, the charge."""
    payment = invoice_payment.get("payment") or {}
    return payment.get("payment_intent") or payment.get("charge")


def payment_intent_index() -> dict[str, str]:
    index: dict[str, str] = {}
    rows = SyncRecord.objects.filter(source=Source.STRIPE, kind="invoice").values_list(
        "external_id", "snapshot__payments"
    )
    for invoice_id, payments in rows.iterator(chunk_size=500):
        for item in payment_intents_of({"payments": payments}):
            reference = payment_reference(item)
            if reference:
                index[reference] = invoice_id
    return index


@dataclass(frozen=True)
class KnownObjects:
    """The answers of one batched look-up. A `ref_ext` that was asked and not found maps to
    `[]`; one that was not asked is absent (the handler then looks it up itself)."""

    thirdparties: dict[str, list[Thirdparty]] = field(default_factory=dict)
    invoices: dict[str, list[Invoice]] = field(default_factory=dict)
    payments: dict[str, list[Payment]] = field(default_factory=dict)
    run: RunCache = field(default_factory=RunCache)
    # Lines of the Stripe bank account by `num_chq` (the `txn_…` of a fee line):
    # `stripe_payouts.fee_lines_lookup`, read by the fee handler on a first attempt only.
    fee_lines: dict[str, list[BankLine]] = field(default_factory=dict)


def known_objects_lookup(
    *, records: Iterable[SyncRecord], dolibarr: Any, run: RunCache
) -> KnownObjects:
    """One look-up per Dolibarr object kind for every first-attempt record of the batch."""
    wanted = Wanted()
    for record in records:
        key = (record.source, record.kind)
        function = _WANTS.get(key)
        if function is not None and record.attempts <= 1:
            asked = function(record)
            if key in _POINTERS:
                # Not asked: what this run already knows, and what no Stripe invoice paid
                # (the pointer is skipped before it would look).
                asked.payments = {
                    ref
                    for ref in asked.payments
                    if not run.noted_payment(ref) and run.invoice_of_payment_intent(ref)
                }
            wanted.merge(asked)
    return KnownObjects(
        thirdparties=(
            dolibarr.find_thirdparties_by_ref_exts(ref_exts=sorted(wanted.thirdparties))
            if wanted.thirdparties
            else {}
        ),
        invoices=(
            dolibarr.find_invoices_by_ref_exts(ref_exts=sorted(wanted.invoices))
            if wanted.invoices
            else {}
        ),
        payments=(
            dolibarr.find_payments_by_ref_exts(ref_exts=sorted(wanted.payments))
            if wanted.payments
            else {}
        ),
        run=run,
    )


def _trusted(context: SyncContext, record: SyncRecord) -> KnownObjects | None:
    known = context.known
    if isinstance(known, KnownObjects) and record.attempts <= 1:
        return known
    return None


def run_cache(context: SyncContext) -> RunCache:
    known = context.known
    if isinstance(known, KnownObjects):
        return known.run
    return RunCache()


def find_thirdparties(context: SyncContext, record: SyncRecord, ref_ext: str) -> list[Thirdparty]:
    known = _trusted(context, record)
    if known is not None and ref_ext in known.thirdparties:
        return known.thirdparties[ref_ext]
    return context.dolibarr.find_thirdparties(ref_ext=ref_ext)


def find_invoices(context: SyncContext, record: SyncRecord, ref_ext: str) -> list[Invoice]:
    known = _trusted(context, record)
    if known is not None and ref_ext in known.invoices:
        return known.invoices[ref_ext]
    return context.dolibarr.find_invoices(ref_ext=ref_ext)


def known_payments(context: SyncContext, record: SyncRecord, ref_ext: str) -> list[Payment] | None:
    """The batched answer for a payment, or None when the handler must look it up itself (and,
    before creating one, inside the numbered lane)."""
    known = _trusted(context, record)
    if known is not None and ref_ext in known.payments:
        return known.payments[ref_ext]
    return None
