"""How each row looks in the API, per route, built on the recorded answers (see templates.py).

Dolibarr shows the same object differently depending on how it reached the JSON encoder: read
back from the database (GET: strings everywhere), listed (no linked objects), returned by an
action after an in-memory change (validate/settopaid: `totalpaid` and `remaintopay` null), or
built in memory (createfromorder: real numbers). Each function takes the variant that the route
uses; the recorded exchange of that route is the template.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from reconciliation.sandbox.dolibarr import dictionaries
from reconciliation.sandbox.dolibarr.store import (
    BankAccount,
    BankLine,
    Invoice,
    Line,
    Order,
    Payment,
    Product,
    Shipment,
    ShipmentLine,
    SocieteAccount,
    Store,
    StoredFile,
    Thirdparty,
    document_currency_totals,
    document_totals,
    line_totals,
    now,
)
from reconciliation.sandbox.dolibarr.templates import (
    DAY_SECONDS,
    id_string,
    money8,
    php_number,
    php_string,
    qty_string,
    rate4,
    render,
    sql_datetime,
)

PUBLIC_URL = "http://127.0.0.1:8080"

# llx_c_payment_term rows of a default install: id -> (code, label, days). Only RECEP was
# recorded; it counts one day: an invoice dated 2026-11-21 is due 2026-11-22 (1795305600, 53).
PAYMENT_TERMS: dict[int, tuple[str, str, int]] = {
    1: ("RECEP", "Due upon receipt", 1),
    2: ("30D", "Due in 30 days", 30),
    4: ("60D", "Due in 60 days", 60),
    9: ("10D", "Due in 10 days", 10),
    11: ("14D", "Due in 14 days", 14),
}


def due_date(date: int, cond_reglement_id: int | None) -> int:
    term = PAYMENT_TERMS.get(cond_reglement_id or 0)
    return date + term[2] * DAY_SECONDS if term else date


def payment_code(type_id: int | None) -> str | None:
    row = dictionaries.payment_type_by_id().get(type_id or 0)
    return row["code"] if row else None


def payment_label(type_id: int | None) -> str | None:
    row = dictionaries.payment_type_by_id().get(type_id or 0)
    return row["label"] if row else None


def _php_array(value: dict[str, Any]) -> dict[str, Any] | list[Any]:
    """PHP's empty array encodes as [], a filled one as an object (34 vs 44)."""
    return value if value else []


# -- thirdparties ------------------------------------------------------------------------------


def thirdparty(store: Store, row: Thirdparty, variant: str = "get") -> dict[str, Any]:
    """variant: get (16, also by email and by Stripe key 103), list (18), put (17)."""
    country = dictionaries.country_by_id().get(row.country_id or -1)
    values: dict[str, Any] = {
        "id": str(row.id),
        "ref": row.name,
        "ref_ext": row.ref_ext,
        "status": str(row.status),
        "country_id": id_string(row.country_id),
        "country_code": country["code"] if country else None,
        "mode_reglement_id": id_string(row.mode_reglement_id),
        "cond_reglement_id": id_string(row.cond_reglement_id),
        "note_private": row.note_private,
        "note_public": row.note_public,
        "name": row.name,
        "name_alias": row.name_alias,
        "date_creation": row.date_creation,
        "phone": row.phone,
        "phone_mobile": row.phone_mobile,
        "fax": row.fax,
        "email": row.email,
        "url": row.url,
        "tva_assuj": str(row.tva_assuj),
        "tva_intra": row.tva_intra,
        "client": str(row.client),
        "prospect": 1 if row.client in (2, 3) else 0,
        "fournisseur": str(row.fournisseur),
        "code_client": row.code_client,
        "code_fournisseur": row.code_fournisseur,
        "default_lang": row.default_lang,
        "address": row.address,
        "zip": row.zip,
        "town": row.town,
    }
    for index in range(1, 7):
        values[f"idprof{index}"] = row.idprof.get(index, "")
    if variant == "put":
        values["socid"] = row.id
        values["trackid"] = f"thi{row.id}"
    return render(f"thirdparty.{variant}", values)


def thirdparty_ambiguous() -> dict[str, Any]:
    """Two thirdparties share the email: an empty object, every field null (27)."""
    return render("thirdparty.empty", {})


