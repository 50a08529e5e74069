"""The sandbox Dolibarr: a stand-in for the Dolibarr 23.0.0-beta REST API, on loopback.

    with DolibarrSandbox(api_key="k") as sandbox:
        requests.get(f"{sandbox.api_url}/status", headers={"DOLAPIKEY": "k"})

Run it alone with `python -m reconciliation.sandbox.dolibarr --port 0 --api-key K`.
See docs/sandbox.md for what it reproduces and what it does not.
"""

from __future__ import annotations

from reconciliation.sandbox.dolibarr.server import API_PREFIX, DolibarrSandbox

__all__ = ["API_PREFIX", "DolibarrSandbox"]
