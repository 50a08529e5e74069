"""The Dolibarr REST client: the only code that speaks Dolibarr's HTTP API.

It hides what a real Dolibarr 23.0.0-beta does (recorded in ../shared/dolibarr/README.md and
`reconciliation/sandbox/contracts/dolibarr/exchanges/`; numbers in comments are exchange numbers):
string-typed numbers, Unix timestamps, the 404 of an empty thirdparty search, the 304 of "nothing
done", HTML refusals from the injection filter, and which calls are safe to repeat.

Failures become the project's own exceptions:

* `TransientError` — connection refused or lost, timeout, 429, 5xx. Calls that are safe to
  repeat (reads, and writes that are idempotent by nature: PUT updates, validate/close which
  answer 304 when already done, builddoc) are retried with exponential backoff first. Creations
  and payments are **never** repeated by the client: Dolibarr does not deduplicate (25, 46,
  187-190). When such a write may have been applied although no answer came back, the error
  carries `outcome_unknown=True`, and the caller must look the object up by `ref_ext` before
  deciding anything.
* `AuthenticationError` (401, and 403 other than the injection filter), `NotFoundError` (404),
  `PermanentError` (other 4xx, unreadable answers), `UnsafeFilterValue` (a search value that
  cannot be placed in a filter, refused before any request is sent).
* `CircuitOpenError` (a `TransientError`) — Dolibarr's circuit breaker (`resilience`) is open:
  no request was sent. Each attempt, retries included, asks the breaker first and tells it how
  it went, so a retry loop stops as soon as the breaker opens. A client made by `from_settings`
  uses the process's breaker; one built by hand has none unless given one.

The API key is sent in the `DOLAPIKEY` header of each request and appears nowhere else: not in
`repr`, not in exception messages (built from the status and Dolibarr's own message only), not in
logs (which name the endpoint template, never headers or query strings).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import random
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, urlsplit, urlunsplit

import requests
import urllib3.exceptions
from django.views.decorators.debug import sensitive_variables
from requests.adapters import HTTPAdapter

from reconciliation.config import setting_required
from reconciliation.connectors.dolibarr_types import (
    ActionResult,
    BankAccount,
    BankLine,
    BankTransfer,
    Document,
    DolibarrStatus,
    Invoice,
    InvoicePayment,
    InvoiceStatus,
    InvoiceType,
    MulticurrencyCurrency,
    NewLine,
    NewShipmentLine,
    Order,
    Page,
    Payment,
    PaymentType,
    Product,
    ProductType,
    Shipment,
    StripeLink,
    Thirdparty,
    as_decimal,
    as_int,
    as_str,
    lines_sequence,
    to_timestamp,
)
from reconciliation.connectors.sqlfilters import SqlFilter, any_of, equals
from reconciliation.errors import (
    AuthenticationError,
    CircuitOpenError,
    ConfigurationError,
    NotFoundError,
    PermanentError,
    RemoteError,
    TransientError,
    UnsafeFilterValue,
)
from reconciliation.money import format_dolibarr_amount, format_dolibarr_price, to_decimal

if TYPE_CHECKING:
    from reconciliation.resilience import Breaker

logger = logging.getLogger(__name__)

SYSTEM: Final = "dolibarr"

# Workers share one client per process; a handful of keep-alive connections is enough, and the
# server's CPU is the ceiling anyway (DESIGN §10: four parallel loops were no faster than two).
POOL_MAXSIZE: Final = 8

# A Retry-After longer than this is not waited for inside a call: the error goes back to the
# engine, which reschedules the record.
MAX_RETRY_AFTER_SECONDS: Final = 60.0

# The close codes Dolibarr defines for an invoice closed without (full) payment (README,
# "Invoice state routes"). The API does not check them, so the client does.
UNPAID_CLOSE_CODES: Final = frozenset(
    {"discount_vat", "badcustomer", "bankcharge", "withholdingtax", "other", "abandon", "replaced"}
)

# Path segments go through Dolibarr's injection filter, which refuses `: ; " ' < > ? ( ) { } $
# % #` in the path (171); Stripe ids and site names never need more than this.
_SAFE_PATH_SEGMENT = re.compile(r"^[A-Za-z0-9_.\-]+$")
_SAFE_DOCUMENT_REF = re.compile(r"^[A-Za-z0-9_.\-()]+$")

# Batched look-ups put this many `ref_ext` criteria in one sqlfilters value: Stripe ids are
# ~30 characters, so a chunk stays far below common URL limits (8 KB).
BATCH_REF_EXTS: Final = 40

# The invoice fields a sync needs to decide what to do next (state, totals, links).
INVOICE_STATE_PROPERTIES: Final = (
    "ref",
    "ref_ext",
    "type",
    "socid",
    "statut",
    "paye",
    "total_ht",
    "total_tva",
    "total_ttc",
    "close_code",
    "fk_facture_source",
    "multicurrency_code",
    "multicurrency_tx",
    "multicurrency_total_ttc",
)

_NOT_MODIFIED: Final = object()
_NO_BODY: Final = object()


class DolibarrClient:
    """Typed access to one Dolibarr instance. Thread-safe: workers of one process may share it.

    `call_counts` counts the HTTP requests sent, retries included, keyed by method and path
    template (`"POST /invoices/{id}/validate"`), so tests and benchmarks can check how many calls
    a piece of work costs.
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        session: requests.Session | None = None,
        connect_timeout: float = 3.05,
        read_timeout: float = 30,
        max_retries: int = 3,
        backoff_base: float = 1.0,
        breaker: Breaker | None = None,
    ) -> None:
        if not base_url:
            raise ConfigurationError("DOLIBARR_URL is not set; see .env.example")
        if not api_key:
            raise ConfigurationError("DOLIBARR_API_KEY is not set; see .env.example")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(
                "DOLIBARR_URL must be the API root, e.g. https://erp.example.org/api/index.php"
            )
        if max_retries < 0 or backoff_base < 0:
            raise ValueError("max_retries and backoff_base must not be negative")
        self._base_url = base_url.rstrip("/")
        # Shown in messages and repr: the URL without any user:password part or query.
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        self._display_url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self._api_key = api_key
        self._session = session if session is not None else _pooled_session()
        self._owns_session = session is None
        self._timeout = (connect_timeout, read_timeout)
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.breaker = breaker
        self.call_counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._payment_type_ids: dict[str, int] | None = None

    @classmethod
    def from_settings(
        cls, *, session: requests.Session | None = None, guarded: bool = True
    ) -> DolibarrClient:
        """A client configured from the environment (read now, never at import). A missing
        variable is one line: `DOLIBARR_URL is not set; see .env.example`. `guarded`: behind the
        process's Dolibarr circuit breaker (a diagnostic that must reach Dolibarr whatever the
        breaker says passes False)."""
        from django.conf import settings

        from reconciliation.resilience import breaker_for

        return cls(
            base_url=setting_required("DOLIBARR_URL"),
            api_key=setting_required("DOLIBARR_API_KEY"),
            session=session,
            connect_timeout=settings.DOLIBARR_CONNECT_TIMEOUT,
            read_timeout=settings.DOLIBARR_READ_TIMEOUT,
            max_retries=settings.DOLIBARR_MAX_RETRIES,
            breaker=breaker_for(SYSTEM) if guarded else None,
        )

    def __repr__(self) -> str:
        return f"DolibarrClient(base_url={self._display_url!r})"

    def close(self) -> None:
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> DolibarrClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def reset_call_counts(self) -> None:
        with self._lock:
            self.call_counts.clear()

    # -- health -------------------------------------------------------------------------------

    def status(self) -> DolibarrStatus:
        """`GET /status`: version and server clock; any valid key may call it (01)."""
        return DolibarrStatus.from_raw(_as_object(self._call("GET", "/status"), "status"))

    # -- thirdparties -------------------------------------------------------------------------

    def find_thirdparties(self, *, ref_ext: str) -> list[Thirdparty]:
        """Every thirdparty with this `ref_ext`, oldest first. Dolibarr does not deduplicate (25,
        26): more than one hit is a duplicate for a human to resolve, not something to pick from.
        """
        found = self._thirdparty_search(equals("t.ref_ext", ref_ext))
        return _exact_ref_ext(found, ref_ext)

    def find_thirdparties_by_email(self, *, email: str) -> list[Thirdparty]:
        """Thirdparties whose email equals this one (compared case-insensitively by the
        database). Searched through sqlfilters (18), not `GET /thirdparties/email/{email}`, which
        answers an empty object when two share the email (27) and an HTML 403 for an apostrophe
        in the path (171). An email holding a quote raises UnsafeFilterValue."""
        return self._thirdparty_search(equals("t.email", email))

    def find_thirdparties_by_ref_exts(
        self, *, ref_exts: Sequence[str]
    ) -> dict[str, list[Thirdparty]]:
        """Thirdparties for many `ref_ext`s at once (criteria joined with `or`), `BATCH_REF_EXTS`
        per request: the look-ups that guard a batch of creations cost one call, not one per
        object. Every asked ref_ext is a key; exact matches only."""
        found: dict[str, list[Thirdparty]] = {ref: [] for ref in ref_exts}
        for chunk in _chunks(list(found), BATCH_REF_EXTS):
            for row in self._thirdparty_search(any_of(*(equals("t.ref_ext", r) for r in chunk))):
                if row.ref_ext in found:
                    found[row.ref_ext].append(row)
        return found

    def get_thirdparty(self, *, thirdparty_id: int) -> Thirdparty:
        raw = self._call("GET", "/thirdparties/{id}", path={"id": thirdparty_id})
        return Thirdparty.from_raw(_as_object(raw, "thirdparty"))

    def create_thirdparty(
        self,
        *,
        name: str,
        ref_ext: str,
        email: str | None = None,
        address: str | None = None,
        zip: str | None = None,
        town: str | None = None,
        country_code: str | None = None,
        phone: str | None = None,
        tva_intra: str | None = None,
        idprof1: str | None = None,
        note_private: str | None = None,
        client: int = 1,
        code_client: str = "-1",
    ) -> int:
        """Create a customer and return its id. `code_client "-1"` asks Dolibarr for the next
        automatic code (15), which races under parallel creation (README, "Concurrency"): call
        this inside the numbered lane, after `find_thirdparties` found nothing. Never retried."""
        body = _without_none(
            {
                "name": name,
                "ref_ext": ref_ext,
                "email": email,
                "address": address,
                "zip": zip,
                "town": town,
                "country_code": country_code,
                "phone": phone,
                "tva_intra": tva_intra,
                "idprof1": idprof1,
                "note_private": note_private,
                "client": client,
                "code_client": code_client,
            }
        )
        return self._created_id(
            self._call("POST", "/thirdparties", body=body), "POST /thirdparties"
        )

    def update_thirdparty(self, *, thirdparty_id: int, changes: Mapping[str, Any]) -> Thirdparty:
        """Partial update: only the sent fields change (17). Safe to repeat, so retried."""
        raw = self._call(
            "PUT", "/thirdparties/{id}", path={"id": thirdparty_id}, body=dict(changes), retry=True
        )
        return Thirdparty.from_raw(_as_object(raw, "thirdparty"))

    def stripe_link(self, *, thirdparty_id: int) -> StripeLink | None:
        """The thirdparty's link to a Stripe customer, or None. Dolibarr answers 404 both when
        the thirdparty has no account and when it does not exist (114). The list route does not
        return `site_account` or `status` (102)."""
        try:
            rows = self._call(
                "GET",
                "/thirdparties/{id}/accounts",
                path={"id": thirdparty_id},
                params={"site": "stripe"},
            )
        except NotFoundError:
            return None
        links = [StripeLink.from_raw(row) for row in _as_list(rows, "accounts")]
        return next((link for link in links if link.site == "stripe"), None)

    def link_stripe_customer(
        self,
        *,
        thirdparty_id: int,
        customer_id: str,
        live: bool,
        site_account: str | None = None,
        replace: bool = False,
        known_unlinked: bool = False,
    ) -> ActionResult[StripeLink]:
        """Link a Stripe customer to the thirdparty (the link Dolibarr's Stripe module reads).

        A thirdparty holds **one** Stripe link: posting a second customer id silently replaces the
        first and wipes the fields not resent (105-107). So the current link is read first: the
        same customer id -> nothing done (`changed=False`); another one -> PermanentError unless
        `replace=True` (an organisation with two Stripe customers needs a human decision).
        `live` sets `status` 1 (live) or 0 (test), which the Stripe module filters on; not sending
        it stores 0 (101). `known_unlinked=True` skips that read when the caller has just
        created the thirdparty in this same attempt (it cannot hold a link yet)."""
        _check_path_segment(customer_id, "Stripe customer id")
        current = None if known_unlinked else self.stripe_link(thirdparty_id=thirdparty_id)
        if current is not None and current.customer_id == customer_id:
            return ActionResult(changed=False, value=current)
        if current is not None and not replace:
            raise PermanentError(
                f"thirdparty {thirdparty_id} is already linked to Stripe customer "
                f"{current.customer_id}; linking {customer_id} would replace that link",
                system=SYSTEM,
                endpoint="POST /thirdparties/{id}/accounts/{site}",
            )
        body = _without_none(
            {"key_account": customer_id, "site_account": site_account, "status": 1 if live else 0}
        )
        # Posting the same body twice leaves the same single row (replace semantics): repeatable.
        raw = self._call(
            "POST",
            "/thirdparties/{id}/accounts/{site}",
            path={"id": thirdparty_id, "site": "stripe"},
            body=body,
            retry=True,
        )
        return ActionResult(
            changed=True, value=StripeLink.from_raw(_as_object(raw, "Stripe account"))
        )

    def find_thirdparty_by_stripe_customer(self, *, customer_id: str) -> Thirdparty | None:
        """The thirdparty linked to this Stripe customer, or None. Dolibarr answers the same 404
        when no thirdparty and when **several** hold the link (109, 112): after a None, a search
        by `ref_ext` tells the two apart."""
        _check_path_segment(customer_id, "Stripe customer id")
        try:
            raw = self._call(
                "GET",
                "/thirdparties/accounts/{site}/{key}",
                path={"site": "stripe", "key": customer_id},
            )
        except NotFoundError:
            return None
        return Thirdparty.from_raw(_as_object(raw, "thirdparty"))

    def merge_thirdparties(self, *, keep_id: int, merge_id: int) -> Thirdparty:
        """Merge thirdparty `merge_id` into `keep_id` (`PUT /thirdparties/{id}/merge/{idtodelete}`):
        Dolibarr moves its invoices, orders, payments and Stripe links to the kept one, keeps the
        kept one's values where both have one (notes are joined), deletes the other and answers
        the kept thirdparty. Never retried: a merge that went through answers 404 when sent
        again (the other is gone), so a caller unsure of the outcome looks `merge_id` up."""
        if keep_id == merge_id:
            raise ValueError("a thirdparty cannot be merged into itself")
        raw = self._call(
            "PUT",
            "/thirdparties/{id}/merge/{idtodelete}",
            path={"id": keep_id, "idtodelete": merge_id},
            retry=False,
        )
        return Thirdparty.from_raw(_as_object(raw, "thirdparty"))

    # -- products -----------------------------------------------------------------------------

    def find_products(self, *, ref: str) -> list[Product]:
        """Products with this ref (unique in Dolibarr: a second create is a 500, 32)."""
        rows = self._call("GET", "/products", params={"sqlfilters": equals("t.ref", ref)})
        return [Product.from_raw(row) for row in _as_list(rows, "products")]

    def get_product(self, *, product_id: int) -> Product:
        raw = self._call("GET", "/products/{id}", path={"id": product_id})
        return Product.from_raw(_as_object(raw, "product"))

    def create_product(
        self,
        *,
        ref: str,
        label: str,
        type: ProductType,
        price: Decimal,
        tva_tx: Decimal,
        price_base_type: str = "HT",
        description: str | None = None,
        ref_ext: str | None = None,
        on_sale: bool = True,
    ) -> int:
        """Create a product (`type` 0) or service (1) with a net price (29, 31). Never retried."""
        body = _without_none(
            {
                "ref": ref,
                "label": label,
                "type": int(type),
                "price": _price(price),
                "price_base_type": price_base_type,
                "tva_tx": to_decimal(tva_tx),
                "status": 1 if on_sale else 0,
                "description": description,
                "ref_ext": ref_ext,
            }
        )
        return self._created_id(self._call("POST", "/products", body=body), "POST /products")

    # -- orders -------------------------------------------------------------------------------

    def create_order(
        self,
        *,
        thirdparty_id: int,
        date: datetime | date,
        lines: Sequence[NewLine],
        ref_ext: str,
        ref_client: str | None = None,
        mode_reglement_id: int | None = None,
        cond_reglement_id: int | None = None,
        note_private: str | None = None,
        note_public: str | None = None,
    ) -> int:
        """Create a draft order with its lines (33). Never retried."""
        body = _without_none(
            {
                "socid": thirdparty_id,
                "date": to_timestamp(date),
                "ref_ext": ref_ext,
                "ref_client": ref_client,
                "mode_reglement_id": mode_reglement_id,
                "cond_reglement_id": cond_reglement_id,
                "note_private": note_private,
                "note_public": note_public,
                "lines": [_line_body(line) for line in lines_sequence(lines)],
            }
        )
        return self._created_id(self._call("POST", "/orders", body=body), "POST /orders")

    def get_order(self, *, order_id: int) -> Order:
        raw = self._call("GET", "/orders/{id}", path={"id": order_id})
        return Order.from_raw(_as_object(raw, "order"))

    def find_orders(self, *, ref_ext: str) -> list[Order]:
        """Orders with this `ref_ext`, oldest first. `GET /orders/ref_ext/{x}` is broken in this
        build (400 "No order with id=0", 38), so this searches with sqlfilters (39)."""
        rows = self._call("GET", "/orders", params=_by_ref_ext(ref_ext))
        return _exact_ref_ext([Order.from_raw(row) for row in _as_list(rows, "orders")], ref_ext)

    def validate_order(self, *, order_id: int) -> ActionResult[Order]:
        """Give the draft its definitive number (35); 304 when already validated (36)."""
        return self._order_action(order_id, "/orders/{id}/validate", {"notrigger": 0})

    def set_order_invoiced(self, *, order_id: int) -> ActionResult[Order]:
        """Mark the order billed (44); nothing does it automatically without the workflow
        module."""
        return self._order_action(order_id, "/orders/{id}/setinvoiced", _NO_BODY)

    def close_order(self, *, order_id: int) -> ActionResult[Order]:
        """Close the order; 304 when closing its shipment already closed it (89)."""
        return self._order_action(order_id, "/orders/{id}/close", {"notrigger": 0})

    def _order_action(self, order_id: int, template: str, body: Any) -> ActionResult[Order]:
        raw = self._call("POST", template, path={"id": order_id}, body=body, retry=True)
        if raw is _NOT_MODIFIED:
            return ActionResult(changed=False)
        return ActionResult(changed=True, value=Order.from_raw(_as_object(raw, "order")))

    # -- invoices -----------------------------------------------------------------------------

    def find_invoices(self, *, ref_ext: str) -> list[Invoice]:
        """Invoices (and credit notes) with this `ref_ext`, oldest first. A list, because
        `ref_ext` is not unique (46, 47): two hits are a duplicate to report, not to pick from.
        `GET /invoices/ref_ext/{x}` is broken in this build (61)."""
        rows = self._call("GET", "/invoices", params=_by_ref_ext(ref_ext))
        invoices = [Invoice.from_raw(row) for row in _as_list(rows, "invoices")]
        return _exact_ref_ext(invoices, ref_ext)

    def find_invoices_by_ref_exts(
        self, *, ref_exts: Sequence[str], properties: Sequence[str] = INVOICE_STATE_PROPERTIES
    ) -> dict[str, list[Invoice]]:
        """Invoices and credit notes for many `ref_ext`s at once (`or` criteria, only the state
        fields by default: full objects weigh ~10 KB each, 167). Every asked ref_ext is a key;
        exact matches only, oldest first."""
        found: dict[str, list[Invoice]] = {ref: [] for ref in ref_exts}
        for chunk in _chunks(list(found), BATCH_REF_EXTS):
            rows = self.iter_invoices(
                filters=any_of(*(equals("t.ref_ext", r) for r in chunk)),
                properties=properties,
                page_size=100,
            )
            for row in rows:
                if row.ref_ext in found:
                    found[row.ref_ext].append(row)
        return found

    def list_invoices(
        self,
        *,
        filters: SqlFilter | None = None,
        status: str | None = None,
        thirdparty_ids: Sequence[int] = (),
        properties: Sequence[str] = (),
        limit: int = 100,
        page: int = 0,
        sort_field: str = "t.rowid",
        sort_order: str = "ASC",
    ) -> Page[Invoice]:
        """One page of invoices for bulk reads (90, 164-166).

        Pass `properties` to keep the answer small (three full invoices weigh ~29 KB, 167);
        fields not asked for come back None, and `id` is always asked for. `status` is Dolibarr's
        list filter (`draft`, `unpaid`, `paid`, `cancelled`); note that `paid` means "closed"
        and includes invoices closed without payment (193)."""
        if status not in (None, "draft", "unpaid", "paid", "cancelled"):
            raise ValueError(f"unknown invoice list status {status!r}")
        if sort_order not in ("ASC", "DESC"):
            raise ValueError("sort_order must be ASC or DESC")
        params: dict[str, Any] = {
            "sortfield": sort_field,
            "sortorder": sort_order,
            "limit": limit,
            "page": page,
            "pagination_data": "true",
        }
        if filters is not None:
            params["sqlfilters"] = filters
        if status is not None:
            params["status"] = status
        if thirdparty_ids:
            params["thirdparty_ids"] = ",".join(
                str(_int_id(i, "thirdparty id")) for i in thirdparty_ids
            )
        if properties:
            params["properties"] = ",".join(dict.fromkeys(["id", *properties]))
        raw = self._call("GET", "/invoices", params=params)
        if not isinstance(raw, Mapping) or not isinstance(raw.get("data"), list):
            raise self._unexpected("GET /invoices", "a {data, pagination} object")
        pagination = raw.get("pagination") or {}
        return Page(
            items=tuple(Invoice.from_raw(row) for row in raw["data"]),
            total=as_int(pagination.get("total")) or 0,
            page=as_int(pagination.get("page")) or page,
            page_count=as_int(pagination.get("page_count")) or 0,
            limit=as_int(pagination.get("limit")) or limit,
        )

    def iter_invoices(
        self,
        *,
        filters: SqlFilter | None = None,
        status: str | None = None,
        thirdparty_ids: Sequence[int] = (),
        properties: Sequence[str] = (),
        page_size: int = 100,
    ) -> Iterator[Invoice]:
        """Every invoice matching, page after page in id order (one call per page)."""
        page = 0
        while True:
            result = self.list_invoices(
                filters=filters,
                status=status,
                thirdparty_ids=thirdparty_ids,
                properties=properties,
                limit=page_size,
                page=page,
            )
            yield from result.items
            if result.is_last:
                return
            page += 1

    def get_invoice(self, *, invoice_id: int, properties: Sequence[str] = ()) -> Invoice:
        params = (
            {"properties": ",".join(dict.fromkeys(["id", *properties]))} if properties else None
        )
        raw = self._call("GET", "/invoices/{id}", path={"id": invoice_id}, params=params)
        return Invoice.from_raw(_as_object(raw, "invoice"))

    def create_invoice(
        self,
        *,
        thirdparty_id: int,
        lines: Sequence[NewLine],
        ref_ext: str,
        date: datetime | date | None = None,
        ref_client: str | None = None,
        mode_reglement_id: int | None = None,
        cond_reglement_id: int | None = None,
        bank_account_id: int | None = None,
        note_private: str | None = None,
        note_public: str | None = None,
        multicurrency_code: str | None = None,
    ) -> int:
        """Create a draft standard invoice with its lines and return its id (45). Never retried:
        a second POST with the same `ref_ext` creates a second invoice (46).

        With `multicurrency_code` (Multicurrency module, source-read, not recorded) the document
        is in that currency: the lines' `subprice` are sent as `multicurrency_subprice` and
        Dolibarr derives the company-currency figures with its own rate for the currency. A
        code the module does not know is silently replaced by the company currency, rate 1:
        read the draft back and check `multicurrency_code`."""
        return self._create_invoice_document(
            invoice_type=InvoiceType.STANDARD,
            thirdparty_id=thirdparty_id,
            lines=lines,
            ref_ext=ref_ext,
            date=date,
            ref_client=ref_client,
            mode_reglement_id=mode_reglement_id,
            cond_reglement_id=cond_reglement_id,
            bank_account_id=bank_account_id,
            note_private=note_private,
            note_public=note_public,
            source_invoice_id=None,
            multicurrency_code=multicurrency_code,
        )

    def create_credit_note(
        self,
        *,
        thirdparty_id: int,
        source_invoice_id: int,
        lines: Sequence[NewLine],
        ref_ext: str,
        date: datetime | date | None = None,
        mode_reglement_id: int | None = None,
        bank_account_id: int | None = None,
        note_private: str | None = None,
        multicurrency_code: str | None = None,
    ) -> int:
        """Create a draft credit note against `source_invoice_id` (62). Unit prices are given
        **positive**; Dolibarr stores them negative (total_ttc "-27.00000000", 63). A negative
        price here would be flipped to a positive credit note, so it is refused. Never retried."""
        lines = lines_sequence(lines)
        if any(line.subprice < 0 for line in lines):
            raise ValueError("credit note prices are sent positive; Dolibarr makes them negative")
        return self._create_invoice_document(
            invoice_type=InvoiceType.CREDIT_NOTE,
            thirdparty_id=thirdparty_id,
            lines=lines,
            ref_ext=ref_ext,
            date=date,
            ref_client=None,
            mode_reglement_id=mode_reglement_id,
            cond_reglement_id=None,
            bank_account_id=bank_account_id,
            note_private=note_private,
            note_public=None,
            source_invoice_id=source_invoice_id,
            multicurrency_code=multicurrency_code,
        )

    def _create_invoice_document(
        self,
        *,
        invoice_type: InvoiceType,
        thirdparty_id: int,
        lines: Sequence[NewLine],
        ref_ext: str,
        date: datetime | date | None,
        ref_client: str | None,
        mode_reglement_id: int | None,
        cond_reglement_id: int | None,
        bank_account_id: int | None,
        note_private: str | None,
        note_public: str | None,
        source_invoice_id: int | None,
        multicurrency_code: str | None,
    ) -> int:
        lines = lines_sequence(lines)
        if not lines:
            # Creation would succeed, validation then fails with a 500 (149, 150).
            raise ValueError("an invoice needs at least one line")
        body = _without_none(
            {
                "socid": thirdparty_id,
                "type": int(invoice_type),
                "fk_facture_source": source_invoice_id,
                "date": to_timestamp(date) if date is not None else None,
                "ref_ext": ref_ext,
                "ref_client": ref_client,
                "mode_reglement_id": mode_reglement_id,
                "cond_reglement_id": cond_reglement_id,
                "fk_account": bank_account_id,
                "note_private": note_private,
                "note_public": note_public,
                "multicurrency_code": multicurrency_code,
                "lines": [
                    _line_body(line, in_document_currency=multicurrency_code is not None)
                    for line in lines
                ],
            }
        )
        return self._created_id(self._call("POST", "/invoices", body=body), "POST /invoices")

    def create_invoice_from_order(self, *, order_id: int) -> Invoice:
        """A draft invoice copying the order's lines and linked to it (41). It does **not** copy
        the order's `ref_ext`: set it with `update_invoice` (42). The answer is the in-memory
        object (real JSON numbers, undated lines). Never retried."""
        raw = self._call("POST", "/invoices/createfromorder/{id}", path={"id": order_id})
        return Invoice.from_raw(_as_object(raw, "invoice"))

    def update_invoice(self, *, invoice_id: int, changes: Mapping[str, Any]) -> Invoice:
        """Partial update of a draft's header fields, e.g. `{"ref_ext": ...}` (42). Retried."""
        raw = self._call(
            "PUT", "/invoices/{id}", path={"id": invoice_id}, body=dict(changes), retry=True
        )
        return Invoice.from_raw(_as_object(raw, "invoice"))

    def validate_invoice(self, *, invoice_id: int) -> ActionResult[Invoice]:
        """Give the draft its definitive number (`FA…`, credit notes `AV…`) (43, 49, 63).

        Validate only once Dolibarr's `total_ttc` equals the source total: a validated invoice
        cannot be deleted. Numbering races under parallel validation (500 duplicate key, 174-177;
        a retry then succeeds, 178): call it inside the numbered lane. Repeating it is harmless
        (304 = already validated), so transient failures are retried."""
        raw = self._call(
            "POST",
            "/invoices/{id}/validate",
            path={"id": invoice_id},
            body={"notrigger": 0},
            retry=True,
        )
        if raw is _NOT_MODIFIED:
            return ActionResult(changed=False)
        return ActionResult(changed=True, value=Invoice.from_raw(_as_object(raw, "invoice")))

    def close_zero_total_invoice(self, *, invoice_id: int) -> ActionResult[Invoice]:
        """Mark a validated **zero-total** invoice paid — and refuse any other invoice.

        The trap: `POST /invoices/{id}/settopaid` with an empty close code marks *any* invoice
        paid, even a 24.00 one with no payment at all (146, 147), and even a draft (source). A
        zero-total invoice, on the other hand, stays unpaid after validation until this is called
        (131-134). So the invoice is read first and refused (PermanentError) unless it is
        validated and its `total_ttc` is exactly 0. 304 when already closed (145)."""
        invoice = self.get_invoice(
            invoice_id=invoice_id, properties=("ref", "statut", "total_ttc", "paye", "type")
        )
        if invoice.total_ttc is None or invoice.total_ttc != 0:
            raise PermanentError(
                f"invoice {invoice_id} totals {invoice.total_ttc}: only a zero-total invoice "
                "may be marked paid without a payment",
                system=SYSTEM,
                endpoint="POST /invoices/{id}/settopaid",
            )
        if invoice.status == InvoiceStatus.DRAFT:
            raise PermanentError(
                f"invoice {invoice_id} is a draft: validate it before closing it",
                system=SYSTEM,
                endpoint="POST /invoices/{id}/settopaid",
            )
        return self._settopaid(invoice_id, {"close_code": "", "close_note": ""})

    def close_paid_in_document_currency(
        self, *, invoice_id: int, paid: Decimal, close_note: str
    ) -> ActionResult[Invoice]:
        """Mark paid a multicurrency invoice whose payments cover its total **in its own
        currency** but leave a rounding remainder in the company currency.

        Dolibarr closes an invoice on payment only when the company-currency remain is 0; each
        payment is converted with the invoice's rate and rounded, each line was too, so a
        foreign invoice paid in full can stay open by a cent (source-read, not recorded). The
        invoice is read first and the call refused (PermanentError) unless it is validated and
        unpaid, `paid` equals its `multicurrency_total_ttc` exactly, and what remains in the
        company currency is under 1 % of its total — a conversion remainder, not a missing
        payment. 304 when already closed."""
        invoice = self.get_invoice(
            invoice_id=invoice_id,
            properties=(
                "ref",
                "statut",
                "paye",
                "type",
                "total_ttc",
                "totalpaid",
                "remaintopay",
                "multicurrency_code",
                "multicurrency_total_ttc",
            ),
        )
        endpoint = "POST /invoices/{id}/settopaid"
        if invoice.status != InvoiceStatus.VALIDATED:
            raise PermanentError(
                f"invoice {invoice_id} is not a validated invoice (status {invoice.status})",
                system=SYSTEM,
                endpoint=endpoint,
            )
        total = invoice.multicurrency_total_ttc
        if total is None or abs(to_decimal(paid)) != abs(total):
            raise PermanentError(
                f"invoice {invoice_id} totals {total} {invoice.multicurrency_code}, "
                f"payments cover {paid}: it is not paid in full in its currency",
                system=SYSTEM,
                endpoint=endpoint,
            )
        remain = abs(invoice.remain_to_pay or Decimal(0))
        company_total = abs(invoice.total_ttc or Decimal(0))
        if remain * 100 >= company_total and remain != 0:
            raise PermanentError(
                f"invoice {invoice_id} still has {remain} to pay in the company currency: "
                "more than a conversion remainder",
                system=SYSTEM,
                endpoint=endpoint,
            )
        return self._settopaid(invoice_id, {"close_code": "", "close_note": close_note})

    def close_invoice_unpaid(
        self, *, invoice_id: int, close_code: str, close_note: str
    ) -> ActionResult[Invoice]:
        """Close an invoice that will not be paid (Stripe void / uncollectible): `statut 2, paye
        0` with the reason kept (135-138). `close_code` must be one of Dolibarr's codes; the empty
        code, which would mark the invoice *paid* (146), is refused. 304 when already closed."""
        if close_code not in UNPAID_CLOSE_CODES:
            raise ValueError(f"close_code must be one of {sorted(UNPAID_CLOSE_CODES)}")
        return self._settopaid(invoice_id, {"close_code": close_code, "close_note": close_note})

    def _settopaid(self, invoice_id: int, body: dict[str, str]) -> ActionResult[Invoice]:
        raw = self._call(
            "POST", "/invoices/{id}/settopaid", path={"id": invoice_id}, body=body, retry=True
        )
        if raw is _NOT_MODIFIED:
            return ActionResult(changed=False)
        return ActionResult(changed=True, value=Invoice.from_raw(_as_object(raw, "invoice")))

    def find_invoice_by_ref(self, *, ref: str) -> Invoice | None:
        """The invoice or credit note numbered `ref` (`FA2611-0001`, `AV2611-0001`), or None.
        A list search, because `GET /invoices/ref/{ref}` fails in this build like its ref_ext
        twin (61). Refs are unique (`uk_facture_ref`), but the collation ignores case and
        trailing spaces, so only an exact match counts. A draft's `(PROVn)` cannot be searched
        (UnsafeFilterValue): drafts have no number yet."""
        params = {
            "sqlfilters": equals("t.ref", ref),
            "sortfield": "t.rowid",
            "sortorder": "ASC",
            "limit": 5,
        }
        rows = self._call("GET", "/invoices", params=params)
        invoices = [Invoice.from_raw(row) for row in _as_list(rows, "invoices")]
        return next((invoice for invoice in invoices if invoice.ref == ref), None)

    # -- payments -----------------------------------------------------------------------------

    def create_payment(
        self,
        *,
        amounts: Mapping[int, Decimal],
        date: datetime | date,
        payment_type_id: int,
        bank_account_id: int,
        ref_ext: str,
        num_payment: str | None = None,
        comment: str | None = None,
        currency: str = "EUR",
        close_paid_invoices: bool = True,
        in_document_currency: bool = False,
    ) -> int:
        """Record one payment over one or more invoices (`{invoice_id: amount}`) and return its
        id, through `POST /invoices/paymentsdistributed` — the only payment route that stores
        `ref_ext` and takes an exact amount (55, 160, 161).

        Amounts are exact, positive, to the currency's minor unit, sent as strings ("100.00").
        On a credit note the refund is given positive and stored negative (72-74); the other
        route records the wrong sign (64-66). Over-payment is refused by Dolibarr (400, 57).

        Never retried, and not guarded by Dolibarr: concurrent identical calls paid one invoice
        three times (187-192), and a **draft** can be paid (153-155). Call it inside the
        numbered lane, after `find_payments(ref_ext=...)` found nothing and the invoice was
        seen validated. `payment_type_id` is the numeric id (`payment_type_id(code="CB")`): the
        code itself is refused (51).

        `in_document_currency`: the amounts are in the invoices' own (multicurrency) currency,
        `currency`, and go in `multicurrency_amount`; Dolibarr converts them to the company
        currency with each invoice's rate (source-read, not recorded)."""
        if not amounts:
            raise ValueError("a payment needs at least one invoice amount")
        array_of_amounts: dict[str, dict[str, str]] = {}
        for invoice_id, amount in amounts.items():
            value = to_decimal(amount)
            if value <= 0:
                raise ValueError(f"payment amounts are positive, got {value} for {invoice_id}")
            formatted = format_dolibarr_amount(value, currency)
            # amount and multicurrency_amount must not both be set (source).
            array_of_amounts[str(_int_id(invoice_id, "invoice id"))] = (
                {"amount": "", "multicurrency_amount": formatted}
                if in_document_currency
                else {"amount": formatted, "multicurrency_amount": ""}
            )
        body = _without_none(
            {
                "arrayofamounts": array_of_amounts,
                "datepaye": to_timestamp(date),
                "paymentid": _int_id(payment_type_id, "payment type id"),
                "closepaidinvoices": "yes" if close_paid_invoices else "no",
                "accountid": _int_id(bank_account_id, "bank account id"),
                "num_payment": num_payment,
                "comment": comment,
                "ref_ext": ref_ext,
            }
        )
        answer = self._call("POST", "/invoices/paymentsdistributed", body=body)
        return self._created_id(answer, "POST /invoices/paymentsdistributed")

    def find_payments(self, *, ref_ext: str) -> list[Payment]:
        """Payments with this `ref_ext` (a charge or payment intent id), oldest first (94). More
        than one is a double payment (184, 191)."""
        rows = self._call("GET", "/paiements", params=_by_ref_ext(ref_ext))
        payments = [Payment.from_raw(row) for row in _as_list(rows, "paiements")]
        return _exact_ref_ext(payments, ref_ext)

    def find_payments_by_ref_exts(self, *, ref_exts: Sequence[str]) -> dict[str, list[Payment]]:
        """Payments for many `ref_ext`s at once (`or` criteria; `/paiements` has no paging,
        168). Every asked ref_ext is a key; exact matches only, oldest first."""
        found: dict[str, list[Payment]] = {ref: [] for ref in ref_exts}
        for chunk in _chunks(list(found), BATCH_REF_EXTS):
            params = {
                "sqlfilters": any_of(*(equals("t.ref_ext", r) for r in chunk)),
                "sortfield": "t.rowid",
                "sortorder": "ASC",
            }
            for row in _as_list(self._call("GET", "/paiements", params=params), "paiements"):
                payment = Payment.from_raw(row)
                if payment.ref_ext in found:
                    found[payment.ref_ext].append(payment)
        return found

    def invoice_payments(self, *, invoice_id: int) -> list[InvoicePayment]:
        """The payments recorded on one invoice (54, 59), refunds negative on a credit note
        (74)."""
        rows = self._call("GET", "/invoices/{id}/payments", path={"id": invoice_id})
        return [InvoicePayment.from_raw(row) for row in _as_list(rows, "payments")]

    def payment_types(self) -> list[PaymentType]:
        """The active payment types (`CB`, `VIR`, …) with their numeric ids (08)."""
        rows = self._call(
            "GET", "/setup/dictionary/payment_types", params={"limit": 100, "active": 1}
        )
        return [PaymentType.from_raw(row) for row in _as_list(rows, "payment types")]

    def payment_type_id(self, *, code: str) -> int:
        """The numeric id payments need for a payment type code (`CB` -> 6 on the recorded
        instance), read from the dictionary once per client instead of hard-coded."""
        with self._lock:
            cached = self._payment_type_ids
        if cached is None:
            cached = {t.code: t.id for t in self.payment_types() if t.code is not None}
            with self._lock:
                self._payment_type_ids = cached
        if code not in cached:
            raise NotFoundError(
                f"payment type {code!r} is not an active payment type in Dolibarr",
                system=SYSTEM,
                endpoint="GET /setup/dictionary/payment_types",
            )
        return cached[code]

    def company_currency(self) -> str:
        """The own company's currency (`currency_code` of `GET /setup/company`, EUR on the
        recorded instance, 12): every amount Dolibarr computes is in it."""
        raw = _as_object(self._call("GET", "/setup/company"), "company")
        code = as_str(raw.get("currency_code"))
        if code is None:
            raise self._unexpected("GET /setup/company", "a company with a currency_code")
        return code

    def multicurrency(self, *, code: str) -> MulticurrencyCurrency | None:
        """The currency `code` in the Multicurrency module, with its latest rate
        (`GET /multicurrencies/bycode/{code}`, Dolibarr 18+, source-read, not recorded), or None
        when the module does not know it — or is off, which leaves the route out (404)."""
        try:
            raw = self._call(
                "GET", "/multicurrencies/bycode/{code}", path={"code": code}, retry=True
            )
        except NotFoundError:
            return None
        return MulticurrencyCurrency.from_raw(_as_object(raw, "currency"))

    # -- bank ---------------------------------------------------------------------------------

    def bank_accounts(self) -> list[BankAccount]:
        rows = self._call("GET", "/bankaccounts")
        return [BankAccount.from_raw(row) for row in _as_list(rows, "bank accounts")]

    def find_bank_account(self, *, ref: str) -> BankAccount | None:
        """The bank account with this ref (`STRIPE`, 13), or None."""
        return next((a for a in self.bank_accounts() if a.ref == ref), None)

    def add_bank_line(
        self,
        *,
        bank_account_id: int,
        date: datetime | date,
        type_code: str,
        label: str,
        amount: Decimal,
        cheque_number: str | None = None,
        num_releve: str | None = None,
        value_date: datetime | date | None = None,
    ) -> int:
        """Add a line (a Stripe fee: negative `amount`) and return its id (116). `type_code` is
        not checked by Dolibarr (`FEE` was stored, 118); `cheque_number` lands in `num_chq`,
        the column to search on later (163). Never retried."""
        body = _without_none(
            {
                "date": to_timestamp(date),
                "type": type_code,
                "label": label,
                "amount": to_decimal(amount),
                "cheque_number": cheque_number,
                "num_releve": num_releve,
                "datev": to_timestamp(value_date) if value_date is not None else None,
            }
        )
        answer = self._call(
            "POST", "/bankaccounts/{id}/lines", path={"id": bank_account_id}, body=body
        )
        return self._created_id(answer, "POST /bankaccounts/{id}/lines")

    def bank_lines(
        self, *, bank_account_id: int, filters: SqlFilter | None = None
    ) -> list[BankLine]:
        """Every line of the account, in id order (no paging on this route), optionally filtered.

        This route's query has no table alias: filters must name bare columns, `label`,
        `num_chq` — `t.label` is a 503 (119, 120, 163). Such a filter is refused here."""
        params = None
        if filters is not None:
            if filters.uses_table_alias:
                raise ValueError(
                    "bank line filters take bare column names (label, num_chq), not t.<column>"
                )
            params = {"sqlfilters": filters}
        rows = self._call(
            "GET", "/bankaccounts/{id}/lines", path={"id": bank_account_id}, params=params
        )
        return [BankLine.from_raw(row) for row in _as_list(rows, "bank lines")]

    def get_bank_line(self, *, line_id: int) -> BankLine:
        raw = self._call("GET", "/bankaccounts/lines/{id}", path={"id": line_id})
        return BankLine.from_raw(_as_object(raw, "bank line"))

    def create_transfer(
        self,
        *,
        from_account_id: int,
        to_account_id: int,
        date: datetime | date,
        amount: Decimal,
        description: str,
    ) -> BankTransfer:
        """An internal transfer (a Stripe payout: Stripe account -> main bank), answered **201**
        (123). Put the payout id in `description`: the API's `cheque_number` is stored as the
        issuer and never returned (126, 128), so it is not offered. Never retried."""
        value = to_decimal(amount)
        if value <= 0:
            raise ValueError("a transfer amount is positive (Dolibarr answers 422 otherwise)")
        body = {
            "bankaccount_from_id": _int_id(from_account_id, "bank account id"),
            "bankaccount_to_id": _int_id(to_account_id, "bank account id"),
            "date": to_timestamp(date),
            "description": description,
            "amount": value,
        }
        raw = self._call("POST", "/bankaccounts/transfer", body=body)
        if not isinstance(raw, Mapping):
            raise self._unexpected("POST /bankaccounts/transfer", "a success object")
        return BankTransfer.from_raw(raw)

    def bank_balance(self, *, bank_account_id: int) -> Decimal:
        """The account balance, answered as a bare JSON number (121, 124, 125)."""
        raw = self._call("GET", "/bankaccounts/{id}/balance", path={"id": bank_account_id})
        balance = as_decimal(raw) if isinstance(raw, int | Decimal | str) else None
        if balance is None:
            raise self._unexpected("GET /bankaccounts/{id}/balance", "a number")
        return balance

    # -- documents ----------------------------------------------------------------------------

    def build_document(
        self,
        *,
        modulepart: str,
        original_file: str,
        template: str | None = None,
        lang: str | None = None,
    ) -> Document:
        """(Re)generate a document and return it decoded (75, 77). Regenerating is harmless,
        so transient failures are retried."""
        _check_document_path(original_file)
        body = _without_none(
            {
                "modulepart": modulepart,
                "original_file": original_file,
                "doctemplate": template,
                "langcode": lang,
            }
        )
        raw = self._call("PUT", "/documents/builddoc", body=body, retry=True)
        return self._document(raw, "PUT /documents/builddoc")

    def build_invoice_pdf(
        self, *, invoice_ref: str, template: str | None = None, lang: str | None = None
    ) -> Document:
        """The PDF of a validated invoice, generated now: one call, the answer holds the file.
        `modulepart` is spelled `invoice` here (75); an unknown ref is a NotFoundError (156)."""
        return self.build_document(
            modulepart="invoice",
            original_file=_invoice_pdf_path(invoice_ref),
            template=template,
            lang=lang,
        )

    def download_document(self, *, modulepart: str, original_file: str) -> Document:
        """A stored document (76, 88); a missing file is a NotFoundError (79)."""
        _check_document_path(original_file)
        raw = self._call(
            "GET",
            "/documents/download",
            params={"modulepart": modulepart, "original_file": original_file},
        )
        return self._document(raw, "GET /documents/download")

    def download_invoice_pdf(self, *, invoice_ref: str) -> Document:
        """The invoice PDF as last generated; `modulepart` is spelled `facture` here (76)."""
        return self.download_document(
            modulepart="facture", original_file=_invoice_pdf_path(invoice_ref)
        )

    def upload_document(
        self,
        *,
        modulepart: str,
        ref: str,
        filename: str,
        content: bytes,
        subdir: str = "",
        overwrite: bool = False,
    ) -> str:
        """Attach a file to an object (a delivery signature on a shipment: modulepart
        `expedition`, the shipment's ref, 85) and return the stored file name. Never retried."""
        _check_document_path(filename)
        body = {
            "filename": filename,
            "modulepart": modulepart,
            "ref": ref,
            "subdir": subdir,
            "filecontent": base64.b64encode(content).decode("ascii"),
            "fileencoding": "base64",
            "overwriteifexists": 1 if overwrite else 0,
        }
        answer = self._call("POST", "/documents/upload", body=body)
        if not isinstance(answer, str):
            raise self._unexpected("POST /documents/upload", "the stored file name")
        return answer

    # -- shipments ----------------------------------------------------------------------------

    def create_shipment(
        self,
        *,
        thirdparty_id: int,
        order_id: int,
        lines: Sequence[NewShipmentLine],
        ref_ext: str,
        date_delivery: datetime | date | None = None,
        tracking_number: str | None = None,
        ref_customer: str | None = None,
    ) -> int:
        """Create a draft shipment for lines of an order (81). Never retried."""
        shipment_lines = []
        for line in lines:
            if not isinstance(line, NewShipmentLine):
                raise TypeError(f"expected NewShipmentLine, got {type(line).__name__}")
            shipment_lines.append(
                {
                    "origin_line_id": _int_id(line.order_line_id, "order line id"),
                    "qty": line.qty,
                    "entrepot_id": line.warehouse_id,
                }
            )
        body = _without_none(
            {
                "socid": thirdparty_id,
                "origin_id": order_id,
                "origin_type": "commande",
                "ref_ext": ref_ext,
                "date_delivery": to_timestamp(date_delivery) if date_delivery else None,
                "tracking_number": tracking_number,
                "ref_customer": ref_customer,
                "lines": shipment_lines,
            }
        )
        return self._created_id(self._call("POST", "/shipments", body=body), "POST /shipments")

    def get_shipment(self, *, shipment_id: int) -> Shipment:
        raw = self._call("GET", "/shipments/{id}", path={"id": shipment_id})
        return Shipment.from_raw(_as_object(raw, "shipment"))

    def find_shipments(self, *, ref_ext: str) -> list[Shipment]:
        rows = self._call("GET", "/shipments", params=_by_ref_ext(ref_ext))
        shipments = [Shipment.from_raw(row) for row in _as_list(rows, "shipments")]
        return _exact_ref_ext(shipments, ref_ext)

    def validate_shipment(self, *, shipment_id: int) -> ActionResult[Shipment]:
        """Number the shipment (`SH…`, 83); the order moves to status 2 (84)."""
        return self._shipment_action(shipment_id, "/shipments/{id}/validate")

    def close_shipment(self, *, shipment_id: int) -> ActionResult[Shipment]:
        """Mark it delivered (86); this also closes its order (92)."""
        return self._shipment_action(shipment_id, "/shipments/{id}/close")

    def _shipment_action(self, shipment_id: int, template: str) -> ActionResult[Shipment]:
        raw = self._call(
            "POST", template, path={"id": shipment_id}, body={"notrigger": 0}, retry=True
        )
        if raw is _NOT_MODIFIED:
            return ActionResult(changed=False)
        return ActionResult(changed=True, value=Shipment.from_raw(_as_object(raw, "shipment")))

    # -- transport ----------------------------------------------------------------------------

    def _thirdparty_search(self, filters: SqlFilter) -> list[Thirdparty]:
        params = {"sqlfilters": filters, "sortfield": "t.rowid", "sortorder": "ASC"}
        try:
            rows = self._call("GET", "/thirdparties", params=params)
        except NotFoundError:
            # Dolibarr answers 404 "No third parties found", not [], when a thirdparty search
            # finds nothing (21); every other list answers 200 [].
            return []
        return [Thirdparty.from_raw(row) for row in _as_list(rows, "thirdparties")]

    def _call(
        self,
        method: str,
        template: str,
        *,
        path: Mapping[str, int | str] | None = None,
        params: Mapping[str, Any] | None = None,
        body: Any = _NO_BODY,
        retry: bool | None = None,
    ) -> Any:
        """Send one logical call; retry it when it is safe to repeat (GETs always, writes only
        when the caller says they are idempotent by nature)."""
        endpoint = f"{method} {template}"
        url = self._base_url + _fill_path(template, path or {})
        query = {key: str(value) for key, value in (params or {}).items()}
        data = None if body is _NO_BODY else _encode_json(body)
        repeatable = method == "GET" if retry is None else retry
        attempt = 0
        while True:
            try:
                return self._attempt(method, url, endpoint, query, data)
            except TransientError as exc:
                if (
                    isinstance(exc, CircuitOpenError)
                    or not repeatable
                    or attempt >= self.max_retries
                ):
                    raise
                delay = self._backoff_delay(attempt, exc.retry_after)
                attempt += 1
                logger.warning(
                    "Dolibarr %s failed (%s); retry %d of %d in %.1f s",
                    endpoint,
                    exc,
                    attempt,
                    self.max_retries,
                    delay,
                    extra={"system": SYSTEM, "endpoint": endpoint, "status": exc.status},
                )
                if delay > 0:
                    time.sleep(delay)

    def _attempt(
        self, method: str, url: str, endpoint: str, query: dict[str, str], data: bytes | None
    ) -> Any:
        """One HTTP attempt behind the breaker: asked first (CircuitOpenError, nothing sent,
        while it is open), told after. Any answer but 429/5xx is a success for it: a 404 or a
        refused key says Dolibarr is up."""
        breaker = self.breaker
        if breaker is None:
            return self._send(method, url, endpoint, query, data)
        ticket = breaker.before_call(endpoint=endpoint)
        try:
            answer = self._send(method, url, endpoint, query, data)
        except TransientError as exc:
            if breaker.record_failure(ticket, exc):
                raise breaker.open_error(exc, endpoint=endpoint) from exc
            raise
        except RemoteError as exc:
            if exc.status is not None:  # an answer; not a request that could not be sent
                breaker.record_success(ticket)
            raise
        breaker.record_success(ticket)
        return answer

    def _backoff_delay(self, attempt: int, retry_after: float | None) -> float:
        """1, 2, 4, 8, 16 … s (`backoff_base` 1) ±20 %, or longer when the remote asked so."""
        nominal = self.backoff_base * (2**attempt)
        delay = nominal * random.uniform(0.8, 1.2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER_SECONDS))
        return delay

    @sensitive_variables("headers")
    def _send(
        self, method: str, url: str, endpoint: str, query: dict[str, str], data: bytes | None
    ) -> Any:
        with self._lock:
            self.call_counts[endpoint] += 1
        headers = {"DOLAPIKEY": self._api_key, "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        is_write = method != "GET"
        started = time.monotonic()
        try:
            response = self._session.request(
                method,
                url,
                params=query or None,
                data=data,
                headers=headers,
                timeout=self._timeout,
                # Never follow a redirect: requests would resend the DOLAPIKEY header to
                # wherever it points (it only strips Authorization).
                allow_redirects=False,
            )
        except requests.exceptions.ConnectTimeout as exc:
            raise TransientError(
                f"Dolibarr at {self._display_url} did not accept a connection within "
                f"{self._timeout[0]} s ({endpoint})",
                system=SYSTEM,
                endpoint=endpoint,
            ) from exc
        except requests.exceptions.Timeout as exc:
            raise TransientError(
                f"Dolibarr did not answer {endpoint} within {self._timeout[1]} s"
                + (_UNKNOWN_OUTCOME if is_write else ""),
                system=SYSTEM,
                endpoint=endpoint,
                outcome_unknown=is_write,
            ) from exc
        except (
            requests.exceptions.ConnectionError,
            requests.exceptions.ChunkedEncodingError,
        ) as exc:
            # A body cut off half-way (ChunkedEncodingError) is a connection lost after sending.
            reason = (
                _connect_failure(exc)
                if isinstance(exc, requests.exceptions.ConnectionError)
                else None
            )
            if reason is not None:
                raise TransientError(
                    f"Dolibarr is unreachable at {self._display_url}: {reason} ({endpoint})",
                    system=SYSTEM,
                    endpoint=endpoint,
                ) from exc
            raise TransientError(
                f"the connection to Dolibarr was lost before it answered {endpoint}"
                + (_UNKNOWN_OUTCOME if is_write else ""),
                system=SYSTEM,
                endpoint=endpoint,
                outcome_unknown=is_write,
            ) from exc
        except requests.exceptions.RequestException as exc:
            raise PermanentError(
                f"cannot send {endpoint} to Dolibarr at {self._display_url}: {type(exc).__name__}",
                system=SYSTEM,
                endpoint=endpoint,
            ) from exc
        elapsed_ms = (time.monotonic() - started) * 1000
        logger.debug(
            "Dolibarr %s -> %s in %.0f ms",
            endpoint,
            response.status_code,
            elapsed_ms,
            extra={"system": SYSTEM, "endpoint": endpoint, "status": response.status_code},
        )
        return self._answer(response, endpoint, is_write)

    def _answer(self, response: requests.Response, endpoint: str, is_write: bool) -> Any:
        status = response.status_code
        if status == 304:
            # "Nothing done": already validated (36), already closed (89, 145). Empty body.
            return _NOT_MODIFIED
        if 200 <= status < 300:
            return self._json(response, endpoint)
        message, from_dolibarr = _error_text(response)
        text = f"Dolibarr {endpoint} -> {status} {message}"
        if status == 401:
            raise AuthenticationError(
                f"Dolibarr refused the API key ({status} {message}); check DOLIBARR_API_KEY",
                system=SYSTEM,
                status=status,
                endpoint=endpoint,
            )
        if status == 403:
            if _is_injection_refusal(response):
                raise PermanentError(
                    f"Dolibarr {endpoint} -> 403: refused by Dolibarr's SQL/script injection "
                    "filter (a value in the URL holds a quote or similar), an HTML page instead "
                    "of the API's answer",
                    system=SYSTEM,
                    status=status,
                    endpoint=endpoint,
                )
            raise AuthenticationError(
                f"{text}; the API user lacks a permission",
                system=SYSTEM,
                status=status,
                endpoint=endpoint,
            )
        if status == 404:
            raise NotFoundError(text, system=SYSTEM, status=status, endpoint=endpoint)
        if status == 429:
            raise TransientError(
                text,
                system=SYSTEM,
                status=status,
                endpoint=endpoint,
                retry_after=_retry_after(response),
            )
        if status >= 500:
            # Dolibarr's own JSON error means it rolled the work back (07, 150, 174); anything
            # else (a proxy's page) may hide a write that went through.
            unknown = is_write and not from_dolibarr
            raise TransientError(
                text + (_UNKNOWN_OUTCOME if unknown else ""),
                system=SYSTEM,
                status=status,
                endpoint=endpoint,
                outcome_unknown=unknown,
            )
        if 300 <= status < 400:
            raise PermanentError(
                f"Dolibarr {endpoint} -> {status} redirect, not followed: check that "
                "DOLIBARR_URL is the API root (…/api/index.php) with the right scheme",
                system=SYSTEM,
                status=status,
                endpoint=endpoint,
            )
        raise PermanentError(text, system=SYSTEM, status=status, endpoint=endpoint)

    def _json(self, response: requests.Response, endpoint: str) -> Any:
        text = response.content.decode("utf-8", errors="replace")
        if not text.strip():
            # An empty 200 under a JSON content type (113).
            return None
        try:
            # Never float for money: every JSON number with a fraction becomes a Decimal.
            return json.loads(text, parse_float=Decimal)
        except ValueError:
            content_type = response.headers.get("Content-Type", "no content type")
            raise PermanentError(
                f"Dolibarr {endpoint} -> {response.status_code} with a body that is not JSON "
                f"({content_type}): check that DOLIBARR_URL is the API root (…/api/index.php)",
                system=SYSTEM,
                status=response.status_code,
                endpoint=endpoint,
            ) from None

    def _created_id(self, answer: Any, endpoint: str) -> int:
        """Creations answer the new id as a bare JSON integer (13, 15, 45)."""
        if isinstance(answer, bool):
            raise self._unexpected(endpoint, "the new id")
        try:
            value = as_int(answer)
        except (TypeError, ValueError):
            value = None
        if value is None or value <= 0:
            raise self._unexpected(endpoint, "the new id")
        return value

    def _document(self, raw: Any, endpoint: str) -> Document:
        if not isinstance(raw, Mapping) or not isinstance(raw.get("content"), str):
            raise self._unexpected(endpoint, "a document with base64 content")
        if raw.get("encoding", "base64") != "base64":
            raise self._unexpected(endpoint, "base64 content")
        try:
            content = base64.b64decode(raw["content"], validate=True)
        except (binascii.Error, ValueError):
            raise self._unexpected(endpoint, "valid base64 content") from None
        return Document(
            filename=str(raw.get("filename") or ""),
            content_type=raw.get("content-type"),
            content=content,
            raw={key: value for key, value in raw.items() if key != "content"},
        )

    def _unexpected(self, endpoint: str, expected: str) -> PermanentError:
        return PermanentError(
            f"Dolibarr {endpoint} answered something other than {expected}",
            system=SYSTEM,
            endpoint=endpoint,
        )


# --- helpers ---------------------------------------------------------------------------------

_UNKNOWN_OUTCOME: Final = (
    "; the write may have been applied: look the object up by ref_ext before trying again"
)


def _pooled_session() -> requests.Session:
    session = requests.Session()
    # Retries are the client's decision (only calls safe to repeat), never urllib3's.
    adapter = HTTPAdapter(pool_connections=2, pool_maxsize=POOL_MAXSIZE, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _connect_failure(exc: requests.exceptions.ConnectionError) -> str | None:
    """Why the connection could not be opened, or None if it was opened and then lost (after
    which a write may have been applied)."""
    reason: Any = exc.args[0] if exc.args else None
    if isinstance(reason, urllib3.exceptions.MaxRetryError):
        reason = reason.reason
    if isinstance(
        reason, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError
    ):
        cause = reason.__cause__ or reason.__context__
        detail = getattr(cause, "strerror", None)
        if isinstance(reason, urllib3.exceptions.NameResolutionError):
            return "its host name does not resolve"
        return (detail or "connection failed").lower()
    return None


def _error_text(response: requests.Response) -> tuple[str, bool]:
    """Dolibarr's message from `{"error": {"code", "message", "0": extra…}}` (05, 07, 32), and
    whether the body was Dolibarr's JSON at all."""
    content_type = response.headers.get("Content-Type", "")
    try:
        payload = json.loads(response.content.decode("utf-8"), parse_float=Decimal)
    except ValueError:
        payload = None
    if isinstance(payload, Mapping) and isinstance(payload.get("error"), Mapping):
        error = payload["error"]
        message = str(error.get("message") or "").strip() or response.reason or ""
        extras = [str(value) for key, value in error.items() if str(key).isdigit() and value]
        if extras:
            message += " (" + "; ".join(extras) + ")"
        return message, True
    kind = content_type.split(";")[0].strip() or "no content type"
    return f"{response.reason or ''} (a non-JSON answer: {kind})".strip(), False


def _is_injection_refusal(response: requests.Response) -> bool:
    """Dolibarr's injection filter answers 403 text/html "Access refused … by SQL or Script
    injection protection" (171, 172)."""
    content_type = response.headers.get("Content-Type", "")
    if "json" in content_type:
        return False
    return b"injection protection" in response.content[:2000]


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return int(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(tz=UTC)).total_seconds())


def _fill_path(template: str, values: Mapping[str, int | str]) -> str:
    """The path with its ids (integers only) and names (checked, then quoted) filled in."""
    filled = {}
    for name, value in values.items():
        if isinstance(value, str):
            _check_path_segment(value, name)
            filled[name] = quote(value, safe="")
        else:
            filled[name] = str(_int_id(value, name))
    return template.format(**filled)


def _int_id(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    return value


def _check_path_segment(value: str, name: str) -> None:
    if not isinstance(value, str) or not _SAFE_PATH_SEGMENT.match(value):
        raise UnsafeFilterValue(
            f"{name} {value!r} cannot be placed in a Dolibarr URL path (letters, digits, "
            "'_', '-' and '.' only)"
        )


def _check_document_path(value: str) -> None:
    parts = value.split("/")
    if not value or any(part in ("", ".", "..") for part in parts) or "\\" in value:
        raise ValueError(f"not a relative document path: {value!r}")


def _invoice_pdf_path(invoice_ref: str) -> str:
    """`FA2611-0002` -> `FA2611-0002/FA2611-0002.pdf`, the layout of `last_main_doc` (53)."""
    if not _SAFE_DOCUMENT_REF.match(invoice_ref or ""):
        raise ValueError(f"not an invoice ref: {invoice_ref!r}")
    return f"{invoice_ref}/{invoice_ref}.pdf"


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _by_ref_ext(ref_ext: str) -> dict[str, Any]:
    # Oldest first, so that duplicates are listed in creation order (26, 47).
    return {"sqlfilters": equals("t.ref_ext", ref_ext), "sortfield": "t.rowid", "sortorder": "ASC"}


def _exact_ref_ext(items: list[Any], ref_ext: str) -> list[Any]:
    """Keep exact matches only: the tables use a case- and trailing-space-insensitive collation
    (utf8mb4_unicode_ci), and Stripe ids differ by case alone."""
    return [item for item in items if item.ref_ext == ref_ext]


def _as_list(value: Any, what: str) -> list[Mapping[str, Any]]:
    if not isinstance(value, list):
        raise PermanentError(
            f"Dolibarr answered something other than a list of {what}", system=SYSTEM
        )
    return [row for row in value if isinstance(row, Mapping)]


def _as_object(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PermanentError(
            f"Dolibarr answered something other than a {what} object", system=SYSTEM
        )
    return value


def _without_none(body: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if value is not None}


def _price(value: Decimal | int | str) -> Decimal:
    """A unit price with Dolibarr's 8 decimals (`subprice` accepts them; README, "How totals are
    computed": 9.78333333 reproduces a tax-inclusive 9.99 where 9.78 is a cent off)."""
    return Decimal(format_dolibarr_price(value))


def _line_body(line: NewLine, *, in_document_currency: bool = False) -> dict[str, Any]:
    """A line as the API takes it. In a multicurrency document the net unit price is the
    document currency's (`multicurrency_subprice`, Dolibarr's `pu_ht_devise`) and `subprice` is
    left out: Dolibarr derives it with the document's rate."""
    price_field = "multicurrency_subprice" if in_document_currency else "subprice"
    return _without_none(
        {
            "fk_product": line.product_id,
            "desc": line.description,
            "qty": line.qty,
            price_field: _price(line.subprice),
            "tva_tx": line.tva_tx,
            "remise_percent": line.remise_percent,
            "product_type": int(line.product_type),
            "date_start": to_timestamp(line.date_start) if line.date_start else None,
            "date_end": to_timestamp(line.date_end) if line.date_end else None,
        }
    )


def _encode_json(payload: Any) -> bytes:
    """JSON for a request body, with Decimals written as exact JSON numbers (`-0.55`, `25.5`),
    as the recorded requests send them (116, 123, 33), and floats refused."""
    literals: dict[str, str] = {}
    marker = secrets.token_hex(8)

    def convert(value: Any) -> Any:
        if isinstance(value, bool) or value is None or isinstance(value, int | str):
            return value
        if isinstance(value, float):
            raise TypeError(f"refusing to send a float to Dolibarr ({value!r}): use Decimal")
        if isinstance(value, Decimal):
            if not value.is_finite():
                raise ValueError(f"not a finite number: {value!r}")
            placeholder = f"@@{marker}:{len(literals)}@@"
            literals[placeholder] = f"{value:f}"
            return placeholder
        if isinstance(value, SqlFilter):
            return str(value)
        if isinstance(value, Mapping):
            return {str(key): convert(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [convert(item) for item in value]
        raise TypeError(f"cannot send a {type(value).__name__} to Dolibarr")

    text = json.dumps(convert(payload), allow_nan=False)
    for placeholder, literal in literals.items():
        text = text.replace(f'"{placeholder}"', literal)
    return text.encode("utf-8")
