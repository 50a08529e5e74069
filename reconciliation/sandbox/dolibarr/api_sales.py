"""`/products`, `/orders` and `/shipments`: the one-off purchase flow (29-44, 80-93)."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

from reconciliation.sandbox.base import Request
from reconciliation.sandbox.dolibarr import views
from reconciliation.sandbox.dolibarr.errors import ApiError, NotModified
from reconciliation.sandbox.dolibarr.lines import build_lines
from reconciliation.sandbox.dolibarr.params import (
    ListQuery,
    body,
    decimal,
    optional_int,
    path_id,
    text,
)
from reconciliation.sandbox.dolibarr.store import (
    Order,
    Product,
    Shipment,
    ShipmentLine,
    Store,
    document_totals,
    now,
)
from reconciliation.sandbox.dolibarr.templates import midnight, select_properties, sql_date

if TYPE_CHECKING:
    from reconciliation.sandbox.dolibarr.server import DolibarrSandbox

ORDERS = "api_orders.class.php"
PRODUCTS = "api_products.class.php"
SHIPMENTS = "api_shipments.class.php"


def register(api: DolibarrSandbox) -> None:
    api.route("GET", "/products", list_products)
    api.route("POST", "/products", create_product)
    api.route("GET", "/products/ref/{ref}", get_product_by_ref)
    api.route("GET", "/products/{id}", get_product)
    api.route("GET", "/orders", list_orders)
    api.route("POST", "/orders", create_order)
    api.route("GET", "/orders/ref/{ref}", broken_order_lookup)
    api.route("GET", "/orders/ref_ext/{ref_ext}", broken_order_lookup)
    api.route("GET", "/orders/{id}", get_order)
    api.route("GET", "/orders/{id}/lines", get_order_lines)
    api.route("POST", "/orders/{id}/validate", validate_order)
    api.route("POST", "/orders/{id}/close", close_order)
    api.route("POST", "/orders/{id}/setinvoiced", set_order_invoiced)
    api.route("GET", "/shipments", list_shipments)
    api.route("POST", "/shipments", create_shipment)
    api.route("GET", "/shipments/{id}", get_shipment)
    api.route("POST", "/shipments/{id}/validate", validate_shipment)
    api.route("POST", "/shipments/{id}/close", close_shipment)


def _missing_field(data: dict[str, Any], fields: tuple[str, ...], source: str) -> None:
    """The API classes' own `_validate`: "<field> field missing" (06, 07)."""
    for name in fields:
        if data.get(name) in (None, ""):
            raise ApiError(400, f"{name} field missing", source=source)


# -- products ----------------------------------------------------------------------------------

PRODUCT_COLUMNS: dict[str, Any] = {
    "rowid": lambda row: row.id,
    "ref": lambda row: row.ref,
    "ref_ext": lambda row: row.ref_ext,
    "label": lambda row: row.label,
    "description": lambda row: row.description,
    "fk_product_type": lambda row: row.type,
    "price": lambda row: row.price,
    "tva_tx": lambda row: row.tva_tx,
    "tosell": lambda row: row.tosell,
    "tobuy": lambda row: row.tobuy,
    "datec": lambda row: row.date_creation,
    "entity": lambda row: 1,
}


def create_product(api: DolibarrSandbox, request: Request) -> int:
    """`ref` is unique: a second one is a 500 with "ErrorProductAlreadyExists" (32)."""
    data = body(request)
    _missing_field(data, ("ref", "label"), f"{PRODUCTS}:1052")
    store = api.store
    with store.lock:
        if any(row.ref == data["ref"] for row in store.products.values()):
            raise ApiError(
                500,
                "Error creating product",
                source=f"{PRODUCTS}:349",
                extra=["ErrorProductAlreadyExists"],
            )
        product = Product(
            id=store.next_id("product"),
            ref=str(data["ref"]),
            label=str(data["label"]),
            date_creation=now(),
            type=optional_int(data.get("type")) or 0,
            price=decimal(data.get("price"), Decimal(0)) or Decimal(0),
            price_base_type=text(data.get("price_base_type")) or "HT",
            tva_tx=decimal(data.get("tva_tx"), Decimal(0)) or Decimal(0),
            tosell=_flag(data.get("status"), 1),
            tobuy=_flag(data.get("status_buy"), 0),
            description=text(data.get("description")),
            ref_ext=text(data.get("ref_ext")),
            weight=decimal(data.get("weight"), None),
            weight_units=optional_int(data.get("weight_units")),
            note_public=text(data.get("note_public")),
            note_private=text(data.get("note_private")),
        )
        store.products[product.id] = product
        return product.id


