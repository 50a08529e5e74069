"""Typed views of what Dolibarr's REST API returns, and of what the client sends.

Dolibarr serialises nearly every scalar as a string (`"id": "1"`, `"total_ttc": "122.40000000"`),
some as real JSON numbers on the same object (`totalpaid: 27` beside `remaintopay: "0"`, exchanges
53/56; `createfromorder` returns numbers throughout, 41), dates as Unix timestamps (date-only
columns at midnight UTC, 34) and a few as `"YYYY-mm-dd HH:MM:SS"` strings in server time (54, 101).
The `from_raw` constructors absorb all of that once: ids are `int`, amounts `Decimal`, dates aware
`datetime` in UTC, unset values `None`. Every object keeps the `raw` dict it came from, for the
fields nobody typed yet and for audit snapshots.

When a list was read with `properties=`, the fields that were not asked for are `None`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import IntEnum
from typing import Any, Generic, TypeVar

from reconciliation.money import parse_dolibarr_amount, to_decimal

T = TypeVar("T")


class InvoiceType(IntEnum):
    STANDARD = 0
    REPLACEMENT = 1
    CREDIT_NOTE = 2
    DEPOSIT = 3


class InvoiceStatus(IntEnum):
    """`statut`. CLOSED covers both "paid" and "closed unpaid" (abandon, badcustomer): read
    `paid`, `close_code` and `remain_to_pay` to tell them apart (exchanges 133-138, 193)."""

    DRAFT = 0
    VALIDATED = 1
    CLOSED = 2
    ABANDONED = 3


class OrderStatus(IntEnum):
    CANCELED = -1
    DRAFT = 0
    VALIDATED = 1
    SHIPMENT_IN_PROGRESS = 2  # after its shipment was validated (84)
    CLOSED = 3  # after its shipment was closed (92)


class ShipmentStatus(IntEnum):
    DRAFT = 0
    VALIDATED = 1
    CLOSED = 2


class ProductType(IntEnum):
    PRODUCT = 0
    SERVICE = 1


# --- reading Dolibarr's loosely typed values ---------------------------------------------------


def as_int(value: Any) -> int | None:
    """An id, status or count: `"1"`, `1`, or None/"" when unset."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, Decimal):
        if value != value.to_integral_value():
            raise ValueError(f"expected a whole number, got {value}")
        return int(value)
    if isinstance(value, str):
        return int(value.strip())
    raise TypeError(f"expected a whole number, got {type(value).__name__}")


def as_decimal(value: Any) -> Decimal | None:
    """An amount, quantity or rate: `"122.40000000"`, `27`, `Decimal("122.4")`, or None/""."""
    return parse_dolibarr_amount(value)


def as_bool(value: Any) -> bool:
    """Dolibarr's flags: `"1"`/`1` true; `"0"`, `0`, `""` and null false."""
    if value in (None, "", "0", 0, False):
        return False
    return as_int(value) != 0


def as_str(value: Any) -> str | None:
    """A text field, with Dolibarr's two spellings of "unset" (null and "") both as None."""
    if value is None or value == "":
        return None
    return str(value)


