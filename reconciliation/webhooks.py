"""Inbound webhook endpoints. Each one checks what it must before storing anything, stores the
event whole, answers only once the row is committed, and leaves the work to a queued task: the
sender retries whatever was not acknowledged, and processing is retryable from the admin.

`POST /webhooks/stripe/` (also without the trailing slash, since Stripe does not follow
redirects and a webhook URL is often configured without it):

| situation | answer | stored |
| --- | --- | --- |
| body over STRIPE_WEBHOOK_MAX_BYTES (Content-Length, then the bytes read) | 413 | no |
| STRIPE_WEBHOOK_SECRET not set | 503 (Stripe retries; one log line names the variable) | no |
| body not a JSON event | 400 | no |
| signature missing, wrong, or older than 300 s | 400 | no |
| a new event | 200 `{"received": true}`, processing queued | yes |
| an event already stored | 200 `{"received": true, "duplicate": true}` | (already) |

`POST /webhooks/aipress24/` (also without the slash), for Aipress24 to announce changes; the
contract its developers follow is docs/aipress24-push.md. Checked in this order:

| situation | answer | stored |
| --- | --- | --- |
| body over AIPRESS24_PUSH_MAX_BYTES | 413 | no |
| AIPRESS24_PUSH_SECRET not set | 503 (one log line names the variable) | no |
| `X-Aipress24-Signature` missing, malformed or matching no `v1=` | 400 | no |
| its `t=` further than AIPRESS24_PUSH_TOLERANCE_SECONDS from now, either way | 400 | no |
| body not the contract's JSON (the answer names the field) | 400 | no |
| an event id already stored (a replay) | 409 `{"error": "event <id> already received"}` | no |
| a new event | 202 `{"received": true}`, processing queued | yes |
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
from typing import Any

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from django_q.tasks import async_task

from reconciliation.config import setting_required
from reconciliation.connectors.stripe import InvalidWebhookSignature, verify_webhook
from reconciliation.errors import Ap24SyncError, ConfigurationError
from reconciliation.models import Source
from reconciliation.services.events import inbound_event_store
from reconciliation.sync.aipress24_events import InvalidPushEvent, push_event_parse

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 262144
PROCESS_TASK = "reconciliation.tasks.stripe_event_process_task"
# Headers that may carry credentials of whoever sits in front of the endpoint (a proxy, a load
# balancer): never stored. `Stripe-Signature` and `X-Aipress24-Signature` are kept: they are
# HMACs, not secrets, and let a stored body be verified again.
_SECRET_HEADER_WORDS = ("authorization", "cookie", "token", "secret", "password", "api-key")


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


def _stored_headers(request: HttpRequest) -> dict[str, str]:
    return {
        name: value
        for name, value in request.headers.items()
        if not any(word in name.lower() for word in _SECRET_HEADER_WORDS)
    }


def _read_body(request: HttpRequest, limit: int) -> bytes | None:
    """The body, or None when it is larger than `limit`. The declared length is checked before
    reading anything; the bytes read are checked too, for bodies sent without a length."""
    declared = request.META.get("CONTENT_LENGTH") or ""
    if declared.strip().isdigit() and int(declared) > limit:
        return None
    body = request.read(limit + 1)
    return None if len(body) > limit else body


def _event_of(body: bytes) -> dict[str, Any] | None:
    """The JSON object in the body if it names an event (`id`, `type`), else None."""
    try:
        payload = json.loads(body)
    except ValueError:  # UnicodeDecodeError included
        return None
    if not isinstance(payload, dict):
        return None
    if not all(isinstance(payload.get(key), str) and payload[key] for key in ("id", "type")):
        return None
    return payload


@csrf_exempt
@require_POST
@transaction.non_atomic_requests
def stripe_webhook(request: HttpRequest) -> JsonResponse:
    limit = getattr(settings, "STRIPE_WEBHOOK_MAX_BYTES", DEFAULT_MAX_BYTES)
    body = _read_body(request, limit)
    if body is None:
        return _error(413, f"body larger than {limit} bytes")
    try:
        secret = setting_required("STRIPE_WEBHOOK_SECRET")
    except ConfigurationError as exc:
        logger.error("Stripe webhook refused with 503: %s", exc)
        return _error(503, "webhook endpoint not configured")
    if _event_of(body) is None:
        return _error(400, "body is not a JSON event")
    try:
        event = verify_webhook(body, request.headers.get("Stripe-Signature"), secret)
    except InvalidWebhookSignature as exc:
        logger.warning("Stripe webhook refused with 400: %s", exc)
        return _error(400, "invalid signature")
    stored, created = inbound_event_store(
        source=Source.STRIPE,
        event_id=event["id"],
        event_type=event["type"],
        body=body.decode("utf-8"),
        headers=_stored_headers(request),
        verified=True,
    )
    if stored.processed_at is None:
        # A replay of an event whose processing failed or never ran queues it again: processing
        # happens at most once (`processed_at`), so this only ever helps.
        transaction.on_commit(lambda: async_task(PROCESS_TASK, stored.pk), robust=True)
    if created:
        return JsonResponse({"received": True})
    return JsonResponse({"received": True, "duplicate": True})


# --- Aipress24 event push ---------------------------------------------------------------------

AIPRESS24_PROCESS_TASK = "reconciliation.tasks.aipress24_event_process_task"
AIPRESS24_SIGNATURE_HEADER = "X-Aipress24-Signature"
_SIGNATURE_FORMAT = f"{AIPRESS24_SIGNATURE_HEADER} is t=<unix seconds>,v1=<hex HMAC-SHA256>"
_UNIX_SECONDS = re.compile(r"[0-9]{1,12}")
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")


class InvalidPushSignature(Ap24SyncError):
    """A push whose signature header is missing, malformed, wrong or outside the tolerance."""


def push_signature(*, body: bytes, secrets: list[str], timestamp: int) -> str:
    """The `X-Aipress24-Signature` value for `body` sent at `timestamp`: one `v1=` per secret
    (two while a secret is being rotated). Aipress24's side of the contract, kept here as the
    reference the tests and docs/aipress24-push.md follow."""
    signed = f"{timestamp}.".encode() + body
    parts = [f"t={timestamp}"] + [
        f"v1={hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()}" for secret in secrets
    ]
    return ",".join(parts)


def verify_push_signature(
    *, body: bytes, header: str | None, secret: str, tolerance: int, now: float
) -> int:
    """The signed timestamp of a push whose header carries a `v1=` HMAC-SHA256 of
    `"<t>.<raw body>"` under `secret` (Stripe's scheme: the timestamp is signed too, so a
    captured request cannot be replayed later with a fresh one), and whose `t=` is at most
    `tolerance` seconds from `now`, either way. Other schemes (`v0=` …) are ignored, as Stripe
    does. Anything else raises InvalidPushSignature with a message safe to answer."""
    if not header:
        raise InvalidPushSignature(f"missing {AIPRESS24_SIGNATURE_HEADER} header")
    timestamps, candidates = [], []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            timestamps.append(value)
        elif key == "v1":
            candidates.append(value.lower())
    if len(timestamps) != 1 or not _UNIX_SECONDS.fullmatch(timestamps[0]) or not candidates:
        raise InvalidPushSignature(f"malformed signature header: {_SIGNATURE_FORMAT}")
    signed_at = timestamps[0]
    expected = hmac.new(
        secret.encode(), f"{signed_at}.".encode() + body, hashlib.sha256
    ).hexdigest()
    # Every candidate is compared (in constant time each), so the answer's timing does not
    # say which one matched; non-hex values cannot match and are not compared.
    matched = [
        hmac.compare_digest(expected, candidate)
        for candidate in candidates
        if _HEX_SHA256.fullmatch(candidate)
    ]
    if not any(matched):
        raise InvalidPushSignature("invalid signature")
    if abs(now - int(signed_at)) > tolerance:
        raise InvalidPushSignature(f"timestamp outside the tolerance ({tolerance} s)")
    return int(signed_at)


def _unix_now() -> float:
    """The clock the signature's timestamp is checked against (tests freeze it)."""
    return time.time()


