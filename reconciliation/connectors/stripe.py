"""Reading Stripe: the only code that speaks Stripe's API. It goes through the official SDK
(`stripe.StripeClient`), so that what the tests exercise against the sandbox is what runs against
Stripe, and hands back plain JSON-ready dicts (`to_dict(for_json=True)`), never SDK objects.

Lists are lazy: pages are fetched while the caller iterates (`auto_paging_iter`), so a sync can
process ten thousand invoices without holding them. Every SDK failure becomes one of the project's
errors (`TransientError`, `PermanentError`, `NotFoundError`, `AuthenticationError`), raised with
a message that never contains the API key. Each HTTP request is counted by endpoint in
`call_counts`, which tests and benchmarks use to check how many calls a job costs.

Stripe's circuit breaker (`resilience`) sits in the SDK's transport, under its retries: every
HTTP attempt asks it first (`CircuitOpenError`, nothing sent, while it is open) and tells it how
it went (no answer, 429 and 5xx are failures; any other answer is a success). A connector made by
`from_settings` uses the process's breaker; one built by hand has none unless given one. The
SDK's retries back off 1, 2, 4, 8, 16 s ±20 % (DESIGN §7), not its own 0.5 s to 5 s.
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
import stripe

from reconciliation.config import setting_required
from reconciliation.errors import (
    AuthenticationError,
    NotFoundError,
    PermanentError,
    RemoteError,
    TransientError,
)
from reconciliation.logs import REDACTED

if TYPE_CHECKING:
    from reconciliation.resilience import Breaker

logger = logging.getLogger(__name__)

SYSTEM = "stripe"
MAX_PAGE_SIZE = 100
DEFAULT_TIMEOUT = (3.05, 30.0)  # connect, read (seconds)
WEBHOOK_TOLERANCE = 300
REAL_STRIPE_API = "https://api.stripe.com"

# Path segments that name collections; anything else in a path is an object id.
_COLLECTION_WORDS = frozenset(
    {
        "v1",
        "balance",
        "balance_transactions",
        "charges",
        "coupons",
        "customers",
        "events",
        "invoice_payments",
        "invoices",
        "lines",
        "payment_intents",
        "payouts",
        "refunds",
        "tax_ids",
        "tax_rates",
    }
)
# Secret, restricted and publishable keys, whole or as Stripe masks them in error messages.
_KEY_PATTERN = re.compile(r"\b[srp]k_(?:test|live)_[A-Za-z0-9*]+")


class InvalidWebhookSignature(PermanentError):
    """A webhook whose `Stripe-Signature` does not match its body, secret or time window."""


def endpoint_label(method: str, url: str) -> str:
    """`GET /v1/invoices/{id}` for `GET https://…/v1/invoices/in_123?expand[0]=…`: the key of
    `call_counts` and the `endpoint` of errors, with ids folded so that counts add up."""
    segments = urlsplit(url).path.strip("/").split("/")
    folded = [s if s in _COLLECTION_WORDS else "{id}" for s in segments if s]
    return f"{method.upper()} /{'/'.join(folded)}"


class _CountingRequestsClient(stripe.RequestsClient):
    """The SDK's own `requests` transport, counting each HTTP attempt (retries included) and
    putting each behind the breaker, if any. A CircuitOpenError raised here is not one of the
    SDK's errors: it goes through the SDK's retry loop and up to the caller untouched."""

    def __init__(
        self,
        *,
        counts: Counter[str],
        timeout: float | tuple[float, float],
        session: requests.Session | None,
        breaker: Breaker | None = None,
        backoff_base: float = 1.0,
    ) -> None:
        super().__init__(timeout=timeout, session=session)
        self._counts = counts
        self._breaker = breaker
        self._backoff_base = backoff_base

    def request(self, method, url, headers, post_data=None):  # type: ignore[override]
        endpoint = endpoint_label(method, url)
        breaker = self._breaker
        if breaker is None:
            self._counts[endpoint] += 1
            return super().request(method, url, headers, post_data)
        ticket = breaker.before_call(endpoint=endpoint)
        self._counts[endpoint] += 1
        try:
            answer = super().request(method, url, headers, post_data)
        except stripe.APIConnectionError as exc:
            failure = TransientError(
                f"Stripe is unreachable: {_connection_failure(str(exc.user_message or exc))} "
                f"({endpoint})",
                system=SYSTEM,
                endpoint=endpoint,
            )
            if breaker.record_failure(ticket, failure):
                raise breaker.open_error(failure, endpoint=endpoint) from exc
            raise
        status = answer[1]
        if status == 429 or status >= 500:
            failure = TransientError(
                f"Stripe answered {status} ({endpoint})",
                system=SYSTEM,
                status=status,
                endpoint=endpoint,
            )
            if breaker.record_failure(ticket, failure):
                raise breaker.open_error(failure, endpoint=endpoint)
        else:
            breaker.record_success(ticket)
        return answer

    def _sleep_time_seconds(self, num_retries: int) -> float:
        """Between the SDK's retries (it counts from 1): 1, 2, 4, 8, 16 s ±20 % (DESIGN §7)."""
        return self._backoff_base * (2 ** (num_retries - 1)) * random.uniform(0.8, 1.2)


