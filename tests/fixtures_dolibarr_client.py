"""pytest plugin: a DolibarrClient talking over HTTP to the sandbox Dolibarr.

Backoff is 0 so that retries cost no wall time; everything else is the production client.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from reconciliation.connectors.dolibarr import DolibarrClient


@pytest.fixture
def dolibarr_client(dolibarr_sandbox, dolibarr_api_key: str) -> Iterator[DolibarrClient]:
    client = DolibarrClient(
        base_url=dolibarr_sandbox.api_url,
        api_key=dolibarr_api_key,
        backoff_base=0,
        read_timeout=5,
    )
    yield client
    client.close()
