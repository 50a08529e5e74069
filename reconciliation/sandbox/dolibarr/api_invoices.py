"""`/invoices` (standard invoices and credit notes), their payments, and `/paiements`
(41-74, 90-98, 130-161, 164-168, 174-194)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from reconciliation.sandbox.base import Request
from reconciliation.sandbox.dolibarr import documents, views
from reconciliation.sandbox.dolibarr.errors import ApiError, NotModified, required
from reconciliation.sandbox.dolibarr.lines import build_lines, copy_line
from reconciliation.sandbox.dolibarr.multicurrency import company_currency, document_currency
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
from reconciliation.sandbox.dolibarr.store import (
    BankLink,
    Invoice,
    Payment,
    Store,
    document_currency_totals,
    document_totals,
    now,
)
from reconciliation.sandbox.dolibarr.templates import (
    midnight,
    php_string,
    round_cents,
    round_unit,
    select_properties,
    sql_date,
    sql_datetime,
)

if TYPE_CHECKING:
    from reconciliation.sandbox.dolibarr.server import DolibarrSandbox

SOURCE = "api_invoices.class.php"
PAIEMENTS = "api_paiements.class.php"
ZERO = Decimal(0)
ONE = Decimal(1)
STATUS_FILTER = {"draft": 0, "unpaid": 1, "paid": 2, "cancelled": 3}


def register(api: DolibarrSandbox) -> None:
    api.route("GET", "/invoices", list_invoices)
    api.route("POST", "/invoices", create_invoice)
    api.route("POST", "/invoices/paymentsdistributed", pay_distributed)
    api.route("POST", "/invoices/createfromorder/{orderid}", create_from_order)
    api.route("GET", "/invoices/ref/{ref}", broken_invoice_lookup)
    api.route("GET", "/invoices/ref_ext/{ref_ext}", broken_invoice_lookup)
    api.route("GET", "/invoices/{id}", get_invoice)
    api.route("PUT", "/invoices/{id}", update_invoice)
    api.route("DELETE", "/invoices/{id}", delete_invoice)
    api.route("GET", "/invoices/{id}/lines", get_invoice_lines)
    api.route("POST", "/invoices/{id}/validate", validate_invoice)
    api.route("POST", "/invoices/{id}/settodraft", set_to_draft)
    api.route("POST", "/invoices/{id}/settopaid", set_to_paid)
    api.route("POST", "/invoices/{id}/settounpaid", set_to_unpaid)
    api.route("GET", "/invoices/{id}/payments", list_invoice_payments)
    api.route("POST", "/invoices/{id}/payments", pay_remainder)
    api.route("GET", "/paiements", list_payments)
    api.route("GET", "/paiements/{id}", get_payment)
    api.route("DELETE", "/paiements/{id}", delete_payment)


def not_found() -> ApiError:
    return ApiError(404, "Invoice not found", source=f"{SOURCE}:149")


def fetch(store: Store, invoice_id: int) -> Invoice:
    row = store.invoices.get(invoice_id)
    if row is None:
        raise not_found()
    return row


_FACTURE_COLUMNS = (
    "rowid ref entity ref_ext ref_client type subtype fk_soc datec datef date_pointoftax "
    "date_valid tms date_closing paye remise_percent remise_absolue remise close_code "
    "close_missing_amount close_note total_tva localtax1 localtax2 revenuestamp total_ht "
    "total_ttc fk_statut fk_user_author fk_user_modif fk_user_valid fk_user_closing "
    "module_source pos_source pos_print_counter email_sent_counter fk_fac_rec_source "
    "fk_facture_source fk_projet increment fk_account fk_currency fk_cond_reglement "
    "fk_mode_reglement date_lim_reglement payment_reference dispute_status note_private "
    "note_public model_pdf last_main_doc fk_input_reason fk_incoterms location_incoterms "
    "fk_transport_mode prorata_discount situation_cycle_ref situation_counter situation_final "
    "retained_warranty retained_warranty_date_limit retained_warranty_fk_cond_reglement "
    "import_key extraparams is_also_delivery_note fk_multicurrency multicurrency_code "
    "multicurrency_tx multicurrency_total_ht multicurrency_total_tva multicurrency_total_ttc ip"
)


def _invoice_columns() -> dict[str, Any]:
    columns: dict[str, Any] = table_columns(_FACTURE_COLUMNS)
    columns.update(
        rowid=lambda row: row.id,
        ref=lambda row: row.display_ref,
        entity=lambda row: 1,
        ref_ext=lambda row: row.ref_ext,
        ref_client=lambda row: row.ref_client,
        type=lambda row: row.type,
        fk_soc=lambda row: row.socid,
        datec=lambda row: sql_datetime(row.date_creation),
        # sqlfilters compare dates as SQL strings against the DATE column (98).
        datef=lambda row: sql_date(row.date),
        date_valid=lambda row: sql_date(row.date_validation) if row.date_validation else None,
        date_lim_reglement=lambda row: sql_date(views.due_date(row.date, row.cond_reglement_id)),
        paye=lambda row: row.paye,
        close_code=lambda row: row.close_code,
        close_note=lambda row: row.close_note,
        total_ht=lambda row: document_totals(row.lines)[0],
        total_tva=lambda row: document_totals(row.lines)[1],
        total_ttc=lambda row: document_totals(row.lines)[2],
        fk_statut=lambda row: row.statut,
        fk_facture_source=lambda row: row.fk_facture_source,
        fk_account=lambda row: row.fk_account,
        fk_cond_reglement=lambda row: row.cond_reglement_id,
        fk_mode_reglement=lambda row: row.mode_reglement_id,
        note_private=lambda row: row.note_private,
        note_public=lambda row: row.note_public,
        last_main_doc=lambda row: row.last_main_doc,
        fk_multicurrency=lambda row: row.fk_multicurrency,
        multicurrency_code=lambda row: row.currency,
        multicurrency_tx=lambda row: row.multicurrency_tx,
        multicurrency_total_ht=lambda row: document_currency_totals(row.lines)[0],
        multicurrency_total_tva=lambda row: document_currency_totals(row.lines)[1],
        multicurrency_total_ttc=lambda row: document_currency_totals(row.lines)[2],
    )
    return columns


INVOICE_COLUMNS = _invoice_columns()
# Columns answered from the store's index (column -> the Invoice attribute its getter returns).
INVOICE_INDEXED = {"ref_ext": "ref_ext"}

# -- invoices ----------------------------------------------------------------------------------


def list_invoices(api: DolibarrSandbox, request: Request) -> Any:
    """Filters: thirdparty_ids, status (draft|unpaid|paid|cancelled = fk_statut 0|1|2|3, so
    `paid` also returns invoices closed unpaid, 193), sqlfilters; `200 []` on no hit."""
    query = ListQuery(
        request,
        INVOICE_COLUMNS,
        error_text="Error when retrieve invoice list:",
        error_source=f"{SOURCE}:300",
    )
    wanted = _id_list(request.query.get("thirdparty_ids"))
    status = STATUS_FILTER.get(request.query.get("status", ""))
    with_lines = request.query.get("withLines", "true").lower() not in {"0", "false", "no"}
    with api.store.lock:
        page, total = query.select_from(
            api.store.invoices,
            INVOICE_INDEXED,
            lambda row: (
                (wanted is None or row.socid in wanted) and (status is None or row.statut == status)
            ),
        )
        rendered = []
        for row in page:
            shown = views.invoice(api.store, row, "list")
            if not with_lines:
                shown.pop("lines", None)
            rendered.append(select_properties(shown, query.properties))
    return query.answer(rendered, total)


def _id_list(value: str | None) -> set[int] | None:
    if not value:
        return None
    return {int(part) for part in value.split(",") if part.strip().isdigit()}


def get_invoice(api: DolibarrSandbox, request: Request) -> dict[str, Any]:
    invoice_id = path_id(request)
    with api.store.lock:
        shown = views.invoice(api.store, fetch(api.store, invoice_id), "get")
    return select_properties(shown, request.query.get("properties"))


def get_invoice_lines(api: DolibarrSandbox, request: Request) -> list[dict[str, Any]]:
    invoice_id = path_id(request)
    with api.store.lock:
        row = fetch(api.store, invoice_id)
        return [views.invoice_line(api.store, row, line) for line in row.lines]


def broken_invoice_lookup(api: DolibarrSandbox, request: Request) -> None:
    """`/invoices/ref_ext/{x}` (and `/ref/{x}`, same code) fail in this build (61)."""
    raise ApiError(400, "No invoice with id=0 can exist", source=f"{SOURCE}:145")


def create_invoice(api: DolibarrSandbox, request: Request) -> int:
    """Only `socid` is mandatory; `date` defaults to now. Nothing deduplicates on `ref_ext`
    (46). Credit notes: `type` 2 + `fk_facture_source`, unit prices stored negative (62).
    `multicurrency_code` (+ optional `multicurrency_tx`) puts the document in a currency of the
    Multicurrency module; any other code is silently the company currency (source)."""
    data = body(request)
    if data.get("socid") in (None, ""):
        raise ApiError(400, "socid field missing", source=f"{SOURCE}:1960")
    store = api.store
    with store.lock:
        socid = optional_int(data["socid"]) or 0
        invoice_id = store.next_id("facture")
        if socid not in store.thirdparties:
            raise ApiError(
                500,
                "Error creating invoice",
                source=f"{SOURCE}:420",
                extra=[
                    "Cannot add or update a child row: a foreign key constraint fails "
                    "(`dolibarr`.`llx_facture`, CONSTRAINT `fk_facture_fk_soc` FOREIGN KEY "
                    "(`fk_soc`) REFERENCES `llx_societe` (`rowid`))"
                ],
            )
        kind = optional_int(data.get("type")) or 0
        currency = document_currency(
            store.currencies,
            code=text(data.get("multicurrency_code")),
            tx=decimal(data.get("multicurrency_tx"), None),
        )
        lines = build_lines(
            store,
            data.get("lines"),
            table="facturedet",
            credit_note=kind == 2,
            multicurrency_tx=currency.tx,
            error_text="Error creating invoice",
            error_source=f"{SOURCE}:420",
        )
        moment = now()
        row = Invoice(
            id=invoice_id,
            socid=socid,
            type=kind,
            date=midnight(optional_int(data.get("date")) or moment),
            date_creation=moment,
            lines=lines,
            ref_ext=text(data.get("ref_ext")),
            ref_client=text(data.get("ref_client")),
            mode_reglement_id=optional_int(data.get("mode_reglement_id")),
            cond_reglement_id=optional_int(data.get("cond_reglement_id")),
            fk_account=optional_int(data.get("fk_account")),
            note_private=text(data.get("note_private")),
            note_public=text(data.get("note_public")),
            fk_facture_source=optional_int(data.get("fk_facture_source")),
            multicurrency_code=currency.code,
            fk_multicurrency=currency.fk_multicurrency,
            multicurrency_tx=currency.tx,
        )
        store.add_invoice(row)
        return row.id


def create_from_order(api: DolibarrSandbox, request: Request) -> dict[str, Any]:
    """A draft invoice with the order's lines, linked to it, WITHOUT the order's ref_ext (41)."""
    order_id = path_id(request, "orderid")
    store = api.store
    with store.lock:
        order = store.orders.get(order_id)
        if order is None:
            raise ApiError(404, "Order not found", source=f"{SOURCE}:1750")
        moment = now()
        row = Invoice(
            id=store.next_id("facture"),
            socid=order.socid,
            type=0,
            date=midnight(moment),
            date_creation=moment,
            lines=[copy_line(store, line, table="facturedet") for line in order.lines],
            ref_client=order.ref_client,
            mode_reglement_id=order.mode_reglement_id,
            cond_reglement_id=order.cond_reglement_id,
            note_private=order.note_private,
            note_public=order.note_public,
        )
        store.add_invoice(row)
        store.add_link("commande", order.id, "facture", row.id)
        return views.invoice_from_order(store, row, order)


_PUT_TEXT = ("ref_ext", "ref_client", "note_private", "note_public")
_PUT_INT = ("mode_reglement_id", "cond_reglement_id", "fk_account")


def update_invoice(api: DolibarrSandbox, request: Request) -> dict[str, Any]:
    """Partial update; e.g. setting the ref_ext that createfromorder did not copy (42)."""
    invoice_id = path_id(request)
    data = body(request)
    with api.store.lock:
        row = fetch(api.store, invoice_id)
        for name in _PUT_TEXT:
            if name in data:
                setattr(row, name, text(data[name]))
        for name in _PUT_INT:
            if name in data:
                setattr(row, name, optional_int(data[name]))
        if "date" in data and optional_int(data["date"]):
            row.date = midnight(optional_int(data["date"]) or row.date)
        row.updated_by_put = True
        row.date_modification = now()
        return views.invoice(api.store, row, "put")


def delete_invoice(api: DolibarrSandbox, request: Request) -> dict[str, Any]:
    """Drafts without a definitive number and without payments can go (48)."""
    invoice_id = path_id(request)
    store = api.store
    with store.lock:
        row = fetch(store, invoice_id)
        if row.statut != 0 or row.ref is not None or store.invoice_payments(row.id):
            raise ApiError(403, "Invoice not erasable", source=f"{SOURCE}:520")
        store.remove_invoice(row)
    return {"success": {"code": 200, "message": "Invoice deleted"}}


# -- state routes --------------------------------------------------------------------------------


def validate_invoice(api: DolibarrSandbox, request: Request) -> dict[str, Any]:
    """Draft → FA…/AV… (43, 63). Already validated → 304. No lines → 500 (150). An invoice sent
    back to draft keeps its number (143). Concurrent validations collide on the number: the
    loser gets the recorded 500 duplicate key and stays a draft (174-177)."""
    invoice_id = path_id(request)
    store = api.store
    with store.lock:
        row = fetch(store, invoice_id)
        if row.statut != 0:
            raise NotModified
        if not row.lines:
            raise _validation_error(f"Object {row.display_ref} must have lines to be validated.")
        if row.ref is not None:
            return _mark_validated(store, row)
        prefix = {2: "AV", 3: "AC"}.get(row.type, "FA")
        candidate = store.numbering.next("facture", prefix, row.date, 4)
    api.numbering_pause()
    with store.lock:
        row = fetch(store, invoice_id)
        if row.statut != 0 or row.ref is not None:
            raise NotModified
        if store.numbering.taken("facture", candidate):
            raise _validation_error(f"Duplicate entry '{candidate}-1' for key 'uk_facture_ref'")
        store.numbering.record("facture", candidate)
        row.ref = candidate
        return _mark_validated(store, row)


def _validation_error(detail: str) -> ApiError:
    return ApiError(500, f"Error when validating Invoice: {detail}", source=f"{SOURCE}:1169")


def _mark_validated(store: Store, row: Invoice) -> dict[str, Any]:
    moment = now()
    row.statut = 1
    if row.date_validation is None:
        row.date_validation = midnight(moment)
    row.date_modification = moment
    return views.invoice(store, row, "action", action="validate")


def set_to_draft(api: DolibarrSandbox, request: Request) -> dict[str, Any]:
    """statut 0, the definitive ref is kept (141)."""
    invoice_id = path_id(request)
    with api.store.lock:
        row = fetch(api.store, invoice_id)
        if row.statut == 0:
            raise NotModified
        row.statut, row.paye = 0, 0
        row.date_modification = now()
        return views.invoice(api.store, row, "action", action="settodraft")


def set_to_paid(api: DolibarrSandbox, request: Request) -> dict[str, Any]:
    """Closes the invoice whatever was paid: close_code "" → paye 1 (133, 146, even with no
    payment); a close code (abandon, badcustomer, …) → paye 0 (135, 137). Already closed → 304
    (145). It does not look at the status, so a draft would be closed too (README)."""
    invoice_id = path_id(request)
    data = body(request)
    with api.store.lock:
        row = fetch(api.store, invoice_id)
        if row.statut == 2:
            raise NotModified
        close_code = text(data.get("close_code")) or None
        row.statut = 2
        row.paye = 0 if close_code else 1
        row.close_code = close_code
        row.close_note = text(data.get("close_note")) or None
        row.date_modification = now()
        return views.invoice(api.store, row, "action", action="settopaid")


def set_to_unpaid(api: DolibarrSandbox, request: Request) -> dict[str, Any]:
    """Back to statut 1, paye 0; close_code and close_note cleared (139, 140)."""
    invoice_id = path_id(request)
    with api.store.lock:
        row = fetch(api.store, invoice_id)
        if row.statut != 2:
            raise NotModified
        row.statut, row.paye = 1, 0
        row.close_code = row.close_note = None
        row.date_modification = now()
        return views.invoice(api.store, row, "action", action="settounpaid")


# -- payments ------------------------------------------------------------------------------------


@dataclass
class PaymentRequest:
    datepaye: int
    paymentid: int
    closepaidinvoices: str
    accountid: int
    num_payment: str
    comment: str | None
    chqemetteur: str | None
    ref_ext: str


def _payment_arguments(data: dict[str, Any], *, distributed: bool) -> PaymentRequest:
    """Restler checks the method's arguments in signature order: required, then type (50, 51)."""
    names = ["arrayofamounts"] if distributed else []
    names += ["datepaye", "paymentid", "closepaidinvoices", "accountid"]
    for name in names:
        if data.get(name) in (None, ""):
            raise required(name)
        if name in ("paymentid", "accountid"):
            integer(data[name], name)
        if name == "closepaidinvoices" and data[name] not in ("yes", "no"):
            raise ApiError(
                400,
                "Invalid value specified for `closepaidinvoices`. Expecting one of: yes, no",
                source="Validator.php:680",
                stage="validate",
            )
    return PaymentRequest(
        datepaye=optional_int(data["datepaye"]) or now(),
        paymentid=integer(data["paymentid"], "paymentid"),
        closepaidinvoices=data["closepaidinvoices"],
        accountid=integer(data["accountid"], "accountid"),
        num_payment=text(data.get("num_payment")) or "",
        comment=text(data.get("comment")),
        chqemetteur=text(data.get("chqemetteur")),
        ref_ext=text(data.get("ref_ext")) or "",
    )


