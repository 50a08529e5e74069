"""Document lines as clients send them to `POST /orders` and `POST /invoices` (33, 45, 62, 157).

Totals are computed here, server-side, like Dolibarr: the client's totals are never read. A line
may give its net unit price in the document's currency instead (`multicurrency_subprice`,
Dolibarr's `pu_ht_devise`; Multicurrency module, read from the source, not recorded).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from reconciliation.sandbox.dolibarr.errors import ApiError
from reconciliation.sandbox.dolibarr.params import decimal, optional_int, text
from reconciliation.sandbox.dolibarr.store import Line, Store, line_totals
from reconciliation.sandbox.dolibarr.templates import round_unit

ZERO = Decimal(0)
ONE = Decimal(1)


def build_lines(
    store: Store,
    raw_lines: Any,
    *,
    table: str,
    credit_note: bool = False,
    multicurrency_tx: Decimal = ONE,
    error_text: str,
    error_source: str,
) -> list[Line]:
    """Lines from the request. A line without `qty` is stored with qty 0 and zero totals, as
    recorded (157, 159). On a credit note, unit prices are stored negative (62, 63).
    `multicurrency_tx` is the document's rate (1: the company currency)."""
    if raw_lines in (None, ""):
        return []
    if not isinstance(raw_lines, list):
        raise ApiError(400, "lines must be an array", source=error_source)
    lines = []
    for raw in raw_lines:
        if not isinstance(raw, dict):
            raise ApiError(400, "each line must be an object", source=error_source)
        lines.append(
            build_line(
                store,
                raw,
                table=table,
                credit_note=credit_note,
                multicurrency_tx=multicurrency_tx,
                error_text=error_text,
                error_source=error_source,
            )
        )
    return lines


def build_line(
    store: Store,
    raw: dict[str, Any],
    *,
    table: str,
    credit_note: bool,
    multicurrency_tx: Decimal = ONE,
    error_text: str,
    error_source: str,
) -> Line:
    fk_product = optional_int(raw.get("fk_product")) or None
    product = store.products.get(fk_product or 0)
    if fk_product is not None and product is None:
        raise ApiError(
            500,
            error_text,
            source=error_source,
            extra=[
                "Cannot add or update a child row: a foreign key constraint fails "
                f"(fk_{table}_fk_product)"
            ],
        )
    qty = decimal(raw.get("qty"), ZERO) or ZERO
    foreign_subprice = decimal(raw.get("multicurrency_subprice"), ZERO) or ZERO
    subprice = decimal(raw.get("subprice"), None)
    if subprice is None:
        by_product = product is not None and raw.get("subprice") is None and not foreign_subprice
        subprice = product.price if by_product else ZERO
    if credit_note:
        subprice, foreign_subprice = -abs(subprice), -abs(foreign_subprice)
    tva_tx = decimal(raw.get("tva_tx"), None)
    if tva_tx is None:
        tva_tx = product.tva_tx if product is not None else ZERO
    remise_percent = decimal(raw.get("remise_percent"), ZERO) or ZERO
    product_type = optional_int(raw.get("product_type"))
    if product_type is None:
        product_type = product.type if product is not None else 0
    prices = unit_prices(subprice=subprice, foreign_subprice=foreign_subprice, tx=multicurrency_tx)
    net, vat, gross = line_totals(
        qty=qty, subprice=prices.company, remise_percent=remise_percent, tva_tx=tva_tx
    )
    foreign_totals = (net, vat, gross)
    if multicurrency_tx != ONE:
        foreign_totals = line_totals(
            qty=qty, subprice=prices.foreign, remise_percent=remise_percent, tva_tx=tva_tx
        )
    return Line(
        id=store.next_id(table),
        fk_product=fk_product,
        product_type=product_type,
        desc=text(raw.get("desc", raw.get("description"))) or "",
        qty=qty,
        subprice=prices.stored_company,
        tva_tx=tva_tx,
        remise_percent=remise_percent,
        total_ht=net,
        total_tva=vat,
        total_ttc=gross,
        date_start=optional_int(raw.get("date_start")),
        date_end=optional_int(raw.get("date_end")),
        # Every line came back with rang "0" (34): the API does not number them.
        rang=optional_int(raw.get("rang")) or 0,
        multicurrency_subprice=(
            prices.stored_company if multicurrency_tx == ONE else round_unit(prices.foreign)
        ),
        multicurrency_totals=foreign_totals,
    )


@dataclass(frozen=True)
class UnitPrices:
    """A line's net unit price in the company currency (`company`, what its totals are
    computed from; `stored_company`, what `subprice` keeps) and in the document currency."""

    company: Decimal
    stored_company: Decimal
    foreign: Decimal


def unit_prices(*, subprice: Decimal, foreign_subprice: Decimal, tx: Decimal) -> UnitPrices:
    """calcul_price_total's first step: without a company price, pu = pu_devise / tx
    (unrounded: the totals are computed from it) and `subprice` keeps it at 5 decimals
    (price2num 'MU'); without a document-currency price, pu_devise = pu x tx."""
    if not subprice and foreign_subprice:
        company = foreign_subprice / tx
        return UnitPrices(company, round_unit(company), foreign_subprice)
    return UnitPrices(subprice, subprice, foreign_subprice or subprice * tx)


def copy_line(store: Store, line: Line, *, table: str) -> Line:
    """An order line copied into an invoice (createfromorder, 41)."""
    return Line(
        id=store.next_id(table),
        fk_product=line.fk_product,
        product_type=line.product_type,
        desc=line.desc,
        qty=line.qty,
        subprice=line.subprice,
        tva_tx=line.tva_tx,
        remise_percent=line.remise_percent,
        total_ht=line.total_ht,
        total_tva=line.total_tva,
        total_ttc=line.total_ttc,
        date_start=line.date_start,
        date_end=line.date_end,
        rang=line.rang,
        multicurrency_subprice=line.multicurrency_subprice,
        multicurrency_totals=line.multicurrency_totals,
    )
