"""What every stream handler shares: the outcomes a handler returns, the context it works in, and
the registry that maps a record's (source, kind) to its handler.

A handler takes one claimed SyncRecord and ensures, step by step and idempotently, the Dolibarr
objects it stands for. It calls the network and never opens a database transaction itself; the
engine records its outcome (and the Dolibarr id) in one transaction afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from reconciliation.connectors.dolibarr import DolibarrClient
    from reconciliation.connectors.stripe import StripeConnector
    from reconciliation.models import SyncRecord


# --- Outcomes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MismatchSpec:
    """What a handler found ambiguous, for `services.mismatches.mismatch_detected`."""

    kind: str
    fingerprint_parts: tuple[str, ...]
    summary: str
    severity: str = "warning"
    amount_difference: Decimal | None = None
    currency: str = ""
    source_snapshot: dict[str, Any] = field(default_factory=dict)
    dolibarr_snapshot: dict[str, Any] = field(default_factory=dict)
    proposed_fix: str = ""
    proposed_fix_params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Synced:
    """The record's Dolibarr object exists and is in the state the source says."""

    dolibarr_kind: str
    dolibarr_id: int
    dolibarr_ref: str = ""


@dataclass(frozen=True)
class NeedsReview:
    """Ambiguous: a person decides. Nothing more is written for this record until then."""

    reason: str
    mismatch: MismatchSpec
    dolibarr_kind: str = ""
    dolibarr_id: int | None = None


@dataclass(frozen=True)
class Skipped:
    """Deliberately not written to Dolibarr (e.g. a failed charge); the reason is shown."""

    reason: str


@dataclass(frozen=True)
class Waiting:
    """A dependency is not synced yet (e.g. the invoice of a refund): try again after `delay`.
    Does not count as a failed attempt."""

    reason: str
    delay: timedelta = timedelta(minutes=1)


Outcome = Synced | NeedsReview | Skipped | Waiting


# --- The numbered-write lane ----------------------------------------------------------------


class NumberedLane(Protocol):
    """One lane per Dolibarr instance, shared by every worker on every machine: every write
    that makes Dolibarr allocate a number (validate an invoice / credit note / order /
    shipment, create a payment, create a thirdparty with an automatic code) runs inside it,
    together with the look-up that guards it (../shared/dolibarr/README.md, "Concurrency").

    `with lane.hold(): ...` blocks until the lane is free."""

    def hold(self) -> AbstractContextManager[None]: ...


# --- Context --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ForeignCurrency:
    """A currency other than the company's, as this run may write it: the Dolibarr bank
    accounts for Stripe's balance in it and for its payouts, or why it cannot be written."""

    code: str
    stripe_bank_account_id: int | None = None
    payout_bank_account_id: int | None = None
    problem: str | None = None


@dataclass(frozen=True)
class DolibarrSetup:
    """Facts about the Dolibarr instance, resolved once per run from its dictionaries and
    configuration (never hard-coded ids)."""

    company_currency: str
    multicurrency_enabled: bool
    card_payment_type_id: int
    stripe_bank_account_id: int
    payout_bank_account_id: int | None
    # Only with the multicurrency module on: the currencies configured for it, by ISO code.
    foreign_currencies: Mapping[str, ForeignCurrency] = field(default_factory=dict)

    def is_company_currency(self, code: str) -> bool:
        return code.upper() == self.company_currency.upper()

    def stripe_account_for(self, code: str) -> int | None:
        """The Dolibarr bank account holding Stripe's balance in `code`, or None."""
        if self.is_company_currency(code):
            return self.stripe_bank_account_id
        foreign = self.foreign_currencies.get(code.upper())
        return foreign.stripe_bank_account_id if foreign and not foreign.problem else None

    def payout_account_for(self, code: str) -> int | None:
        """Where Stripe's payouts in `code` land in Dolibarr, or None."""
        if self.is_company_currency(code):
            return self.payout_bank_account_id
        foreign = self.foreign_currencies.get(code.upper())
        return foreign.payout_bank_account_id if foreign and not foreign.problem else None


@dataclass
class SyncContext:
    """What a handler works with. `dolibarr` is the audited (or, in a dry run, the planning)
    wrapper around the client: handlers never see the raw client."""

    dolibarr: DolibarrClient
    stripe: StripeConnector | None
    lane: NumberedLane
    setup: DolibarrSetup
    dry_run: bool = False
    # What one batched look-up found in Dolibarr for the records claimed together
    # (`sync.known.KnownObjects`); None when nothing was looked up in advance.
    known: Any = None
    # The Aipress24 reader (`connectors.aipress24.Aipress24Reader`) when AIPRESS24_DATABASE_URL
    # is set: the Aipress24 handlers read the current row through it (a pushed event makes a
    # record due before the next pull has read the change). None: they use the snapshot.
    aipress24: Any = None


Handler = Callable[["SyncRecord", SyncContext], Outcome]
_HANDLERS: dict[tuple[str, str], Handler] = {}


def handler(source: str, kind: str) -> Callable[[Handler], Handler]:
    """Register the handler of a record kind: `@handler("stripe", "invoice")`."""

    def register(function: Handler) -> Handler:
        key = (source, kind)
        if key in _HANDLERS and _HANDLERS[key] is not function:
            raise ValueError(f"a handler for {source}/{kind} is already registered")
        _HANDLERS[key] = function
        return function

    return register


def handler_for(source: str, kind: str) -> Handler | None:
    return _HANDLERS.get((source, kind))


def registered_kinds() -> Iterator[tuple[str, str]]:
    return iter(sorted(_HANDLERS))