def pay_remainder(api: DolibarrSandbox, request: Request) -> int:
    """Pays the FULL remaining amount (no amount argument, 52). On a credit note it records the
    wrong sign (+27 on a -27 credit note, leaving remaintopay "-54": 64, 65). Always in the
    company currency (see docs/sandbox.md for the Multicurrency module)."""
    invoice_id = path_id(request)
    arguments = _payment_arguments(body(request), distributed=False)
    store = api.store
    with store.lock:
        row = fetch(store, invoice_id)
        remain = store.invoice_remain(row)
        amount = -remain if row.is_credit_note else remain
        plan = [PlannedPart(row.id, remain, amount=amount)]
    return _create_payment(api, plan, arguments)


def pay_distributed(api: DolibarrSandbox, request: Request) -> int:
    """Partial or multi-invoice payment with `ref_ext` (55). "remain" pays what is left;
    more than what is left is a 400 unless `accepthigherpayment` (57). A draft can be paid
    (153). On a credit note a positive amount is stored negative (72). An invoice's part is
    given either as `amount` (company currency) or as `multicurrency_amount` (the invoice's
    currency, Multicurrency module: source-read), never both."""
    data = body(request)
    arguments = _payment_arguments(data, distributed=True)
    amounts = data["arrayofamounts"]
    if not isinstance(amounts, dict):
        raise ApiError(400, "arrayofamounts must be an object", source=f"{SOURCE}:1830")
    accept_higher = data.get("accepthigherpayment") in (True, 1, "1", "true")
    store = api.store
    with store.lock:
        plan = []
        for key, spec in amounts.items():
            invoice_id = optional_int(key) or 0
            row = store.invoices.get(invoice_id)
            if row is None:
                raise ApiError(404, f"Invoice ID {key} not found", source=f"{SOURCE}:1837")
            plan.append(_planned_part(store, row, spec, accept_higher=accept_higher))
    return _create_payment(api, plan, arguments)