def account_row(row: SocieteAccount) -> dict[str, Any]:
    """`GET /thirdparties/{id}/accounts`: numbers and timestamps, no site_account (102)."""
    return render(
        "account.row",
        {
            "id": row.id,
            "date_creation": row.date_creation,
            "tms": row.tms,
            "key_account": row.key_account,
            "fk_soc": row.fk_soc,
            "site": row.site,
        },
    )


def account_written(row: SocieteAccount, *, variant: str, status_sent: bool) -> dict[str, Any]:
    """The raw SocieteAccount after a write: created (101, 111), replaced (105: id as a string),
    updated by PUT (108: read back, dates as numbers, status a string)."""
    values: dict[str, Any] = {
        "key_account": row.key_account,
        "site_account": row.site_account,
        "fk_soc": row.fk_soc,
        "site": row.site,
        "login": row.login,
    }
    if variant == "updated":
        values.update(
            id=row.id,
            ref=str(row.id),
            status=str(row.status),
            date_creation=row.date_creation,
            tms=row.tms,
        )
    else:
        values.update(
            id=str(row.id) if variant == "replaced" else row.id,
            status=str(row.status) if status_sent else None,
            date_creation=sql_datetime(row.date_creation),
        )
    return render(f"account.{variant}", values)


# -- products --------------------------------------------------------------------------------


def product(row: Product) -> dict[str, Any]:
    price_ttc = row.price * (1 + row.tva_tx / 100)
    return render(
        "product.get",
        {
            "id": str(row.id),
            "ref": row.ref,
            "ref_ext": row.ref_ext,
            "status": str(row.tosell),
            "note_public": row.note_public,
            "note_private": row.note_private,
            "date_creation": row.date_creation,
            "label": row.label,
            "description": row.description,
            "type": str(row.type),
            "price": money8(row.price),
            "price_ttc": money8(price_ttc),
            "price_base_type": row.price_base_type,
            "tva_tx": rate4(row.tva_tx),
            "status_buy": str(row.tobuy),
            "weight": None if row.weight is None else php_string(row.weight),
            "weight_units": row.weight_units or 0,
        },
    )


# -- lines -------------------------------------------------------------------------------------


def _line_document_currency(line: Line, write: Callable[[Decimal], Any]) -> dict[str, Any]:
    """The line in its document's currency (the company amounts at rate 1), written as the
    route writes money (`money8` read back, `php_number` in memory)."""
    net, vat, gross = line.document_currency_totals
    return {
        "multicurrency_total_ht": write(net),
        "multicurrency_total_tva": write(vat),
        "multicurrency_total_ttc": write(gross),
        "multicurrency_subprice": write(line.document_currency_subprice),
    }


def _line_common(store: Store, line: Line) -> dict[str, Any]:
    item = store.products.get(line.fk_product or 0)
    values: dict[str, Any] = {
        "id": str(line.id),
        "rowid": str(line.id),
        **_line_document_currency(line, money8),
        "total_ht": money8(line.total_ht),
        "total_tva": money8(line.total_tva),
        "total_ttc": money8(line.total_ttc),
        "product_type": str(line.product_type),
        "desc": line.desc,
        "description": line.desc,
        "qty": qty_string(line.qty),
        "remise_percent": php_string(line.remise_percent),
        "subprice": money8(line.subprice),
        "tva_tx": rate4(line.tva_tx),
        "rang": str(line.rang),
        "date_start": line.date_start if line.date_start is not None else "",
        "date_end": line.date_end if line.date_end is not None else "",
    }
    if item is not None:
        values.update(
            ref=item.ref,
            fk_product=str(item.id),
            product_ref=item.ref,
            product_label=item.label,
            product_desc=item.description or "",
            fk_product_type=str(item.type),
            libelle=item.label,
        )
    return values