def _unix(value: int | datetime | None, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"{name} must be an aware datetime")
        return int(value.timestamp())
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int (Unix seconds) or an aware datetime")
    return value


def created_range(
    created_gte: int | datetime | None, created_lt: int | datetime | None
) -> dict[str, int]:
    """Stripe's `created` filter for a half-open window [gte, lt)."""
    bounds = {"gte": _unix(created_gte, "created_gte"), "lt": _unix(created_lt, "created_lt")}
    return {key: value for key, value in bounds.items() if value is not None}


class StripeConnector:
    """Read access to one Stripe account (or the sandbox), through `stripe.StripeClient`.

    `api_base` empty or None means the real Stripe API. `max_network_retries` is passed to the
    SDK explicitly: the SDK does not retry unless told to. `session` lets the caller share or
    instrument the HTTP session."""

    system = SYSTEM

    def __init__(
        self,
        *,
        api_key: str,
        api_base: str | None = None,
        max_network_retries: int = 2,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
        session: requests.Session | None = None,
        breaker: Breaker | None = None,
        backoff_base: float = 1.0,
    ) -> None:
        if not api_key:
            raise ValueError("a Stripe API key is required")
        self.api_base = (api_base or "").rstrip("/") or None
        self.max_network_retries = max_network_retries
        self.call_counts: Counter[str] = Counter()
        self.breaker = breaker
        self._api_key = api_key
        http_client = _CountingRequestsClient(
            counts=self.call_counts,
            timeout=timeout,
            session=session,
            breaker=breaker,
            backoff_base=backoff_base,
        )
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": self.api_base} if self.api_base else None,
            max_network_retries=max_network_retries,
            http_client=http_client,
        )

    @classmethod
    def from_settings(cls, *, guarded: bool = True) -> StripeConnector:
        """Built from STRIPE_API_KEY (required), STRIPE_API_BASE and STRIPE_MAX_NETWORK_RETRIES,
        read now rather than at import. `guarded`: behind the process's Stripe circuit breaker
        (a diagnostic that must reach Stripe whatever the breaker says passes False)."""
        from django.conf import settings

        from reconciliation.resilience import breaker_for

        return cls(
            api_key=setting_required("STRIPE_API_KEY"),
            api_base=getattr(settings, "STRIPE_API_BASE", "") or None,
            max_network_retries=getattr(settings, "STRIPE_MAX_NETWORK_RETRIES", 2),
            breaker=breaker_for(SYSTEM) if guarded else None,
        )

    def __repr__(self) -> str:
        return f"<StripeConnector {self.api_base or REAL_STRIPE_API}>"

    def reset_call_counts(self) -> None:
        self.call_counts.clear()

    # -- lists (newest first, lazily paged) ------------------------------------------------
    def customers(
        self,
        *,
        created_gte: int | datetime | None = None,
        created_lt: int | datetime | None = None,
        email: str | None = None,
        limit: int = MAX_PAGE_SIZE,
    ) -> Iterator[dict[str, Any]]:
        return self._list("customers", limit, created_gte, created_lt, email=email)

    def invoices(
        self,
        *,
        created_gte: int | datetime | None = None,
        created_lt: int | datetime | None = None,
        customer: str | None = None,
        status: str | None = None,
        with_payments: bool = False,
        limit: int = MAX_PAGE_SIZE,
    ) -> Iterator[dict[str, Any]]:
        """Invoices with all their lines (fetched when Stripe embeds only the first ones) and,
        with `with_payments`, their invoice payments (`payments`, the link to what paid them)."""
        expand = ["data.payments"] if with_payments else None
        for invoice in self._list(
            "invoices",
            limit,
            created_gte,
            created_lt,
            customer=customer,
            status=status,
            expand=expand,
        ):
            yield self._with_all_lines(invoice)

    def invoice_lines(self, invoice_id: str, *, limit: int = MAX_PAGE_SIZE) -> Iterator[dict]:
        endpoint = "GET /v1/invoices/{id}/lines"
        params = {"limit": _page_size(limit)}
        yield from self._paged(
            endpoint, lambda: self._client.v1.invoices.line_items.list(invoice_id, params=params)
        )

    def invoice_payments(
        self,
        *,
        invoice: str | None = None,
        created_gte: int | datetime | None = None,
        created_lt: int | datetime | None = None,
        limit: int = MAX_PAGE_SIZE,
    ) -> Iterator[dict[str, Any]]:
        """What paid an invoice: each item's `payment` names a payment intent (or a charge)."""
        return self._list("invoice_payments", limit, created_gte, created_lt, invoice=invoice)

    def charges(
        self,
        *,
        created_gte: int | datetime | None = None,
        created_lt: int | datetime | None = None,
        customer: str | None = None,
        payment_intent: str | None = None,
        limit: int = MAX_PAGE_SIZE,
    ) -> Iterator[dict[str, Any]]:
        return self._list(
            "charges",
            limit,
            created_gte,
            created_lt,
            customer=customer,
            payment_intent=payment_intent,
        )

    def payment_intents(
        self,
        *,
        created_gte: int | datetime | None = None,
        created_lt: int | datetime | None = None,
        customer: str | None = None,
        limit: int = MAX_PAGE_SIZE,
    ) -> Iterator[dict[str, Any]]:
        return self._list("payment_intents", limit, created_gte, created_lt, customer=customer)

    def refunds(
        self,
        *,
        created_gte: int | datetime | None = None,
        created_lt: int | datetime | None = None,
        charge: str | None = None,
        payment_intent: str | None = None,
        limit: int = MAX_PAGE_SIZE,
    ) -> Iterator[dict[str, Any]]:
        return self._list(
            "refunds",
            limit,
            created_gte,
            created_lt,
            charge=charge,
            payment_intent=payment_intent,
        )

    def balance_transactions(
        self,
        *,
        created_gte: int | datetime | None = None,
        created_lt: int | datetime | None = None,
        payout: str | None = None,
        type: str | None = None,
        limit: int = MAX_PAGE_SIZE,
    ) -> Iterator[dict[str, Any]]:
        """Balance transactions (fees in `fee`/`fee_details`). With `payout`: what that payout
        paid out, its own `payout` transaction included."""
        return self._list(
            "balance_transactions",
            limit,
            created_gte,
            created_lt,
            payout=payout,
            type=type,
        )

    def payouts(
        self,
        *,
        created_gte: int | datetime | None = None,
        created_lt: int | datetime | None = None,
        status: str | None = None,
        limit: int = MAX_PAGE_SIZE,
    ) -> Iterator[dict[str, Any]]:
        return self._list("payouts", limit, created_gte, created_lt, status=status)

    def events(
        self,
        *,
        created_gte: int | datetime | None = None,
        created_lt: int | datetime | None = None,
        types: list[str] | None = None,
        limit: int = MAX_PAGE_SIZE,
    ) -> Iterator[dict[str, Any]]:
        return self._list("events", limit, created_gte, created_lt, types=types)

    def events_since(
        self,
        cursor: str | None,
        *,
        types: list[str] | None = None,
        created_gte: int | datetime | None = None,
        limit: int = MAX_PAGE_SIZE,
    ) -> Iterator[dict[str, Any]]:
        """Events after the event `cursor`, **oldest first**, so that the caller can move its
        cursor after each one. Pages backwards with `ending_before`, as Stripe recommends.
        Without a cursor: every event Stripe still holds (from `created_gte`), oldest first.
        A cursor Stripe no longer knows (events are kept 30 days) raises NotFoundError."""
        if cursor:
            params: dict[str, Any] = {"ending_before": cursor, "limit": _page_size(limit)}
            if types:
                params["types"] = types
            yield from self._paged(
                "GET /v1/events", lambda: self._client.v1.events.list(params=params)
            )
            return
        newest_first = list(self.events(created_gte=created_gte, types=types, limit=limit))
        yield from reversed(newest_first)

    def tax_rates(self, *, limit: int = MAX_PAGE_SIZE) -> Iterator[dict[str, Any]]:
        return self._list("tax_rates", limit, None, None)

    def coupons(self, *, limit: int = MAX_PAGE_SIZE) -> Iterator[dict[str, Any]]:
        return self._list("coupons", limit, None, None)

    # -- single objects --------------------------------------------------------------------
    def customer(self, customer_id: str, *, with_tax_ids: bool = False) -> dict[str, Any]:
        return self._retrieve("customers", customer_id, ["tax_ids"] if with_tax_ids else None)

    def invoice(self, invoice_id: str, *, with_payments: bool = False) -> dict[str, Any]:
        invoice = self._retrieve("invoices", invoice_id, ["payments"] if with_payments else None)
        return self._with_all_lines(invoice)

    def charge(self, charge_id: str) -> dict[str, Any]:
        return self._retrieve("charges", charge_id)

    def payment_intent(self, payment_intent_id: str) -> dict[str, Any]:
        return self._retrieve("payment_intents", payment_intent_id)

    def refund(self, refund_id: str) -> dict[str, Any]:
        return self._retrieve("refunds", refund_id)

    def balance_transaction(self, transaction_id: str) -> dict[str, Any]:
        return self._retrieve("balance_transactions", transaction_id)

    def payout(self, payout_id: str) -> dict[str, Any]:
        return self._retrieve("payouts", payout_id)

    def event(self, event_id: str) -> dict[str, Any]:
        return self._retrieve("events", event_id)

    def balance(self) -> dict[str, Any]:
        """Available and pending amounts per currency, in minor units."""
        try:
            return self._client.v1.balance.retrieve().to_dict(for_json=True)
        except stripe.StripeError as exc:
            raise self._translate(exc, "GET /v1/balance") from exc

    # -- webhooks --------------------------------------------------------------------------
    def verify_webhook(self, payload: bytes | str, header: str | None, secret: str) -> dict:
        """The event in a webhook body, after checking its `Stripe-Signature` with Stripe's own
        code (HMAC-SHA256, at most 300 s old). Anything else raises InvalidWebhookSignature."""
        return verify_webhook(payload, header, secret)

    # -- plumbing --------------------------------------------------------------------------
    def _list(
        self,
        resource: str,
        limit: int,
        created_gte: int | datetime | None,
        created_lt: int | datetime | None,
        *,
        expand: list[str] | None = None,
        **filters: Any,
    ) -> Iterator[dict[str, Any]]:
        params: dict[str, Any] = {"limit": _page_size(limit)}
        created = created_range(created_gte, created_lt)
        if created:
            params["created"] = created
        params.update({name: value for name, value in filters.items() if value is not None})
        if expand:
            params["expand"] = expand
        service = getattr(self._client.v1, resource)
        return self._paged(f"GET /v1/{resource}", lambda: service.list(params=params))

    def _paged(self, endpoint: str, first_page: Any) -> Iterator[dict[str, Any]]:
        logger.debug("stripe: listing %s", endpoint)
        try:
            for obj in first_page().auto_paging_iter():
                yield obj.to_dict(for_json=True)
        except stripe.StripeError as exc:
            raise self._translate(exc, endpoint) from exc

    def _retrieve(
        self, resource: str, object_id: str, expand: list[str] | None = None
    ) -> dict[str, Any]:
        endpoint = f"GET /v1/{resource}/{{id}}"
        params = {"expand": expand} if expand else None
        try:
            obj = getattr(self._client.v1, resource).retrieve(object_id, params=params)
        except stripe.StripeError as exc:
            raise self._translate(exc, endpoint) from exc
        return obj.to_dict(for_json=True)

    def _with_all_lines(self, invoice: dict[str, Any]) -> dict[str, Any]:
        """Stripe embeds the first lines only; fetch the rest so an invoice is always whole."""
        lines = invoice.get("lines") or {}
        if lines.get("has_more"):
            lines["data"] = list(self.invoice_lines(invoice["id"]))
            lines["has_more"] = False
        return invoice

    def _redact(self, text: str) -> str:
        return _KEY_PATTERN.sub(REDACTED, text.replace(self._api_key, REDACTED))

    def _translate(self, exc: stripe.StripeError, endpoint: str) -> RemoteError:
        """The project's error for an SDK failure: transient (retry later) for connection
        problems, 429 and 5xx; permanent otherwise, with 401/403 and 404 told apart."""
        status = exc.http_status
        detail = self._redact(str(exc.user_message or type(exc).__name__))
        where = f"{endpoint} ({status})" if status else endpoint
        if isinstance(exc, stripe.APIConnectionError):
            return TransientError(
                f"Stripe is unreachable at {self.api_base or REAL_STRIPE_API}: "
                f"{_connection_failure(detail)} ({endpoint})",
                system=SYSTEM,
                endpoint=endpoint,
            )
        if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
            error_class: type[RemoteError] = AuthenticationError
            message = f"Stripe refused the API key on {where}: {detail}"
        elif isinstance(exc, stripe.RateLimitError) or status is None or status >= 500:
            error_class, message = TransientError, f"Stripe is unavailable on {where}: {detail}"
        elif status == 404:
            error_class, message = NotFoundError, f"Stripe has no such object on {where}: {detail}"
        else:
            error_class, message = PermanentError, f"Stripe refused {where}: {detail}"
        return error_class(message, system=SYSTEM, status=status, endpoint=endpoint)