def as_datetime(value: Any) -> datetime | None:
    """A Unix timestamp (number or digit string) or a `"YYYY-mm-dd[ HH:MM:SS]"` string, both in
    UTC, the server's time zone (`timestamp_php_tz: "UTC"`, exchange 01). Date-only fields come
    back as the timestamp of midnight UTC (34), so they stay datetimes at 00:00 UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise TypeError("a timestamp must not be a bool")
    if isinstance(value, int | Decimal):
        return datetime.fromtimestamp(int(value), tz=UTC)
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            return datetime.fromtimestamp(int(text), tz=UTC)
        for layout in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
            try:
                return datetime.strptime(text, layout).replace(tzinfo=UTC)
            except ValueError:
                continue
        raise ValueError(f"not a Dolibarr date: {value!r}")
    raise TypeError(f"not a Dolibarr date: {type(value).__name__}")


def to_timestamp(value: datetime | date) -> int:
    """What Dolibarr expects for every date it is sent (exchanges 33, 45, 52): Unix seconds.
    A `date` means midnight UTC of that day; a naive datetime is refused, not guessed."""
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"a datetime sent to Dolibarr must be timezone-aware: {value!r}")
        return int(value.timestamp())
    if isinstance(value, date):
        return int(datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp())
    raise TypeError(f"expected a date or datetime, got {type(value).__name__}")


def _raw(raw: Mapping[str, Any]) -> dict[str, Any]:
    return dict(raw)


def _lines(raw: Mapping[str, Any]) -> tuple[Line, ...]:
    lines = raw.get("lines")
    if not isinstance(lines, list):
        return ()
    return tuple(Line.from_raw(line) for line in lines if isinstance(line, Mapping))


# --- results --------------------------------------------------------------------------------


# The two generic containers are frozen without slots: on Python 3.11 a frozen slots dataclass
# that is Generic breaks when instantiated through its alias (`ActionResult[Invoice](...)`).
@dataclass(frozen=True)
class ActionResult(Generic[T]):
    """The answer to a state change that Dolibarr may refuse as already done.

    Dolibarr answers **304 with an empty body** when there was nothing to do (validating a
    validated order, 36; closing a closed order, 89; `settopaid` on a paid invoice, 145). Then
    `changed` is False and `value` is None: read the object again if its state is needed."""

    changed: bool
    value: T | None = None


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list read with `pagination_data=true` (exchanges 164-166). `page` starts at
    0; a page past the end is empty with the same totals."""

    items: tuple[T, ...]
    total: int
    page: int
    page_count: int
    limit: int

    @property
    def is_last(self) -> bool:
        return self.page + 1 >= self.page_count or not self.items


@dataclass(frozen=True, slots=True)
class DolibarrStatus:
    version: str
    server_time: datetime | None
    timezone: str | None
    access_locked: bool
    environment: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> DolibarrStatus:
        success = raw.get("success") if isinstance(raw.get("success"), Mapping) else raw
        return cls(
            version=str(success.get("dolibarr_version") or ""),
            server_time=as_datetime(success.get("timestamp_now_utc")),
            timezone=as_str(success.get("timestamp_php_tz")),
            access_locked=as_bool(success.get("access_locked")),
            environment=as_str(success.get("environment")),
            raw=_raw(raw),
        )


@dataclass(frozen=True, slots=True)
class Thirdparty:
    id: int
    name: str | None
    ref_ext: str | None
    email: str | None
    code_client: str | None
    client: int | None  # 1 customer, 2 prospect, 3 both
    country_code: str | None
    address: str | None
    zip: str | None
    town: str | None
    phone: str | None
    tva_intra: str | None
    idprof1: str | None
    status: int | None
    date_creation: datetime | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> Thirdparty:
        return cls(
            id=as_int(raw.get("id")),
            # `name` in the API object, `nom` in the table (exchanges 97, 169).
            name=as_str(raw.get("name", raw.get("nom"))),
            ref_ext=as_str(raw.get("ref_ext")),
            email=as_str(raw.get("email")),
            code_client=as_str(raw.get("code_client")),
            client=as_int(raw.get("client")),
            country_code=as_str(raw.get("country_code")),
            address=as_str(raw.get("address")),
            zip=as_str(raw.get("zip")),
            town=as_str(raw.get("town")),
            phone=as_str(raw.get("phone")),
            tva_intra=as_str(raw.get("tva_intra")),
            idprof1=as_str(raw.get("idprof1")),
            status=as_int(raw.get("status")),
            date_creation=as_datetime(raw.get("date_creation")),
            raw=_raw(raw),
        )


