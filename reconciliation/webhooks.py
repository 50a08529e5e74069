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
"""

from __future__ import annotations

import json
import logging
from typing import Any

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from django_q.tasks import async_task

from reconciliation.config import setting_required
from reconciliation.connectors.stripe import InvalidWebhookSignature, verify_webhook
from reconciliation.errors import ConfigurationError
from reconciliation.models import Source
from reconciliation.services.events import inbound_event_store

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 262144
PROCESS_TASK = "reconciliation.tasks.stripe_event_process_task"
# Headers that may carry credentials of whoever sits in front of the endpoint (a proxy, a load
# balancer): never stored. `Stripe-Signature` is kept: it is an HMAC, not a secret, and lets
# a stored body be verified again.
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
