"""The app's URLs: inbound webhooks (machine clients, no login)."""

from __future__ import annotations

from django.urls import re_path

from reconciliation import webhooks

app_name = "reconciliation"

urlpatterns = [
    # With or without the trailing slash: Stripe does not follow the redirect APPEND_SLASH
    # would answer, and a POST cannot be redirected without losing its body anyway.
    re_path(r"^webhooks/stripe/?$", webhooks.stripe_webhook, name="stripe-webhook"),
]
