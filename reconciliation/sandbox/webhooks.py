"""Signing and sending webhook events the way Stripe does, so that the project's inbound endpoint
is tested against the real verification (`stripe.Webhook.construct_event`), not a copy of it.

Stripe signs `"{timestamp}.{body}"` with HMAC-SHA256 under the endpoint's secret (`whsec_…`) and
sends `Stripe-Signature: t={timestamp},v1={hex digest}`; receivers refuse a signature older than
their tolerance (300 s by default).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import requests

SIGNATURE_HEADER = "Stripe-Signature"
USER_AGENT = "Stripe/1.0 (+https://stripe.com/docs/webhooks)"
DEFAULT_TIMEOUT = 10.0


def sign_payload(payload: bytes, secret: str, timestamp: int) -> str:
    """The `Stripe-Signature` header value for `payload` sent at `timestamp` (Unix seconds)."""
    signed = f"{timestamp}.".encode() + payload
    digest = hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def event_payload(event: dict[str, Any]) -> bytes:
    """The body Stripe sends: the event as pretty-printed UTF-8 JSON. The exact bytes matter,
    since the signature covers them."""
    return json.dumps(event, indent=2, ensure_ascii=False).encode("utf-8")


def deliver_event(
    event: dict[str, Any],
    *,
    url: str,
    secret: str,
    session: requests.Session | None = None,
    timestamp: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> requests.Response:
    """POST one signed event to a webhook endpoint and return its answer.

    Network failures are raised as `requests` exceptions: the caller (the sandbox, a test)
    decides whether to record or retry them, as Stripe retries failed deliveries."""
    payload = event_payload(event)
    signed_at = int(time.time()) if timestamp is None else timestamp
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": USER_AGENT,
        SIGNATURE_HEADER: sign_payload(payload, secret, signed_at),
    }
    sender = session or requests
    return sender.post(url, data=payload, headers=headers, timeout=timeout)
