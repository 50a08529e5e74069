"""`/status`, `/login` and the setup routes: dictionaries and the own company (01, 04, 08-12)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from reconciliation.sandbox.base import Request
from reconciliation.sandbox.dolibarr import dictionaries
from reconciliation.sandbox.dolibarr.errors import ApiError
from reconciliation.sandbox.dolibarr.params import ListQuery, body, path_id, query_int, require
from reconciliation.sandbox.dolibarr.templates import render

if TYPE_CHECKING:
    from reconciliation.sandbox.dolibarr.server import DolibarrSandbox


def register(api: DolibarrSandbox) -> None:
    api.route("GET", "/status", status)
    api.route("POST", "/login", login)
    api.route("GET", "/setup/dictionary/payment_types", payment_types)
    api.route("GET", "/setup/dictionary/countries", countries)
    api.route("GET", "/setup/dictionary/countries/byCode/{code}", country_by_code)
    api.route("GET", "/setup/dictionary/countries/{id}", country_by_id)
    api.route("GET", "/setup/dictionary/vat", vat_rates)
    api.route("GET", "/setup/company", company)


def status(api: DolibarrSandbox, request: Request) -> dict[str, Any]:
    moment = datetime.now(tz=UTC)
    shape = render("status", {})
    shape["success"] = {
        **shape["success"],
        "timestamp_now_utc": int(moment.timestamp()),
        "date_tz": moment.strftime("%Y-%m-%d %H:%M:%S"),
    }
    return shape


def login(api: DolibarrSandbox, request: Request) -> dict[str, Any]:
    """The sandbox has one user, `admin`, whose token is the sandbox's API key (04)."""
    data = body(request)
    require(data, "login", "password")
    if data["login"] != "admin":
        raise ApiError(403, "Access denied", source="api_login.class.php:160")
    shape = render("login", {})
    shape["success"] = {**shape["success"], "token": api.api_key}
    return shape


def _row_getters(rows: tuple[dict[str, Any], ...], aliases: dict[str, str]) -> dict[str, Any]:
    columns = {key.lower(): (lambda row, key=key: row.get(key)) for key in rows[0]}
    for column, key in aliases.items():
        columns[column] = lambda row, key=key: row.get(key)
    return columns


def payment_types(api: DolibarrSandbox, request: Request) -> list[dict[str, Any]]:
    """The payment modes with their numeric ids (08). The payment routes need the id (6 = CB)."""
    rows = dictionaries.payment_types()
    query = ListQuery(
        request,
        _row_getters(rows, {"libelle": "label"}),
        default_sort="code",
        error_text="Error when retrieving list of payment types:",
        error_source="api_setup.class.php:150",
    )
    active = query_int(request, "active", 1)
    page, _ = query.select(row for row in rows if active != 0)
    return [dict(row) for row in page]


def countries(api: DolibarrSandbox, request: Request) -> list[dict[str, Any]]:
    """`llx_c_country` (09); 100 rows unless `limit` says otherwise."""
    rows = dictionaries.countries()
    query = ListQuery(
        request,
        _row_getters(rows, {"rowid": "id"}),
        default_sort="code",
        error_text="Error when retrieving list of countries:",
        error_source="api_setup.class.php:420",
    )
    needle = (request.query.get("filter") or "").casefold()
    candidates = (row for row in rows if needle in str(row["label"]).casefold())
    page, _ = query.select(candidates)
    return [dict(row) for row in page]


def country_by_code(api: DolibarrSandbox, request: Request) -> dict[str, Any]:
    row = dictionaries.country_by_code().get(request.params["code"].upper())
    if row is None:
        raise ApiError(404, "country not found", source="api_setup.class.php:1885")
    return dict(row)


def country_by_id(api: DolibarrSandbox, request: Request) -> dict[str, Any]:
    row = dictionaries.country_by_id().get(path_id(request))
    if row is None:
        raise ApiError(404, "country not found", source="api_setup.class.php:1885")
    return dict(row)


def vat_rates(api: DolibarrSandbox, request: Request) -> list[dict[str, Any]]:
    """France's VAT rates (11), sorted by rate as recorded."""
    rows = dictionaries.vat_rates()
    columns = _row_getters(rows, {})
    columns["taux"] = lambda row: Decimal(row["taux"])
    query = ListQuery(
        request,
        columns,
        default_sort="t.taux",
        error_text="Error when retrieving list of vat:",
        error_source="api_setup.class.php:560",
    )
    country = request.query.get("fk_country")
    active = query_int(request, "active", 1)
    candidates = (
        row
        for row in rows
        if (not country or row["fk_pays"] == country) and (active == 0 or row["active"] == "1")
    )
    page, _ = query.select(candidates)
    return [dict(row) for row in page]


def company(api: DolibarrSandbox, request: Request) -> dict[str, Any]:
    """The own company as configured on the recorded instance: France, EUR (12)."""
    return render("company", {})
