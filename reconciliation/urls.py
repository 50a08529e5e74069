"""The app's URLs for machine clients, without login: inbound webhooks and the health probe."""

from __future__ import annotations

from django.urls import re_path

from reconciliation import health, webhooks

app_name = "reconciliation"

urlpatterns = [
    # With or without the trailing slash: Stripe does not follow the redirect APPEND_SLASH
    # would answer, and a POST cannot be redirected without losing its body anyway.
    re_path(r"^webhooks/stripe/?$", webhooks.stripe_webhook, name="stripe-webhook"),
    re_path(r"^webhooks/aipress24/?$", webhooks.aipress24_push, name="aipress24-push"),
    # Load balancers probe the exact path they are given, and follow no redirect.
    re_path(r"^healthz/?$", health.healthz, name="healthz"),
]