def order_line(store: Store, order: Order, line: Line, shape: str = "order.line") -> dict[str, Any]:
    """shape: "order.line" inside the order (34), "order.lines" from /orders/{id}/lines (80)."""
    values = _line_common(store, line)
    item = store.products.get(line.fk_product or 0)
    values.update(fk_commande=str(order.id), commande_id=str(order.id))
    if item is not None:
        # The product's weight rides along on order lines (34: "0.3", "0").
        values.update(
            product_tosell=str(item.tosell),
            product_tobuy=str(item.tobuy),
            product_custom_code="",
            weight=None if item.weight is None else php_string(item.weight),
            weight_units=None if item.weight_units is None else str(item.weight_units),
        )
        return render(f"{shape}.product", values)
    return render(f"{shape}.free", values)


def invoice_line(store: Store, invoice: Invoice, line: Line) -> dict[str, Any]:
    values = _line_common(store, line)
    values["fk_facture"] = str(invoice.id)
    kind = "product" if line.fk_product in store.products else "free"
    return render(f"invoice.line.{kind}", values)


def _fromorder_line(store: Store, invoice: Invoice, line: Line) -> dict[str, Any]:
    """Lines copied into the in-memory invoice of createfromorder: strings, no id yet (41)."""
    item = store.products.get(line.fk_product or 0)
    values: dict[str, Any] = {
        **_line_document_currency(line, money8),
        "total_ht": money8(line.total_ht),
        "total_tva": money8(line.total_tva),
        "total_ttc": money8(line.total_ttc),
        "product_type": str(line.product_type),
        "desc": line.desc,
        "qty": qty_string(line.qty),
        "remise_percent": php_string(line.remise_percent),
        "subprice": money8(line.subprice),
        "tva_tx": rate4(line.tva_tx),
        "fk_facture": invoice.id,
        "rang": str(line.rang),
    }
    if item is not None:
        values.update(fk_product=str(item.id), libelle=item.label)
        return render("invoice.fromorder.line.product", values)
    return render("invoice.fromorder.line.free", values)


def _fromorder_inserted_line(
    store: Store, invoice: Invoice, line: Line, shape: str
) -> dict[str, Any]:
    """A line as inserted, still in memory, with real numbers (41: `lines[3:]` and `line`)."""
    return render(
        shape,
        {
            "id": line.id,
            "rowid": line.id,
            **_line_document_currency(line, php_number),
            "total_ht": php_number(line.total_ht),
            "total_tva": php_number(line.total_tva),
            "total_ttc": php_number(line.total_ttc),
            "product_type": str(line.product_type),
            "fk_product": id_string(line.fk_product),
            "desc": line.desc,
            "qty": php_number(line.qty),
            "remise_percent": php_number(line.remise_percent),
            "subprice": php_number(line.subprice),
            "tva_tx": php_string(line.tva_tx),
            "fk_facture": invoice.id,
            "rang": line.rang,
        },
    )


# -- orders ------------------------------------------------------------------------------------


def _online_url(source: str, ref: str) -> str:
    return f"{PUBLIC_URL}/public/payment/newpayment.php?source={source}&ref={quote(ref, safe='')}"


def order(store: Store, row: Order, variant: str = "get", *, action: str = "") -> dict[str, Any]:
    """variant: get (34), list (39), action (35 validate, 44 setinvoiced, close)."""
    total_ht, total_tva, total_ttc = document_totals(row.lines)
    term = PAYMENT_TERMS.get(row.cond_reglement_id or 0)
    links = store.links_of("commande", row.id)
    values: dict[str, Any] = {
        "id": str(row.id),
        "ref": row.display_ref,
        "ref_ext": row.ref_ext,
        "statut": str(row.statut),
        "status": str(row.statut),
        "mode_reglement_id": id_string(row.mode_reglement_id),
        "cond_reglement_id": id_string(row.cond_reglement_id),
        "multicurrency_total_ht": money8(total_ht),
        "multicurrency_total_tva": money8(total_tva),
        "multicurrency_total_ttc": money8(total_ttc),
        "total_ht": money8(total_ht),
        "total_tva": money8(total_tva),
        "total_ttc": money8(total_ttc),
        "note_public": row.note_public,
        "note_private": row.note_private,
        "date_creation": row.date_creation,
        "date_validation": row.date_validation if row.date_validation else "",
        "date_modification": row.date_modification or row.date_creation,
        "user_validation_id": "1" if row.date_validation else None,
        "user_modification_id": "1" if row.date_validation else None,
        "socid": str(row.socid),
        "ref_client": row.ref_client,
        "ref_customer": row.ref_client,
        "billed": str(row.billed),
        "cond_reglement_code": term[0] if term else None,
        "cond_reglement_doc": term[1] if term else None,
        "mode_reglement_code": payment_code(row.mode_reglement_id),
        "date": row.date,
        "date_commande": row.date,
        "online_payment_url": _online_url("order", row.display_ref),
        "lines": [order_line(store, row, line) for line in row.lines],
    }
    if variant == "list":
        values.update(linkedObjectsIds=None, contacts_ids=[])
    else:
        values["linkedObjectsIds"] = _php_array(links)
    if variant == "action":
        values["trackid"] = f"ord{row.id}"
        if action != "validate":
            values["online_payment_url"] = None
    return render(f"order.{variant}", values)