@dataclass(frozen=True)
class PlannedPart:
    """One invoice's part of a payment as the API decides it, before the numbering pause:
    the company-currency remain it saw, and the signed amount in the company currency
    (`amount`) or in the invoice's own currency (`document_amount`)."""

    invoice_id: int
    remain: Decimal
    amount: Decimal | None = None
    document_amount: Decimal | None = None


def _planned_part(store: Store, row: Invoice, spec: Any, *, accept_higher: bool) -> PlannedPart:
    """The remain is read now, before the numbering pause: concurrent identical payments all
    see the same remain and can overpay (187-192). A `multicurrency_amount` is checked against
    the remain in the invoice's currency: its total less the document-currency amounts paid."""
    raw = spec.get("amount") if isinstance(spec, dict) else spec
    raw_foreign = spec.get("multicurrency_amount") if isinstance(spec, dict) else None
    if _is_given(raw) and _is_given(raw_foreign):
        raise ApiError(
            400,
            f"Payment in both currency {row.id} ( amount: {_php_text(raw)}, "
            f"multicurrency_amount: {_php_text(raw_foreign)})",
            source=f"{SOURCE}:1851",
        )
    remain = store.invoice_remain(row)
    if _is_given(raw_foreign):
        foreign_remain = store.invoice_remain_in_document_currency(row)
        due = -foreign_remain if row.is_credit_note else foreign_remain
        # price2num(…, 'MT'): the document amount is rounded to the cent before anything else.
        amount = due if raw_foreign == "remain" else round_cents(decimal(raw_foreign) or ZERO)
        _refuse_overpayment(row, amount, due, accept_higher=accept_higher)
        signed = -amount if row.is_credit_note else amount
        return PlannedPart(row.id, remain, document_amount=signed)
    due = -remain if row.is_credit_note else remain
    if raw == "remain":
        amount = due
    else:
        amount = decimal(raw, ZERO) or ZERO
        _refuse_overpayment(row, amount, due, accept_higher=accept_higher)
    return PlannedPart(row.id, remain, amount=-amount if row.is_credit_note else amount)


