"""`/bankaccounts`: accounts, lines, balances and internal transfers (13, 14, 116-129, 162,
163). Fees and payouts of the Stripe balance are written here."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from reconciliation.sandbox.base import Request, Response
from reconciliation.sandbox.dolibarr import views
from reconciliation.sandbox.dolibarr.errors import ApiError, required
from reconciliation.sandbox.dolibarr.params import (
    ListQuery,
    body,
    decimal,
    integer,
    optional_int,
    path_id,
    text,
)
from reconciliation.sandbox.dolibarr.sqlfilters import table_columns
from reconciliation.sandbox.dolibarr.store import BankAccount, BankLine, BankLink, Store, now
from reconciliation.sandbox.dolibarr.templates import php_number, select_properties, sql_date

if TYPE_CHECKING:
    from reconciliation.sandbox.dolibarr.server import DolibarrSandbox

SOURCE = "api_bankaccounts.class.php"
CASH = 2  # account type 2 = cash: transfers then use LIQ lines (source)


def register(api: DolibarrSandbox) -> None:
    api.route("GET", "/bankaccounts", list_accounts)
    api.route("POST", "/bankaccounts", create_account)
    api.route("POST", "/bankaccounts/transfer", transfer)
    api.route("GET", "/bankaccounts/lines/{line_id}", get_line)
    api.route("GET", "/bankaccounts/{id}", get_account)
    api.route("GET", "/bankaccounts/{id}/balance", get_balance)
    api.route("GET", "/bankaccounts/{id}/lines", list_lines)
    api.route("POST", "/bankaccounts/{id}/lines", add_line)
    api.route("GET", "/bankaccounts/{id}/lines/{line_id}/links", get_line_links)


def _account(store: Store, account_id: int) -> BankAccount:
    account = store.bank_accounts.get(account_id)
    if account is None:
        raise ApiError(404, "account not found", source=f"{SOURCE}:150")
    return account


ACCOUNT_COLUMNS: dict[str, Any] = {
    "rowid": lambda row: row.id,
    "ref": lambda row: row.ref,
    "label": lambda row: row.label,
    "entity": lambda row: 1,
    "bank": lambda row: row.bank,
    "courant": lambda row: row.type,
    "clos": lambda row: row.clos,
    "rappro": lambda row: row.rappro,
    "currency_code": lambda row: row.currency_code,
    "fk_pays": lambda row: row.country_id,
    "comment": lambda row: row.comment,
    "datec": lambda row: row.date_creation,
}


def list_accounts(api: DolibarrSandbox, request: Request) -> list[dict[str, Any]]:
    query = ListQuery(
        request,
        ACCOUNT_COLUMNS,
        error_text="Error when retrieving list of accounts:",
        error_source=f"{SOURCE}:110",
    )
    query.pagination = False
    with api.store.lock:
        page, _ = query.select(api.store.bank_accounts.values())
        return [
            select_properties(views.bank_account(api.store, row), query.properties) for row in page
        ]


def get_account(api: DolibarrSandbox, request: Request) -> dict[str, Any]:
    account_id = path_id(request)
    with api.store.lock:
        return views.bank_account(api.store, _account(api.store, account_id))


def create_account(api: DolibarrSandbox, request: Request) -> int:
    """Mandatory ref, label, type, currency_code, country_id (13). The label is unique
    (`uk_bank_account_label`). An `(InitialBankBalance)` line is written too (126)."""
    data = body(request)
    for name in ("ref", "label", "type", "currency_code", "country_id"):
        if data.get(name) in (None, ""):
            raise ApiError(400, f"{name} field missing", source=f"{SOURCE}:870")
    store = api.store
    with store.lock:
        if any(row.label == data["label"] for row in store.bank_accounts.values()):
            store.next_id("bank_account")
            raise ApiError(
                500,
                "Error creating bank account",
                source=f"{SOURCE}:190",
                extra=[f"Duplicate entry '{data['label']}-1' for key 'uk_bank_account_label'"],
            )
        account = store.add_bank_account(
            ref=str(data["ref"]),
            label=str(data["label"]),
            type=optional_int(data["type"]) or 0,
            currency_code=str(data["currency_code"]),
            country_id=optional_int(data["country_id"]) or 0,
            bank=text(data.get("bank")) or "",
            comment=text(data.get("comment")) or "",
            rappro=optional_int(data.get("rappro")) or 0,
        )
        return account.id


def get_balance(api: DolibarrSandbox, request: Request) -> int | float:
    """A bare JSON number (121, 124, 125)."""
    account_id = path_id(request)
    with api.store.lock:
        _account(api.store, account_id)
        return php_number(api.store.bank_balance(account_id, until=now()))


# llx_bank, queried WITHOUT a table alias: `t.label` is an unknown column (119).
LINE_COLUMNS: dict[str, Any] = {
    **table_columns(
        "rowid datec tms datev dateo amount amount_main_currency label fk_account "
        "fk_user_author fk_user_rappro fk_type num_releve num_chq numero_compte rappro note "
        "fk_bordereau position banque emetteur author origin_id origin_type import_key"
    ),
    "rowid": lambda row: row.id,
    "datec": lambda row: row.datec,
    "datev": lambda row: sql_date(row.datev),
    "dateo": lambda row: sql_date(row.dateo),
    "amount": lambda row: row.amount,
    "label": lambda row: row.label,
    "fk_account": lambda row: row.fk_account,
    "fk_user_author": lambda row: 1,
    "fk_type": lambda row: row.fk_type,
    "num_releve": lambda row: row.num_releve,
    "num_chq": lambda row: row.num_chq,
    "rappro": lambda row: 0,
    "fk_bordereau": lambda row: 0,
    "emetteur": lambda row: row.emetteur,
}
LINE_INDEXED = {"num_chq": "num_chq"}


def list_lines(api: DolibarrSandbox, request: Request) -> list[dict[str, Any]]:
    """Every line of the account, by rowid; no limit/page/sort on this route (120)."""
    account_id = path_id(request)
    query = ListQuery(
        request,
        LINE_COLUMNS,
        alias=None,
        default_sort="rowid",
        default_limit=0,
        error_text="Error when retrieving list of account lines:",
        error_source=f"{SOURCE}:502",
    )
    query.sortfield, query.sortorder, query.limit, query.page = "rowid", "ASC", 0, 0
    query.pagination = False
    with api.store.lock:
        account = _account(api.store, account_id)
        page, _ = query.select_from(
            api.store.bank_lines, LINE_INDEXED, lambda row: row.fk_account == account_id
        )
        # views.bank_line_of reads only scalar fields of the line and its account: copies of
        # them are rendered after the lock is released.
        snapshot = [replace(row) for row in page]
        account = replace(account)
    return [views.bank_line_of(row, account) for row in snapshot]


def add_line(api: DolibarrSandbox, request: Request) -> int:
    """Required date, type, label, amount (116, 117). `type` is not checked against the
    dictionary ("FEE" is stored, 118); `num_releve` does not reconcile the line (120)."""
    account_id = path_id(request)
    data = body(request)
    for name in ("date", "type", "label", "amount"):
        if data.get(name) in (None, ""):
            raise required(name)
    when = integer(data["date"], "date")
    amount = decimal(data["amount"], None)
    if amount is None:
        raise ApiError(
            400,
            "Invalid value specified for `amount`. Expecting number value",
            source="Validator.php:718",
            stage="validate",
        )
    with api.store.lock:
        _account(api.store, account_id)
        line = api.store.add_bank_line(
            account_id=account_id,
            when=when,
            amount=amount,
            fk_type=str(data["type"])[:6],
            label=str(data["label"]),
            num_chq=text(data.get("cheque_number")) or None,
            num_releve=text(data.get("num_releve")) or None,
            emetteur=text(data.get("cheque_writer")) or None,
            datev=optional_int(data.get("datev")),
        )
        return line.id


def _line(store: Store, line_id: int) -> BankLine:
    line = store.bank_lines.get(line_id)
    if line is None:
        raise ApiError(404, "account line not found", source=f"{SOURCE}:640")
    return line


def get_line(api: DolibarrSandbox, request: Request) -> dict[str, Any]:
    """One bank line without the account id (128)."""
    line_id = path_id(request, "line_id")
    with api.store.lock:
        return views.bank_line(api.store, _line(api.store, line_id))


def get_line_links(api: DolibarrSandbox, request: Request) -> list[dict[str, Any]]:
    """What a line is linked to: company + payment for a payment (162), the other side of a
    transfer (127). The way back from a bank line to the payment and the customer."""
    account_id = path_id(request)
    line_id = path_id(request, "line_id")
    with api.store.lock:
        _account(api.store, account_id)
        line = _line(api.store, line_id)
        if line.fk_account != account_id:
            raise ApiError(404, "account line not found", source=f"{SOURCE}:640")
        return views.bank_line_links(line)


def transfer(api: DolibarrSandbox, request: Request) -> Response:
    """A Stripe payout: -amount (PRE) on the source, +amount (VIR) on the destination, linked
    to each other; answers **201** (123). `cheque_number` is stored as the issuer, not as
    `num_chq`, and the API never shows it: put the payout id in the description (126)."""
    data = body(request)
    store = api.store
    source_id = optional_int(data.get("bankaccount_from_id"))
    target_id = optional_int(data.get("bankaccount_to_id"))
    for name, value in (("bankaccount_from_id", source_id), ("bankaccount_to_id", target_id)):
        if not value:
            raise ApiError(422, f"The {name} parameter is required.", source=f"{SOURCE}:215")
    amount = decimal(data.get("amount"), Decimal(0)) or Decimal(0)
    when = optional_int(data.get("date")) or now()
    description = text(data.get("description")) or ""
    with store.lock:
        for name, value in (("bankaccount_from_id", source_id), ("bankaccount_to_id", target_id)):
            if value not in store.bank_accounts:
                raise ApiError(
                    404,
                    f"The BankAccount for {name} provided does not exist.",
                    source=f"{SOURCE}:229",
                )
        if source_id == target_id:
            raise ApiError(
                422,
                "The bankaccount_from_id and the bankaccount_to_id provided are the same.",
                source=f"{SOURCE}:235",
            )
        if amount <= 0:
            raise ApiError(422, "You must provide a positive amount.", source=f"{SOURCE}:240")
        source, target = store.bank_accounts[source_id], store.bank_accounts[target_id]
        cash = CASH in (source.type, target.type)
        issuer = text(data.get("cheque_number")) or None
        outgoing = store.add_bank_line(
            account_id=source.id,
            when=when,
            amount=-amount,
            fk_type="LIQ" if cash else "PRE",
            label=description,
            emetteur=issuer,
        )
        incoming = store.add_bank_line(
            account_id=target.id,
            when=when,
            amount=amount,
            fk_type="LIQ" if cash else "VIR",
            label=description,
            emetteur=issuer,
        )
        url = "/compta/bank/line.php?rowid="
        outgoing.links.append(BankLink(incoming.id, url, "(banktransfert)", "banktransfert"))
        incoming.links.append(BankLink(outgoing.id, url, "(banktransfert)", "banktransfert"))
        payload = {
            "success": {
                "code": 201,
                "message": "Internal wire transfer created successfully.",
                "bank_id_from": outgoing.id,
                "bank_id_to": incoming.id,
            }
        }
    return Response.json(payload, status=201)