def order_lines(store: Store, row: Order) -> list[dict[str, Any]]:
    """`GET /orders/{id}/lines` (80): the same line objects as in the order."""
    return [order_line(store, row, line, "order.lines") for line in row.lines]


# -- invoices ----------------------------------------------------------------------------------


def invoice(
    store: Store, row: Invoice, variant: str = "get", *, action: str = ""
) -> dict[str, Any]:
    """variant: get (53), list (47, 167), put (42), action (49 validate, 133 settopaid, …).
    The `multicurrency_*` fields are the document's currency (Multicurrency module): the company
    currency at rate 1, as recorded, unless the invoice was created in another one."""
    total_ht, total_tva, total_ttc = document_totals(row.lines)
    foreign_ht, foreign_tva, foreign_ttc = document_currency_totals(row.lines)
    term = PAYMENT_TERMS.get(row.cond_reglement_id or 0)
    validated = row.date_validation is not None
    values: dict[str, Any] = {
        "id": str(row.id),
        "ref": row.display_ref,
        "ref_ext": row.ref_ext,
        "statut": str(row.statut),
        "status": str(row.statut),
        "mode_reglement_id": str(row.mode_reglement_id or 0),
        "cond_reglement_id": str(row.cond_reglement_id or 0),
        "fk_multicurrency": str(row.fk_multicurrency),
        "multicurrency_code": row.currency,
        "multicurrency_tx": money8(row.multicurrency_tx),
        "multicurrency_total_ht": money8(foreign_ht),
        "multicurrency_total_tva": money8(foreign_tva),
        "multicurrency_total_ttc": money8(foreign_ttc),
        "total_ht": money8(total_ht),
        "total_tva": money8(total_tva),
        "total_ttc": money8(total_ttc),
        "last_main_doc": row.last_main_doc,
        "fk_account": id_string(row.fk_account),
        "note_public": row.note_public,
        "note_private": row.note_private,
        "date_creation": row.date_creation,
        "date_validation": row.date_validation if validated else "",
        "date_modification": row.date_modification or row.date_creation,
        "datem": row.date_modification or row.date_creation,
        "user_validation_id": "1" if validated else None,
        "fk_user_valid": "1" if validated else None,
        "user_modification_id": "1" if row.updated_by_put else None,
        "fk_user_modif": "1" if row.updated_by_put else None,
        "totalpaid": php_number(store.invoice_totalpaid(row.id)),
        "type": str(row.type),
        "socid": str(row.socid),
        "paye": str(row.paye),
        "date": row.date,
        "date_lim_reglement": due_date(row.date, row.cond_reglement_id),
        "cond_reglement_code": term[0] if term else None,
        "cond_reglement_doc": term[1] if term else None,
        "mode_reglement_code": payment_code(row.mode_reglement_id),
        "remaintopay": php_string(store.invoice_remain(row)),
        "creditnote_ids": [str(other) for other in store.credit_note_ids(row.id)],
        "ref_client": row.ref_client,
        "ref_customer": row.ref_client,
        "close_code": row.close_code,
        "close_note": row.close_note,
        "fk_facture_source": id_string(row.fk_facture_source),
        "online_payment_url": _online_url("invoice", row.display_ref),
        "linkedObjectsIds": _php_array(store.links_of("facture", row.id)),
        "contacts_ids": [],
        "lines": [invoice_line(store, row, line) for line in row.lines],
    }
    if variant == "list":
        values["linkedObjectsIds"] = None
    if variant == "action":
        # The action routes return the object they changed in memory: nothing recomputed.
        values.update(
            totalpaid=None,
            remaintopay=None,
            creditnote_ids=None,
            linkedObjectsIds=None,
            contacts_ids=None,
        )
        if action != "validate":
            values["online_payment_url"] = None
        if action == "settounpaid":
            # This one answers without `trackid` and with `actiontypecode` (139).
            return render("invoice.settounpaid", values)
        values["trackid"] = f"inv{row.id}"
    if variant == "put":
        values["trackid"] = f"inv{row.id}"
    return render(f"invoice.{variant}", values)