def _is_given(value: Any) -> bool:
    """The API's `== "remain" || > 0` test of an amount: "" and 0 are not given."""
    return value == "remain" or (decimal(value) or ZERO) > 0


def _php_text(value: Any) -> str:
    """A decoded JSON value as PHP concatenates it into a message."""
    if value is None or value is False:
        return ""
    if value is True:
        return "1"
    if isinstance(value, Decimal):
        return php_string(value)
    return str(value)


def _refuse_overpayment(
    row: Invoice, amount: Decimal, due: Decimal, *, accept_higher: bool
) -> None:
    if amount > due and not accept_higher:
        raise ApiError(
            400,
            f"Payment amount on invoice ID {row.id} ({php_string(amount)}) is higher than "
            f"remain to pay ({php_string(due)})",
            source=f"{SOURCE}:1869",
        )


@dataclass(frozen=True)
class PaidPart:
    """One llx_paiement_facture row: the amount in the company currency and in the invoice's."""

    invoice_id: int
    amount: Decimal
    document_amount: Decimal


def _in_document_currency(store: Store, plan: list[PlannedPart]) -> bool:
    """Paiement::getWay: with the module on, one document-currency amount makes the whole
    payment one in the invoices' currency; with it off such amounts are dropped."""
    return store.multicurrency_enabled and any(part.document_amount for part in plan)


