"""Every stream handler, registered by importing its module: the engine imports this one module
so that each `@handler(...)` (and each batched look-up, `@wants(...)`) is known before the first
record is claimed."""

from __future__ import annotations

from reconciliation.sync import (  # noqa: F401
    aipress24_customers,
    aipress24_purchases,
    stripe_customers,
    stripe_invoices,
    stripe_payments,
    stripe_payouts,
    stripe_refunds,
)