def invoice_from_order(store: Store, row: Invoice, order_row: Order) -> dict[str, Any]:
    """`POST /invoices/createfromorder/{id}`: the in-memory draft with real numbers (41)."""
    total_ht, total_tva, total_ttc = document_totals(row.lines)
    values: dict[str, Any] = {
        "id": row.id,
        "linkedObjectsIds": store.links_of("facture", row.id),
        "origin_type": "commande",
        "origin_id": str(order_row.id),
        "ref": row.display_ref,
        "ref_ext": None,
        "statut": 0,
        "status": 0,
        "mode_reglement_id": id_string(row.mode_reglement_id),
        "cond_reglement_id": id_string(row.cond_reglement_id),
        "multicurrency_total_ht": php_number(total_ht),
        "multicurrency_total_tva": php_number(total_tva),
        "multicurrency_total_ttc": php_number(total_ttc),
        "note_public": row.note_public,
        "note_private": row.note_private,
        "total_ht": php_number(total_ht),
        "total_tva": php_number(total_tva),
        "total_ttc": php_number(total_ttc),
        "date_creation": row.date_creation,
        "socid": str(row.socid),
        "date": row.date_creation,
        "date_lim_reglement": due_date(row.date_creation, row.cond_reglement_id),
        "ref_client": row.ref_client,
        "ref_customer": row.ref_client,
        # The copied lines, then the same lines again as inserted (41 shows 3 + 3).
        "lines": [_fromorder_line(store, row, line) for line in row.lines]
        + [
            _fromorder_inserted_line(store, row, line, _inserted_shape(store, line))
            for line in row.lines
        ],
        "line": (
            _fromorder_inserted_line(store, row, row.lines[-1], "invoice.fromorder.lastline")
            if row.lines
            else None
        ),
    }
    return render("invoice.fromorder", values)


def _inserted_shape(store: Store, line: Line) -> str:
    kind = "product" if line.fk_product in store.products else "free"
    return f"invoice.fromorder.inserted.{kind}"


def invoice_payment_row(payment: Payment, amount: Decimal) -> dict[str, Any]:
    """One row of `GET /invoices/{id}/payments`: the date as a string (54)."""
    return render(
        "invoice.payment",
        {
            "amount": money8(amount),
            "type": payment_code(payment.type_id),
            "date": sql_datetime(payment.datepaye),
            "num": payment.num_payment,
            "ref": payment.ref,
            "ref_ext": payment.ref_ext,
            "fk_bank_line": id_string(payment.bank_line_id),
        },
    )


# -- payments ----------------------------------------------------------------------------------


def payment(row: Payment) -> dict[str, Any]:
    """`GET /paiements/{id}` and the list: no invoice id in it (amounts [], 95)."""
    return render(
        "payment",
        {
            "id": str(row.id),
            "ref": row.ref,
            "ref_ext": row.ref_ext,
            "fk_account": str(row.fk_account),
            "note_private": row.note_private,
            "datepaye": row.datepaye,
            "date": row.datepaye,
            "montant": money8(row.amount),
            "amount": money8(row.amount),
            "multicurrency_amount": money8(row.document_currency_amount),
            "type_label": payment_label(row.type_id),
            "type_code": payment_code(row.type_id),
            "num_payment": row.num_payment,
            "bank_account": str(row.fk_account),
            "bank_line": id_string(row.bank_line_id),
        },
    )


# -- shipments ---------------------------------------------------------------------------------


