"""A Stripe stand-in on loopback: the read side of the v1 API that the sync uses, over a seeded
dataset (`stripe_data.generate`), answering the official SDK exactly as Stripe would.

Why not stripe-mock or localstripe: neither is installable here or serves `created` filters,
invoice payments and balance transactions of the current API version (see DESIGN.md §10).

What it honours, because the sync relies on it: list objects newest first, `limit` (1 to 100,
default 10), `starting_after` / `ending_before`, `created` (exact or `[gt|gte|lt|lte]`), the
per-resource filters Stripe offers, `expand[]` (with the SDK's `expand[0]=…` spelling), Stripe's
error bodies (400 unknown parameter, 401 wording, 404 `resource_missing`) and its headers.
Unknown parameters are refused as Stripe refuses them, so a connector bug shows up here rather
than in production.

Run it alone: `python -m reconciliation.sandbox.stripe --port 0 --api-key sk_test_…`.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import copy
import hmac
import itertools
import logging
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests

from reconciliation.sandbox.base import Faults, Request, Response, SandboxServer
from reconciliation.sandbox.stripe_data import (
    API_VERSION,
    DEFAULT_CUSTOMERS,
    DEFAULT_MONTHS,
    DEFAULT_SEED,
    DEFAULT_START,
    StripeDataset,
    generate,
)
from reconciliation.sandbox.webhooks import deliver_event

logger = logging.getLogger(__name__)

DEFAULT_LIMIT = 10
MAX_LIMIT = 100
DOCS_URL = "https://stripe.com/docs"
SUPPORT_URL = "https://support.stripe.com/"
MISSING_KEY_MESSAGE = (
    "You did not provide an API key. You need to provide your API key in the Authorization "
    "header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See "
    f"{DOCS_URL}/api#authentication for details, or we can help at {SUPPORT_URL}."
)
# Fields that may be expanded: each holds an id (or a list of ids) of an object the sandbox has,
# or is one of the "includable" fields that only appear when expanded.
EXPANDABLE = frozenset(
    {
        "balance_transaction",
        "charge",
        "coupon",
        "customer",
        "discounts",
        "failure_balance_transaction",
        "invoice",
        "latest_charge",
        "lines",
        "payment_intent",
        "payments",
        "refunds",
        "source",
        "tax_ids",
        "tax_rate",
    }
)
CREATED_BOUNDS = ("gt", "gte", "lt", "lte")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class StripeError(Exception):
    """An error answered with Stripe's body: `{"error": {"type", "message", "code"?, "param"?,
    "doc_url"?}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.error_type, self.code, self.param = error_type, code, param

    def response(self) -> Response:
        error: dict[str, Any] = {}
        if self.code:
            error["code"] = self.code
            error["doc_url"] = f"{DOCS_URL}/error-codes/{self.code.replace('_', '-')}"
        error["message"] = self.message
        if self.param:
            error["param"] = self.param
        error["type"] = self.error_type
        headers = {"WWW-Authenticate": 'Basic realm="Stripe"'} if self.status == 401 else {}
        return Response.json({"error": error}, status=self.status, headers=headers)


def resource_missing(object_name: str, object_id: str, param: str = "id") -> StripeError:
    return StripeError(
        404, f"No such {object_name}: '{object_id}'", code="resource_missing", param=param
    )


def masked_key(key: str) -> str:
    """How Stripe echoes a refused key: its first 8 characters, stars, and its last 4."""
    hidden = max(len(key) - 12, 0)
    return f"{key[:8]}{'*' * hidden}{key[-4:]}" if len(key) > 12 else "*" * len(key)


