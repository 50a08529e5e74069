"""Two worker processes on one PostgreSQL database sync the same Stripe backlog into one sandbox
Dolibarr whose numbering races like the real one: no record is worked on by both, no number is
given twice, no race error happens.

The database is a real one created for the test (`ap24sync_workers_<pid>`, migrated by
`manage.py migrate`, dropped after), because the guarantee under test lives in PostgreSQL's row
locks and advisory locks between processes. The sandboxes run in this process; the workers are
separate `manage.py shell` processes that reach them over loopback. Each worker logs when it
claimed and settled each record and what its handler answered, so that overlaps can be seen.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from reconciliation.sandbox.dolibarr import DolibarrSandbox
from reconciliation.sandbox.seed import dolibarr_bank_account_create
from reconciliation.sandbox.stripe import StripeSandbox
from reconciliation.sandbox.stripe_data import StripeDataset, generate
from tests.processes import isolated_env, run_manage

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_SERVER = "postgresql://postgres@127.0.0.1:5432"
STRIPE_KEY = "sk_test_workers0123456789"
DOLIBARR_KEY = "workers-test-key-0123456789abcdef"
WORKERS = 2
THREADS_PER_WORKER = 3
ROUNDS = 4

# A worker: one `sync_due` over every due record, the engine's claim, attempt and settle
# wrapped to log "<event> <record id> <monotonic ns> <outcome>" lines to its own file.
WORKER = r"""
import os, time
from reconciliation.sync import engine

log = open(os.environ["WORKER_LOG"], "a", buffering=1)

def logged_claim(**kwargs):
    records = claim(**kwargs)
    now = time.monotonic_ns()
    for record in records:
        log.write(f"claim {record.pk} {now} -\n")
    return records

def logged_attempt(record, context, lease):
    started = time.monotonic_ns()
    result = attempt(record, context, lease)
    log.write(f"attempt {record.pk} {started} {type(result).__name__}\n")
    return result

def logged_settle(record, *args):
    name = settle(record, *args)
    log.write(f"settle {record.pk} {time.monotonic_ns()} {name}\n")
    return name

def logged_settled(outcomes):
    settled(outcomes)
    now = time.monotonic_ns()
    for outcome in outcomes:
        log.write(f"settle {outcome.record_id} {now} batch\n")