def _shipment_line(store: Store, row: Shipment, shipped: ShipmentLine) -> dict[str, Any]:
    order_row = store.orders.get(row.origin_id)
    origin = next(
        (
            line
            for line in (order_row.lines if order_row else [])
            if line.id == shipped.origin_line_id
        ),
        None,
    )
    item = store.products.get(origin.fk_product or 0) if origin else None
    net, vat, gross = (
        line_totals(
            qty=shipped.qty,
            subprice=origin.subprice,
            remise_percent=origin.remise_percent,
            tva_tx=origin.tva_tx,
        )
        if origin
        else (Decimal(0), Decimal(0), Decimal(0))
    )
    values: dict[str, Any] = {
        "id": str(shipped.id),
        "rowid": str(shipped.id),
        "ref": item.ref if item else None,
        "multicurrency_total_ht": money8(net),
        "multicurrency_total_tva": money8(vat),
        "multicurrency_total_ttc": money8(gross),
        "weight": php_string(item.weight) if item and item.weight is not None else None,
        "weight_units": str(item.weight_units) if item else None,
        "product_type": str(origin.product_type) if origin else None,
        "fk_product": id_string(origin.fk_product) if origin else None,
        "desc": origin.desc if origin else "",
        "description": origin.desc if origin else "",
        "product_ref": item.ref if item else None,
        "product_label": item.label if item else None,
        "fk_product_type": str(item.type) if item else None,
        "qty": qty_string(shipped.qty),
        "subprice": money8(origin.subprice) if origin else None,
        "multicurrency_subprice": money8(origin.subprice) if origin else None,
        "line_id": str(shipped.id),
        "fk_elementdet": str(shipped.origin_line_id),
        "origin_line_id": str(shipped.origin_line_id),
        "fk_expedition": row.id,
        "qty_shipped": qty_string(shipped.qty),
        "details_entrepot": [
            {
                "entrepot_id": None,
                "qty_shipped": qty_string(shipped.qty),
                "line_id": str(shipped.id),
            }
        ],
        "qty_asked": qty_string(origin.qty) if origin else None,
        "libelle": item.label if item else None,
        "product_tosell": str(item.tosell) if item else None,
        "product_tobuy": str(item.tobuy) if item else None,
    }
    return render("shipment.line", values)


def shipment_totals(store: Store, row: Shipment) -> tuple[Decimal, Decimal, Decimal]:
    order_row = store.orders.get(row.origin_id)
    origin_by_id = {line.id: line for line in (order_row.lines if order_row else [])}
    net = vat = gross = Decimal(0)
    for shipped in row.lines:
        origin = origin_by_id.get(shipped.origin_line_id)
        if origin is None:
            continue
        line_net, line_vat, line_gross = line_totals(
            qty=shipped.qty,
            subprice=origin.subprice,
            remise_percent=origin.remise_percent,
            tva_tx=origin.tva_tx,
        )
        net, vat, gross = net + line_net, vat + line_vat, gross + line_gross
    return net, vat, gross


def shipment(store: Store, row: Shipment, variant: str = "get") -> dict[str, Any]:
    """variant: get (82: id a number, statut a string), action (83 validate, 86 close)."""
    net, vat, gross = shipment_totals(store, row)
    values: dict[str, Any] = {
        "id": row.id,
        "linkedObjectsIds": _php_array(store.links_of("shipping", row.id)),
        "origin_id": str(row.origin_id),
        "ref": row.display_ref,
        "ref_ext": row.ref_ext,
        "statut": str(row.statut),
        "status": str(row.statut),
        "multicurrency_total_ht": php_number(net),
        "multicurrency_total_tva": php_number(vat),
        "multicurrency_total_ttc": php_number(gross),
        "total_ht": php_number(net),
        "total_tva": php_number(vat),
        "total_ttc": php_number(gross),
        "date_creation": row.date_creation,
        "socid": str(row.socid),
        "ref_customer": row.ref_customer,
        "tracking_number": row.tracking_number,
        "tracking_url": row.tracking_number,
        "date_delivery": row.date_delivery if row.date_delivery is not None else "",
        "date": row.date_shipping or "",
        "date_expedition": row.date_shipping or "",
        "date_shipping": row.date_shipping or "",
        "date_valid": row.date_valid or "",
        "lines": [_shipment_line(store, row, shipped) for shipped in row.lines],
    }
    if variant == "action":
        values["trackid"] = f"shi{row.id}"
    return render(f"shipment.{variant}", values)