def _paid_parts(
    plan: list[PlannedPart], invoices: list[Invoice], *, in_document_currency: bool
) -> tuple[list[PaidPart], Decimal, Decimal]:
    """Paiement::create: (the llx_paiement_facture rows, llx_paiement.amount,
    llx_paiement.multicurrency_amount).

    A document-currency amount m is converted with the invoice's rate to price2num(m / tx, 'MU')
    (5 decimals): the payment's `amount` sums those, while the invoice's row keeps them rounded
    to the cent. A company-currency amount a on an invoice in another currency is converted the
    other way (a x tx). At rate 1 nothing is converted: today's company-currency payments."""
    parts: list[PaidPart] = []
    total = document_total = ZERO
    for part, row in zip(plan, invoices, strict=True):
        tx = row.multicurrency_tx
        if in_document_currency:
            if part.document_amount:
                converted = round_unit(part.document_amount / tx)
                parts.append(PaidPart(row.id, round_cents(converted), part.document_amount))
                total += converted
                document_total += part.document_amount
            elif part.amount:
                # Left as the API set it: not converted, and not part of the payment's totals.
                parts.append(PaidPart(row.id, part.amount, ZERO))
        elif part.amount is not None:
            converted = part.amount if tx == ONE else round_unit(part.amount * tx)
            document_amount = part.amount if tx == ONE else round_cents(converted)
            parts.append(PaidPart(row.id, part.amount, document_amount))
            total += part.amount
            document_total += converted
    return parts, total, document_total


