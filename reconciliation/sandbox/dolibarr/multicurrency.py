"""Dolibarr's Multicurrency module, opt-in: the currencies and rates of `llx_multicurrency`, the
currency a new document gets, and the conversions of amounts between the document currency and
the company currency.

The recorded instance had the module off, so none of this was recorded: it is read from
Dolibarr's PHP source (MultiCurrency, CurrencyRate, Facture::create, calcul_price_total,
Paiement::create, addPaymentToBank; docs/sandbox.md "Multicurrency"). With the module off the
sandbox behaves as recorded: every document is in the company currency at rate 1.

Rates are Dolibarr's: `multicurrency_tx` is how many units of the foreign currency one unit of
the company currency buys (GBP 0.85: 1 EUR = 0.85 GBP), so company amount = foreign / tx.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import cache

from reconciliation.sandbox.dolibarr.templates import EIGHT_PLACES, recorded_body

ONE = Decimal(1)

# The names the module gives a currency (en_US): the translated label of `Currency<code>`
# (dict.lang), else the label of llx_c_currencies, then the symbol in brackets (source:
# modMultiCurrency::createFirstCurrency, admin/multicurrency.php). Other codes get the code.
_NAMES = {
    "EUR": "Euros (€)",
    "GBP": "GB Pounds (£)",
    "USD": "US Dollars ($)",
    "JPY": "Japan Yen (¥)",
    "CHF": "Swiss Francs (CHF)",
    "CAD": "CAN Dollars ($)",
    "AUD": "AU Dollars ($)",
}


@cache
def company_currency() -> str:
    """MAIN_MONNAIE of the recorded instance (12: "EUR")."""
    return str(recorded_body(12)["currency_code"])


@dataclass(frozen=True)
class Currency:
    """One row of llx_multicurrency with its latest llx_multicurrency_rate row."""

    id: int
    code: str
    name: str
    rate_id: int
    rate: Decimal
    date_sync: int


@dataclass(frozen=True)
class DocumentCurrency:
    """What Facture::create stores: `multicurrency_code`, `fk_multicurrency`, `multicurrency_tx`."""

    code: str
    fk_multicurrency: int
    tx: Decimal


def currencies_for(rates: Mapping[str, Decimal], *, when: int) -> dict[str, Currency]:
    """The module's table once it is on: the company currency at rate 1 (created when the
    module is enabled, so it is row 1), then `rates` in their order. Keys are upper-case codes:
    `code = 'gbp'` matches GBP under the table's utf8mb4_unicode_ci collation."""
    table = {company_currency(): ONE, **{code.upper(): rate for code, rate in rates.items()}}
    return {
        code: Currency(
            id=index,
            code=code,
            name=_NAMES.get(code, code),
            rate_id=index,
            rate=rate,
            date_sync=when,
        )
        for index, (code, rate) in enumerate(table.items(), start=1)
    }


def checked_rates(rates: Mapping[str, Decimal]) -> dict[str, Decimal]:
    """The rates a sandbox is configured with: ISO-like codes, positive Decimal rates, and the
    company currency (if named at all) at 1 — the module always keeps it there."""
    checked: dict[str, Decimal] = {}
    for code, rate in rates.items():
        upper = code.strip().upper()
        if len(upper) != 3 or not upper.isalpha():
            raise ValueError(f"currency code {code!r} is not a three-letter code")
        if not isinstance(rate, Decimal) or not rate.is_finite() or rate <= 0:
            raise ValueError(f"the rate of {upper} must be a positive Decimal, got {rate!r}")
        if upper == company_currency() and rate != ONE:
            raise ValueError(f"the company currency {upper} always has rate 1, got {rate}")
        checked[upper] = rate
    return checked


def parse_rates(text: str) -> dict[str, Decimal]:
    """`GBP=0.85,USD=1.08,JPY=162` (the CLI's `--multicurrency`); "" is the module with the
    company currency alone."""
    rates: dict[str, Decimal] = {}
    for part in (piece.strip() for piece in text.split(",")):
        if not part:
            continue
        code, separator, value = part.partition("=")
        if not separator:
            raise ValueError(f"{part!r} is not CODE=RATE")
        try:
            rates[code.strip()] = Decimal(value.strip())
        except InvalidOperation as exc:
            raise ValueError(f"{value.strip()!r} is not a rate") from exc
    return checked_rates(rates)


def document_currency(
    currencies: Mapping[str, Currency], *, code: str | None, tx: Decimal | None
) -> DocumentCurrency:
    """Facture::create: a known code without a rate takes the currency's latest rate, a given
    rate is kept; an unknown code, no code, or the module off (no currencies) **silently** give
    the company currency at rate 1 with fk_multicurrency 0 — no error."""
    found = currencies.get(code.strip().upper()) if code else None
    if found is None:
        return DocumentCurrency(company_currency(), 0, ONE)
    # The code is stored as sent (the look-up ignored its case: collation); the rate goes into
    # llx_facture.multicurrency_tx, a DECIMAL(24,8).
    rate = (tx if tx else found.rate).quantize(EIGHT_PLACES, rounding=ROUND_HALF_UP)
    return DocumentCurrency(code or found.code, found.id, rate)