# -- bank --------------------------------------------------------------------------------------


def bank_account(store: Store, row: BankAccount) -> dict[str, Any]:
    country = dictionaries.country_by_id().get(row.country_id)
    return render(
        "bankaccount",
        {
            "id": str(row.id),
            "ref": row.ref,
            "country_id": str(row.country_id),
            "country_code": country["code"] if country else None,
            "date_creation": row.date_creation,
            "date_modification": row.date_creation,
            "label": row.label,
            "courant": str(row.type),
            "type": str(row.type),
            "bank": row.bank,
            "clos": str(row.clos),
            "rappro": str(row.rappro),
            "currency_code": row.currency_code,
            "account_currency_code": row.currency_code,
            "min_allowed": php_string(row.min_allowed),
            "min_desired": php_string(row.min_desired),
            "comment": row.comment,
            "balance": php_number(store.bank_balance(row.id, until=now())),
        },
    )


def bank_line(store: Store, row: BankLine) -> dict[str, Any]:
    """A bank line (128): id and amount strings, dates as timestamps, rappro a number."""
    return bank_line_of(row, store.bank_accounts.get(row.fk_account))


def bank_line_of(row: BankLine, account: BankAccount | None) -> dict[str, Any]:
    """`bank_line` from the line and its account alone (no store: callable without the lock)."""
    return render(
        "bankline",
        {
            "id": str(row.id),
            "ref": str(row.id),
            "fk_account": str(row.fk_account),
            "datec": row.datec,
            "dateo": row.dateo,
            "datev": row.datev,
            "amount": money8(row.amount),
            "fk_type": row.fk_type,
            "bank_account_ref": account.ref if account else None,
            "bank_account_label": account.label if account else None,
            "num_releve": row.num_releve,
            "num_chq": row.num_chq,
            "label": row.label,
        },
    )


def bank_line_links(row: BankLine) -> list[dict[str, Any]]:
    """`GET /bankaccounts/{id}/lines/{line}/links` (127, 162)."""
    shapes = {
        "company": "bankline.links.company",
        "payment": "bankline.links.payment",
        "banktransfert": "bankline.links.transfer",
    }
    return [
        render(
            shapes.get(link.type, "bankline.links.payment"),
            {
                "url": link.url,
                "url_id": str(link.url_id),
                "label": link.label,
                "type": link.type,
                "fk_bank": str(row.id),
            },
        )
        for link in row.links
    ]


# -- documents ---------------------------------------------------------------------------------


def document_entry(stored: StoredFile, position: int) -> dict[str, Any]:
    """One file of `GET /documents` (78): the raw ECM object, paths included."""
    directory, _, filename = stored.relpath.rpartition("/")
    level1 = directory.rsplit("/", 1)[-1]
    return render(
        "document.entry",
        {
            "path": f"<dolibarr-documents>/{directory}",
            "level1name": level1,
            "relativename": filename,
            "fullname": f"<dolibarr-documents>/{stored.relpath}",
            "date": stored.date_m,
            "size": len(stored.content),
            "id": str(stored.ecm_id),
            "ref": str(stored.ecm_id),
            "label": hashlib.md5(stored.content, usedforsecurity=False).hexdigest(),
            "filename": filename,
            "filepath": directory,
            "position": str(position),
            "gen_or_uploaded": "generated" if stored.generated else "uploaded",
            "date_c": stored.date_c,
            "date_m": stored.date_m,
            "src_object_type": stored.src_object_type,
            "src_object_id": id_string(stored.src_object_id),
            "content-type": content_type(filename),
        },
    )


def content_type(filename: str) -> str:
    lowered = filename.lower()
    if lowered.endswith(".pdf"):
        return "application/pdf"
    if lowered.endswith(".png"):
        return "image/png"
    if lowered.endswith((".jpg", ".jpeg")):
        return "image/jpeg"
    return "application/octet-stream"