def _create_payment(
    api: DolibarrSandbox, plan: list[PlannedPart], arguments: PaymentRequest
) -> int:
    """Paiement::create + addPaymentToBank. The PAY… number is read before the pause and
    inserted after it; llx_paiement.ref has no unique key, so concurrent payments silently
    share a number (180-184)."""
    store = api.store
    in_document_currency = _in_document_currency(store, plan)
    entered = [part.document_amount if in_document_currency else part.amount for part in plan]
    if sum((amount for amount in entered if amount is not None), ZERO) == 0:
        raise ApiError(400, "Payment error : TotalAmountEmpty", source=f"{SOURCE}:1904")
    with store.lock:
        if arguments.accountid not in store.bank_accounts:
            # The payment is rolled back: nothing is left behind (151).
            raise ApiError(
                400, "Add payment to bank error : ThisIdNotDefined", source=f"{SOURCE}:1917"
            )
        candidate = store.numbering.next("paiement", "PAY", arguments.datepaye, 4)
    api.numbering_pause()
    with store.lock:
        invoices = [
            store.invoices[part.invoice_id] for part in plan if part.invoice_id in store.invoices
        ]
        if len(invoices) != len(plan):
            raise not_found()
        parts, total, document_total = _paid_parts(
            plan, invoices, in_document_currency=in_document_currency
        )
        payment = Payment(
            id=store.next_id("paiement"),
            ref=candidate,
            datepaye=arguments.datepaye,
            amount=total,
            type_id=arguments.paymentid,
            fk_account=arguments.accountid,
            allocations=[(part.invoice_id, part.amount) for part in parts],
            ref_ext=arguments.ref_ext,
            num_payment=arguments.num_payment,
            note_private=arguments.comment,
            multicurrency_amount=document_total,
            multicurrency_allocations={part.invoice_id: part.document_amount for part in parts},
        )
        store.add_payment(payment)
        store.numbering.record("paiement", candidate)
        _write_bank_line(store, payment, invoices, arguments)
        moment = now()
        paid = {part.invoice_id: part.amount for part in parts}
        for part, row in zip(plan, invoices, strict=True):
            if row.id not in paid:
                continue
            # Each request decides on its own view of the remain (192: three 60.00 payments on
            # a 60.00 invoice, closed as paid). Only the company-currency remain counts: a
            # foreign invoice whose converted payments leave a cent stays open (source).
            if arguments.closepaidinvoices == "yes" and part.remain - paid[row.id] == 0:
                row.statut, row.paye = 2, 1
            row.date_modification = moment
            # Paiement::create regenerates the invoice PDF (README "Payments").
            documents.store_invoice_pdf(store, row)
        return payment.id