@dataclass(frozen=True, slots=True)
class StripeLink:
    """A thirdparty's `stripe` row in `llx_societe_account`: the link Dolibarr's Stripe module
    reads. The list route returns neither `site_account` nor `status` (102): they are None then."""

    id: int
    thirdparty_id: int | None
    site: str | None
    customer_id: str | None  # key_account
    site_account: str | None
    status: int | None
    date_creation: datetime | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> StripeLink:
        return cls(
            id=as_int(raw.get("id")),
            thirdparty_id=as_int(raw.get("fk_soc")),
            site=as_str(raw.get("site")),
            customer_id=as_str(raw.get("key_account")),
            site_account=as_str(raw.get("site_account")),
            status=as_int(raw.get("status")),
            date_creation=as_datetime(raw.get("date_creation")),
            raw=_raw(raw),
        )


@dataclass(frozen=True, slots=True)
class Product:
    id: int
    ref: str | None
    label: str | None
    type: int | None
    price: Decimal | None
    price_ttc: Decimal | None
    price_base_type: str | None
    tva_tx: Decimal | None
    on_sale: bool
    ref_ext: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> Product:
        return cls(
            id=as_int(raw.get("id")),
            ref=as_str(raw.get("ref")),
            label=as_str(raw.get("label")),
            type=as_int(raw.get("type")),
            price=as_decimal(raw.get("price")),
            price_ttc=as_decimal(raw.get("price_ttc")),
            price_base_type=as_str(raw.get("price_base_type")),
            tva_tx=as_decimal(raw.get("tva_tx")),
            on_sale=as_bool(raw.get("status")),
            ref_ext=as_str(raw.get("ref_ext")),
            raw=_raw(raw),
        )


@dataclass(frozen=True, slots=True)
class Line:
    """A line of an order or an invoice, as Dolibarr computed it (each line rounded on its own:
    README, "How totals are computed")."""

    id: int | None
    product_id: int | None
    product_type: int | None
    description: str | None
    qty: Decimal | None
    subprice: Decimal | None
    tva_tx: Decimal | None
    remise_percent: Decimal | None
    total_ht: Decimal | None
    total_tva: Decimal | None
    total_ttc: Decimal | None
    date_start: datetime | None
    date_end: datetime | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> Line:
        return cls(
            id=as_int(raw.get("id", raw.get("rowid"))),
            product_id=as_int(raw.get("fk_product")),
            product_type=as_int(raw.get("product_type")),
            description=as_str(raw.get("desc") or raw.get("description")),
            qty=as_decimal(raw.get("qty")),
            subprice=as_decimal(raw.get("subprice")),
            tva_tx=as_decimal(raw.get("tva_tx")),
            remise_percent=as_decimal(raw.get("remise_percent")),
            total_ht=as_decimal(raw.get("total_ht")),
            total_tva=as_decimal(raw.get("total_tva")),
            total_ttc=as_decimal(raw.get("total_ttc")),
            date_start=as_datetime(raw.get("date_start")),
            date_end=as_datetime(raw.get("date_end")),
            raw=_raw(raw),
        )


@dataclass(frozen=True, slots=True)
class Order:
    id: int
    ref: str | None  # "(PROVn)" while a draft: store ids, not refs
    ref_ext: str | None
    ref_client: str | None
    thirdparty_id: int | None
    status: int | None
    billed: bool
    date: datetime | None  # midnight UTC (34)
    date_validation: datetime | None
    total_ht: Decimal | None
    total_tva: Decimal | None
    total_ttc: Decimal | None
    lines: tuple[Line, ...]
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> Order:
        return cls(
            id=as_int(raw.get("id")),
            ref=as_str(raw.get("ref")),
            ref_ext=as_str(raw.get("ref_ext")),
            ref_client=as_str(raw.get("ref_client")),
            thirdparty_id=as_int(raw.get("socid")),
            status=as_int(raw.get("statut", raw.get("status"))),
            billed=as_bool(raw.get("billed")),
            date=as_datetime(raw.get("date_commande", raw.get("date"))),
            date_validation=as_datetime(raw.get("date_validation")),
            total_ht=as_decimal(raw.get("total_ht")),
            total_tva=as_decimal(raw.get("total_tva")),
            total_ttc=as_decimal(raw.get("total_ttc")),
            lines=_lines(raw),
            raw=_raw(raw),
        )

    @property
    def is_draft(self) -> bool:
        return self.status == OrderStatus.DRAFT


