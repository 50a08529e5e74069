"""Set-up that a sandbox Dolibarr needs beyond its fresh state, done over HTTP so that it works
on a sandbox in another process (the demo, the benchmarks) as well as in the test process.

ap24sync itself never creates bank accounts: a finance team does that in Dolibarr. The demo and
the tests need the account Stripe payouts are transferred to."""

from __future__ import annotations

import requests

PAYOUT_ACCOUNT_REF = "MAIN"


def dolibarr_bank_account_create(
    *,
    api_url: str,
    api_key: str,
    ref: str = PAYOUT_ACCOUNT_REF,
    label: str = "Banque principale",
    currency: str = "EUR",
    timeout: float = 10,
) -> int:
    """Create a current account in the sandbox (recorded shape: exchange 122); its id."""
    response = requests.post(
        f"{api_url}/bankaccounts",
        json={"ref": ref, "label": label, "type": 1, "currency_code": currency, "country_id": 1},
        headers={"DOLAPIKEY": api_key},
        timeout=timeout,
    )
    response.raise_for_status()
    return int(response.json())