def _write_bank_line(
    store: Store, payment: Payment, invoices: list[Invoice], arguments: PaymentRequest
) -> None:
    """The `(CustomerInvoicePayment)` line, num_chq = num_payment, linked to the customer and
    to the payment (162, 163). With the Multicurrency module on, a bank account in another
    currency than the company's gets the payment's `multicurrency_amount` (source:
    addPaymentToBank) — whatever the invoices' currency is."""
    credit_note = any(row.is_credit_note for row in invoices)
    account = store.bank_accounts[payment.fk_account]
    foreign_account = store.multicurrency_enabled and account.currency_code != company_currency()
    line = store.add_bank_line(
        account_id=payment.fk_account,
        when=payment.datepaye,
        amount=payment.document_currency_amount if foreign_account else payment.amount,
        fk_type=views.payment_code(payment.type_id) or "",
        label="(CustomerInvoicePaymentBack)" if credit_note else "(CustomerInvoicePayment)",
        num_chq=payment.num_payment or None,
        emetteur=arguments.chqemetteur,
    )
    customer = store.thirdparties.get(invoices[0].socid) if invoices else None
    if customer is not None:
        line.links.append(BankLink(customer.id, "/comm/card.php?socid=", customer.name, "company"))
    line.links.append(
        BankLink(payment.id, "/compta/paiement/card.php?id=", "(paiement)", "payment")
    )
    payment.bank_line_id = line.id