def _flag(value: Any, default: int) -> int:
    number = optional_int(value)
    return default if number is None else number


def get_product(api: DolibarrSandbox, request: Request) -> dict[str, Any]:
    product_id = path_id(request)
    with api.store.lock:
        product = api.store.products.get(product_id)
        if product is None:
            raise ApiError(404, "Product not found", source=f"{PRODUCTS}:155")
        return select_properties(views.product(product), request.query.get("properties"))


def get_product_by_ref(api: DolibarrSandbox, request: Request) -> dict[str, Any]:
    with api.store.lock:
        product = next(
            (row for row in api.store.products.values() if row.ref == request.params["ref"]),
            None,
        )
        if product is None:
            raise ApiError(404, "Product not found", source=f"{PRODUCTS}:155")
        return views.product(product)


def list_products(api: DolibarrSandbox, request: Request) -> Any:
    query = ListQuery(
        request,
        PRODUCT_COLUMNS,
        error_text="Error when retrieve product list:",
        error_source=f"{PRODUCTS}:300",
    )
    with api.store.lock:
        page, total = query.select(api.store.products.values())
        rendered = [select_properties(views.product(row), query.properties) for row in page]
    return query.answer(rendered, total)


# -- orders ------------------------------------------------------------------------------------

ORDER_COLUMNS: dict[str, Any] = {
    "rowid": lambda row: row.id,
    "ref": lambda row: row.display_ref,
    "entity": lambda row: 1,
    "ref_ext": lambda row: row.ref_ext,
    "ref_client": lambda row: row.ref_client,
    "fk_soc": lambda row: row.socid,
    "date_creation": lambda row: row.date_creation,
    "date_valid": lambda row: row.date_validation,
    "date_commande": lambda row: sql_date(row.date),
    "fk_statut": lambda row: row.statut,
    "facture": lambda row: row.billed,
    "total_ht": lambda row: document_totals(row.lines)[0],
    "total_tva": lambda row: document_totals(row.lines)[1],
    "total_ttc": lambda row: document_totals(row.lines)[2],
    "note_private": lambda row: row.note_private,
    "note_public": lambda row: row.note_public,
    "fk_mode_reglement": lambda row: row.mode_reglement_id,
    "fk_cond_reglement": lambda row: row.cond_reglement_id,
}
# Columns answered from the store's index (column -> the row attribute of its getter).
ORDER_INDEXED = {"ref_ext": "ref_ext"}


def _order(store: Store, order_id: int) -> Order:
    order = store.orders.get(order_id)
    if order is None:
        raise ApiError(404, "Order not found", source=f"{ORDERS}:110")
    return order


def create_order(api: DolibarrSandbox, request: Request) -> int:
    """Mandatory `socid` and `date` (07, 33). An unknown thirdparty fails the foreign key,
    and the failed INSERT still uses up an id (07: the first real order got id 2)."""
    data = body(request)
    _missing_field(data, ("socid", "date"), f"{ORDERS}:1080")
    store = api.store
    with store.lock:
        socid = optional_int(data["socid"]) or 0
        order_id = store.next_id("commande")
        if socid not in store.thirdparties:
            raise ApiError(
                500,
                "Error creating order",
                source=f"{ORDERS}:349",
                extra=[
                    "Cannot add or update a child row: a foreign key constraint fails "
                    "(`dolibarr`.`llx_commande`, CONSTRAINT `fk_commande_fk_soc` FOREIGN KEY "
                    "(`fk_soc`) REFERENCES `llx_societe` (`rowid`))"
                ],
            )
        lines = build_lines(
            store,
            data.get("lines"),
            table="commandedet",
            error_text="Error creating order",
            error_source=f"{ORDERS}:349",
        )
        moment = now()
        order = Order(
            id=order_id,
            socid=socid,
            date=midnight(optional_int(data["date"]) or moment),
            date_creation=moment,
            lines=lines,
            ref_ext=text(data.get("ref_ext")),
            ref_client=text(data.get("ref_client")),
            mode_reglement_id=optional_int(data.get("mode_reglement_id")),
            cond_reglement_id=optional_int(data.get("cond_reglement_id")),
            note_private=text(data.get("note_private")),
            note_public=text(data.get("note_public")) or "",
        )
        store.orders[order.id] = order
        return order.id


