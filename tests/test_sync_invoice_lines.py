"""Line encodings that reproduce Stripe's totals to the cent under Dolibarr's per-line rounding
(README "How totals are computed"), in minor units of any currency."""

from __future__ import annotations

from decimal import Decimal

from reconciliation.connectors.dolibarr_types import NewLine
from reconciliation.sync.invoice_lines import (
    derive_rate,
    dolibarr_totals,
    invoice_encoding,
    partial_refund_encoding,
    stripe_totals,
)


def _line(amount, *, qty=1, tax=0, taxable=None, rate=None, discount=0, description="Article"):
    taxes = []
    if rate is not None:
        taxes.append(
            {
                "amount": tax,
                "taxable_amount": taxable if taxable is not None else amount - discount,
                "tax_behavior": "exclusive",
                "tax_rate_details": {"tax_rate": {"percentage": rate}},
            }
        )
    return {
        "amount": amount,
        "quantity": qty,
        "description": description,
        "discount_amounts": [{"amount": discount, "discount": "di_1"}] if discount else [],
        "taxes": taxes,
        "period": {"start": 1767225600, "end": 1769904000},
    }


def _invoice(currency, lines, *, discounts=()):
    total_excluding = sum(
        (line["taxes"][0]["taxable_amount"] if line["taxes"] else line["amount"]) for line in lines
    )
    tax = sum(t["amount"] for line in lines for t in line["taxes"])
    return {
        "id": "in_test",
        "currency": currency,
        "total": total_excluding + tax,
        "total_excluding_tax": total_excluding,
        "discounts": list(discounts),
        "lines": {"data": lines},
    }


def test_dolibarr_rounds_each_line_as_recorded():
    # README: three units at a tax-inclusive 9.99 (2.1 %) -> 9.78333333 gives 29.97, 9.78 29.96.
    exact = [NewLine(qty=3, subprice=Decimal("9.78333333"), tva_tx=Decimal("2.1"), description="x")]
    short = [NewLine(qty=3, subprice=Decimal("9.78"), tva_tx=Decimal("2.1"), description="x")]
    assert dolibarr_totals(exact, currency="EUR").ttc == Decimal("29.97")
    assert dolibarr_totals(short, currency="EUR").ttc == Decimal("29.96")


def test_a_discount_becomes_a_readable_negative_line_when_that_is_exact():
    invoice = _invoice(
        "eur",
        [_line(4900, discount=980, tax=784, rate=20.0, description="Business Wall")],
        discounts=[{"id": "di_1", "coupon": {"id": "BIENVENUE20", "name": "Bienvenue -20 %"}}],
    )
    encoding = invoice_encoding(invoice, tax_rates={})
    assert encoding.name == "discount_lines"
    assert [line.subprice for line in encoding.lines] == [Decimal("49.00"), Decimal("-9.80")]
    assert encoding.lines[1].description == "Remise Bienvenue -20 % — Business Wall"
    assert encoding.totals == stripe_totals(invoice)
    assert encoding.lines[0].date_start is not None


def test_net_unit_prices_are_used_when_separate_discount_lines_round_a_cent_off():
    # 24.00 at 2.1 % less 8.90: Stripe taxes the 15.10 left, 0.3171 -> 0.32; as two lines
    # Dolibarr would tax 0.504 -> 0.50 and -0.1869 -> -0.19, 0.31 in all: a cent short.
    invoice = _invoice("eur", [_line(2400, discount=890, tax=32, rate=2.1)])
    encoding = invoice_encoding(invoice, tax_rates={})
    assert encoding.totals == stripe_totals(invoice)
    assert encoding.name == "net_unit_prices"
    assert "remise di_1 -8.90" in encoding.lines[0].description


def test_zero_decimal_currencies_are_encoded_in_whole_units():
    invoice = _invoice("jpy", [_line(2400, qty=3, tax=0, rate=0.0)])
    encoding = invoice_encoding(invoice, tax_rates={})
    assert encoding.totals.ttc == Decimal(2400)
    assert encoding.lines[0].subprice == Decimal(800)
    assert stripe_totals(invoice).ttc == Decimal(2400)


def test_three_decimal_currencies_keep_their_mils():
    invoice = _invoice("bhd", [_line(12345, tax=1235, rate=10.0)])
    encoding = invoice_encoding(invoice, tax_rates={})
    assert stripe_totals(invoice).ttc == Decimal("13.580")
    assert encoding.totals.ttc == Decimal("13.580")


def test_an_unknown_tax_rate_is_derived_from_the_amounts():
    assert derive_rate(tax=784, taxable=3920) == Decimal(20)
    assert derive_rate(tax=132, taxable=2400) == Decimal("5.5")
    assert derive_rate(tax=0, taxable=0) == Decimal(0)


def test_a_partial_refund_is_shared_pro_rata_to_the_cent():
    invoice = _invoice(
        "eur",
        [_line(4900, tax=980, rate=20.0), _line(1000, tax=55, rate=5.5)],
    )
    encoding = partial_refund_encoding(invoice, amount=3000, tax_rates={})
    assert encoding.totals.ttc == Decimal("30.00")
    rates = [line.tva_tx for line in encoding.lines]
    assert Decimal(20) in rates
    assert Decimal("5.5") in rates


def test_a_partial_refund_no_single_line_can_reach_gets_a_one_cent_rounding_line():
    # At 20 %, 124.95 lies between 104.12 -> 124.94 and 104.13 -> 124.96.
    invoice = _invoice("eur", [_line(41650, tax=8330, rate=20.0)])
    encoding = partial_refund_encoding(invoice, amount=12495, tax_rates={})
    assert [line.subprice for line in encoding.lines] == [Decimal("104.12"), Decimal("0.01")]
    assert encoding.lines[1].description.startswith("Arrondi")
    assert encoding.totals.ttc == Decimal("124.95")


def test_a_partial_refund_with_no_exact_encoding_is_refused():
    invoice = _invoice("eur", [_line(1000, tax=600, rate=60.0)])
    # At 60 %, 0.03 is 0.02 + 0.01 but 0.04 is out of reach, and a rounding line's VAT at 60 %
    # would not round to zero.
    assert partial_refund_encoding(invoice, amount=4, tax_rates={}) is None