def list_invoice_payments(api: DolibarrSandbox, request: Request) -> list[dict[str, Any]]:
    """Payments of one invoice, date as a string (54); the way to link payment and invoice."""
    invoice_id = path_id(request)
    with api.store.lock:
        fetch(api.store, invoice_id)
        return [
            views.invoice_payment_row(payment, amount)
            for payment, amount in api.store.invoice_payments(invoice_id)
        ]


# -- /paiements ------------------------------------------------------------------------------------

PAYMENT_COLUMNS: dict[str, Any] = {
    **table_columns(
        "rowid ref ref_ext entity datec tms datep amount multicurrency_amount fk_paiement "
        "num_paiement note ext_payment_id ext_payment_site fk_bank fk_user_creat fk_user_modif "
        "statut fk_export_compta pos_change"
    ),
    "rowid": lambda row: row.id,
    "ref": lambda row: row.ref,
    "ref_ext": lambda row: row.ref_ext,
    "entity": lambda row: 1,
    "datep": lambda row: sql_datetime(row.datepaye),
    "amount": lambda row: row.amount,
    "multicurrency_amount": lambda row: row.document_currency_amount,
    "fk_paiement": lambda row: row.type_id,
    "num_paiement": lambda row: row.num_payment,
    "note": lambda row: row.note_private,
    "fk_bank": lambda row: row.bank_line_id,
    "statut": lambda row: 0,
}
PAYMENT_INDEXED = {"ref_ext": "ref_ext", "num_paiement": "num_payment"}


def list_payments(api: DolibarrSandbox, request: Request) -> list[dict[str, Any]]:
    """`200 []` on no hit; no pagination_data on this route (168)."""
    query = ListQuery(
        request,
        PAYMENT_COLUMNS,
        error_text="Error when retrieving list of payments:",
        error_source=f"{PAIEMENTS}:120",
    )
    query.pagination = False
    with api.store.lock:
        page, _ = query.select_from(api.store.payments, PAYMENT_INDEXED)
        # views.payment reads only the row's own scalar fields: copies of them are rendered
        # after the lock is released, so other requests need not wait for the templates.
        snapshot = [replace(row) for row in page]
    return [select_properties(views.payment(row), query.properties) for row in snapshot]


def get_payment(api: DolibarrSandbox, request: Request) -> dict[str, Any]:
    payment_id = path_id(request)
    with api.store.lock:
        row = api.store.payments.get(payment_id)
        if row is None:
            raise ApiError(404, "Payment not found", source=f"{PAIEMENTS}:80")
        return select_properties(views.payment(row), request.query.get("properties"))


def delete_payment(api: DolibarrSandbox, request: Request) -> None:
    """Always fails on the recorded instance: deleting the bank line queries the accounting
    tables, which do not exist while the Accounting module is off (96)."""
    payment_id = path_id(request)
    with api.store.lock:
        if payment_id not in api.store.payments:
            raise ApiError(404, "Payment not found", source=f"{PAIEMENTS}:230")
    raise ApiError(
        500,
        "Error when deleting Paiement : Table 'dolibarr.llx_accounting_bookkeeping' doesn't exist",
        source=f"{PAIEMENTS}:241",
    )
