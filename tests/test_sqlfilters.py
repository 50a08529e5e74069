"""The one sqlfilters builder: what it quotes, what it leaves bare, what it refuses."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciliation.connectors.sqlfilters import (
    REFUSED_CHARACTERS,
    all_of,
    any_of,
    criterion,
    equals,
    like,
    quote_value,
    unsafe_reason,
)
from reconciliation.errors import UnsafeFilterValue


def test_string_value_is_single_quoted():
    # The recorded form that finds a thirdparty (exchange 19).
    assert str(equals("t.ref_ext", "ap24-user-42")) == "(t.ref_ext:=:'ap24-user-42')"


def test_email_value_is_quoted_as_is():
    assert (
        str(equals("t.email", "marie.curie@new-mail.example.test"))
        == "(t.email:=:'marie.curie@new-mail.example.test')"
    )


def test_integer_value_stays_unquoted():
    assert str(equals("t.client", 1)) == "(t.client:=:1)"


def test_negative_integer_value_stays_unquoted():
    assert str(criterion("t.total_ttc", "<", -5)) == "(t.total_ttc:<:-5)"


def test_decimal_value_stays_unquoted_and_exact():
    assert str(criterion("t.total_ttc", ">=", Decimal("122.40"))) == "(t.total_ttc:>=:122.40)"


def test_date_value_is_a_quoted_iso_date():
    # Dates are compared as SQL strings (exchange 98).
    assert str(criterion("t.datef", ">=", date(2026, 11, 1))) == "(t.datef:>=:'2026-11-01')"


def test_aware_datetime_value_is_quoted_in_utc():
    paris = timezone(timedelta(hours=1))
    value = datetime(2026, 11, 21, 12, 30, tzinfo=paris)
    assert quote_value(value) == "'2026-11-21 11:30:00'"


def test_naive_datetime_value_is_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        quote_value(datetime(2026, 11, 21, 12, 30))


def test_float_value_is_refused():
    with pytest.raises(TypeError, match="float"):
        quote_value(19.99)


def test_bool_value_is_refused():
    with pytest.raises(TypeError, match="bool"):
        quote_value(True)


def test_like_keeps_percent_as_a_wildcard():
    assert str(like("t.ref_ext", "in_REC1%")) == "(t.ref_ext:like:'in_REC1%')"


def test_and_joins_criteria_as_recorded():
    # Exchange 97.
    built = all_of(like("t.nom", "%Curie%"), equals("t.client", 1))
    assert str(built) == "(t.nom:like:'%Curie%') and (t.client:=:1)"


def test_ampersand_operator_is_and():
    built = equals("t.paye", 1) & equals("t.type", 0)
    assert str(built) == "(t.paye:=:1) and (t.type:=:0)"


def test_or_joins_criteria():
    built = any_of(equals("t.ref_ext", "in_1"), equals("t.ref_ext", "in_2"))
    assert str(built) == "(t.ref_ext:=:'in_1') or (t.ref_ext:=:'in_2')"


def test_three_criteria_joined_with_and():
    built = all_of(
        criterion("t.datef", ">=", date(2026, 11, 1)), equals("t.paye", 1), equals("t.type", 0)
    )
    assert str(built) == "(t.datef:>=:'2026-11-01') and (t.paye:=:1) and (t.type:=:0)"


def test_and_and_or_cannot_be_mixed():
    either = any_of(equals("t.paye", 1), equals("t.paye", 0))
    with pytest.raises(ValueError, match="mixed"):
        all_of(either, equals("t.type", 0))


def test_bare_column_is_accepted_for_the_bank_lines_list():
    built = equals("num_chq", "ch_REC106")
    assert str(built) == "(num_chq:=:'ch_REC106')"
    assert not built.uses_table_alias


def test_filter_remembers_it_uses_the_table_alias():
    assert all_of(equals("label", "x"), equals("t.label", "y")).uses_table_alias


def test_plain_sql_field_is_refused():
    with pytest.raises(ValueError, match="column name"):
        equals("t.email='x' or 1", "x")


def test_unknown_operator_is_refused():
    with pytest.raises(ValueError, match="operator"):
        criterion("t.ref_ext", "==", "x")


@pytest.mark.parametrize(
    "value",
    [
        "ap24)",
        "(ap24",
        "o'brien",
        'say "hi"',
        "back\\slash",
        "line\nbreak",
        "tab\there",
        "nul\x00",
        "bidi\u202eoverride",
        "line\u2028separator",
    ],
)
def test_unsafe_value_is_refused(value):
    with pytest.raises(UnsafeFilterValue):
        equals("t.ref_ext", value)


def test_refusal_says_which_character():
    with pytest.raises(UnsafeFilterValue, match=r"\"'\""):
        equals("t.nom", "o'brien")


def test_non_ascii_value_is_accepted():
    assert str(equals("t.nom", "Média Zoé")) == "(t.nom:=:'Média Zoé')"


# What Dolibarr may store in a ref_ext or an email: any text at all, mostly printable.
_any_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)


@given(value=_any_text)
def test_accepted_value_is_embedded_quoted_exactly(value):
    try:
        built = str(equals("t.ref_ext", value))
    except UnsafeFilterValue:
        assert unsafe_reason(value) is not None
        return
    assert built == "(t.ref_ext:=:'" + value + "')"
    assert not REFUSED_CHARACTERS & set(value)
    assert all(ord(character) >= 0x20 and character != "\x7f" for character in value)


_plain_ascii = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="()'\"\\"),
    max_size=40,
)


@given(value=_plain_ascii)
def test_printable_ascii_without_quotes_or_parentheses_is_always_accepted(value):
    assert str(equals("t.ref_ext", value)) == "(t.ref_ext:=:'" + value + "')"


@given(value=st.integers(min_value=-(10**12), max_value=10**12))
def test_integer_round_trips_unquoted(value):
    assert str(equals("t.fk_soc", value)) == f"(t.fk_soc:=:{value})"


def test_datetime_in_utc_is_unchanged():
    value = datetime(2026, 11, 21, 0, 0, tzinfo=UTC)
    assert quote_value(value) == "'2026-11-21 00:00:00'"
