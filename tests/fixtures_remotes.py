"""Pytest plugin: the settings of a worker whose remotes are the sandboxes."""

from __future__ import annotations

import pytest

from tests.fixtures_stripe import STRIPE_TEST_KEY


@pytest.fixture
def remotes(settings, dolibarr_sandbox, dolibarr_api_key, stripe_sandbox):
    """The settings pointing at a fresh sandbox Dolibarr and the sandbox Stripe, as a worker's
    environment would (for commands and tasks that build their connectors from the settings)."""
    settings.DOLIBARR_URL = dolibarr_sandbox.api_url
    settings.DOLIBARR_API_KEY = dolibarr_api_key
    settings.STRIPE_API_KEY = STRIPE_TEST_KEY
    settings.STRIPE_API_BASE = stripe_sandbox.base_url
    settings.STRIPE_MAX_NETWORK_RETRIES = 0
    return settings
