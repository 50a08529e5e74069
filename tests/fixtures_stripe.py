"""pytest plugin: a fresh sandbox Stripe per test, over a small seeded dataset, and the production
StripeConnector pointed at it.

The dataset is generated once per session (it is only read); the server is started per test so
that fault knobs and delivery logs never leak between tests. Twelve customers over four months
are enough for every scenario the generator guarantees (its first twelve personas).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from reconciliation.connectors.stripe import StripeConnector
from reconciliation.sandbox.stripe import StripeSandbox
from reconciliation.sandbox.stripe_data import StripeDataset, generate

STRIPE_TEST_KEY = "sk_test_sandbox0123456789"
STRIPE_TEST_WEBHOOK_SECRET = "whsec_test_sandbox_0123456789"
STRIPE_TEST_SEED = 11
STRIPE_TEST_CUSTOMERS = 12
STRIPE_TEST_START = datetime(2026, 1, 1, tzinfo=UTC)
STRIPE_TEST_MONTHS = 4


@pytest.fixture(scope="session")
def stripe_dataset() -> StripeDataset:
    return generate(
        seed=STRIPE_TEST_SEED,
        customers=STRIPE_TEST_CUSTOMERS,
        start=STRIPE_TEST_START,
        months=STRIPE_TEST_MONTHS,
    )


@pytest.fixture
def stripe_sandbox(stripe_dataset):
    sandbox = StripeSandbox(
        api_key=STRIPE_TEST_KEY,
        webhook_secret=STRIPE_TEST_WEBHOOK_SECRET,
        data=stripe_dataset,
    )
    with sandbox:
        yield sandbox


@pytest.fixture
def stripe_connector(stripe_sandbox) -> StripeConnector:
    return StripeConnector(
        api_key=STRIPE_TEST_KEY,
        api_base=stripe_sandbox.base_url,
        max_network_retries=0,
        timeout=5.0,
    )
