"""Stripe invoice lines as Dolibarr lines that reproduce Stripe's totals to the cent.

Dolibarr computes each line on its own and sums the lines (README, "How totals are computed"):
`total_ht = round(qty x subprice x (1 - remise_percent/100))` to the cent, `total_tva =
round(total_ht x tva_tx/100)` per line, `total_ttc = total_ht + total_tva`; `subprice` keeps 8
decimals. Stripe taxes each line on its amount less its share of the discounts, rounded per line
too. So the encoding matters, and it is chosen by computing, here, what Dolibarr will compute:

1. `discount_lines` (preferred, easiest to read): each Stripe line at its undiscounted net unit
   price, and each discount it received as a negative line at the same VAT rate, labelled with
   the coupon. Each of the two lines is rounded separately, which may put the VAT a cent off.
2. `net_unit_prices`: each Stripe line at its unit price *after* discount, with 8 decimals
   (9.78333333 x 3 = 29.35, where 9.78 x 3 is a cent off), the discount named in the
   description. Exact whenever Stripe's per-line VAT is the line's net x the rate.

`remise_percent` is never used: the recorded instance was a cent off with it (44.79 instead of
44.78). The first encoding whose computed totals equal Stripe's (excl. tax, tax, total) wins; if
none does, the net encoding is sent anyway and the read-back total decides (a draft kept for
review). All arithmetic goes through `money.py`; minor units are the currency's own (JPY 0, BHD 3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from reconciliation.connectors.dolibarr_types import NewLine
from reconciliation.money import (
    DOLIBARR_PLACES,
    currency_exponent,
    minor_to_decimal,
    round_to_currency,
)
from reconciliation.sync.known import stripe_percentage

HUNDRED = Decimal(100)
_PRICE_QUANTUM = Decimal(1).scaleb(-DOLIBARR_PLACES)


@dataclass(frozen=True)
class Totals:
    ht: Decimal
    tva: Decimal
    ttc: Decimal


@dataclass(frozen=True)
class Encoding:
    name: str
    lines: tuple[NewLine, ...]
    totals: Totals


@dataclass(frozen=True)
class StripeLine:
    """One Stripe invoice line, in minor units of the invoice currency."""

    description: str
    qty: Decimal
    net: int  # after discounts, tax excluded: what Stripe taxed
    tax: int
    rate: Decimal  # percent
    discounts: tuple[tuple[str, int], ...]  # (label, amount) taken off this line
    tax_inclusive: bool
    date_start: datetime | None
    date_end: datetime | None

    @property
    def undiscounted_net(self) -> int:
        return self.net + sum(amount for _, amount in self.discounts)


def price(value: Decimal) -> Decimal:
    """A unit price as Dolibarr keeps it (8 decimals, half up), as the client will send it."""
    return value.quantize(_PRICE_QUANTUM, rounding=ROUND_HALF_UP)


def dolibarr_totals(lines: Sequence[NewLine], *, currency: str) -> Totals:
    """What Dolibarr will compute for these lines. Credit-note prices are sent positive and
    stored negative; the totals here are those of the lines as sent."""
    ht = tva = Decimal(0)
    for line in lines:
        net = round_to_currency(
            line.qty * price(line.subprice) * (1 - line.remise_percent / HUNDRED), currency
        )
        ht += net
        tva += round_to_currency(net * line.tva_tx / HUNDRED, currency)
    return Totals(ht=ht, tva=tva, ttc=ht + tva)


def stripe_totals(invoice: Mapping[str, Any]) -> Totals:
    currency = invoice["currency"]
    total = int(invoice["total"])
    excluding = invoice.get("total_excluding_tax")
    excluding = int(excluding) if excluding is not None else total
    return Totals(
        ht=minor_to_decimal(excluding, currency),
        tva=minor_to_decimal(total - excluding, currency),
        ttc=minor_to_decimal(total, currency),
    )


# --- reading Stripe lines ---------------------------------------------------------------------


def discount_labels(invoice: Mapping[str, Any], customer: Mapping[str, Any] | None) -> dict:
    """`di_…` -> a readable label: the coupon's name or id when the snapshot carries the
    discount objects (expanded, or the customer's own discount), else the discount id."""
    labels: dict[str, str] = {}
    candidates = list(invoice.get("discounts") or [])
    if customer and isinstance(customer.get("discount"), dict):
        candidates.append(customer["discount"])
    for discount in candidates:
        if not isinstance(discount, dict) or not discount.get("id"):
            continue
        coupon = discount.get("coupon") or (discount.get("source") or {}).get("coupon")
        name = (coupon.get("name") or coupon.get("id")) if isinstance(coupon, dict) else coupon
        if name:
            labels[discount["id"]] = str(name)
    return labels


def _tax_rate(entry: Mapping[str, Any], tax_rates: Mapping[str, Decimal]) -> Decimal | None:
    details = entry.get("tax_rate_details") or {}
    rate = details.get("tax_rate") if isinstance(details, dict) else None
    if isinstance(rate, dict):
        return stripe_percentage(rate.get("percentage"))
    if isinstance(rate, str) and rate in tax_rates:
        return tax_rates[rate]
    return None


def derive_rate(*, tax: int, taxable: int) -> Decimal:
    """A rate that reproduces `tax` on `taxable` (rounded half up), with as few decimals as
    possible. Used only when the tax rate object is not known: on small amounts several rates
    round to the same tax, and the coarsest one is taken."""
    if taxable == 0:
        return Decimal(0)
    exact = Decimal(tax) * HUNDRED / Decimal(taxable)
    for places in range(0, 5):
        candidate = exact.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
        computed = (Decimal(taxable) * candidate / HUNDRED).quantize(
            Decimal(1), rounding=ROUND_HALF_UP
        )
        if computed == tax:
            return candidate.normalize() if candidate == candidate.to_integral() else candidate
    return exact.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)