# --- query parameters -----------------------------------------------------------------------
@dataclass
class QueryParams:
    """A query string read the way Stripe reads form-encoded parameters: `a=1`, `a[]=1` or
    `a[0]=1` (lists), `a[b]=1` (hashes)."""

    scalars: dict[str, str] = field(default_factory=dict)
    lists: dict[str, list[str]] = field(default_factory=dict)
    hashes: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def parse(cls, items: Iterable[tuple[str, str]]) -> QueryParams:
        params = cls()
        for key, value in items:
            match = re.fullmatch(r"([A-Za-z_]+)\[([A-Za-z0-9_]*)\]", key)
            if match is None:
                params.scalars[key] = value
            elif match[2] == "" or match[2].isdigit():
                params.lists.setdefault(match[1], []).append(value)
            else:
                params.hashes.setdefault(match[1], {})[match[2]] = value
        return params

    def check_known(
        self, scalars: Iterable[str], lists: Iterable[str], hashes: dict[str, Iterable[str]]
    ) -> None:
        """Stripe refuses any parameter it does not know, naming it."""
        for name in self.scalars:
            if name not in scalars:
                raise unknown_parameter(name)
        for name in self.lists:
            if name not in lists:
                raise unknown_parameter(f"{name}[]")
        for name, keys in self.hashes.items():
            if name not in hashes:
                raise unknown_parameter(f"{name}[{next(iter(keys))}]")
            for key in keys:
                if key not in hashes[name]:
                    raise unknown_parameter(f"{name}[{key}]")


Filter = Callable[[dict[str, Any], str], bool]


def unknown_parameter(name: str) -> StripeError:
    return StripeError(400, f"Received unknown parameter: {name}", param=name)