@dataclass(frozen=True, slots=True)
class Invoice:
    """A customer invoice or credit note.

    `paid` is Dolibarr's `paye` flag, which does **not** prove that money came in: `settopaid`
    with an empty close code sets it on an invoice with no payment (146, 147). Compare
    `remain_to_pay` and the recorded payments instead."""

    id: int
    ref: str | None  # "(PROVn)" while a draft
    ref_ext: str | None
    ref_client: str | None
    type: int | None
    thirdparty_id: int | None
    status: int | None
    paid: bool
    date: datetime | None  # midnight UTC
    date_due: datetime | None
    date_validation: datetime | None  # midnight UTC (a DATE column)
    total_ht: Decimal | None
    total_tva: Decimal | None
    total_ttc: Decimal | None
    total_paid: Decimal | None
    remain_to_pay: Decimal | None
    close_code: str | None
    close_note: str | None
    source_invoice_id: int | None
    bank_account_id: int | None
    mode_reglement_id: int | None  # payment mode (6 = CB here)
    cond_reglement_id: int | None  # payment terms (1 = RECEP)
    last_main_doc: str | None
    lines: tuple[Line, ...]
    raw: dict[str, Any] = field(repr=False, compare=False)
    # The document's own currency (Multicurrency module): the company currency, rate 1, unless
    # the module is on and the invoice was created in another currency.
    multicurrency_code: str | None = None
    multicurrency_tx: Decimal | None = None
    multicurrency_total_ttc: Decimal | None = None

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> Invoice:
        return cls(
            id=as_int(raw.get("id")),
            ref=as_str(raw.get("ref")),
            ref_ext=as_str(raw.get("ref_ext")),
            ref_client=as_str(raw.get("ref_client")),
            type=as_int(raw.get("type")),
            thirdparty_id=as_int(raw.get("socid")),
            status=as_int(raw.get("statut", raw.get("status"))),
            paid=as_bool(raw.get("paye")),
            date=as_datetime(raw.get("date")),
            date_due=as_datetime(raw.get("date_lim_reglement")),
            date_validation=as_datetime(raw.get("date_validation")),
            total_ht=as_decimal(raw.get("total_ht")),
            total_tva=as_decimal(raw.get("total_tva")),
            total_ttc=as_decimal(raw.get("total_ttc")),
            total_paid=as_decimal(raw.get("totalpaid")),
            remain_to_pay=as_decimal(raw.get("remaintopay")),
            close_code=as_str(raw.get("close_code")),
            close_note=as_str(raw.get("close_note")),
            source_invoice_id=as_int(raw.get("fk_facture_source")) or None,
            bank_account_id=as_int(raw.get("fk_account")) or None,
            mode_reglement_id=as_int(raw.get("mode_reglement_id")),
            cond_reglement_id=as_int(raw.get("cond_reglement_id")),
            last_main_doc=as_str(raw.get("last_main_doc")),
            lines=_lines(raw),
            raw=_raw(raw),
            multicurrency_code=as_str(raw.get("multicurrency_code")),
            multicurrency_tx=as_decimal(raw.get("multicurrency_tx")),
            multicurrency_total_ttc=as_decimal(raw.get("multicurrency_total_ttc")),
        )

    def total_in(self, currency: str) -> Decimal | None:
        """The total in `currency`: `multicurrency_total_ttc` when that is the document's
        currency and not the company's, else `total_ttc`."""
        if self.multicurrency_code == currency and self.multicurrency_total_ttc is not None:
            return self.multicurrency_total_ttc
        return self.total_ttc

    @property
    def is_draft(self) -> bool:
        return self.status == InvoiceStatus.DRAFT

    @property
    def is_credit_note(self) -> bool:
        return self.type == InvoiceType.CREDIT_NOTE


