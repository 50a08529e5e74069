"""`/multicurrencies` (api_multicurrencies.class.php, Dolibarr 18+): the currencies of the
Multicurrency module with their latest rate. Read from the source, not recorded; the routes
exist only while the module is on (with it off the API class is not loaded: Restler's 404)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from reconciliation.sandbox.base import Request
from reconciliation.sandbox.dolibarr.errors import ApiError
from reconciliation.sandbox.dolibarr.multicurrency import Currency
from reconciliation.sandbox.dolibarr.params import ListQuery
from reconciliation.sandbox.dolibarr.sqlfilters import table_columns
from reconciliation.sandbox.dolibarr.templates import php_string, select_properties, sql_datetime

if TYPE_CHECKING:
    from reconciliation.sandbox.dolibarr.server import DolibarrSandbox

SOURCE = "api_multicurrencies.class.php"


def register(api: DolibarrSandbox) -> None:
    api.route("GET", "/multicurrencies", list_currencies)
    api.route("GET", "/multicurrencies/bycode/{code}", get_currency_by_code)


def currency_view(row: Currency) -> dict[str, Any]:
    """_cleanObjectDatas keeps `id`, `code`, `name` and `rate`, and of the rate `id`, `rate` and
    `date_sync`. Ids and the rate come from the database as strings (the rate is a DOUBLE
    column: "0.85", "162", not 8 decimals); `date_sync` went through jdate: a timestamp."""
    return {
        "id": str(row.id),
        "code": row.code,
        "name": row.name,
        "rate": {"id": str(row.rate_id), "rate": php_string(row.rate), "date_sync": row.date_sync},
    }


def get_currency_by_code(api: DolibarrSandbox, request: Request) -> dict[str, Any]:
    """`code = '<code>'` under utf8mb4_unicode_ci: `gbp` finds GBP. Unknown → 404."""
    with api.store.lock:
        row = api.store.currencies.get(request.params["code"].strip().upper())
    if row is None:
        raise ApiError(404, "Currency not found", source=f"{SOURCE}:150")
    return currency_view(row)


CURRENCY_COLUMNS: dict[str, Any] = {
    **table_columns("rowid date_create code name entity fk_user"),
    "rowid": lambda row: row.id,
    "date_create": lambda row: sql_datetime(row.date_sync),
    "code": lambda row: row.code,
    "name": lambda row: row.name,
    "entity": lambda row: 1,
    "fk_user": lambda row: 1,
}


def list_currencies(api: DolibarrSandbox, request: Request) -> list[dict[str, Any]]:
    """The same objects as `bycode`, by rowid; `200 []` on no hit; no pagination_data."""
    query = ListQuery(
        request,
        CURRENCY_COLUMNS,
        error_text="Error when retrieve currencies list :",
        error_source=f"{SOURCE}:110",
    )
    query.pagination = False
    with api.store.lock:
        page, _ = query.select(api.store.currencies.values())
        return [select_properties(currency_view(row), query.properties) for row in page]
