"""How fast the finance console's pages render over a large history (docs/benchmarks.md,
"The console at scale").

    .venv/bin/python bench/console_scale.py [--records 1000000] [--mismatches 100000]
        [--audit 1000000] [--repeat 15] [--server postgres://postgres@127.0.0.1:5432]

Creates a throwaway PostgreSQL database (`ap24sync_console_<pid>`, dropped at the end), fills it
with SQL (`generate_series`: a million sync records over 30 days in the proportions of a Stripe +
Aipress24 history, a hundred thousand mismatches of every kind and state, a million audit
events), runs ANALYZE, then renders each page with Django's test client as a logged-in finance
operator — the whole request: middleware, session, permissions, queries, template — and prints
the median and the 90th percentile of `--repeat` renders after one warm-up, and the number of
SQL queries of one render.
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

PAGES = (
    ("dashboard", "/console/"),
    # Its record counts and chart are cached (60 s, and the past days once a day): also
    # rendered with the cache emptied before every render.
    ("dashboard, nothing cached", "/console/"),
    ("records, first page", "/console/records/"),
    (
        "records, failed Stripe invoices",
        "/console/records/?source=stripe&kind=invoice&state=failed",
    ),
    ("records, search by external id", "/console/records/?q=obj_4242"),
    ("records, search by Dolibarr ref", "/console/records/?q=FA777777"),
    ("records, search by customer e-mail", "/console/records/?q=customer4242@example.org"),
    ("mismatch queue", "/console/mismatches/"),
    (
        "mismatch queue, critical totals",
        "/console/mismatches/?kind=total_differs&severity=critical",
    ),
    ("audit trail", "/console/audit/"),
    ("job runs", "/console/runs/"),
)

_RECORDS_SQL = """
INSERT INTO reconciliation_syncrecord (
    source, kind, external_id, snapshot, snapshot_hash, state, dolibarr_kind, dolibarr_id,
    dolibarr_ref, attempts, next_attempt_at, last_attempt_at, last_error, synced_at, created_at,
    updated_at)
SELECT
    CASE WHEN g %% 10 < 8 THEN 'stripe' ELSE 'aipress24' END,
    CASE WHEN g %% 10 < 8
        THEN (ARRAY['balance_transaction', 'charge', 'payment_intent', 'invoice', 'customer',
                    'refund', 'payout', 'invoice'])[1 + (g / 10) %% 8]
        ELSE (ARRAY['purchase', 'organisation', 'user', 'subscription'])[1 + (g / 10) %% 4]
    END,
    'obj_' || g,
    jsonb_build_object(
        'id', 'obj_' || g, 'email', 'customer' || (g %% 50000) || '@example.org',
        'name', 'Customer ' || (g %% 50000), 'total', g %% 100000, 'currency', 'eur',
        'status', 'paid'),
    md5(g::text) || md5((g + 1)::text),
    (ARRAY['synced', 'synced', 'synced', 'synced', 'synced', 'synced', 'synced', 'skipped',
           'pending', 'failed', 'needs_review', 'synced'])[1 + g %% 12],
    'invoice', g, 'FA' || g, 1 + g %% 3, NULL,
    now() - (g %% 30) * interval '1 day',
    CASE WHEN g %% 12 = 9 THEN 'Dolibarr answered 500 (Internal Server Error)' ELSE '' END,
    now() - (g %% 30) * interval '1 day' - (g %% 86400) * interval '1 second',
    now() - (g %% 30) * interval '1 day' - interval '1 hour',
    now() - (g %% 30) * interval '1 day' - (g %% 86400) * interval '1 second'
FROM generate_series(1, %(records)s) AS g
"""

_MISMATCHES_SQL = """
INSERT INTO reconciliation_mismatch (
    kind, severity, severity_rank, fingerprint, record_id, summary, amount_difference, currency,
    source_snapshot, dolibarr_snapshot, proposed_fix, proposed_fix_params, state, decided_by_id,
    decided_at, note, detected_at, last_seen_at, closed_at)