def get_order(api: DolibarrSandbox, request: Request) -> dict[str, Any]:
    order_id = path_id(request)
    with api.store.lock:
        shown = views.order(api.store, _order(api.store, order_id), "get")
    return select_properties(shown, request.query.get("properties"))


def get_order_lines(api: DolibarrSandbox, request: Request) -> list[dict[str, Any]]:
    order_id = path_id(request)
    with api.store.lock:
        return views.order_lines(api.store, _order(api.store, order_id))


def broken_order_lookup(api: DolibarrSandbox, request: Request) -> None:
    """`/orders/ref/{x}` and `/orders/ref_ext/{x}` exist but fail in this build (38, 40)."""
    raise ApiError(400, "No order with id=0 can exist", source=f"{ORDERS}:128")


def list_orders(api: DolibarrSandbox, request: Request) -> Any:
    """Zero hits: `200 []` (unlike thirdparties)."""
    query = ListQuery(
        request,
        ORDER_COLUMNS,
        error_text="Error when retrieve commande list:",
        error_source=f"{ORDERS}:300",
    )
    wanted = _id_list(request.query.get("thirdparty_ids"))
    with api.store.lock:
        page, total = query.select_from(
            api.store.orders, ORDER_INDEXED, None if wanted is None else lambda r: r.socid in wanted
        )
        rendered = [
            select_properties(views.order(api.store, row, "list"), query.properties) for row in page
        ]
    return query.answer(rendered, total)


def _id_list(value: str | None) -> set[int] | None:
    if not value:
        return None
    return {int(part) for part in value.split(",") if part.strip().isdigit()}


def validate_order(api: DolibarrSandbox, request: Request) -> dict[str, Any]:
    """Draft → CO… number; again → 304 (35, 36). Works with no body at all (35)."""
    order_id = path_id(request)
    store = api.store
    with store.lock:
        order = _order(store, order_id)
        if order.statut != 0:
            raise NotModified
        candidate = store.numbering.next("commande", "CO", order.date, 4)
    api.numbering_pause()
    with store.lock:
        order = _order(store, order_id)
        if order.statut != 0:
            raise NotModified
        if store.numbering.taken("commande", candidate):
            raise ApiError(
                500,
                "Error when validating Order: "
                f"Duplicate entry '{candidate}-1' for key 'uk_commande_ref'",
                source=f"{ORDERS}:1169",
            )
        store.numbering.record("commande", candidate)
        moment = now()
        order.ref, order.statut = candidate, 1
        order.date_validation = order.date_modification = moment
        return views.order(store, order, "action", action="validate")


def close_order(api: DolibarrSandbox, request: Request) -> dict[str, Any]:
    """Already closed (e.g. by its shipment's close) → 304 (89)."""
    order_id = path_id(request)
    with api.store.lock:
        order = _order(api.store, order_id)
        if order.statut == 3:
            raise NotModified
        order.statut = 3
        order.date_modification = now()
        return views.order(api.store, order, "action", action="close")


def set_order_invoiced(api: DolibarrSandbox, request: Request) -> dict[str, Any]:
    """billed = 1 (44). Creating an invoice does not do it: the workflow module is off."""
    order_id = path_id(request)
    with api.store.lock:
        order = _order(api.store, order_id)
        order.billed = 1
        order.date_modification = now()
        return views.order(api.store, order, "action", action="setinvoiced")


# -- shipments ---------------------------------------------------------------------------------

SHIPMENT_COLUMNS: dict[str, Any] = {
    "rowid": lambda row: row.id,
    "ref": lambda row: row.display_ref,
    "entity": lambda row: 1,
    "ref_ext": lambda row: row.ref_ext,
    "ref_customer": lambda row: row.ref_customer,
    "fk_soc": lambda row: row.socid,
    "fk_statut": lambda row: row.statut,
    "tracking_number": lambda row: row.tracking_number,
    "date_creation": lambda row: row.date_creation,
    "date_valid": lambda row: row.date_valid,
    "date_delivery": lambda row: row.date_delivery,
    "billed": lambda row: 0,
}
SHIPMENT_INDEXED = {"ref_ext": "ref_ext"}


def _shipment(store: Store, shipment_id: int) -> Shipment:
    shipment = store.shipments.get(shipment_id)
    if shipment is None:
        raise ApiError(404, "Shipment not found", source=f"{SHIPMENTS}:110")
    return shipment


