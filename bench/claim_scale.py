"""What claiming a batch of due records costs when the backlog is large (docs/benchmarks.md,
"Claiming at scale").

    .venv/bin/python bench/claim_scale.py [--records 162000] [--limit 100] [--repeat 5]

Creates a throwaway PostgreSQL database (`ap24sync_claim_<pid>`, dropped at the end), fills it
with pending Stripe records in the proportions of the 20,000-invoice backfill (45,000 balance
transactions, 42,000 charges, 42,000 payment intents, 20,000 invoices, 10,000 customers, 3,000
refunds for 162,000), then times `records_claim_due(limit=…, kinds=…)` for the engine's
phases, giving each claimed batch back before the next try. Printed: the median in ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHARES = {
    "balance_transaction": 45,
    "charge": 42,
    "payment_intent": 42,
    "invoice": 20,
    "customer": 10,
    "refund": 3,
}
PHASES = (
    ["customer"],
    ["invoice"],
    ["refund", "charge", "payment_intent"],
    ["balance_transaction", "payout"],
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=162_000)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--server", default="postgres://postgres@127.0.0.1:5432")
    options = parser.parse_args()
    name = f"ap24sync_claim_{os.getpid()}"
    os.environ.update(
        DJANGO_SETTINGS_MODULE="ap24sync.settings",
        DATABASE_URL=f"{options.server}/postgres",
        DEBUG="false",
        AP24SYNC_ENV_FILE=str(ROOT / "absent.env"),
    )
    import django

    django.setup()
    from django.conf import settings
    from django.db import connection

    settings.DATABASES["default"].setdefault("TEST", {})["NAME"] = name
    original = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        return measure(options)
    finally:
        connection.creation.destroy_test_db(original, verbosity=0)


def measure(options: argparse.Namespace) -> int:
    from django.db import connection

    from reconciliation.models import SyncRecord, SyncState
    from reconciliation.services.records import records_claim_due

    total_share = sum(SHARES.values())
    batch: list[SyncRecord] = []
    for kind, share in SHARES.items():
        for n in range(options.records * share // total_share):
            batch.append(
                SyncRecord(
                    source="stripe",
                    kind=kind,
                    external_id=f"{kind}_{n}",
                    snapshot={"id": f"{kind}_{n}"},
                    snapshot_hash="0" * 64,
                )
            )
            if len(batch) == 5000:
                SyncRecord.objects.bulk_create(batch)
                batch = []
    SyncRecord.objects.bulk_create(batch)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE reconciliation_syncrecord")
    print(f"{SyncRecord.objects.count()} pending records", flush=True)
    for kinds in PHASES:
        times = []
        for _ in range(options.repeat):
            started = time.perf_counter()
            claimed = records_claim_due(limit=options.limit, kinds=kinds)
            times.append(time.perf_counter() - started)
            SyncRecord.objects.filter(pk__in=[r.pk for r in claimed]).update(
                state=SyncState.PENDING, attempts=0
            )
        print(
            f"claim {options.limit} of {'+'.join(kinds)}: median "
            f"{statistics.median(times) * 1000:.1f} ms",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
