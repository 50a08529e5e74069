"""Pytest plugin: a fresh sandbox Dolibarr per test, on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from reconciliation.sandbox.dolibarr import DolibarrSandbox

SANDBOX_API_KEY = "sandbox-test-key-0123456789abcdef"


@pytest.fixture
def dolibarr_api_key() -> str:
    return SANDBOX_API_KEY


@pytest.fixture
def dolibarr_sandbox(dolibarr_api_key: str) -> Iterator[DolibarrSandbox]:
    """Started before the test, stopped after it; its state starts fresh (see docs/sandbox.md:
    own company FR/EUR, the recorded dictionaries, bank account 1 `STRIPE` "Stripe EUR")."""
    sandbox = DolibarrSandbox(api_key=dolibarr_api_key)
    sandbox.start()
    try:
        yield sandbox
    finally:
        sandbox.stop()