@dataclass(frozen=True, slots=True)
class Payment:
    """A customer payment from `/paiements`. It does not say which invoice it paid (`amounts: []`,
    exchange 95): `/invoices/{id}/payments` does."""

    id: int
    ref: str | None
    ref_ext: str | None
    amount: Decimal | None
    date: datetime | None
    type_code: str | None
    num_payment: str | None
    bank_account_id: int | None
    bank_line_id: int | None
    note_private: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> Payment:
        return cls(
            id=as_int(raw.get("id")),
            ref=as_str(raw.get("ref")),
            ref_ext=as_str(raw.get("ref_ext")),
            amount=as_decimal(raw.get("amount", raw.get("montant"))),
            date=as_datetime(raw.get("datepaye", raw.get("date"))),
            type_code=as_str(raw.get("type_code")),
            num_payment=as_str(raw.get("num_payment")),
            bank_account_id=as_int(raw.get("bank_account", raw.get("fk_account"))),
            bank_line_id=as_int(raw.get("bank_line")),
            note_private=as_str(raw.get("note_private")),
            raw=_raw(raw),
        )


@dataclass(frozen=True, slots=True)
class MulticurrencyCurrency:
    """A currency of the Multicurrency module (`GET /multicurrencies/bycode/{code}`): its code
    and latest rate, in units of it per unit of the company currency."""

    id: int
    code: str | None
    rate: Decimal | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> MulticurrencyCurrency:
        rate = raw.get("rate")
        return cls(
            id=as_int(raw.get("id")),
            code=as_str(raw.get("code")),
            rate=as_decimal(rate.get("rate")) if isinstance(rate, Mapping) else None,
            raw=_raw(raw),
        )


@dataclass(frozen=True, slots=True)
class InvoicePayment:
    """One row of `GET /invoices/{id}/payments` (exchanges 54, 59, 74): no payment id, the date
    as a `"YYYY-mm-dd HH:MM:SS"` string in server time (UTC), and on a credit note the refund as
    a negative amount."""

    ref: str | None
    ref_ext: str | None
    amount: Decimal | None
    date: datetime | None
    type_code: str | None
    num_payment: str | None
    bank_line_id: int | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> InvoicePayment:
        return cls(
            ref=as_str(raw.get("ref")),
            ref_ext=as_str(raw.get("ref_ext")),
            amount=as_decimal(raw.get("amount")),
            date=as_datetime(raw.get("date")),
            type_code=as_str(raw.get("type")),
            num_payment=as_str(raw.get("num")),
            bank_line_id=as_int(raw.get("fk_bank_line")),
            raw=_raw(raw),
        )


@dataclass(frozen=True, slots=True)
class PaymentType:
    id: int
    code: str | None
    label: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> PaymentType:
        return cls(
            id=as_int(raw.get("id")),
            code=as_str(raw.get("code")),
            label=as_str(raw.get("label")),
            raw=_raw(raw),
        )


@dataclass(frozen=True, slots=True)
class BankAccount:
    id: int
    ref: str | None
    label: str | None
    currency_code: str | None
    type: int | None  # 0 savings, 1 current, 2 cash
    closed: bool
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> BankAccount:
        return cls(
            id=as_int(raw.get("id")),
            ref=as_str(raw.get("ref")),
            label=as_str(raw.get("label")),
            currency_code=as_str(raw.get("currency_code")),
            type=as_int(raw.get("type")),
            closed=as_bool(raw.get("clos")),
            raw=_raw(raw),
        )


@dataclass(frozen=True, slots=True)
class BankLine:
    """A bank line (exchanges 120, 126, 128). `num_chq` holds a payment's `num_payment` (163) or
    the `cheque_number` given to `add_bank_line`; a transfer's lines have none (126)."""

    id: int
    account_id: int | None
    amount: Decimal | None
    type_code: str | None
    label: str | None
    num_chq: str | None
    num_releve: str | None
    date_operation: datetime | None  # midnight UTC
    date_value: datetime | None  # midnight UTC
    date_created: datetime | None
    reconciled: bool
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> BankLine:
        return cls(
            id=as_int(raw.get("id", raw.get("rowid"))),
            account_id=as_int(raw.get("fk_account")),
            amount=as_decimal(raw.get("amount")),
            type_code=as_str(raw.get("fk_type")),
            label=as_str(raw.get("label")),
            num_chq=as_str(raw.get("num_chq")),
            num_releve=as_str(raw.get("num_releve")),
            date_operation=as_datetime(raw.get("dateo")),
            date_value=as_datetime(raw.get("datev")),
            date_created=as_datetime(raw.get("datec")),
            reconciled=as_bool(raw.get("rappro")),
            raw=_raw(raw),
        )


