"""Money: currency exponents, minor units <-> Decimal, and Dolibarr's string numbers.

The only module that converts between representations of an amount. Nothing here touches float:
a float in, anywhere, is a TypeError.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from reconciliation.errors import UnknownCurrency

# ISO 4217 minor-unit exponents. Currencies not listed here are refused (UnknownCurrency) rather
# than guessed: a wrong exponent is a factor-of-100 error in the books.
_ZERO_DECIMAL = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"
_THREE_DECIMAL = "BHD IQD JOD KWD LYD OMR TND"
_FOUR_DECIMAL = "CLF UYW"
_TWO_DECIMAL = """
AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BRL BSD BTN BWP
BYN BZD CAD CDF CHF CNY COP CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP
GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT
LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN
NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP
SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD UZS VES WST
XCD YER ZAR ZMW ZWL
"""
_EXPONENT_BY_CODE: dict[str, int] = {
    **dict.fromkeys(_TWO_DECIMAL.split(), 2),
    **dict.fromkeys(_ZERO_DECIMAL.split(), 0),
    **dict.fromkeys(_THREE_DECIMAL.split(), 3),
    **dict.fromkeys(_FOUR_DECIMAL.split(), 4),
}

# Dolibarr stores amounts as DECIMAL(24,8) and serialises them as strings with 8 decimals.
DOLIBARR_PLACES = 8


def currency_code(code: str) -> str:
    """The normalised (upper-case) code, or UnknownCurrency. Stripe sends lower case."""
    if not isinstance(code, str):
        raise UnknownCurrency(f"currency must be a string code, not {type(code).__name__}")
    normalised = code.strip().upper()
    if normalised not in _EXPONENT_BY_CODE:
        raise UnknownCurrency(f"unknown currency {code!r}: its number of decimals is not known")
    return normalised


def currency_exponent(code: str) -> int:
    """Number of decimal places of the currency's minor unit (EUR 2, JPY 0, BHD 3)."""
    return _EXPONENT_BY_CODE[currency_code(code)]


def is_known_currency(code: str) -> bool:
    return isinstance(code, str) and code.strip().upper() in _EXPONENT_BY_CODE


def _quantum(exponent: int) -> Decimal:
    return Decimal(1).scaleb(-exponent)


def to_decimal(value: Decimal | int | str) -> Decimal:
    """A Decimal from an int, a numeric string or a Decimal. Floats are refused."""
    if isinstance(value, bool | float):
        raise TypeError(f"money must not be a {type(value).__name__}: {value!r}")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation as exc:
            raise ValueError(f"not a number: {value!r}") from exc
    else:
        raise TypeError(f"cannot read an amount from {type(value).__name__}")
    if not result.is_finite():
        raise ValueError(f"not a finite amount: {value!r}")
    return result


def minor_to_decimal(minor: int, currency: str) -> Decimal:
    """Integer minor units (Stripe's amounts) to a Decimal in major units: 1999 EUR -> 19.99."""
    if isinstance(minor, bool) or not isinstance(minor, int):
        raise TypeError(f"minor units must be an int, not {type(minor).__name__}")
    exponent = currency_exponent(currency)
    return Decimal(minor).scaleb(-exponent).quantize(_quantum(exponent))


def decimal_to_minor(amount: Decimal | int | str, currency: str) -> int:
    """A major-unit amount to integer minor units. Refuses an amount finer than the currency's
    minor unit (19.995 EUR) instead of rounding it silently."""
    exponent = currency_exponent(currency)
    value = to_decimal(amount)
    scaled = value.scaleb(exponent)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{value} {currency_code(currency)} is finer than its minor unit")
    return int(scaled)


def round_to_currency(amount: Decimal | int | str, currency: str) -> Decimal:
    """Round half up to the currency's minor unit, the rule Dolibarr applies to line totals."""
    exponent = currency_exponent(currency)
    return to_decimal(amount).quantize(_quantum(exponent), rounding=ROUND_HALF_UP)


def parse_dolibarr_amount(value: str | int | Decimal | None) -> Decimal | None:
    """Dolibarr's amounts: "122.40000000" (string), sometimes a bare JSON number (27, 122.4 in
    `totalpaid`), "" or null when unset. Numbers arrive from JSON as int or float; a float is
    turned into a Decimal through its shortest repr, which is exact for the JSON text it came from.
    """
    if value is None or value == "":
        return None
    if isinstance(value, float):
        # JSON numbers are parsed by the json module as float unless told otherwise; repr gives
        # back the exact JSON literal (e.g. 122.4), never a binary expansion.
        return Decimal(repr(value))
    return to_decimal(value)


def format_dolibarr_amount(amount: Decimal | int | str, currency: str = "EUR") -> str:
    """An amount as Dolibarr expects it in request bodies: a plain string with the currency's
    decimals ("19.99", "1000", "0.125")."""
    exponent = currency_exponent(currency)
    value = to_decimal(amount)
    quantised = value.quantize(_quantum(exponent))
    if quantised != value:
        raise ValueError(f"{value} {currency_code(currency)} is finer than its minor unit")
    return f"{quantised:f}"


def format_dolibarr_price(amount: Decimal | int | str) -> str:
    """A unit price with Dolibarr's own precision (8 decimals, trailing zeros trimmed)."""
    value = to_decimal(amount).quantize(_quantum(DOLIBARR_PLACES), rounding=ROUND_HALF_UP)
    text = f"{value:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


@dataclass(frozen=True, slots=True)
class Money:
    """An exact amount in a known currency. Arithmetic only between equal currencies."""

    amount: Decimal
    currency: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "currency", currency_code(self.currency))
        object.__setattr__(self, "amount", to_decimal(self.amount))

    @classmethod
    def from_minor(cls, minor: int, currency: str) -> Money:
        return cls(minor_to_decimal(minor, currency), currency)

    @property
    def exponent(self) -> int:
        return currency_exponent(self.currency)

    @property
    def minor(self) -> int:
        return decimal_to_minor(self.amount, self.currency)

    def _same_currency(self, other: Money) -> None:
        if not isinstance(other, Money):
            raise TypeError(f"cannot combine Money with {type(other).__name__}")
        if other.currency != self.currency:
            raise ValueError(f"cannot combine {self.currency} with {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._same_currency(other)
        return Money(self.amount + other.amount, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same_currency(other)
        return Money(self.amount - other.amount, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount, self.currency)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        return self.currency == other.currency and self.amount == other.amount

    def __hash__(self) -> int:
        return hash((self.amount.normalize(), self.currency))

    def __str__(self) -> str:
        return f"{self.amount.quantize(_quantum(self.exponent)):f} {self.currency}"

    def equals_to_the_cent(self, other: Money) -> bool:
        """True when both round to the same minor unit (Dolibarr's 8-decimal totals vs Stripe's
        integers)."""
        self._same_currency(other)
        return round_to_currency(self.amount, self.currency) == round_to_currency(
            other.amount, other.currency
        )
