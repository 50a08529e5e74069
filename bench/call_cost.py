"""What one Dolibarr call costs end to end against the sandbox with a set latency, one call at
a time: the floor of how long a numbered call holds the lane (docs/benchmarks.md, "Backfill").

    .venv/bin/python bench/call_cost.py [--latency-ms 20] [--calls 30]

The sandbox runs as its own process (`python -m reconciliation.sandbox.dolibarr --latency-ms N`)
on loopback. One keep-alive client times, call by call: `GET /invoices/{id}`, `POST /invoices`
(one line), `POST /invoices/{id}/validate`, and `POST /invoices/paymentsdistributed`, through
the project's own `DolibarrClient` (as the sync calls them) and, for the GET, through a bare
`requests.Session` too. Printed: the median and p90 in ms, and the cost above the latency.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ap24sync.settings")

API_KEY = "bench-call-cost-key-0123456789abcdef"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--calls", type=int, default=30)
    options = parser.parse_args()

    import django

    django.setup()
    from reconciliation.connectors.dolibarr import DolibarrClient
    from reconciliation.connectors.dolibarr_types import NewLine
    from reconciliation.sandbox.seed import dolibarr_bank_account_create

    command = [sys.executable, "-m", "reconciliation.sandbox.dolibarr", "--port", "0"]
    command += ["--api-key", API_KEY, "--latency-ms", str(options.latency_ms)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        url = process.stdout.readline().strip().rsplit(" ", 1)[-1]
        account = dolibarr_bank_account_create(api_url=url, api_key=API_KEY)
        client = DolibarrClient(base_url=url, api_key=API_KEY)
        socid = client.create_thirdparty(name="Call cost", ref_ext="bench-call-cost")
        line = NewLine(
            qty=Decimal(1), subprice=Decimal("10.00"), tva_tx=Decimal(20), description="Line"
        )
        drafts: list[int] = []
        payment_type = client.payment_type_id(code="CB")
        session = requests.Session()
        session.headers["DOLAPIKEY"] = API_KEY
        steps: dict[str, Callable[[int], object]] = {
            "POST /invoices": lambda n: drafts.append(
                client.create_invoice(thirdparty_id=socid, ref_ext=f"in_cost{n}", lines=[line])
            ),
            "GET /invoices/{id}": lambda n: client.get_invoice(invoice_id=drafts[n]),
            "GET /invoices/{id} (bare requests)": lambda n: session.get(
                f"{url}/invoices/{drafts[n]}", timeout=10
            ).json(),
            "POST /invoices/{id}/validate": lambda n: client.validate_invoice(invoice_id=drafts[n]),
            "POST /invoices/paymentsdistributed": lambda n: client.create_payment(
                amounts={drafts[n]: Decimal("12.00")},
                date=datetime.now(tz=UTC),
                payment_type_id=payment_type,
                bank_account_id=account,
                ref_ext=f"pi_cost{n}",
            ),
        }
        print(f"sandbox Dolibarr, {options.latency_ms:g} ms latency, {options.calls} calls each")
        for label, step in steps.items():
            times = []
            for number in range(options.calls):
                started = time.perf_counter()
                step(number)
                times.append((time.perf_counter() - started) * 1000)
            median = statistics.median(times)
            p90 = statistics.quantiles(times, n=10)[-1]
            print(
                f"  {label:40} median {median:6.2f} ms, p90 {p90:6.2f} ms "
                f"({median - options.latency_ms:+.2f} ms over the latency)"
            )
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