claim, attempt, settle = engine.records_claim_due, engine._attempt, engine._settle
settled = engine.records_mark_settled
engine.records_claim_due = logged_claim
engine._attempt, engine._settle = logged_attempt, logged_settle
engine.records_mark_settled = logged_settled
counts = engine.sync_due(context=engine.build_context())
log.write(f"done {os.getpid()} {time.monotonic_ns()} {dict(counts)}\n")
"""


def _server_url() -> str:
    """The PostgreSQL server of the default database when it is PostgreSQL (CI), else the
    local one."""
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"] != "django.db.backends.postgresql":
        return POSTGRES_SERVER
    user = database.get("USER") or "postgres"
    password = f":{database['PASSWORD']}" if database.get("PASSWORD") else ""
    host = database.get("HOST") or "127.0.0.1"
    return f"postgresql://{user}{password}@{host}:{database.get('PORT') or 5432}"


@pytest.fixture
def workers_database() -> Iterator[str]:
    """A database of its own, empty, dropped after the test; its URL."""
    import psycopg

    server = _server_url()
    name = f"ap24sync_workers_{os.getpid()}"
    try:
        admin = psycopg.connect(f"{server}/postgres", autocommit=True, connect_timeout=2)
    except psycopg.Error as exc:
        pytest.skip(f"PostgreSQL unreachable at {server}: {exc}")
    with admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"{server}/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


SECOND_CUSTOMERS = 6


def _second_customers(data: StripeDataset) -> list[str]:
    """Give a few organisations a second Stripe customer (README: two Stripe customer ids for
    one organisation), so that workers race for one thirdparty too. Returns their ids."""
    organisations = [c for c in data.collections["customers"] if "ap24_org_id" in c["metadata"]]
    added = []
    for number, customer in enumerate(organisations[:SECOND_CUSTOMERS]):
        second = {**customer, "id": f"cus_SecondOfOrg{number:02d}"}
        data.collections["customers"].append(second)
        data.order[second["id"]] = (customer["created"], data.order[customer["id"]][1])
        data.index[second["id"]] = second
        added.append(second["id"])
    return added


@pytest.fixture
def backlog_stripe() -> Iterator[StripeSandbox]:
    """A Stripe with enough euro invoices that both workers validate and pay at once, and a
    few organisations with two Stripe customers."""
    data = generate(seed=23, customers=36, start=datetime(2026, 1, 1, tzinfo=UTC), months=3)
    assert len(_second_customers(data)) == SECOND_CUSTOMERS
    with StripeSandbox(api_key=STRIPE_KEY, webhook_secret="whsec_workers", data=data) as sandbox:
        yield sandbox


@pytest.fixture
def racing_dolibarr() -> Iterator[DolibarrSandbox]:
    """Numbered writes pause 10 ms between reading the next number and inserting it."""
    sandbox = DolibarrSandbox(api_key=DOLIBARR_KEY, numbering_window_ms=10)
    sandbox.start()
    try:
        dolibarr_bank_account_create(api_url=sandbox.api_url, api_key=DOLIBARR_KEY)
        yield sandbox
    finally:
        sandbox.stop()


@pytest.fixture
def worker_env(
    tmp_path: Path,
    workers_database: str,
    backlog_stripe: StripeSandbox,
    racing_dolibarr: DolibarrSandbox,
) -> dict[str, str]:
    return isolated_env(
        DATABASE_URL=workers_database,
        STRIPE_API_KEY=STRIPE_KEY,
        STRIPE_API_BASE=backlog_stripe.base_url,
        STRIPE_MAX_NETWORK_RETRIES="0",
        DOLIBARR_URL=racing_dolibarr.api_url,
        DOLIBARR_API_KEY=DOLIBARR_KEY,
        DOLIBARR_PAYOUT_BANK_ACCOUNT="MAIN",
        DOLIBARR_LANE_TIMEOUT="30",
        SYNC_WORKERS=str(THREADS_PER_WORKER),
    )


def _manage(env: dict[str, str], *args: str) -> str:
    completed = run_manage(env, *args)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


def _run_workers_together(env: dict[str, str], logs: list[Path]) -> None:
    processes = [
        subprocess.Popen(
            [sys.executable, "manage.py", "shell", "--no-imports", "-c", WORKER],
            cwd=ROOT,
            env={**env, "WORKER_LOG": str(log)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for log in logs
    ]
    errors = [process.communicate(timeout=120)[1] for process in processes]
    for process, error in zip(processes, errors, strict=True):
        assert process.returncode == 0, error[-3000:]


def _query(database: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(database) as connection:
        return connection.execute(sql, params).fetchall()


# A payout still in transit at Stripe waits for Stripe, not for a worker.
STRIPE_SIDE_WAIT = "%is in_transit%"


def _bring_waiting_records_forward(database: str) -> int:
    """A record that waited for what another worker was still syncing comes back a minute
    later; the test does not wait that minute, it moves the clock of those records instead."""
    import psycopg

    with psycopg.connect(database) as connection:
        return connection.execute(
            "UPDATE reconciliation_syncrecord SET next_attempt_at = now() "
            "WHERE state = 'pending' AND next_attempt_at > now() AND last_error NOT LIKE %s",
            (STRIPE_SIDE_WAIT,),
        ).rowcount


def _worked_intervals(logs: list[Path]) -> dict[int, list[tuple[int, int, int]]]:
    """Per record: (claimed, settled, worker) for every claim, from the workers' logs."""
    intervals: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
    for worker, log in enumerate(logs):
        claimed: dict[int, int] = {}
        for line in log.read_text().splitlines():
            event, record, at, _ = line.split(" ", 3)
            if event == "claim":
                claimed[int(record)] = int(at)
            elif event == "settle":
                intervals[int(record)].append((claimed.pop(int(record)), int(at), worker))
        assert claimed == {}, f"worker {worker} claimed records it never settled: {claimed}"
    return intervals


def _settled_runs(logs: list[Path]) -> Counter[int]:
    """How many handler runs of each record settled it (synced, needs review, skipped)."""
    runs: Counter[int] = Counter()
    for log in logs:
        for line in log.read_text().splitlines():
            event, record, _, outcome = line.split(" ", 3)
            if event == "attempt" and outcome in {"Synced", "NeedsReview", "Skipped"}:
                runs[int(record)] += 1
    return runs


def _duplicates(values: list[str | None]) -> dict[str, int]:
    return {value: n for value, n in Counter(v for v in values if v).items() if n > 1}