def parse_integer(value: str, param: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise StripeError(400, f"Invalid integer: {value}", param=param) from None


def parse_limit(params: QueryParams) -> int:
    if "limit" not in params.scalars:
        return DEFAULT_LIMIT
    limit = parse_integer(params.scalars["limit"], "limit")
    if limit < 1:
        raise StripeError(400, "This value must be greater than or equal to 1.", param="limit")
    if limit > MAX_LIMIT:
        raise StripeError(
            400, f"This value must be less than or equal to {MAX_LIMIT}.", param="limit"
        )
    return limit


def created_filter(params: QueryParams) -> Callable[[dict[str, Any]], bool]:
    """`created=T` (exact) or `created[gt|gte|lt|lte]=T`, as a predicate on objects."""
    if "created" in params.scalars:
        exact = parse_integer(params.scalars["created"], "created")
        return lambda obj: obj["created"] == exact
    bounds = {
        name: parse_integer(value, f"created[{name}]")
        for name, value in params.hashes.get("created", {}).items()
    }
    checks = {
        "gt": lambda created, bound: created > bound,
        "gte": lambda created, bound: created >= bound,
        "lt": lambda created, bound: created < bound,
        "lte": lambda created, bound: created <= bound,
    }
    return lambda obj: all(checks[name](obj["created"], bound) for name, bound in bounds.items())


def one_of(field_name: str, allowed: tuple[str, ...]) -> Filter:
    """An enum filter, refused as Stripe refuses an unknown value."""

    def check(obj: dict[str, Any], value: str) -> bool:
        if value not in allowed:
            choices = f"{', '.join(allowed[:-1])}, or {allowed[-1]}"
            raise StripeError(
                400, f"Invalid {field_name}: must be one of {choices}", param=field_name
            )
        return obj[field_name] == value

    return check


def event_type_matches(event_type: str, wanted: str) -> bool:
    """Stripe's event type filter accepts a trailing wildcard: `invoice.*`."""
    if wanted.endswith("*"):
        return event_type.startswith(wanted[:-1])
    return event_type == wanted


# --- lists ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listing:
    """One top-level list endpoint: which resource it pages through and which filters it takes
    (scalar filters by name; list filters such as `types[]`)."""

    resource: str
    object_name: str
    filters: dict[str, Filter] = field(default_factory=dict)
    list_filters: dict[str, Callable[[dict[str, Any], list[str]], bool]] = field(
        default_factory=dict
    )
    hash_filters: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"/v1/{self.resource}"


def _subscription_of(invoice: dict[str, Any]) -> str | None:
    parent = invoice.get("parent") or {}
    return (parent.get("subscription_details") or {}).get("subscription")


def _listings(dataset: StripeDataset) -> list[Listing]:
    # Sets: a `?payout=` page tests every balance transaction against one payout's members.
    payout_members = {
        payout_id: frozenset(members) for payout_id, members in dataset.payout_transactions.items()
    }

    def in_payout(txn: dict[str, Any], payout_id: str) -> bool:
        return txn["id"] in payout_members.get(payout_id, frozenset())

    return [
        Listing("customers", "customer", {"email": lambda o, v: o["email"] == v}),
        Listing(
            "invoices",
            "invoice",
            {
                "customer": lambda o, v: o["customer"] == v,
                "status": one_of("status", ("draft", "open", "paid", "uncollectible", "void")),
                "subscription": lambda o, v: _subscription_of(o) == v,
                "collection_method": lambda o, v: o["collection_method"] == v,
            },
        ),
        Listing(
            "invoice_payments",
            "invoice_payment",
            {"invoice": lambda o, v: o["invoice"] == v, "status": lambda o, v: o["status"] == v},
            hash_filters={"payment": ("type", "payment_intent", "charge")},
        ),
        Listing(
            "charges",
            "charge",
            {
                "customer": lambda o, v: o["customer"] == v,
                "payment_intent": lambda o, v: o["payment_intent"] == v,
            },
        ),
        Listing("payment_intents", "payment_intent", {"customer": lambda o, v: o["customer"] == v}),
        Listing(
            "refunds",
            "refund",
            {
                "charge": lambda o, v: o["charge"] == v,
                "payment_intent": lambda o, v: o["payment_intent"] == v,
            },
        ),
        Listing(
            "balance_transactions",
            "balance_transaction",
            {
                "payout": in_payout,
                "type": lambda o, v: o["type"] == v,
                "source": lambda o, v: o["source"] == v,
                "currency": lambda o, v: o["currency"] == v.lower(),
            },
        ),
        Listing(
            "payouts",
            "payout",
            {
                "status": one_of("status", ("pending", "paid", "failed", "canceled", "in_transit")),
                "destination": lambda o, v: o["destination"] == v,
            },
        ),
        Listing(
            "events",
            "event",
            {"type": lambda o, v: event_type_matches(o["type"], v)},
            list_filters={
                "types": lambda o, wanted: any(event_type_matches(o["type"], w) for w in wanted)
            },
        ),
        Listing("tax_rates", "tax_rate", {"active": lambda o, v: str(o["active"]).lower() == v}),
        Listing("coupons", "coupon"),
    ]


# --- the server -----------------------------------------------------------------------------
@dataclass
class WebhookDelivery:
    event_id: str
    url: str
    status: int | None
    error: str = ""


class StripeSandbox(SandboxServer):
    """The Stripe stand-in. `data` defaults to the demo dataset (`generate()` with its defaults);
    tests pass a small one. The dataset is only read, never changed, so one dataset may back
    several sandboxes."""

    name = "stripe-sandbox"
    poll_interval = 0.05  # tests start and stop one per test

    def __init__(
        self,
        *,
        api_key: str,
        webhook_secret: str = "",
        webhook_url: str = "",
        host: str = "127.0.0.1",
        port: int = 0,
        faults: Faults | None = None,
        data: StripeDataset | None = None,
    ) -> None:
        super().__init__(host=host, port=port, faults=faults)
        if not api_key:
            raise ValueError("the Stripe sandbox needs an API key to expect")
        self.api_key = api_key
        self.webhook_secret = webhook_secret
        self.webhook_url = webhook_url
        self.data = data if data is not None else generate()
        self.deliveries: list[WebhookDelivery] = []
        self._request_ids = itertools.count(1)
        self._listings = {listing.resource: listing for listing in _listings(self.data)}
        self._newest_first = {
            name: sorted(objects, key=lambda o: self.data.order[o["id"]], reverse=True)
            for name, objects in self.data.collections.items()
        }
        self._by_resource = {
            name: {obj["id"]: obj for obj in objects}
            for name, objects in self.data.collections.items()
        }
        self._add_routes()

    def _add_routes(self) -> None:
        add = self.router.add
        for resource, listing in self._listings.items():
            add("GET", f"/v1/{resource}", self._guard(self._lister(listing)))
            add("GET", f"/v1/{resource}/{{id}}", self._guard(self._retriever(listing)))
        add("GET", "/v1/invoices/{id}/lines", self._guard(self._invoice_lines))
        add("GET", "/v1/charges/{id}/refunds", self._guard(self._charge_refunds))
        add("GET", "/v1/customers/{id}/tax_ids", self._guard(self._customer_tax_ids))
        add("GET", "/v1/balance", self._guard(self._balance))
        add("GET", "/_sandbox/dataset", self._dataset_summary)
        add("POST", "/_sandbox/webhooks/deliver", self._deliver_control)

    # -- framework hooks -------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        response = super().handle(request)
        response.headers.setdefault("Request-Id", f"req_sandbox{next(self._request_ids):010d}")
        response.headers.setdefault("Stripe-Version", API_VERSION)
        return response

    def authenticate(self, request: Request) -> Response | None:
        presented = _presented_key(request.header("authorization"))
        if presented is None:
            return StripeError(401, MISSING_KEY_MESSAGE).response()
        if not hmac.compare_digest(presented.encode(), self.api_key.encode()):
            return StripeError(401, f"Invalid API Key provided: {masked_key(presented)}").response()
        return None

    def not_found(self, request: Request) -> Response:
        message = (
            f"Unrecognized request URL ({request.method}: {request.path}). Please see "
            f"{DOCS_URL} or we can help at {SUPPORT_URL}."
        )
        return StripeError(404, message).response()

    def internal_error(self, request: Request, exc: Exception) -> Response:
        return StripeError(500, "An unknown error occurred", error_type="api_error").response()

    @staticmethod
    def _guard(handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
        def guarded(request: Request) -> Response:
            try:
                return handler(request)
            except StripeError as error:
                return error.response()

        return guarded

    # -- v1 handlers -----------------------------------------------------------------------
    def _lister(self, listing: Listing) -> Callable[[Request], Response]:
        def handler(request: Request) -> Response:
            params = QueryParams.parse(request.query_items)
            params.check_known(
                scalars={"limit", "starting_after", "ending_before", "created", *listing.filters},
                lists={"expand", *listing.list_filters},
                hashes={"created": CREATED_BOUNDS, **listing.hash_filters},
            )
            predicates = self._predicates(listing, params)
            objects = [
                o for o in self._newest_first[listing.resource] if all(p(o) for p in predicates)
            ]
            page = self._page(listing, objects, params)
            return Response.json(self._expand(page, params.lists.get("expand", [])))

        return handler

    def _predicates(
        self, listing: Listing, params: QueryParams
    ) -> list[Callable[[dict[str, Any]], bool]]:
        predicates = [created_filter(params)]
        for name, check in listing.filters.items():
            if name in params.scalars:
                value = params.scalars[name]
                if name == "payout" and value not in self.data.payout_transactions:
                    raise resource_missing("payout", value, param="payout")
                predicates.append(lambda obj, check=check, value=value: check(obj, value))
        for name, check in listing.list_filters.items():
            if name in params.lists:
                wanted = params.lists[name]
                predicates.append(lambda obj, check=check, wanted=wanted: check(obj, wanted))
        for name in listing.hash_filters:
            if name in params.hashes:
                wanted_hash = params.hashes[name]
                predicates.append(
                    lambda obj, name=name, wanted_hash=wanted_hash: all(
                        obj[name].get(key) == value for key, value in wanted_hash.items()
                    )
                )
        return predicates

    def _page(
        self, listing: Listing, objects: list[dict[str, Any]], params: QueryParams
    ) -> dict[str, Any]:
        """One page of a newest-first list. Cursors are positions in time, so an id that the
        filters exclude still works as a cursor, as on Stripe."""
        limit = parse_limit(params)
        after = params.scalars.get("starting_after")
        before = params.scalars.get("ending_before")
        if after and before:
            raise StripeError(
                400,
                "You may only specify one of these parameters: ending_before, starting_after.",
                param="ending_before",
            )
        if before:
            cursor = self._cursor(listing, before, "ending_before")
            newer = [o for o in objects if self.data.order[o["id"]] > cursor]
            data, has_more = newer[-limit:], len(newer) > limit
        else:
            if after:
                cursor = self._cursor(listing, after, "starting_after")
                objects = [o for o in objects if self.data.order[o["id"]] < cursor]
            data, has_more = objects[:limit], len(objects) > limit
        return {"object": "list", "data": data, "has_more": has_more, "url": listing.url}

    def _cursor(self, listing: Listing, object_id: str, param: str) -> tuple[int, int]:
        if object_id not in self._by_resource[listing.resource]:
            raise resource_missing(listing.object_name, object_id, param=param)
        return self.data.order[object_id]

    def _retriever(self, listing: Listing) -> Callable[[Request], Response]:
        def handler(request: Request) -> Response:
            params = QueryParams.parse(request.query_items)
            params.check_known(scalars=(), lists={"expand"}, hashes={})
            obj = self._by_resource[listing.resource].get(request.params["id"])
            if obj is None:
                raise resource_missing(listing.object_name, request.params["id"])
            return Response.json(self._expand(obj, params.lists.get("expand", [])))

        return handler

    def _sub_list(
        self, request: Request, parent: str, items: list[dict[str, Any]], url: str
    ) -> Response:
        """A list inside one object (invoice lines, a charge's refunds), in the object's order."""
        params = QueryParams.parse(request.query_items)
        params.check_known(
            scalars={"limit", "starting_after", "ending_before"}, lists={"expand"}, hashes={}
        )
        limit = parse_limit(params)
        ids = [item["id"] for item in items]
        after, before = params.scalars.get("starting_after"), params.scalars.get("ending_before")
        for param, cursor in (("starting_after", after), ("ending_before", before)):
            if cursor and cursor not in ids:
                raise resource_missing(parent, cursor, param=param)
        if before:
            newer = items[: ids.index(before)]
            data, has_more = newer[-limit:], len(newer) > limit
        else:
            rest = items[ids.index(after) + 1 :] if after else items
            data, has_more = rest[:limit], len(rest) > limit
        page = {"object": "list", "data": data, "has_more": has_more, "url": url}
        return Response.json(self._expand(page, params.lists.get("expand", [])))

    def _invoice_lines(self, request: Request) -> Response:
        invoice = self._by_resource["invoices"].get(request.params["id"])
        if invoice is None:
            raise resource_missing("invoice", request.params["id"])
        return self._sub_list(
            request, "line_item", invoice["lines"]["data"], invoice["lines"]["url"]
        )

    def _charge_refunds(self, request: Request) -> Response:
        charge = self._by_resource["charges"].get(request.params["id"])
        if charge is None:
            raise resource_missing("charge", request.params["id"])
        return self._sub_list(
            request, "refund", charge["refunds"]["data"], charge["refunds"]["url"]
        )

    def _customer_tax_ids(self, request: Request) -> Response:
        customer_id = request.params["id"]
        if customer_id not in self._by_resource["customers"]:
            raise resource_missing("customer", customer_id)
        tax_ids = [t for t in self._newest_first["tax_ids"] if t["customer"] == customer_id]
        return self._sub_list(request, "tax_id", tax_ids, f"/v1/customers/{customer_id}/tax_ids")

    def _balance(self, request: Request) -> Response:
        QueryParams.parse(request.query_items).check_known(scalars=(), lists={"expand"}, hashes={})
        return Response.json(self.data.balance)

    # -- expansion -------------------------------------------------------------------------
    def _expand(self, payload: dict[str, Any], paths: list[str]) -> dict[str, Any]:
        if not paths:
            return payload
        payload = copy.deepcopy(payload)
        for path in paths:
            self._expand_path(payload, path.split("."), path)
        return payload

    def _expand_path(self, node: Any, segments: list[str], path: str) -> None:
        head, rest = segments[0], segments[1:]
        if isinstance(node, dict) and node.get("object") == "list" and head == "data":
            if not rest:
                raise cannot_expand(path)
            for item in node["data"]:
                self._expand_path(item, rest, path)
            return
        if not isinstance(node, dict) or head not in EXPANDABLE:
            raise cannot_expand(path)
        if head not in node:
            node[head] = self._includable(node, head, path)
        else:
            node[head] = self._resolve(node[head], path)
        if rest and node[head] is not None:
            if isinstance(node[head], list):
                for item in node[head]:
                    self._expand_path(item, rest, path)
            else:
                self._expand_path(node[head], rest, path)

    def _resolve(self, value: Any, path: str) -> Any:
        """An id becomes the object it names; objects and nulls stay as they are."""
        if isinstance(value, list):
            return [self._resolve(item, path) for item in value]
        if isinstance(value, str):
            obj = self.data.get(value)
            if obj is None:
                raise cannot_expand(path)
            return copy.deepcopy(obj)
        return value

    def _includable(self, node: dict[str, Any], field_name: str, path: str) -> dict[str, Any]:
        """Fields Stripe leaves out unless expanded: `invoice.payments`, `customer.tax_ids`."""
        kind, object_id = node.get("object"), node.get("id")
        if kind == "invoice" and field_name == "payments":
            items = [p for p in self._newest_first["invoice_payments"] if p["invoice"] == object_id]
            url = f"/v1/invoices/{object_id}/payments"
        elif kind == "customer" and field_name == "tax_ids":
            items = [t for t in self._newest_first["tax_ids"] if t["customer"] == object_id]
            url = f"/v1/customers/{object_id}/tax_ids"
        else:
            raise cannot_expand(path)
        data = copy.deepcopy(items[:DEFAULT_LIMIT])
        return {"object": "list", "data": data, "has_more": len(items) > DEFAULT_LIMIT, "url": url}

    # -- control endpoints and webhooks ----------------------------------------------------
    def _dataset_summary(self, request: Request) -> Response:
        return Response.json(
            {
                "seed": self.data.seed,
                "start": self.data.start.isoformat(),
                "end": self.data.end.isoformat(),
                "counts": self.data.counts(),
            }
        )

    def _deliver_control(self, request: Request) -> Response:
        """`POST /_sandbox/webhooks/deliver` with `{"url"?, "ids"?, "types"?}`: send the matching
        events (all by default), oldest first, signed with the sandbox's webhook secret."""
        try:
            body = request.json() or {}
        except ValueError:
            return Response.json({"error": {"message": "body must be JSON"}}, status=400)
        url = body.get("url") or self.webhook_url
        if not url or not self.webhook_secret:
            message = "no webhook URL or secret configured (--webhook-url, --webhook-secret)"
            return Response.json({"error": {"message": message}}, status=400)
        deliveries = self.deliver_events(ids=body.get("ids"), types=body.get("types"), url=url)
        return Response.json({"delivered": [d.__dict__ for d in deliveries]})

    def deliver_events(
        self,
        *,
        ids: list[str] | None = None,
        types: list[str] | None = None,
        url: str | None = None,
        session: requests.Session | None = None,
    ) -> list[WebhookDelivery]:
        """Send events to the webhook endpoint, oldest first, and record each outcome."""
        target = url or self.webhook_url
        if not target or not self.webhook_secret:
            raise ValueError("no webhook URL or secret configured")
        events = self.data.collections["events"]
        chosen = [
            e
            for e in events
            if (ids is None or e["id"] in ids)
            and (types is None or any(event_type_matches(e["type"], t) for t in types))
        ]
        results = []
        with requests.Session() if session is None else _borrowed(session) as sender:
            for event in chosen:
                results.append(self._deliver_one(event, target, sender))
        self.deliveries.extend(results)
        return results

    def _deliver_one(
        self, event: dict[str, Any], url: str, session: requests.Session
    ) -> WebhookDelivery:
        try:
            answer = deliver_event(event, url=url, secret=self.webhook_secret, session=session)
        except requests.RequestException as exc:
            logger.warning("webhook %s to %s failed: %s", event["id"], url, type(exc).__name__)
            return WebhookDelivery(event["id"], url, None, type(exc).__name__)
        return WebhookDelivery(event["id"], url, answer.status_code)


class _borrowed:
    """Use a caller's session in a `with` block without closing it."""

    def __init__(self, session: requests.Session) -> None:
        self.session = session

    def __enter__(self) -> requests.Session:
        return self.session

    def __exit__(self, *exc_info: Any) -> None:
        return None


def cannot_expand(path: str) -> StripeError:
    return StripeError(400, f"This property cannot be expanded ({path}).", param="expand")


def _presented_key(authorization: str) -> str | None:
    """The key from `Authorization: Bearer sk_…` or Basic auth with the key as user name (both
    are accepted by Stripe)."""
    scheme, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer" and credentials:
        return credentials
    if scheme.lower() == "basic" and credentials:
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[0] or None
    return None


# --- command line ---------------------------------------------------------------------------
def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m reconciliation.sandbox.stripe",
        description="Serve a seeded Stripe account on loopback until SIGINT or SIGTERM.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--api-key", required=True, help="the secret key clients must send")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--customers", type=int, default=DEFAULT_CUSTOMERS)
    parser.add_argument("--months", type=int, default=DEFAULT_MONTHS)
    parser.add_argument(
        "--start",
        default=DEFAULT_START.date().isoformat(),
        help="first day of the generated history (UTC), e.g. 2025-11-01",
    )
    parser.add_argument(
        "--refund-share",
        type=float,
        default=0.0,
        help="refund more paid invoices until this share of them carry a refund (0 to 1)",
    )
    parser.add_argument(
        "--webhook-url", default="", help="where POST /_sandbox/webhooks/deliver sends"
    )
    parser.add_argument("--webhook-secret", default="", help="whsec_… used to sign deliveries")
    parser.add_argument(
        "--aipress24-database",
        default="",
        help="an Aipress24 database URL (sqlite:////path or postgres://…): serve the Stripe "
        "side of its rows too (its organisations' customers, its purchases' payments)",
    )
    parser.add_argument(
        "--aipress24-vat-rates",
        default="consultation=2.1,consultation_gift=2.1,justificatif=20,cession=20",
        help="VAT percent per product type charged on the purchases, as AIPRESS24_VAT_RATES",
    )
    args = parser.parse_args(argv)
    if args.host not in LOOPBACK_HOSTS and not args.host.startswith("127."):
        parser.error(f"--host must be a loopback address, not {args.host!r}")
    if not 0 <= args.refund_share <= 1:
        parser.error(f"--refund-share must be between 0 and 1, not {args.refund_share}")
    try:
        args.start = datetime.fromisoformat(args.start).replace(tzinfo=UTC)
    except ValueError:
        parser.error(f"--start must be a date like 2025-11-01, not {args.start!r}")
    return args


def _with_aipress24(data: StripeDataset, url: str, rates: str) -> StripeDataset:
    from datetime import timedelta
    from decimal import Decimal

    from reconciliation.connectors.aipress24 import Aipress24Reader
    from reconciliation.sandbox.stripe_aipress24 import aipress24_stripe_dataset

    vat_rates = {
        key.strip(): Decimal(value.strip())
        for key, _, value in (item.partition("=") for item in rates.split(",") if item.strip())
    }
    with Aipress24Reader(url=url, settle=timedelta(0)) as reader:
        return aipress24_stripe_dataset(reader, vat_rates=vat_rates, base=data)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    data = generate(
        seed=args.seed,
        customers=args.customers,
        start=args.start,
        months=args.months,
        refund_share=args.refund_share,
    )
    if args.aipress24_database:
        data = _with_aipress24(data, args.aipress24_database, args.aipress24_vat_rates)
    sandbox = StripeSandbox(
        api_key=args.api_key,
        webhook_secret=args.webhook_secret,
        webhook_url=args.webhook_url,
        host=args.host,
        port=args.port,
        data=data,
    )
    sandbox.serve_until_signalled(banner=lambda s: f"Stripe sandbox listening on {s.base_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