def verify_webhook(payload: bytes | str, header: str | None, secret: str) -> dict[str, Any]:
    """See `StripeConnector.verify_webhook`; usable without a connector (the inbound view has a
    webhook secret, not necessarily an API key)."""
    try:
        event = stripe.Webhook.construct_event(payload, header, secret, tolerance=WEBHOOK_TOLERANCE)
    except stripe.SignatureVerificationError as exc:
        raise InvalidWebhookSignature(
            "Stripe webhook signature verification failed", system=SYSTEM, status=400
        ) from exc
    except ValueError as exc:
        raise InvalidWebhookSignature(
            "Stripe webhook body is not a JSON event", system=SYSTEM, status=400
        ) from exc
    return event.to_dict(for_json=True)


def _page_size(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit is a page size from 1 to {MAX_PAGE_SIZE}, not {limit!r}")
    return limit


__all__ = [
    "InvalidWebhookSignature",
    "StripeConnector",
    "created_range",
    "endpoint_label",
    "verify_webhook",
]


def _connection_failure(detail: str) -> str:
    """One short reason instead of the SDK's multi-line network error text."""
    lowered = detail.lower()
    for needle, reason in (
        ("connection refused", "connection refused"),
        ("timed out", "timed out"),
        ("read timeout", "timed out"),
        ("name or service not known", "unknown host"),
        ("nodename nor servname", "unknown host"),
        ("remotedisconnected", "connection closed without an answer"),
        ("connection aborted", "connection closed without an answer"),
        ("connection reset", "connection reset"),
        ("ssl", "TLS error"),
    ):
        if needle in lowered:
            return reason
    return "network error"