@dataclass(frozen=True, slots=True)
class BankTransfer:
    """The two bank lines of an internal transfer (exchange 123): money out of the first account
    (type PRE), in to the second (VIR)."""

    from_line_id: int | None
    to_line_id: int | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> BankTransfer:
        success = raw.get("success") if isinstance(raw.get("success"), Mapping) else raw
        return cls(
            from_line_id=as_int(success.get("bank_id_from")),
            to_line_id=as_int(success.get("bank_id_to")),
            raw=_raw(raw),
        )


@dataclass(frozen=True, slots=True)
class Shipment:
    id: int
    ref: str | None
    ref_ext: str | None
    status: int | None
    thirdparty_id: int | None
    order_id: int | None
    tracking_number: str | None
    date_delivery: datetime | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> Shipment:
        return cls(
            id=as_int(raw.get("id")),
            ref=as_str(raw.get("ref")),
            ref_ext=as_str(raw.get("ref_ext")),
            status=as_int(raw.get("statut", raw.get("status"))),
            thirdparty_id=as_int(raw.get("socid")),
            order_id=as_int(raw.get("origin_id")),
            tracking_number=as_str(raw.get("tracking_number")),
            date_delivery=as_datetime(raw.get("date_delivery")),
            raw=_raw(raw),
        )


@dataclass(frozen=True, slots=True)
class Document:
    """A file from `builddoc` or `download` (exchanges 75, 76, 88), decoded. `raw` is the answer
    without its base64 `content`, which would double the memory for nothing."""

    filename: str
    content_type: str | None
    content: bytes = field(repr=False)
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def size(self) -> int:
        return len(self.content)


# --- what the client sends ----------------------------------------------------------------------


def _amount(value: Decimal | int | str, name: str) -> Decimal:
    try:
        return to_decimal(value)
    except TypeError as exc:
        raise TypeError(f"{name}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class NewLine:
    """A line to create on an order, an invoice or a credit note.

    `qty` has no default on purpose: Dolibarr stores a line sent without `qty` at quantity 0 and
    totals 0.00 without any error (exchanges 157, 159). `subprice` is the **net** unit price
    (`price_base_type: "TTC"` on a line is ignored by the API); on a credit note it is positive
    and Dolibarr stores it negative (62, 63). Give `product_id` or `description` (or both).
    """

    qty: Decimal
    subprice: Decimal
    tva_tx: Decimal
    description: str | None = None
    product_id: int | None = None
    product_type: int = ProductType.SERVICE
    remise_percent: Decimal = Decimal(0)
    date_start: datetime | date | None = None
    date_end: datetime | date | None = None

    def __post_init__(self) -> None:
        for name in ("qty", "subprice", "tva_tx", "remise_percent"):
            object.__setattr__(self, name, _amount(getattr(self, name), name))
        if self.qty == 0:
            raise ValueError("a line quantity of 0 makes a silent zero line (exchange 159)")
        if self.product_id is None and not self.description:
            raise ValueError("a line needs a product_id or a description")


@dataclass(frozen=True, slots=True)
class NewShipmentLine:
    """A shipment line points at an order line (`origin_line_id`, exchange 81)."""

    order_line_id: int
    qty: Decimal
    warehouse_id: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "qty", _amount(self.qty, "qty"))


def lines_sequence(lines: Sequence[NewLine]) -> tuple[NewLine, ...]:
    """The lines as a tuple, refusing anything that is not a NewLine (dicts would skip the
    checks above)."""
    result = tuple(lines)
    for line in result:
        if not isinstance(line, NewLine):
            raise TypeError(f"expected NewLine, got {type(line).__name__}")
    return result
