"""`/thirdparties` and their Stripe links (`llx_societe_account`): 05-06, 15-28, 100-115, 158,
169-173."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from reconciliation.sandbox.base import Request, Response
from reconciliation.sandbox.dolibarr import dictionaries, views
from reconciliation.sandbox.dolibarr.errors import ApiError
from reconciliation.sandbox.dolibarr.params import ListQuery, body, optional_int, path_id, text
from reconciliation.sandbox.dolibarr.sqlfilters import collate, table_columns
from reconciliation.sandbox.dolibarr.store import SocieteAccount, Store, Thirdparty, now
from reconciliation.sandbox.dolibarr.templates import select_properties, sql_datetime

if TYPE_CHECKING:
    from reconciliation.sandbox.dolibarr.server import DolibarrSandbox

SOURCE = "api_thirdparties.class.php"
AUTO_CODES = {"-1", "auto"}

# Plain text fields copied as sent (POST) or when sent (PUT).
_TEXT_FIELDS = (
    "name_alias",
    "email",
    "ref_ext",
    "address",
    "zip",
    "town",
    "url",
    "note_private",
    "note_public",
    "tva_intra",
    "default_lang",
)
_PHONE_FIELDS = ("phone", "phone_mobile", "fax")
_INT_FIELDS = (
    "client",
    "fournisseur",
    "status",
    "tva_assuj",
    "mode_reglement_id",
    "cond_reglement_id",
)


def register(api: DolibarrSandbox) -> None:
    api.route("GET", "/thirdparties", list_thirdparties)
    api.route("POST", "/thirdparties", create_thirdparty)
    api.route("GET", "/thirdparties/email/{email}", get_by_email)
    api.route("GET", "/thirdparties/accounts/{site}/{key_account}", get_by_account)
    api.route("GET", "/thirdparties/{id}", get_thirdparty)
    api.route("PUT", "/thirdparties/{id}", update_thirdparty)
    api.route("DELETE", "/thirdparties/{id}", delete_thirdparty)
    api.route("PUT", "/thirdparties/{id}/merge/{idtodelete}", merge_thirdparties)
    api.route("GET", "/thirdparties/{id}/accounts", list_accounts)
    api.route("POST", "/thirdparties/{id}/accounts", create_account)
    api.route("POST", "/thirdparties/{id}/accounts/{site}", write_account_for_site)
    api.route("PUT", "/thirdparties/{id}/accounts/{site}", update_account)
    api.route("DELETE", "/thirdparties/{id}/accounts/{site}", delete_account)


def not_found() -> ApiError:
    return ApiError(404, "Thirdparty not found", source=f"{SOURCE}:2611")


def fetch(store: Store, thirdparty_id: int) -> Thirdparty:
    row = store.thirdparties.get(thirdparty_id)
    if row is None:
        raise not_found()
    return row


# -- columns of llx_societe for sqlfilters and sortfield ---------------------------------------

_SOCIETE_COLUMNS = (
    "rowid nom name_alias entity ref_ext statut parent status code_client code_fournisseur "
    "tp_payment_reference accountancy_code_customer_general code_compta "
    "accountancy_code_supplier_general code_compta_fournisseur address zip town fk_departement "
    "fk_pays geolat geolong geopoint georesultcode phone phone_mobile fax url email fk_account "
    "socialnetworks fk_effectif fk_typent fk_forme_juridique birth fk_currency siren siret ape "
    "idprof4 idprof5 idprof6 tva_intra capital fk_stcomm note_private note_public model_pdf "
    "last_main_doc prefix_comm client fournisseur supplier_account fk_prospectlevel "
    "fk_incoterms location_incoterms customer_bad customer_rate supplier_rate remise_client "
    "remise_supplier mode_reglement cond_reglement deposit_percent transport_mode "
    "mode_reglement_supplier cond_reglement_supplier transport_mode_supplier fk_shipping_method "
    "tva_assuj vatexemptcode vat_reverse_charge localtax1_assuj localtax1_value localtax2_assuj "
    "localtax2_value barcode fk_barcode_type price_level outstanding_limit order_min_amount "
    "supplier_order_min_amount default_lang logo logo_squarred canvas fk_warehouse "
    "webservices_url webservices_key accountancy_code_sell accountancy_code_buy datec tms "
    "fk_user_creat fk_user_modif fk_multicurrency multicurrency_code ip import_key"
)


def _columns() -> dict[str, Any]:
    columns: dict[str, Any] = table_columns(_SOCIETE_COLUMNS)
    columns.update(
        rowid=lambda row: row.id,
        nom=lambda row: row.name,
        name_alias=lambda row: row.name_alias,
        entity=lambda row: 1,
        ref_ext=lambda row: row.ref_ext,
        status=lambda row: row.status,
        code_client=lambda row: row.code_client,
        code_fournisseur=lambda row: row.code_fournisseur,
        address=lambda row: row.address,
        zip=lambda row: row.zip,
        town=lambda row: row.town,
        fk_pays=lambda row: row.country_id,
        phone=lambda row: row.phone,
        phone_mobile=lambda row: row.phone_mobile,
        fax=lambda row: row.fax,
        url=lambda row: row.url,
        email=lambda row: row.email,
        siren=lambda row: row.idprof.get(1, ""),
        siret=lambda row: row.idprof.get(2, ""),
        ape=lambda row: row.idprof.get(3, ""),
        idprof4=lambda row: row.idprof.get(4, ""),
        idprof5=lambda row: row.idprof.get(5, ""),
        idprof6=lambda row: row.idprof.get(6, ""),
        tva_intra=lambda row: row.tva_intra,
        note_private=lambda row: row.note_private,
        note_public=lambda row: row.note_public,
        client=lambda row: row.client,
        fournisseur=lambda row: row.fournisseur,
        mode_reglement=lambda row: row.mode_reglement_id,
        cond_reglement=lambda row: row.cond_reglement_id,
        tva_assuj=lambda row: row.tva_assuj,
        default_lang=lambda row: row.default_lang,
        datec=lambda row: sql_datetime(row.date_creation),
    )
    return columns


COLUMNS = _columns()
# Columns answered from the store's index (column -> the Thirdparty attribute of its getter).
INDEXED = {"ref_ext": "ref_ext", "email": "email"}

# -- routes -------------------------------------------------------------------------------------


def list_thirdparties(api: DolibarrSandbox, request: Request) -> Any:
    """Zero hits is a 404 "No third parties found" here, not `[]` as on the other lists (21)."""
    query = ListQuery(
        request,
        COLUMNS,
        error_text="Error when retrieve thirdparties :",
        error_source=f"{SOURCE}:250",
    )
    mode = request.query.get("mode", "")
    with api.store.lock:
        page, total = query.select_from(
            api.store.thirdparties, INDEXED, None if not mode else lambda row: _in_mode(row, mode)
        )
        rendered = [
            select_properties(views.thirdparty(api.store, row, "list"), query.properties)
            for row in page
        ]
    if total == 0:
        raise ApiError(404, "No third parties found", source=f"{SOURCE}:270")
    return query.answer(rendered, total)


def _in_mode(row: Thirdparty, mode: str) -> bool:
    """mode=1 customers, 2 prospects, 3 neither, 4 suppliers."""
    return {
        "1": row.client in (1, 3),
        "2": row.client in (2, 3),
        "3": row.client == 0,
        "4": row.fournisseur == 1,
    }.get(mode, True)


def get_thirdparty(api: DolibarrSandbox, request: Request) -> dict[str, Any]:
    thirdparty_id = path_id(request)
    with api.store.lock:
        row = fetch(api.store, thirdparty_id)
        shown = views.thirdparty(api.store, row, "get")
    return select_properties(shown, request.query.get("properties"))


def get_by_email(api: DolibarrSandbox, request: Request) -> dict[str, Any]:
    """One match: the thirdparty; none: 404 (24); two or more: 200 with an all-null object (27)."""
    email = request.params["email"]
    wanted = collate(email)
    with api.store.lock:
        # The index holds no entry for NULL, which this route compares as "": scan for "".
        matches = api.store.thirdparties.lookup("email", [email]) if wanted else None
        if matches is None:
            matches = [
                row for row in api.store.thirdparties.values() if collate(row.email or "") == wanted
            ]
        if not matches:
            raise not_found()
        if len(matches) > 1:
            return views.thirdparty_ambiguous()
        return views.thirdparty(api.store, matches[0], "get")


def create_thirdparty(api: DolibarrSandbox, request: Request) -> int:
    """Only `name` is mandatory (06). `code_client` "-1"/"auto" draws the next CU… code, which
    races exactly like the real numbering (README "Concurrency")."""
    data = body(request)
    if not data.get("name"):
        raise ApiError(400, "name field missing", source=f"{SOURCE}:2569")
    store = api.store
    with store.lock:
        country_id = _country_from(data)
        row = Thirdparty(id=0, name=str(data["name"]), date_creation=now(), country_id=country_id)
        _apply(row, data)
        codes = _automatic_codes(store, row, data)
        if not codes:
            _check_explicit_codes(store, row)
            return _insert(store, row)
    api.numbering_pause()
    with store.lock:
        for table, code in codes.items():
            if store.numbering.taken(table, code):
                store.next_id("societe")  # the failed INSERT still consumed an id
                column = "code_client" if table == "societe_code_client" else "code_fournisseur"
                raise ApiError(
                    500,
                    "Error creating thirdparty",
                    source=f"{SOURCE}:338",
                    extra=[f"Duplicate entry '{code}-1' for key 'uk_societe_{column}'"],
                )
        return _insert(store, row)


def _automatic_codes(store: Store, row: Thirdparty, data: dict[str, Any]) -> dict[str, str]:
    codes = {}
    moment = row.date_creation
    if str(data.get("code_client", "")) in AUTO_CODES:
        row.code_client = store.numbering.next("societe_code_client", "CU", moment, 5)
        codes["societe_code_client"] = row.code_client
    if str(data.get("code_fournisseur", "")) in AUTO_CODES:
        row.code_fournisseur = store.numbering.next("societe_code_fournisseur", "SU", moment, 5)
        codes["societe_code_fournisseur"] = row.code_fournisseur
    return codes


def _check_explicit_codes(store: Store, row: Thirdparty) -> None:
    if row.code_client and store.numbering.taken("societe_code_client", row.code_client):
        raise ApiError(
            500,
            "Error creating thirdparty",
            source=f"{SOURCE}:338",
            extra=["ErrorCustomerCodeAlreadyUsed"],
        )


def _insert(store: Store, row: Thirdparty) -> int:
    row.id = store.next_id("societe")
    store.thirdparties[row.id] = row
    if row.code_client:
        store.numbering.record("societe_code_client", row.code_client)
    if row.code_fournisseur:
        store.numbering.record("societe_code_fournisseur", row.code_fournisseur)
    return row.id


def _country_from(data: dict[str, Any]) -> int | None:
    """`country_code` is resolved to `country_id`; an unknown code is a 404 whose message does
    not even name the code (158)."""
    code = data.get("country_code")
    if code:
        country = dictionaries.country_by_code().get(str(code).upper())
        if country is None:
            raise ApiError(404, "Country code not found in database: ", source=f"{SOURCE}:316")
        return country["id"]
    return optional_int(data.get("country_id"))


def _normalise_phone(value: Any) -> str | None:
    """ "+33 1 23 45 67 89" is stored as "+33123456789" (16): spaces and dots go."""
    if value is None:
        return None
    return re.sub(r"[\s.]", "", str(value))


def _apply(row: Thirdparty, data: dict[str, Any]) -> None:
    for name in _TEXT_FIELDS:
        if name in data:
            setattr(row, name, text(data[name]) if data[name] is not None else None)
    if row.name_alias is None:
        row.name_alias = ""
    if row.tva_intra is None:
        row.tva_intra = ""
    for name in _PHONE_FIELDS:
        if name in data:
            setattr(row, name, _normalise_phone(data[name]))
    for name in _INT_FIELDS:
        if name in data:
            value = optional_int(data[name])
            if name in ("mode_reglement_id", "cond_reglement_id") or value is not None:
                setattr(row, name, value)
    for index in range(1, 7):
        key = f"idprof{index}"
        if key in data:
            row.idprof[index] = text(data[key]) or ""
    for name in ("code_client", "code_fournisseur"):
        if name in data and str(data[name]) not in AUTO_CODES:
            setattr(row, name, text(data[name]))


def update_thirdparty(api: DolibarrSandbox, request: Request) -> dict[str, Any]:
    """Partial: only the sent fields change; the answer is the whole object (17)."""
    thirdparty_id = path_id(request)
    data = body(request)
    with api.store.lock:
        row = fetch(api.store, thirdparty_id)
        if "country_code" in data or "country_id" in data:
            row.country_id = _country_from(data)
        if data.get("name"):
            row.name = str(data["name"])
        _apply(row, data)
        return views.thirdparty(api.store, row, "put")


def delete_thirdparty(api: DolibarrSandbox, request: Request) -> dict[str, Any]:
    thirdparty_id = path_id(request)
    store = api.store
    with store.lock:
        row = fetch(store, thirdparty_id)
        used = any(inv.socid == row.id for inv in store.invoices.values()) or any(
            order.socid == row.id for order in store.orders.values()
        )
        if used:
            raise ApiError(
                500,
                "Error when delete thirdparty : ErrorRecordHasChildren",
                source=f"{SOURCE}:429",
            )
        del store.thirdparties[row.id]
        for account_id in [a.id for a in store.accounts.values() if a.fk_soc == row.id]:
            del store.accounts[account_id]
        if row.code_client:
            store.numbering.forget("societe_code_client", row.code_client)
    return {"success": {"code": 200, "message": "Object deleted"}}


# Filled from the merged thirdparty when the kept one has no value (Societe::mergeCompany).
_MERGED_IF_EMPTY = (
    "name_alias",
    "email",
    "ref_ext",
    "address",
    "zip",
    "town",
    "country_id",
    "phone",
    "phone_mobile",
    "fax",
    "url",
    "tva_intra",
    "default_lang",
    "mode_reglement_id",
    "cond_reglement_id",
)


def merge_thirdparties(api: DolibarrSandbox, request: Request) -> dict[str, Any]:
    """`PUT /thirdparties/{id}/merge/{idtodelete}` (swagger `thirdpartiesMerge`; not recorded,
    built from the API's code): the other thirdparty's invoices, orders, shipments, the
    thirdparty of its payments' bank lines and its Stripe links move to the kept one, whose
    values win where both have one (the empty ones are filled, notes are joined); the other is
    deleted, and the answer is the kept thirdparty as `GET /thirdparties/{id}` gives it."""
    keep_id = path_id(request)
    merge_id = path_id(request, "idtodelete")
    if keep_id == merge_id:
        raise ApiError(400, "Try to merge a thirdparty into itself", source=f"{SOURCE}:2650")
    store = api.store
    with store.lock:
        keep = fetch(store, keep_id)
        other = fetch(store, merge_id)
        for name in _MERGED_IF_EMPTY:
            if getattr(keep, name) in (None, "") and getattr(other, name) not in (None, ""):
                setattr(keep, name, getattr(other, name))
        for index, value in other.idprof.items():
            if value and not keep.idprof.get(index):
                keep.idprof[index] = value
        for name in ("note_private", "note_public"):
            notes = [part for part in (getattr(keep, name), getattr(other, name)) if part]
            setattr(keep, name, "\n".join(notes) if notes else getattr(keep, name))
        for document in (*store.invoices.values(), *store.orders.values()):
            if document.socid == merge_id:
                document.socid = keep_id
        for shipment in store.shipments.values():
            if shipment.socid == merge_id:
                shipment.socid = keep_id
        for line in store.bank_lines.values():
            for link in line.links:
                if link.type == "company" and link.url_id == merge_id:
                    link.url_id, link.label = keep_id, keep.name
        for account in store.accounts.values():
            if account.fk_soc == merge_id:
                account.fk_soc = keep_id
        del store.thirdparties[merge_id]
        if other.code_client:
            store.numbering.forget("societe_code_client", other.code_client)
        return views.thirdparty(store, keep, "get")


# -- Stripe links (llx_societe_account) ------------------------------------------------------


def _accounts_of(store: Store, thirdparty_id: int, site: str | None = None) -> list[SocieteAccount]:
    return sorted(
        (
            account
            for account in store.accounts.values()
            if account.fk_soc == thirdparty_id and (site is None or account.site == site)
        ),
        key=lambda account: account.id,
    )


def list_accounts(api: DolibarrSandbox, request: Request) -> list[dict[str, Any]]:
    """No account (or no thirdparty) is a 404, not [] (114)."""
    thirdparty_id = path_id(request)
    with api.store.lock:
        rows = _accounts_of(api.store, thirdparty_id, request.query.get("site") or None)
        if not rows:
            raise ApiError(
                404,
                "This thirdparty does not have any account attached or does not exist.",
                source=f"{SOURCE}:2101",
            )
        return [views.account_row(row) for row in rows]


def get_by_account(api: DolibarrSandbox, request: Request) -> dict[str, Any]:
    """The full thirdparty, `properties` ignored (103); unknown key and a key shared by two
    thirdparties give the same 404 (109, 112)."""
    site, key = request.params["site"], request.params["key_account"]
    with api.store.lock:
        owners = {
            account.fk_soc
            for account in api.store.accounts.values()
            if account.site == site and account.key_account == key
        }
        if len(owners) != 1 or next(iter(owners)) not in api.store.thirdparties:
            raise ApiError(
                404,
                "This account have many thirdparties attached or does not exist.",
                source=f"{SOURCE}:2172",
            )
        return views.thirdparty(api.store, api.store.thirdparties[owners.pop()], "get")


def _new_account(
    store: Store, thirdparty_id: int, site: str, data: dict[str, Any]
) -> SocieteAccount:
    moment = now()
    account = SocieteAccount(
        id=store.next_id("societe_account"),
        fk_soc=thirdparty_id,
        site=site,
        date_creation=moment,
        tms=moment,
    )
    _write_account_fields(account, data, replace=True)
    store.accounts[account.id] = account
    return account


def _write_account_fields(account: SocieteAccount, data: dict[str, Any], *, replace: bool) -> None:
    """`replace`: every field takes the sent value or is wiped (105); otherwise only the sent
    fields change (108). status not sent is stored as 0 (101)."""
    if replace or "key_account" in data:
        account.key_account = text(data.get("key_account"))
    if replace or "site_account" in data:
        account.site_account = text(data.get("site_account"))
    if replace or "status" in data:
        account.status = optional_int(data.get("status")) or 0
    if replace or "login" in data:
        account.login = text(data.get("login")) or ""


def create_account(api: DolibarrSandbox, request: Request) -> dict[str, Any]:
    """One account per (thirdparty, site): a second one is a 409 (104)."""
    thirdparty_id = path_id(request)
    data = body(request)
    site = text(data.get("site"))
    if not site:
        raise ApiError(400, "site field missing", source=f"{SOURCE}:2230")
    with api.store.lock:
        fetch(api.store, thirdparty_id)
        if _accounts_of(api.store, thirdparty_id, site):
            raise ApiError(
                409,
                "A SocieteAccount entity already exists for this company and site.",
                source=f"{SOURCE}:2243",
            )
        account = _new_account(api.store, thirdparty_id, site, data)
        return views.account_written(account, variant="created", status_sent="status" in data)


def write_account_for_site(api: DolibarrSandbox, request: Request) -> dict[str, Any]:
    """Creates the link, or REPLACES the existing one of that site with the sent fields, wiping
    the others (105, 106): a thirdparty cannot hold two Stripe customers this way."""
    thirdparty_id = path_id(request)
    site = request.params["site"]
    data = body(request)
    with api.store.lock:
        fetch(api.store, thirdparty_id)
        existing = _accounts_of(api.store, thirdparty_id, site)
        if not existing:
            account = _new_account(api.store, thirdparty_id, site, data)
            return views.account_written(account, variant="created", status_sent="status" in data)
        account = existing[0]
        _write_account_fields(account, data, replace=True)
        account.tms = now()
        return views.account_written(account, variant="replaced", status_sent="status" in data)


def update_account(api: DolibarrSandbox, request: Request) -> dict[str, Any]:
    """Partial update of the (thirdparty, site) link (108)."""
    thirdparty_id = path_id(request)
    site = request.params["site"]
    data = body(request)
    with api.store.lock:
        fetch(api.store, thirdparty_id)
        existing = _accounts_of(api.store, thirdparty_id, site)
        if not existing:
            raise ApiError(
                404,
                f"This thirdparty does not have {site} account attached or does not exist.",
                source=f"{SOURCE}:2330",
            )
        account = existing[0]
        _write_account_fields(account, data, replace=False)
        account.tms = now()
        return views.account_written(account, variant="updated", status_sent=True)


def delete_account(api: DolibarrSandbox, request: Request) -> Response:
    """200 with an EMPTY body under a JSON content type (113)."""
    thirdparty_id = path_id(request)
    site = request.params["site"]
    with api.store.lock:
        existing = _accounts_of(api.store, thirdparty_id, site)
        if not existing:
            raise ApiError(
                404,
                f"This thirdparty does not have {site} account attached or does not exist.",
                source=f"{SOURCE}:2380",
            )
        for account in existing:
            del api.store.accounts[account.id]
    return Response(status=200, body=b"")