def create_shipment(api: DolibarrSandbox, request: Request) -> int:
    """Mandatory socid, origin_id (the order), origin_type "commande"; lines point at order
    lines with `origin_line_id` (alias `fk_elementdet`) (81)."""
    data = body(request)
    _missing_field(data, ("socid", "origin_id", "origin_type"), f"{SHIPMENTS}:760")
    store = api.store
    with store.lock:
        order = _order(store, optional_int(data["origin_id"]) or 0)
        order_line_ids = {line.id for line in order.lines}
        shipment_id = store.next_id("expedition")
        shipped = []
        for raw in data.get("lines") or []:
            origin_line = optional_int(raw.get("origin_line_id", raw.get("fk_elementdet")))
            if origin_line not in order_line_ids:
                raise ApiError(
                    500,
                    "Error creating shipment",
                    source=f"{SHIPMENTS}:260",
                    extra=["ErrorBadValueForParameter origin_line_id"],
                )
            shipped.append(
                ShipmentLine(
                    id=store.next_id("expeditiondet"),
                    origin_line_id=origin_line,
                    qty=decimal(raw.get("qty"), Decimal(0)) or Decimal(0),
                )
            )
        shipment = Shipment(
            id=shipment_id,
            socid=optional_int(data["socid"]) or 0,
            origin_id=order.id,
            date_creation=now(),
            lines=shipped,
            ref_ext=text(data.get("ref_ext")),
            ref_customer=text(data.get("ref_customer")),
            tracking_number=text(data.get("tracking_number")),
            date_delivery=optional_int(data.get("date_delivery")),
        )
        store.shipments[shipment.id] = shipment
        store.add_link("commande", order.id, "shipping", shipment.id)
        return shipment.id


def get_shipment(api: DolibarrSandbox, request: Request) -> dict[str, Any]:
    shipment_id = path_id(request)
    with api.store.lock:
        shown = views.shipment(api.store, _shipment(api.store, shipment_id), "get")
    return select_properties(shown, request.query.get("properties"))


def list_shipments(api: DolibarrSandbox, request: Request) -> Any:
    query = ListQuery(
        request,
        SHIPMENT_COLUMNS,
        error_text="Error when retrieve shipment list:",
        error_source=f"{SHIPMENTS}:300",
    )
    wanted = _id_list(request.query.get("thirdparty_ids"))
    with api.store.lock:
        page, total = query.select_from(
            api.store.shipments,
            SHIPMENT_INDEXED,
            None if wanted is None else lambda r: r.socid in wanted,
        )
        rendered = [
            select_properties(views.shipment(api.store, row, "get"), query.properties)
            for row in page
        ]
    return query.answer(rendered, total)


def validate_shipment(api: DolibarrSandbox, request: Request) -> dict[str, Any]:
    """Draft → SH… number (83); the order goes to statut 2 "in process" (84)."""
    shipment_id = path_id(request)
    store = api.store
    with store.lock:
        shipment = _shipment(store, shipment_id)
        if shipment.statut != 0:
            raise NotModified
        moment = now()
        candidate = store.numbering.next("expedition", "SH", moment, 4)
    api.numbering_pause()
    with store.lock:
        shipment = _shipment(store, shipment_id)
        if shipment.statut != 0:
            raise NotModified
        if store.numbering.taken("expedition", candidate):
            raise ApiError(
                500,
                "Error when validating Shipment: "
                f"Duplicate entry '{candidate}-1' for key 'idx_expedition_uk_ref'",
                source=f"{SHIPMENTS}:560",
            )
        store.numbering.record("expedition", candidate)
        shipment.ref, shipment.statut, shipment.date_valid = candidate, 1, moment
        order = store.orders.get(shipment.origin_id)
        if order is not None and order.statut == 1:
            order.statut = 2
            order.date_modification = moment
        return views.shipment(store, shipment, "action")


def close_shipment(api: DolibarrSandbox, request: Request) -> dict[str, Any]:
    """statut 2 (delivered); it closes the order too (86, 92: order statut 3)."""
    shipment_id = path_id(request)
    store = api.store
    with store.lock:
        shipment = _shipment(store, shipment_id)
        if shipment.statut == 2:
            raise NotModified
        moment = now()
        shipment.statut, shipment.date_shipping = 2, moment
        order = store.orders.get(shipment.origin_id)
        if order is not None and order.statut in (1, 2):
            order.statut = 3
            order.date_modification = moment
        # The close answer has the keys of a GET, not of the validate answer (86).
        return views.shipment(store, shipment, "get")
