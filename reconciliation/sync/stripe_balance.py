"""Stripe's balance against Dolibarr's Stripe bank account, one currency at a time.

Once every payment, refund, fee and payout is synced, the Stripe bank account in Dolibarr holds
exactly what Stripe holds: payments in, refunds, fees and payouts out. Comparing the two totals
is the cheapest proof that nothing was lost or written twice, and the reconciliation turns a
difference into a `balance_differs` mismatch.

One adjustment keeps the comparison honest between a payout's creation and its arrival: Stripe
takes a payout out of its balance when it creates it (the payout's own balance transaction),
while the transfer in Dolibarr is written only once the payout is `paid`. Payouts still `pending`
or `in_transit` are therefore added back to Stripe's side, and shown as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from reconciliation.connectors.dolibarr import DolibarrClient
from reconciliation.connectors.stripe import StripeConnector
from reconciliation.money import currency_code, minor_to_decimal
from reconciliation.sync.base import DolibarrSetup

IN_FLIGHT_PAYOUT_STATUSES = ("pending", "in_transit")


@dataclass(frozen=True)
class BalanceComparison:
    """Both sides of the Stripe account, as exact Decimals in `currency`."""

    currency: str
    bank_account_id: int
    stripe_available: Decimal
    stripe_pending: Decimal
    payouts_in_flight: Decimal
    payouts_in_flight_ids: tuple[str, ...]
    dolibarr_balance: Decimal

    @property
    def stripe_balance(self) -> Decimal:
        """Stripe's balance: available + pending."""
        return self.stripe_available + self.stripe_pending

    @property
    def expected_dolibarr_balance(self) -> Decimal:
        """What Dolibarr should hold: Stripe's balance plus the payouts that left it but have
        not arrived (their transfers are written on arrival)."""
        return self.stripe_balance + self.payouts_in_flight

    @property
    def difference(self) -> Decimal:
        """Dolibarr minus what it should hold: positive when Dolibarr shows more money than
        Stripe has (a missing fee, refund or payout, or a payment written twice)."""
        return self.dolibarr_balance - self.expected_dolibarr_balance

    @property
    def balanced(self) -> bool:
        return self.difference == 0


def stripe_balance_compare(
    *,
    stripe: StripeConnector,
    dolibarr: DolibarrClient,
    setup: DolibarrSetup,
    currency: str | None = None,
) -> BalanceComparison:
    """Read both balances (one `GET /v1/balance`, one payouts list per in-flight status, one
    `GET /bankaccounts/{id}/balance`) and compare them. Reads only.

    `currency` (default: the company's) picks which of Stripe's balances, against the Dolibarr
    account standing for it (`DolibarrSetup.stripe_account_for`)."""
    currency = currency_code(currency or setup.company_currency)
    account_id = setup.stripe_account_for(currency)
    if account_id is None:
        raise ValueError(f"no Dolibarr bank account stands for Stripe's {currency} balance")
    balance = stripe.balance()
    available = _balance_minor(balance.get("available"), currency)
    pending = _balance_minor(balance.get("pending"), currency)
    in_flight: list[dict[str, Any]] = [
        payout
        for status in IN_FLIGHT_PAYOUT_STATUSES
        for payout in stripe.payouts(status=status)
        if str(payout.get("currency") or "").upper() == currency
    ]
    return BalanceComparison(
        currency=currency,
        bank_account_id=account_id,
        stripe_available=minor_to_decimal(available, currency),
        stripe_pending=minor_to_decimal(pending, currency),
        payouts_in_flight=minor_to_decimal(sum(int(p["amount"]) for p in in_flight), currency),
        payouts_in_flight_ids=tuple(str(p["id"]) for p in in_flight),
        dolibarr_balance=dolibarr.bank_balance(bank_account_id=account_id),
    )


def _balance_minor(entries: Any, currency: str) -> int:
    """The amount of one currency in a balance list (`[{"amount", "currency"}, …]`), 0 when
    Stripe lists none for it."""
    return sum(
        int(entry.get("amount") or 0)
        for entry in entries or ()
        if str(entry.get("currency") or "").upper() == currency
    )