def _timestamp(value: Any) -> datetime | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, tz=UTC)
    return None


def _quantity(line: Mapping[str, Any]) -> Decimal:
    if line.get("quantity_decimal") not in (None, ""):
        qty = Decimal(str(line["quantity_decimal"]))
    elif isinstance(line.get("quantity"), int) and line["quantity"] > 0:
        qty = Decimal(line["quantity"])
    else:
        qty = Decimal(1)
    return qty if qty != 0 else Decimal(1)


def stripe_lines(
    invoice: Mapping[str, Any],
    *,
    tax_rates: Mapping[str, Decimal],
    customer: Mapping[str, Any] | None = None,
) -> list[StripeLine]:
    labels = discount_labels(invoice, customer)
    lines = []
    for line in (invoice.get("lines") or {}).get("data") or []:
        discounts = tuple(
            (labels.get(item.get("discount"), str(item.get("discount") or "")), int(item["amount"]))
            for item in line.get("discount_amounts") or ()
            if int(item.get("amount") or 0)
        )
        taxes = [entry for entry in line.get("taxes") or () if isinstance(entry, dict)]
        tax = sum(int(entry.get("amount") or 0) for entry in taxes)
        inclusive = any(entry.get("tax_behavior") == "inclusive" for entry in taxes)
        amount = int(line.get("amount") or 0)
        if taxes and taxes[0].get("taxable_amount") is not None:
            net = int(taxes[0]["taxable_amount"])
        else:
            net = amount - sum(value for _, value in discounts) - (tax if inclusive else 0)
        rate = Decimal(0)
        for entry in taxes:
            known = _tax_rate(entry, tax_rates)
            rate += (
                known
                if known is not None
                else derive_rate(tax=int(entry.get("amount") or 0), taxable=net)
            )
        period = line.get("period") or {}
        lines.append(
            StripeLine(
                description=str(line.get("description") or "Stripe").strip(),
                qty=_quantity(line),
                net=net,
                tax=tax,
                rate=rate,
                discounts=discounts,
                tax_inclusive=inclusive,
                date_start=_timestamp(period.get("start")),
                date_end=_timestamp(period.get("end")),
            )
        )
    return lines


# --- encodings --------------------------------------------------------------------------------


def _minor(amount: int, currency: str) -> Decimal:
    return minor_to_decimal(amount, currency)


def _discount_text(line: StripeLine, currency: str) -> str:
    parts = [f"remise {label} -{_minor(amount, currency)}" for label, amount in line.discounts]
    return f"{line.description} ({', '.join(parts)})" if parts else line.description


def _net_unit_prices(lines: Sequence[StripeLine], currency: str) -> tuple[NewLine, ...]:
    return tuple(
        NewLine(
            qty=line.qty,
            subprice=_minor(line.net, currency) / line.qty,
            tva_tx=line.rate,
            description=_discount_text(line, currency),
            date_start=line.date_start,
            date_end=line.date_end,
        )
        for line in lines
    )


def _discount_lines(lines: Sequence[StripeLine], currency: str) -> tuple[NewLine, ...] | None:
    if any(line.tax_inclusive for line in lines):
        return None  # inclusive discounts are tax-inclusive amounts: only the net encoding fits
    result: list[NewLine] = []
    for line in lines:
        result.append(
            NewLine(
                qty=line.qty,
                subprice=_minor(line.undiscounted_net, currency) / line.qty,
                tva_tx=line.rate,
                description=line.description,
                date_start=line.date_start,
                date_end=line.date_end,
            )
        )
        for label, amount in line.discounts:
            result.append(
                NewLine(
                    qty=Decimal(1),
                    subprice=-_minor(amount, currency),
                    tva_tx=line.rate,
                    description=f"Remise {label} — {line.description}",
                )
            )
    return tuple(result)


def invoice_encoding(
    invoice: Mapping[str, Any],
    *,
    tax_rates: Mapping[str, Decimal],
    customer: Mapping[str, Any] | None = None,
) -> Encoding | None:
    """The lines to send for a Stripe invoice, or None when it has no lines."""
    currency = invoice["currency"]
    lines = stripe_lines(invoice, tax_rates=tax_rates, customer=customer)
    if not lines:
        return None
    wanted = stripe_totals(invoice)
    candidates = []
    readable = _discount_lines(lines, currency)
    if readable is not None and any(line.discounts for line in lines):
        candidates.append(("discount_lines", readable))
    candidates.append(("net_unit_prices", _net_unit_prices(lines, currency)))
    encodings = [
        Encoding(name, encoded, dolibarr_totals(encoded, currency=currency))
        for name, encoded in candidates
    ]
    for encoding in encodings:
        if encoding.totals == wanted:
            return encoding
    for encoding in encodings:
        if encoding.totals.ttc == wanted.ttc:
            return encoding
    return encodings[-1]