def test_two_workers_sync_one_backlog_without_overlap_or_duplicate_numbers(
    tmp_path: Path, worker_env: dict[str, str], racing_dolibarr: DolibarrSandbox
) -> None:
    database = worker_env["DATABASE_URL"]
    _manage(worker_env, "migrate", "--verbosity", "0")
    _manage(worker_env, "stripe_pull", "--verbosity", "0")
    logs = [tmp_path / f"worker{n}.log" for n in range(WORKERS)]

    for _ in range(ROUNDS):
        _run_workers_together(worker_env, logs)
        if not _bring_waiting_records_forward(database):
            break
    left = _query(
        database,
        "SELECT kind, external_id, state, last_error FROM reconciliation_syncrecord "
        "WHERE state IN ('pending', 'in_progress') AND last_error NOT LIKE %s",
        STRIPE_SIDE_WAIT,
    )
    # What held them up, if anything did: records a person must settle, and why.
    reviews = _query(
        database,
        "SELECT r.kind, r.external_id, m.kind, m.summary FROM reconciliation_syncrecord r "
        "LEFT JOIN reconciliation_mismatch m ON m.record_id = r.id "
        "WHERE r.state = 'needs_review'",
    )
    assert left == [], f"needs review: {reviews}"

    # Both workers did work, and no record was held by both at once or finished twice.
    intervals = _worked_intervals(logs)
    assert {worker for spans in intervals.values() for *_, worker in spans} == set(range(WORKERS))
    overlapping = {
        record: spans
        for record, spans in intervals.items()
        if any(b[0] < a[1] for a, b in zip(sorted(spans), sorted(spans)[1:], strict=False))
    }
    assert overlapping == {}
    assert [record for record, runs in _settled_runs(logs).items() if runs > 1] == []
    synced_twice = _query(
        database,
        "SELECT target_id, count(*) FROM reconciliation_auditevent "
        "WHERE action = 'record.synced' GROUP BY target_id HAVING count(*) > 1",
    )
    assert synced_twice == []

    # No race error: nothing failed, nothing was retried, no sync_failed mismatch.
    assert _query(database, "SELECT count(*) FROM reconciliation_syncrecord") != [(0,)]
    failed = _query(
        database,
        "SELECT kind, external_id, last_error FROM reconciliation_syncrecord "
        "WHERE state = 'failed'",
    )
    assert failed == []
    retried = _query(
        database,
        "SELECT reason FROM reconciliation_auditevent WHERE action = 'record.retry_scheduled'",
    )
    assert retried == []
    assert _query(
        database, "SELECT count(*) FROM reconciliation_mismatch WHERE kind = 'sync_failed'"
    ) == [(0,)]

    # Dolibarr: every number given once, every Stripe object written once.
    store = racing_dolibarr.store
    with store.lock:
        invoices = list(store.invoices.values())
        payments = list(store.payments.values())
        thirdparties = list(store.thirdparties.values())
    numbered = [invoice.ref for invoice in invoices if invoice.statut > 0]
    assert len(numbered) >= 10, "too few validated invoices to race"
    assert len(payments) >= 10, "too few payments to race"
    assert _duplicates(numbered) == {}
    assert _duplicates([invoice.ref_ext for invoice in invoices]) == {}
    assert _duplicates([payment.ref for payment in payments]) == {}
    assert _duplicates([payment.ref_ext for payment in payments]) == {}
    assert _duplicates([thirdparty.code_client for thirdparty in thirdparties]) == {}
    assert _duplicates([thirdparty.ref_ext for thirdparty in thirdparties]) == {}
    synced_ids = _query(
        database,
        "SELECT dolibarr_kind, count(DISTINCT dolibarr_id) FROM reconciliation_syncrecord "
        "WHERE dolibarr_id IS NOT NULL AND dolibarr_kind IN ('invoice', 'thirdparty') "
        "GROUP BY dolibarr_kind ORDER BY dolibarr_kind",
    )
    # Each second customer of an organisation names the thirdparty its first one created.
    pairs = _query(
        database,
        "SELECT count(*), count(DISTINCT dolibarr_id) FROM reconciliation_syncrecord "
        "WHERE kind = 'customer' AND dolibarr_id IN (SELECT dolibarr_id FROM "
        "reconciliation_syncrecord WHERE kind = 'customer' AND external_id LIKE %s)",
        "cus_SecondOfOrg%",
    )
    assert pairs == [(2 * SECOND_CUSTOMERS, SECOND_CUSTOMERS)]
    assert dict(synced_ids) == {
        "invoice": len([i for i in invoices if not i.is_credit_note]),
        "thirdparty": len(thirdparties),
    }
