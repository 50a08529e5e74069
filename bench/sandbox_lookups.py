"""Latency of the sandbox Dolibarr's selective list look-ups as its tables fill up.

    .venv/bin/python bench/sandbox_lookups.py [--rows 2000 20000] [--criteria 40] [--repeat 30]

For each table size, an in-process sandbox (zero latency) is filled directly through its store
with that many payments, each with its `(CustomerInvoicePayment)` bank line on account 1 (the
shape the sync writes: `ref_ext` = Stripe id, `num_payment` = `num_chq` = transaction id). One
client on a keep-alive `requests.Session` then times `--repeat` look-ups of each kind, every one
an `or` of `--criteria` equality criteria spread over the table (half of them hit, half miss):

* `GET /paiements?sqlfilters=(t.ref_ext:=:'…') or …`
* `GET /paiements?sqlfilters=(t.num_paiement:=:'…') or …`
* `GET /bankaccounts/1/lines?sqlfilters=(num_chq:=:'…') or …`

and prints the median and 90th percentile per request. Nothing leaves loopback.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path

import requests

# Run as a script from the repository root: make the project importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reconciliation.sandbox.dolibarr import DolibarrSandbox
from reconciliation.sandbox.dolibarr.store import Payment, now

API_KEY = "bench-key-0123456789abcdef"


def fill(sandbox: DolibarrSandbox, rows: int) -> None:
    store = sandbox.store
    moment = now()
    with store.lock:
        for index in range(rows):
            payment = Payment(
                id=store.next_id("paiement"),
                ref=f"PAY2611-{index + 1:05d}",
                datepaye=moment,
                amount=Decimal("12.34"),
                type_id=6,
                fk_account=1,
                allocations=[],
                ref_ext=f"ch_{index:08d}",
                num_payment=f"txn_{index:08d}",
            )
            store.add_payment(payment)
            line = store.add_bank_line(
                account_id=1,
                when=moment,
                amount=payment.amount,
                fk_type="CB",
                label="(CustomerInvoicePayment)",
                num_chq=payment.num_payment,
            )
            payment.bank_line_id = line.id


def filter_text(field: str, prefix: str, rows: int, criteria: int, rng: random.Random) -> str:
    hits = rng.sample(range(rows), criteria // 2)
    misses = [rows + offset for offset in range(criteria - len(hits))]
    values = [f"{prefix}{index:08d}" for index in hits + misses]
    rng.shuffle(values)
    return " or ".join(f"({field}:=:'{value}')" for value in values)


def measure(
    session: requests.Session, url: str, texts: list[str], expected: int
) -> tuple[float, float]:
    durations = []
    for text in texts:
        started = time.perf_counter()
        response = session.get(url, params={"sqlfilters": text, "limit": 0})
        durations.append(time.perf_counter() - started)
        response.raise_for_status()
        assert len(response.json()) == expected, (url, len(response.json()))
    durations.sort()
    return statistics.median(durations) * 1000, durations[int(len(durations) * 0.9)] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--criteria", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    arguments = parser.parse_args()
    rng = random.Random(arguments.seed)
    kinds = [
        ("/paiements", "t.ref_ext", "ch_"),
        ("/paiements", "t.num_paiement", "txn_"),
        ("/bankaccounts/1/lines", "num_chq", "txn_"),
    ]
    print(f"{arguments.criteria} criteria per look-up, {arguments.repeat} look-ups per figure")
    for rows in arguments.rows:
        with DolibarrSandbox(api_key=API_KEY, numbering_window_ms=0) as sandbox:
            fill(sandbox, rows)
            session = requests.Session()
            session.headers["DOLAPIKEY"] = API_KEY
            for route, field, prefix in kinds:
                texts = [
                    filter_text(field, prefix, rows, arguments.criteria, rng)
                    for _ in range(arguments.repeat)
                ]
                median, p90 = measure(
                    session, sandbox.api_url + route, texts, arguments.criteria // 2
                )
                print(
                    f"{rows:>7} rows  GET {route} ({field} x{arguments.criteria}): "
                    f"median {median:8.2f} ms  p90 {p90:8.2f} ms"
                )
            session.close()


if __name__ == "__main__":
    main()