# --- credit notes -----------------------------------------------------------------------------


def full_refund_encoding(
    invoice: Mapping[str, Any],
    *,
    tax_rates: Mapping[str, Decimal],
    customer: Mapping[str, Any] | None = None,
) -> Encoding | None:
    """A full refund copies the invoice's lines, at net unit prices (credit-note prices are sent
    positive, so a discount cannot be a line of its own). None if that is not exact."""
    currency = invoice["currency"]
    lines = stripe_lines(invoice, tax_rates=tax_rates, customer=customer)
    if not lines or any(line.net < 0 for line in lines):
        return None
    encoded = tuple(
        NewLine(
            qty=line.qty,
            subprice=_minor(line.net, currency) / line.qty,
            tva_tx=line.rate,
            description=f"Remboursement : {_discount_text(line, currency)}",
            date_start=line.date_start,
            date_end=line.date_end,
        )
        for line in lines
        if line.net
    )
    if not encoded:
        return None
    totals = dolibarr_totals(encoded, currency=currency)
    return Encoding("full_refund", encoded, totals)


def _allocate(total: int, weights: Sequence[int]) -> list[int]:
    """`total` shared in proportion to `weights`, largest remainder: the shares add up exactly."""
    weight_sum = sum(weights)
    if weight_sum == 0:
        return [total] + [0] * (len(weights) - 1)
    raw = [Decimal(total) * Decimal(weight) / Decimal(weight_sum) for weight in weights]
    shares = [int(value) for value in raw]  # towards zero; amounts here are positive
    order = sorted(range(len(weights)), key=lambda i: raw[i] - shares[i], reverse=True)
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return shares


def _net_for_gross(gross: int, rate: Decimal) -> int | None:
    """A net amount (minor units) whose per-line VAT makes exactly `gross`, if one exists."""
    estimate = int((Decimal(gross) * HUNDRED / (HUNDRED + rate)).to_integral_value())
    for net in sorted(range(estimate - 2, estimate + 3), key=lambda n: abs(n - estimate)):
        vat = (Decimal(net) * rate / HUNDRED).quantize(Decimal(1), rounding=ROUND_HALF_UP)
        if net >= 0 and net + vat == gross:
            return net
    return None


def partial_refund_encoding(
    invoice: Mapping[str, Any],
    *,
    amount: int,
    tax_rates: Mapping[str, Decimal],
    customer: Mapping[str, Any] | None = None,
) -> Encoding | None:
    """The pro-rata rule for a partial refund of `amount` (minor units, tax included):

    1. the amount is shared over the invoice's lines in proportion to their totals incl. tax
       (largest remainder, so the shares add up to the refund exactly);
    2. each share becomes one line at the invoice line's VAT rate, whose net is chosen so that
       net + Dolibarr's per-line VAT equals the share exactly;
    3. when no net does (per-line rounding skips some totals: at 20 %, 124.95 is between
       104.12 → 124.94 and 104.13 → 124.96), the line takes the share less one minor unit and
       a one-unit "rounding" line at the same rate carries the rest (its VAT rounds to 0 for
       any rate below 50 %).

    None when even that is impossible (negative lines, a rate of 50 % or more): the refund then
    goes to review instead of being written with a wrong total."""
    currency = invoice["currency"]
    lines = [
        line
        for line in stripe_lines(invoice, tax_rates=tax_rates, customer=customer)
        if line.net or line.tax
    ]
    if not lines or amount <= 0 or any(line.net < 0 or line.tax < 0 for line in lines):
        return None
    unit = Decimal(1).scaleb(-currency_exponent(currency))
    shares = _allocate(amount, [line.net + line.tax for line in lines])
    encoded: list[NewLine] = []
    for line, share in zip(lines, shares, strict=True):
        if share == 0:
            continue
        label = f"Remboursement partiel : {line.description}"
        net = _net_for_gross(share, line.rate)
        if net is not None:
            encoded.append(
                NewLine(
                    qty=Decimal(1),
                    subprice=_minor(net, currency),
                    tva_tx=line.rate,
                    description=label,
                )
            )
            continue
        net = _net_for_gross(share - 1, line.rate)
        if net is None or line.rate >= 50:
            return None
        encoded.append(
            NewLine(
                qty=Decimal(1), subprice=_minor(net, currency), tva_tx=line.rate, description=label
            )
        )
        encoded.append(
            NewLine(
                qty=Decimal(1),
                subprice=unit,
                tva_tx=line.rate,
                description=f"Arrondi — {line.description}",
            )
        )
    totals = dolibarr_totals(encoded, currency=currency)
    if totals.ttc != minor_to_decimal(amount, currency):
        return None
    return Encoding("pro_rata", tuple(encoded), totals)