@csrf_exempt
@require_POST
@transaction.non_atomic_requests
def aipress24_push(request: HttpRequest) -> JsonResponse:
    limit = settings.AIPRESS24_PUSH_MAX_BYTES
    body = _read_body(request, limit)
    if body is None:
        return _error(413, f"body larger than {limit} bytes")
    try:
        secret = setting_required("AIPRESS24_PUSH_SECRET")
    except ConfigurationError as exc:
        logger.error("Aipress24 push refused with 503: %s", exc)
        return _error(503, "push endpoint not configured")
    tolerance = settings.AIPRESS24_PUSH_TOLERANCE_SECONDS
    try:
        verify_push_signature(
            body=body,
            header=request.headers.get(AIPRESS24_SIGNATURE_HEADER),
            secret=secret,
            tolerance=tolerance,
            now=_unix_now(),
        )
    except InvalidPushSignature as exc:
        logger.warning("Aipress24 push refused with 400: %s", exc)
        return _error(400, str(exc))
    try:
        push = push_event_parse(body)
    except InvalidPushEvent as exc:
        logger.warning("Aipress24 push refused with 400: %s", exc)
        answer = {"error": str(exc), **({"field": exc.field} if exc.field else {})}
        return JsonResponse(answer, status=400)
    stored, created = inbound_event_store(
        source=Source.AIPRESS24,
        event_id=push.event_id,
        event_type=push.event_type,
        body=body.decode("utf-8"),
        headers=_stored_headers(request),
        verified=True,
        received_via="push",
    )
    if stored.processed_at is None:
        # A replay of an event whose processing failed or never ran queues it again, as for
        # Stripe: processing happens at most once (`processed_at`), so this only ever helps.
        transaction.on_commit(lambda: async_task(AIPRESS24_PROCESS_TASK, stored.pk), robust=True)
    if not created:
        return _error(409, f"event {push.event_id} already received")
    return JsonResponse({"received": True}, status=202)
