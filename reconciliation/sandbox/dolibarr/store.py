"""The sandbox's in-memory Dolibarr database: rows, auto-increment ids, numbering and totals.

One lock guards everything. The only code that runs outside it on purpose is the pause between
reading the next document number and inserting it (`numbering_pause`), which reproduces the
read-then-insert of Dolibarr's PHP numbering modules and therefore its recorded races
(README "Concurrency", exchanges 174-192).

The tables that the sync searches by an external key (`ref_ext`, `email`, `num_payment`,
`num_chq`) are `Table`s: dicts that also keep an equality index of those columns, under the
comparison key of `sqlfilters` (`utf8mb4_unicode_ci`: case and accents ignored). The index
follows inserts, deletes and every later assignment of an indexed attribute of a stored row
(`Tracked.__setattr__`), so the list routes can answer `(t.ref_ext:=:'a') or …` from it.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Generic, TypeVar

from reconciliation.sandbox.dolibarr import dictionaries
from reconciliation.sandbox.dolibarr.multicurrency import (
    Currency,
    checked_rates,
    company_currency,
    currencies_for,
)
from reconciliation.sandbox.dolibarr.sqlfilters import collate_padded, is_number
from reconciliation.sandbox.dolibarr.templates import midnight, round_cents, yymm

ZERO = Decimal(0)
ONE = Decimal(1)


def now() -> int:
    return int(time.time())


# -- indexed tables --------------------------------------------------------------------------


class Tracked:
    """A row whose indexed attributes its `Table` keeps in step: assigning one (a PUT's
    `setattr`, a handler's `row.ref_ext = …`) re-files the row under the new value."""

    def __setattr__(self, name: str, value: Any) -> None:
        table = self.__dict__.get("_table")
        if table is None or name not in table.indexes:
            object.__setattr__(self, name, value)
            return
        table._unfile(self, name)
        object.__setattr__(self, name, value)
        table._file(self, name)


def index_key(value: Any) -> str | None:
    """The key under which `sqlfilters` compares a text column with a quoted literal: None for
    NULL (never equal) and for numbers (compared as numbers, so not indexable by text)."""
    if value is None or is_number(value):
        return None
    return collate_padded(str(value))


class ColumnIndex:
    """collate(value) -> ids for one attribute; `numeric` holds the ids of rows whose value is a
    number, which `sqlfilters` compares numerically (the index then declines to answer)."""

    def __init__(self) -> None:
        self.keys: dict[str, set[int]] = {}
        self.numeric: set[int] = set()


R = TypeVar("R", bound=Tracked)


class Table(dict[int, R], Generic[R]):
    """Rows by id, plus an equality index of `indexed` attributes and the insertion position of
    each id (the order in which the dict, hence a full scan, yields the rows)."""

    def __init__(self, *indexed: str) -> None:
        super().__init__()
        self.indexes = {name: ColumnIndex() for name in indexed}
        self._position: dict[int, int] = {}
        self._inserted = 0

    def _file(self, row: R, name: str) -> None:
        value = getattr(row, name)
        index = self.indexes[name]
        if value is not None and is_number(value):
            index.numeric.add(row.id)
            return
        key = index_key(value)
        if key is not None:
            index.keys.setdefault(key, set()).add(row.id)

    def _unfile(self, row: R, name: str) -> None:
        index = self.indexes[name]
        index.numeric.discard(row.id)
        key = index_key(getattr(row, name, None))
        ids = index.keys.get(key) if key is not None else None
        if ids is not None:
            ids.discard(row.id)
            if not ids:
                del index.keys[key]

    def _attach(self, key: int, row: R) -> None:
        if key not in self._position:
            self._inserted += 1
            self._position[key] = self._inserted
        object.__setattr__(row, "_table", self)
        for name in self.indexes:
            self._file(row, name)

    def _detach(self, key: int, row: R) -> None:
        for name in self.indexes:
            self._unfile(row, name)
        object.__setattr__(row, "_table", None)
        self._position.pop(key, None)

    def __setitem__(self, key: int, row: R) -> None:
        if key in self:
            previous = dict.__getitem__(self, key)
            for name in self.indexes:
                self._unfile(previous, name)
            object.__setattr__(previous, "_table", None)
        super().__setitem__(key, row)
        self._attach(key, row)

    def __delitem__(self, key: int) -> None:
        row = dict.__getitem__(self, key)
        super().__delitem__(key)
        self._detach(key, row)

    _MISSING: Any = object()

    def pop(self, key: int, default: Any = _MISSING) -> Any:
        if key not in self:
            if default is Table._MISSING:
                raise KeyError(key)
            return default
        row = dict.__getitem__(self, key)
        del self[key]
        return row

    def popitem(self) -> tuple[int, R]:
        key = next(reversed(self.keys()))
        return key, self.pop(key)

    def setdefault(self, key: int, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return dict.__getitem__(self, key)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, row in dict(*args, **kwargs).items():
            self[key] = row

    def clear(self) -> None:
        for key in list(self.keys()):
            del self[key]

    def lookup(self, name: str, values: list[str]) -> list[R] | None:
        """The rows whose `name` equals one of `values` (quoted `sqlfilters` literals) in the
        collation, in insertion order; None when `name` is not indexed or holds numbers."""
        index = self.indexes.get(name)
        if index is None or index.numeric:
            return None
        ids: set[int] = set()
        for value in values:
            ids.update(index.keys.get(collate_padded(value), ()))
        position = self._position
        return [dict.__getitem__(self, key) for key in sorted(ids, key=position.__getitem__)]


# -- rows ----------------------------------------------------------------------------------


@dataclass
class Thirdparty(Tracked):
    id: int
    name: str
    date_creation: int
    name_alias: str = ""
    email: str | None = None
    ref_ext: str | None = None
    address: str | None = None
    zip: str | None = None
    town: str | None = None
    country_id: int | None = None
    phone: str | None = None
    phone_mobile: str | None = None
    fax: str | None = None
    url: str | None = None
    client: int = 0
    prospect: int = 0
    fournisseur: int = 0
    code_client: str | None = None
    code_fournisseur: str | None = None
    note_private: str | None = None
    note_public: str | None = None
    tva_intra: str = ""
    tva_assuj: int = 1
    idprof: dict[int, str] = field(default_factory=dict)
    status: int = 1
    default_lang: str | None = None
    mode_reglement_id: int | None = None
    cond_reglement_id: int | None = None


@dataclass
class SocieteAccount:
    id: int
    fk_soc: int
    site: str
    date_creation: int
    tms: int
    key_account: str | None = None
    site_account: str | None = None
    status: int = 0
    login: str = ""


@dataclass
class Product:
    id: int
    ref: str
    label: str
    date_creation: int
    type: int = 0
    price: Decimal = ZERO
    price_base_type: str = "HT"
    tva_tx: Decimal = ZERO
    tosell: int = 1
    tobuy: int = 0
    description: str | None = None
    ref_ext: str | None = None
    duration: str = ""
    weight: Decimal | None = None
    weight_units: int | None = None
    note_public: str | None = None
    note_private: str | None = None


@dataclass
class Line:
    """A document line (order, invoice). Totals are computed once, at creation, like Dolibarr.

    `multicurrency_subprice` and `multicurrency_totals` (ht, tva, ttc) are the same line in the
    document's currency; None means the company currency: the company amounts."""

    id: int
    fk_product: int | None
    product_type: int
    desc: str
    qty: Decimal
    subprice: Decimal
    tva_tx: Decimal
    remise_percent: Decimal
    total_ht: Decimal
    total_tva: Decimal
    total_ttc: Decimal
    date_start: int | None = None
    date_end: int | None = None
    rang: int = 0
    multicurrency_subprice: Decimal | None = None
    multicurrency_totals: tuple[Decimal, Decimal, Decimal] | None = None

    @property
    def document_currency_subprice(self) -> Decimal:
        return self.subprice if self.multicurrency_subprice is None else self.multicurrency_subprice

    @property
    def document_currency_totals(self) -> tuple[Decimal, Decimal, Decimal]:
        return self.multicurrency_totals or (self.total_ht, self.total_tva, self.total_ttc)


@dataclass
class Order(Tracked):
    id: int
    socid: int
    date: int
    date_creation: int
    lines: list[Line] = field(default_factory=list)
    ref: str | None = None
    ref_ext: str | None = None
    ref_client: str | None = None
    statut: int = 0
    billed: int = 0
    date_validation: int | None = None
    date_modification: int | None = None
    mode_reglement_id: int | None = None
    cond_reglement_id: int | None = None
    note_private: str | None = None
    note_public: str = ""

    @property
    def display_ref(self) -> str:
        return self.ref or f"(PROV{self.id})"


@dataclass
class Invoice(Tracked):
    id: int
    socid: int
    type: int
    date: int
    date_creation: int
    lines: list[Line] = field(default_factory=list)
    ref: str | None = None
    ref_ext: str | None = None
    ref_client: str | None = None
    statut: int = 0
    paye: int = 0
    close_code: str | None = None
    close_note: str | None = None
    date_validation: int | None = None
    date_modification: int | None = None
    mode_reglement_id: int | None = None
    cond_reglement_id: int | None = None
    fk_account: int | None = None
    note_private: str | None = None
    note_public: str | None = None
    fk_facture_source: int | None = None
    last_main_doc: str | None = None
    updated_by_put: bool = False
    # The document currency (Multicurrency module): None = the company currency, rate 1.
    multicurrency_code: str | None = None
    fk_multicurrency: int = 0
    multicurrency_tx: Decimal = ONE

    @property
    def display_ref(self) -> str:
        return self.ref or f"(PROV{self.id})"

    @property
    def is_credit_note(self) -> bool:
        return self.type == 2

    @property
    def currency(self) -> str:
        return self.multicurrency_code or company_currency()


@dataclass
class Payment(Tracked):
    """llx_paiement, with its llx_paiement_facture rows: `allocations` (invoice id, amount in
    the company currency) and `multicurrency_allocations` (invoice id, amount in the invoice's
    currency; an invoice missing from it was paid at rate 1: the same amount)."""

    id: int
    ref: str
    datepaye: int
    amount: Decimal
    type_id: int
    fk_account: int
    allocations: list[tuple[int, Decimal]]
    ref_ext: str = ""
    num_payment: str = ""
    note_private: str | None = None
    bank_line_id: int | None = None
    multicurrency_amount: Decimal | None = None
    multicurrency_allocations: dict[int, Decimal] = field(default_factory=dict)

    @property
    def document_currency_amount(self) -> Decimal:
        return self.amount if self.multicurrency_amount is None else self.multicurrency_amount


@dataclass
class BankAccount:
    id: int
    ref: str
    label: str
    type: int
    currency_code: str
    country_id: int
    date_creation: int
    bank: str = ""
    comment: str = ""
    rappro: int = 1
    clos: int = 0
    min_allowed: Decimal = ZERO
    min_desired: Decimal = ZERO


@dataclass
class BankLink:
    url_id: int
    url: str
    label: str
    type: str


@dataclass
class BankLine(Tracked):
    id: int
    fk_account: int
    datec: int
    dateo: int
    datev: int
    amount: Decimal
    fk_type: str
    label: str
    num_chq: str | None = None
    num_releve: str | None = None
    emetteur: str | None = None
    links: list[BankLink] = field(default_factory=list)


@dataclass
class ShipmentLine:
    id: int
    origin_line_id: int
    qty: Decimal


@dataclass
class Shipment(Tracked):
    id: int
    socid: int
    origin_id: int
    date_creation: int
    lines: list[ShipmentLine] = field(default_factory=list)
    ref: str | None = None
    ref_ext: str | None = None
    ref_customer: str | None = None
    tracking_number: str | None = None
    date_delivery: int | None = None
    date_valid: int | None = None
    date_shipping: int | None = None
    statut: int = 0

    @property
    def display_ref(self) -> str:
        return self.ref or f"(PROV{self.id})"


@dataclass
class ElementLink:
    """llx_element_element: which order an invoice or shipment came from."""

    id: int
    source_type: str
    source_id: int
    target_type: str
    target_id: int


@dataclass
class StoredFile:
    relpath: str
    content: bytes
    date_c: int
    date_m: int
    generated: bool
    src_object_type: str | None = None
    src_object_id: int | None = None
    ecm_id: int = 0


# -- numbering -------------------------------------------------------------------------------


class DuplicateNumber(Exception):
    """Another request inserted the number this one read: the recorded unique-key failure."""

    def __init__(self, number: str) -> None:
        super().__init__(number)
        self.number = number


_SEQUENCE = re.compile(r"^(?P<prefix>[A-Z]+)(?P<yymm>\d{4})-(?P<seq>\d+)$")


class Numbering:
    """Dolibarr's `terre`/`monkey` masks: PREFIX + yymm of the document date + a counter that is
    not reset each month (FA2611-0325 follows FA2611-0324 whatever the month of the last one).
    The next number is MAX(existing) + 1, read from the table: nothing reserves it."""

    def __init__(self) -> None:
        self._max: dict[str, int] = {}
        self._used: dict[str, set[str]] = {}

    def next(self, table: str, prefix: str, timestamp: int, width: int) -> str:
        sequence = self._max.get(f"{table}:{prefix}", 0) + 1
        return f"{prefix}{yymm(timestamp)}-{sequence:0{width}d}"

    def taken(self, table: str, number: str) -> bool:
        return number in self._used.get(table, set())

    def record(self, table: str, number: str) -> None:
        self._used.setdefault(table, set()).add(number)
        match = _SEQUENCE.match(number)
        if match:
            key = f"{table}:{match['prefix']}"
            self._max[key] = max(self._max.get(key, 0), int(match["seq"]))

    def forget(self, table: str, number: str) -> None:
        self._used.get(table, set()).discard(number)


# -- totals ----------------------------------------------------------------------------------


def line_totals(
    *, qty: Decimal, subprice: Decimal, remise_percent: Decimal, tva_tx: Decimal
) -> tuple[Decimal, Decimal, Decimal]:
    """Dolibarr's calcul_price_total for one line (README "How totals are computed"):
    net = qty x unit price less the discount, rounded half-up to the cent; VAT rounded per line
    on that net; gross = net + VAT. Document totals are the sums of the lines."""
    net = round_cents(qty * subprice * (1 - remise_percent / 100))
    vat = round_cents(net * tva_tx / 100)
    return net, vat, net + vat


def document_totals(lines: list[Line]) -> tuple[Decimal, Decimal, Decimal]:
    return (
        sum((line.total_ht for line in lines), ZERO),
        sum((line.total_tva for line in lines), ZERO),
        sum((line.total_ttc for line in lines), ZERO),
    )


def document_currency_totals(lines: list[Line]) -> tuple[Decimal, Decimal, Decimal]:
    """`multicurrency_total_ht/_tva/_ttc`: the sums of the lines' document-currency totals."""
    totals = [line.document_currency_totals for line in lines]
    return (
        sum((ht for ht, _, _ in totals), ZERO),
        sum((tva for _, tva, _ in totals), ZERO),
        sum((ttc for _, _, ttc in totals), ZERO),
    )


# -- the database ----------------------------------------------------------------------------


class Store:
    """All rows of one sandbox. Callers hold `lock` while they read or write any of it.

    `multicurrency`: None when the Multicurrency module is off; else the rates (code -> units
    per unit of the company currency) that `seed` puts in llx_multicurrency."""

    def __init__(self, *, multicurrency: Mapping[str, Decimal] | None = None) -> None:
        self.lock = threading.RLock()
        self.multicurrency_rates = None if multicurrency is None else checked_rates(multicurrency)
        self.clear()

    @property
    def multicurrency_enabled(self) -> bool:
        return self.multicurrency_rates is not None

    def clear(self) -> None:
        self.thirdparties: Table[Thirdparty] = Table("ref_ext", "email")
        self.accounts: dict[int, SocieteAccount] = {}
        self.products: dict[int, Product] = {}
        self.orders: Table[Order] = Table("ref_ext")
        self.invoices: Table[Invoice] = Table("ref_ext")
        self.payments: Table[Payment] = Table("ref_ext", "num_payment")
        self.bank_accounts: dict[int, BankAccount] = {}
        self.bank_lines: Table[BankLine] = Table("num_chq")
        self.shipments: Table[Shipment] = Table("ref_ext")
        self.links: dict[int, ElementLink] = {}
        self.files: dict[str, StoredFile] = {}
        # llx_multicurrency by upper-case code; empty while the module is off.
        self.currencies: dict[str, Currency] = {}
        self.numbering = Numbering()
        self._auto_increment: dict[str, int] = {}
        self._payments_by_invoice: dict[int, list[tuple[Payment, Decimal]]] = {}
        self._credit_notes: dict[int, set[int]] = {}
        self._links_by_object: dict[tuple[str, int], list[ElementLink]] = {}

    def next_id(self, table: str) -> int:
        """AUTO_INCREMENT: an id is consumed even when the INSERT then fails (07 → order 2)."""
        value = self._auto_increment.get(table, 0) + 1
        self._auto_increment[table] = value
        return value

    # -- writes that keep the indexes right ----------------------------------------------
    def add_invoice(self, invoice: Invoice) -> None:
        self.invoices[invoice.id] = invoice
        if invoice.is_credit_note and invoice.fk_facture_source is not None:
            self._credit_notes.setdefault(invoice.fk_facture_source, set()).add(invoice.id)

    def remove_invoice(self, invoice: Invoice) -> None:
        del self.invoices[invoice.id]
        self._credit_notes.get(invoice.fk_facture_source or 0, set()).discard(invoice.id)
        for link in self._links_by_object.pop(("facture", invoice.id), []):
            self.links.pop(link.id, None)
            other = (
                (link.source_type, link.source_id)
                if link.target_type == "facture"
                else (link.target_type, link.target_id)
            )
            self._links_by_object[other] = [
                item for item in self._links_by_object.get(other, []) if item.id != link.id
            ]

    def add_payment(self, payment: Payment) -> None:
        self.payments[payment.id] = payment
        for invoice_id, amount in payment.allocations:
            self._payments_by_invoice.setdefault(invoice_id, []).append((payment, amount))

    def add_link(self, source_type: str, source_id: int, target_type: str, target_id: int) -> None:
        link_id = self.next_id("element_element")
        link = ElementLink(link_id, source_type, source_id, target_type, target_id)
        self.links[link_id] = link
        self._links_by_object.setdefault((source_type, source_id), []).append(link)
        self._links_by_object.setdefault((target_type, target_id), []).append(link)

    # -- derived values --------------------------------------------------------------------
    def invoice_totalpaid(self, invoice_id: int) -> Decimal:
        return sum((amount for _, amount in self._payments_by_invoice.get(invoice_id, [])), ZERO)

    def invoice_remain(self, invoice: Invoice) -> Decimal:
        """getRemainToPay: total_ttc - payments (credit notes applied as discounts and deposits
        would count too; this API never creates them, so totalcreditnotes stays null)."""
        return round_cents(document_totals(invoice.lines)[2] - self.invoice_totalpaid(invoice.id))

    def invoice_totalpaid_in_document_currency(self, invoice_id: int) -> Decimal:
        """getSommePaiement(1): the sum of llx_paiement_facture.multicurrency_amount."""
        return sum(
            (
                payment.multicurrency_allocations.get(invoice_id, amount)
                for payment, amount in self._payments_by_invoice.get(invoice_id, [])
            ),
            ZERO,
        )

    def invoice_remain_in_document_currency(self, invoice: Invoice) -> Decimal:
        """What addPaymentDistributed checks a `multicurrency_amount` against."""
        return round_cents(
            document_currency_totals(invoice.lines)[2]
            - self.invoice_totalpaid_in_document_currency(invoice.id)
        )

    def invoice_payments(self, invoice_id: int) -> list[tuple[Payment, Decimal]]:
        return sorted(
            self._payments_by_invoice.get(invoice_id, []),
            key=lambda row: (row[0].datepaye, row[0].id),
        )

    def credit_note_ids(self, invoice_id: int) -> list[int]:
        return sorted(self._credit_notes.get(invoice_id, ()))

    def links_of(self, kind: str, object_id: int) -> dict[str, dict[str, str]]:
        """fetchObjectLinked as the API shows it: {other type: {link rowid: other id}}."""
        result: dict[str, dict[str, str]] = {}
        for link in self._links_by_object.get((kind, object_id), []):
            if link.source_type == kind and link.source_id == object_id:
                result.setdefault(link.target_type, {})[str(link.id)] = str(link.target_id)
            else:
                result.setdefault(link.source_type, {})[str(link.id)] = str(link.source_id)
        return result

    def bank_balance(self, account_id: int, *, until: int) -> Decimal:
        """Sum of the lines dated up to `until` (the real code leaves future operations out)."""
        return sum(
            (
                line.amount
                for line in self.bank_lines.values()
                if line.fk_account == account_id and line.dateo <= until
            ),
            ZERO,
        )

    # -- shared writes ---------------------------------------------------------------------
    def add_bank_line(
        self,
        *,
        account_id: int,
        when: int,
        amount: Decimal,
        fk_type: str,
        label: str,
        num_chq: str | None = None,
        num_releve: str | None = None,
        emetteur: str | None = None,
        datev: int | None = None,
    ) -> BankLine:
        line_id = self.next_id("bank")
        line = BankLine(
            id=line_id,
            fk_account=account_id,
            datec=now(),
            dateo=midnight(when),
            datev=midnight(datev if datev is not None else when),
            amount=amount,
            fk_type=fk_type,
            label=label,
            num_chq=num_chq,
            num_releve=num_releve,
            emetteur=emetteur,
        )
        self.bank_lines[line_id] = line
        return line

    def add_bank_account(self, **fields: Any) -> BankAccount:
        account_id = self.next_id("bank_account")
        account = BankAccount(id=account_id, date_creation=now(), **fields)
        self.bank_accounts[account_id] = account
        # Creating an account writes its (InitialBankBalance) line of type SOLD (README, 126).
        self.add_bank_line(
            account_id=account_id,
            when=account.date_creation,
            amount=ZERO,
            fk_type="SOLD",
            label="(InitialBankBalance)",
        )
        return account

    def seed(self, *, bank_account: bool) -> None:
        """A fresh sandbox: the dictionaries are constants; the Stripe bank account id 1 is the
        one the recorded instance created in exchange 13; the module's currencies, if it is
        on."""
        if self.multicurrency_rates is not None:
            self.currencies = currencies_for(self.multicurrency_rates, when=now())
        if bank_account:
            self.add_bank_account(
                ref="STRIPE",
                label="Stripe EUR",
                type=1,
                currency_code="EUR",
                country_id=dictionaries.FRANCE_ID,
                bank="Stripe Payments Europe",
                comment="Stripe balance (payouts to main bank)",
                rappro=1,
            )
