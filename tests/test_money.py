from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciliation.errors import UnknownCurrency
from reconciliation.money import (
    Money,
    currency_exponent,
    decimal_to_minor,
    format_dolibarr_amount,
    minor_to_decimal,
    parse_dolibarr_amount,
    round_to_currency,
)

CURRENCIES = ["EUR", "USD", "GBP", "JPY", "KRW", "BHD", "KWD", "TND", "CLF"]
minor_amounts = st.integers(min_value=-(10**15), max_value=10**15)


@pytest.mark.parametrize(
    ("code", "exponent"),
    [("EUR", 2), ("eur", 2), ("JPY", 0), ("BHD", 3), ("KWD", 3), ("CLF", 4)],
)
def test_currency_exponent_is_iso_4217(code, exponent):
    assert currency_exponent(code) == exponent


def test_unknown_currency_is_refused_with_its_code_in_the_message():
    with pytest.raises(UnknownCurrency, match="'XYZ'"):
        currency_exponent("XYZ")


def test_minor_units_become_major_units_with_the_currency_exponent():
    assert minor_to_decimal(1999, "EUR") == Decimal("19.99")
    assert minor_to_decimal(1999, "JPY") == Decimal("1999")
    assert minor_to_decimal(1999, "BHD") == Decimal("1.999")


def test_an_amount_finer_than_the_minor_unit_is_refused_not_rounded():
    with pytest.raises(ValueError, match="finer than its minor unit"):
        decimal_to_minor(Decimal("19.995"), "EUR")


def test_float_is_refused_everywhere():
    with pytest.raises(TypeError):
        decimal_to_minor(19.99, "EUR")
    with pytest.raises(TypeError):
        Money(19.99, "EUR")


def test_dolibarr_eight_decimal_strings_parse_exactly():
    assert parse_dolibarr_amount("122.40000000") == Decimal("122.4")
    assert parse_dolibarr_amount("-27.00000000") == Decimal("-27")


def test_dolibarr_bare_json_numbers_parse_to_their_literal():
    # totalpaid arrives as a JSON number (exchanges 53, 56): 122.4 must not become 122.399999…
    assert parse_dolibarr_amount(122.4) == Decimal("122.4")
    assert parse_dolibarr_amount(27) == Decimal("27")


def test_dolibarr_unset_amounts_are_none():
    assert parse_dolibarr_amount("") is None
    assert parse_dolibarr_amount(None) is None


def test_rounding_to_the_currency_is_half_up():
    assert round_to_currency(Decimal("0.125"), "EUR") == Decimal("0.13")
    assert round_to_currency(Decimal("-0.125"), "EUR") == Decimal("-0.13")


def test_money_from_minor_equals_money_from_decimal():
    assert Money.from_minor(1999, "EUR") == Money(Decimal("19.99"), "EUR")


def test_money_refuses_to_add_other_currencies():
    with pytest.raises(ValueError, match="EUR with USD"):
        Money(Decimal(1), "EUR") + Money(Decimal(1), "USD")


def test_money_equal_to_the_cent_ignores_dolibarr_extra_decimals():
    dolibarr = Money(parse_dolibarr_amount("44.78000000"), "EUR")
    assert dolibarr.equals_to_the_cent(Money.from_minor(4478, "EUR"))
    assert not dolibarr.equals_to_the_cent(Money.from_minor(4479, "EUR"))


@given(minor=minor_amounts, currency=st.sampled_from(CURRENCIES))
def test_minor_to_decimal_round_trips(minor, currency):
    assert decimal_to_minor(minor_to_decimal(minor, currency), currency) == minor


@given(minor=minor_amounts, currency=st.sampled_from(CURRENCIES))
def test_dolibarr_string_round_trips(minor, currency):
    as_text = format_dolibarr_amount(minor_to_decimal(minor, currency), currency)
    assert decimal_to_minor(parse_dolibarr_amount(as_text), currency) == minor


@given(minor=minor_amounts, currency=st.sampled_from(CURRENCIES))
def test_dolibarr_eight_decimal_rendering_round_trips(minor, currency):
    eight = f"{minor_to_decimal(minor, currency):.8f}"
    assert Money(parse_dolibarr_amount(eight), currency).minor == minor


@given(a=minor_amounts, b=minor_amounts, currency=st.sampled_from(CURRENCIES))
def test_money_addition_matches_minor_unit_addition(a, b, currency):
    total = Money.from_minor(a, currency) + Money.from_minor(b, currency)
    assert total.minor == a + b