SELECT
    (ARRAY['missing_in_dolibarr', 'missing_at_source', 'duplicate_in_dolibarr', 'total_differs',
           'status_differs', 'payment_unlinked', 'refund_missing', 'currency_unsupported',
           'customer_conflict', 'payout_unbalanced', 'balance_differs',
           'sync_failed'])[1 + g %% 12],
    (ARRAY['info', 'warning', 'warning', 'critical'])[1 + g %% 4],
    (ARRAY[2, 1, 1, 0])[1 + g %% 4],
    md5('m' || g) || md5('n' || g),
    (SELECT min(id) FROM reconciliation_syncrecord) + (g * 7) %% %(records)s,
    'Dolibarr invoice FA' || g || ' totals 12.34 EUR, Stripe invoice in_' || g || ' 12.35',
    ((g %% 2000) - 1000) / 100.0, 'EUR',
    jsonb_build_object('id', 'in_' || g), jsonb_build_object('id', g),
    CASE WHEN g %% 3 = 0 THEN 'retry_record' ELSE '' END, '{}'::jsonb,
    (ARRAY['resolved', 'resolved', 'resolved', 'resolved', 'resolved', 'open', 'open', 'open',
           'approved', 'ignored'])[1 + g %% 10],
    NULL, NULL, '',
    now() - (g %% 30) * interval '1 day', now() - (g %% 30) * interval '1 day',
    CASE WHEN g %% 10 < 5 THEN now() - (g %% 30) * interval '1 day' END
FROM generate_series(1, %(mismatches)s) AS g
"""

_AUDIT_SQL = """
INSERT INTO reconciliation_auditevent (
    occurred_at, actor_type, actor_id, actor_label, action, target_type, target_id, target_label,
    before, after, reason)
SELECT
    now() - (g %% 30) * interval '1 day' - (g %% 86400) * interval '1 second',
    'system', NULL, 'sync engine',
    (ARRAY['record.synced', 'record.synced', 'record.synced', 'record.observed',
           'record.source_changed', 'record.failed', 'mismatch.opened', 'dolibarr.invoice_created',
           'dolibarr.payment_created', 'run.succeeded'])[1 + g %% 10],
    'syncrecord', (g %% %(records)s)::text, 'stripe:invoice:obj_' || g,
    '{"state": "in_progress"}'::jsonb, '{"state": "synced"}'::jsonb, ''
FROM generate_series(1, %(audit)s) AS g
"""

_RUNS_SQL = """
INSERT INTO reconciliation_syncrun (
    job, trigger, state, started_at, finished_at, counts, cursor_before, cursor_after, error,
    started_by_id)
SELECT
    (ARRAY['stripe_sync', 'aipress24_sync', 'sync_retry', 'reconcile', 'stripe_events',
           'breakers_check'])[1 + g % 6],
    'schedule', (ARRAY['succeeded', 'succeeded', 'succeeded', 'failed'])[1 + g % 4],
    now() - g * interval '5 minutes', now() - g * interval '5 minutes' + interval '40 seconds',
    '{"seen": 120, "synced": 40}'::jsonb, '', '',
    CASE WHEN g % 4 = 3 THEN 'Dolibarr unreachable' ELSE '' END, NULL
FROM generate_series(1, 100000) AS g
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--mismatches", type=int, default=100_000)
    parser.add_argument("--audit", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--server", default="postgres://postgres@127.0.0.1:5432")
    options = parser.parse_args()
    name = f"ap24sync_console_{os.getpid()}"
    os.environ.update(
        DJANGO_SETTINGS_MODULE="ap24sync.settings",
        DATABASE_URL=f"{options.server}/postgres",
        DEBUG="false",
        ALLOWED_HOSTS="testserver,localhost",
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
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.core.cache import cache
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    started = time.perf_counter()
    params = vars(options)
    with connection.cursor() as cursor:
        cursor.execute(_RECORDS_SQL, params)
        cursor.execute(_MISMATCHES_SQL, params)
        cursor.execute(_AUDIT_SQL, params)
        cursor.execute(_RUNS_SQL)
        cursor.execute("ANALYZE")
    print(
        f"seeded {options.records:,} records, {options.mismatches:,} mismatches, "
        f"{options.audit:,} audit events, 100,000 runs in {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    user = get_user_model().objects.create_user("bench", password="x", is_staff=True)
    user.groups.add(Group.objects.get(name="Finance operator"))
    client = Client()
    client.force_login(user)
    print(f"{'page':<40} {'median':>8} {'p90':>8} {'queries':>8}")
    for label, url in PAGES:
        response = client.get(url)  # warm-up (and the status check)
        if response.status_code != 200:
            print(f"{label:<40} HTTP {response.status_code}", flush=True)
            continue
        cold = "nothing cached" in label
        times = []
        for _ in range(options.repeat):
            if cold:
                cache.clear()
            begun = time.perf_counter()
            client.get(url)
            times.append((time.perf_counter() - begun) * 1000)
        with CaptureQueriesContext(connection) as queries:
            client.get(url)
        times.sort()
        p90 = times[min(len(times) - 1, int(len(times) * 0.9))]
        print(
            f"{label:<40} {statistics.median(times):>6.0f}ms {p90:>6.0f}ms "
            f"{len(queries.captured_queries):>8}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
