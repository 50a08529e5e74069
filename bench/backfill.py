"""Backfill benchmark (issue 3): a generated Stripe history pulled, then synced into the sandbox
Dolibarr answering every request 20 ms late, with the default settings.

    .venv/bin/python bench/backfill.py [--invoices 2000] [--latency-ms 20] [--refund-share 0.10]
        [--database-url postgresql://postgres@127.0.0.1:5432/postgres] [--workers N]
        [--batched-fee-lookups]

Both sandboxes run as their own processes on loopback (`python -m reconciliation.sandbox.dolibarr
--latency-ms 20`, `python -m reconciliation.sandbox.stripe --customers … --months 3`), so this
process holds only the sync and its memory is the sync's. Django runs on a throwaway database
(`ap24sync_bench_<pid>`, dropped at the end) on the server of `--database-url`; on PostgreSQL the
engine runs `SYNC_WORKERS` threads (default 4) and the lane is the PostgreSQL advisory lock, as
in production. Nothing leaves loopback and every loop is bounded.

Printed: the dataset, pull and sync times, paid invoices per second, Dolibarr calls per paid
invoice by endpoint and per record kind, the numbered calls and the lane limit
1 / (numbered calls per invoice x latency) with the achieved ratio and the lane's busy time,
peak memory (RSS sampled every 50 ms, per phase), and a no-op re-run: Stripe list calls per
stream and Dolibarr calls/writes.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DOLIBARR_KEY = "bench-dolibarr-key-0123456789abcdef"
STRIPE_KEY = "sk_test_bench0123456789"
# 1,000 customers over three months give about 1,900 paid invoices (see docs/benchmarks.md).
PAID_INVOICES_PER_CUSTOMER = 1.875
MONTHS = 3
SEED = 7
NUMBERED = (
    "POST /invoices/{id}/validate",
    "POST /invoices/paymentsdistributed",
    "POST /thirdparties",
)
SANDBOX_START_TIMEOUT = 600.0  # generating 20,000 invoices takes about 40 s
STEPS: Counter[tuple[str, str]] = Counter()
STEPS_LOCK = threading.Lock()
# Sandbox processes by name ("Dolibarr", "Stripe"), for their CPU time.
SANDBOX_PIDS: dict[str, int] = {}


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--invoices", type=int, default=2000, help="paid invoices wanted")
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument(
        "--refund-share",
        type=float,
        default=0.10,
        help="share of paid invoices refunded (the issue's scenario: 10 %%)",
    )
    parser.add_argument(
        "--database-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="server for the throwaway database (sqlite:///path works too: one worker)",
    )
    parser.add_argument("--workers", type=int, default=None, help="default: SYNC_WORKERS")
    parser.add_argument(
        "--batched-fee-lookups",
        action="store_true",
        help="what-if: add the fee lines of each claimed batch to the engine's batched "
        "look-up (stripe_payouts.fee_lines_lookup), as ctx.known.fee_lines",
    )
    return parser.parse_args()


# --- sandboxes in their own processes ---------------------------------------------------------


@contextmanager
def sandbox_process(command: list[str], prefix: str) -> Iterator[str]:
    """Start a sandbox, read its first line (`… listening on <url>`), stop it at the end."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    SANDBOX_PIDS[prefix.split()[0]] = process.pid
    try:
        line = _first_line(process, SANDBOX_START_TIMEOUT)
        if not line.startswith(prefix):
            raise RuntimeError(f"{command[2]} did not start: {line!r}")
        yield line.rsplit(" ", 1)[-1]
    finally:
        process.terminate()
        process.wait(timeout=30)
        process.stdout.close()


def _first_line(process: subprocess.Popen, timeout: float) -> str:
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(process.stdout.readline().strip()))
    reader.start()
    reader.join(timeout)
    if not box:
        process.kill()
        raise RuntimeError(f"no answer from {process.args} within {timeout:.0f} s")
    return box[0]


# --- measuring ---------------------------------------------------------------------------------


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of this process (or of `pid`, from /proc) so far."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """Peak resident memory of this process per phase, read from /proc every 50 ms."""

    def __init__(self) -> None:
        self.phase = "setup"
        self.peaks: dict[str, int] = defaultdict(int)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def current() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peaks[self.phase] = max(self.peaks[self.phase], self.current())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


_current_kind = threading.local()


class KindClock:
    """Per record kind: when its first handler started, when its last one ended, and the time
    spent inside its handlers (summed over the worker threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.busy: Counter[str] = Counter()

    def record(self, kind: str, started: float, ended: float) -> None:
        with self._lock:
            self.first[kind] = min(self.first.get(kind, started), started)
            self.last[kind] = max(self.last.get(kind, ended), ended)
            self.busy[kind] += ended - started


CLOCK = KindClock()


def instrument_handlers() -> None:
    """Remember which record kind a worker thread is working on, for the per-kind counts."""
    from reconciliation.sync import base, engine

    for key, function in list(base._HANDLERS.items()):

        def wrapped(record, context, _function=function, _kind=key[1]):
            _current_kind.value = _kind
            started = time.perf_counter()
            try:
                return _function(record, context)
            finally:
                CLOCK.record(_kind, started, time.perf_counter())
                _current_kind.value = "engine"

        base._HANDLERS[key] = wrapped
    look_up = engine.known_objects_lookup

    def batched(*, records, dolibarr, run):
        records = list(records)
        _current_kind.value = f"{records[0].kind} (batched look-up)" if records else "engine"
        try:
            return look_up(records=records, dolibarr=dolibarr, run=run)
        finally:
            _current_kind.value = "engine"

    engine.known_objects_lookup = batched

    # The engine's own steps around the handlers: claiming, looking up, recording outcomes.
    def timed(step, function, kind_of):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                with STEPS_LOCK:
                    STEPS[(kind_of(args, kwargs), step)] += time.perf_counter() - started

        return wrapper

    last_kind = threading.local()

    def claim_kind(args, kwargs):
        last_kind.value = "+".join(kwargs.get("kinds") or ["all"])
        return last_kind.value

    def current_kind(args, kwargs):
        return getattr(last_kind, "value", "engine")

    engine.records_claim_due = timed("claim", engine.records_claim_due, claim_kind)
    engine._look_up = timed("look-up", engine._look_up, current_kind)
    engine.records_mark_settled = timed("settle batch", engine.records_mark_settled, current_kind)
    engine._settle = timed("settle one", engine._settle, current_kind)


def batch_fee_lookups(stripe_account: dict[str, int]) -> None:
    """What-if: the engine's batched look-up also returns the fee lines of the batch's
    first-attempt balance transactions, one call per 40 (`ctx.known.fee_lines`).
    `stripe_account["id"]` is filled in once the context is built."""
    from dataclasses import dataclass, field, fields

    from reconciliation.sync import engine
    from reconciliation.sync.known import KnownObjects
    from reconciliation.sync.stripe_payouts import fee_line_wanted, fee_lines_lookup

    @dataclass(frozen=True)
    class KnownWithFeeLines(KnownObjects):
        fee_lines: dict[str, list[Any]] = field(default_factory=dict)

    if "fee_lines" in {f.name for f in fields(KnownObjects)}:
        print("the engine already looks fee lines up in batches: --batched-fee-lookups ignored")
        return
    look_up = engine.known_objects_lookup

    def with_fee_lines(*, records, dolibarr, run):
        records = list(records)
        known = look_up(records=records, dolibarr=dolibarr, run=run)
        wanted = [
            txn_id
            for record in records
            if record.kind == "balance_transaction"
            and record.attempts <= 1
            and (txn_id := fee_line_wanted(record)) is not None
        ]
        if not wanted:
            return known
        fee_lines = fee_lines_lookup(
            dolibarr=dolibarr, bank_account_id=stripe_account["id"], txn_ids=wanted
        )
        values = {f.name: getattr(known, f.name) for f in fields(known)}
        return KnownWithFeeLines(**values, fee_lines=fee_lines)

    engine.known_objects_lookup = with_fee_lines


class TimedLane:
    """The lane as configured, plus how long it was held, in total and per record kind."""

    def __init__(self, lane: Any) -> None:
        self._lane = lane
        self._lock = threading.Lock()
        self.held = 0.0
        self.holds = 0
        self.held_by_kind: Counter[str] = Counter()

    @contextmanager
    def hold(self) -> Iterator[None]:
        with self._lane.hold():
            started = time.perf_counter()
            try:
                yield
            finally:
                held = time.perf_counter() - started
                with self._lock:
                    self.held += held
                    self.holds += 1
                    self.held_by_kind[getattr(_current_kind, "value", "engine")] += held


# --- the run -----------------------------------------------------------------------------------


def main() -> int:
    options = parse_arguments()
    customers = max(12, round(options.invoices / PAID_INVOICES_PER_CUSTOMER))
    dolibarr_command = [sys.executable, "-m", "reconciliation.sandbox.dolibarr", "--port", "0"]
    dolibarr_command += ["--api-key", DOLIBARR_KEY, "--latency-ms", str(options.latency_ms)]
    stripe_command = [sys.executable, "-m", "reconciliation.sandbox.stripe", "--port", "0"]
    stripe_command += ["--api-key", STRIPE_KEY, "--seed", str(SEED)]
    stripe_command += ["--customers", str(customers), "--months", str(MONTHS)]
    stripe_command += ["--refund-share", str(options.refund_share)]
    print(
        f"dataset: seed {SEED}, {customers} customers, {MONTHS} months from 2025-11-01, "
        f"{options.refund_share:.0%} of paid invoices refunded; "
        f"Dolibarr latency {options.latency_ms:g} ms",
        flush=True,
    )
    with (
        sandbox_process(dolibarr_command, "Dolibarr sandbox listening") as dolibarr_url,
        sandbox_process(stripe_command, "Stripe sandbox listening") as stripe_url,
        tempfile.TemporaryDirectory() as scratch,
    ):
        _create_payout_account(dolibarr_url)
        os.environ.update(
            AP24SYNC_ENV_FILE=str(Path(scratch) / "absent.env"),
            DATABASE_URL=options.database_url,
            DOLIBARR_URL=dolibarr_url,
            DOLIBARR_API_KEY=DOLIBARR_KEY,
            DOLIBARR_PAYOUT_BANK_ACCOUNT="MAIN",
            STRIPE_API_KEY=STRIPE_KEY,
            STRIPE_API_BASE=stripe_url,
            DJANGO_SETTINGS_MODULE="ap24sync.settings",
            # A worker runs without DEBUG: its per-connection log of every SQL statement (up
            # to 9,000, snapshots included) would be measured as the sync's memory.
            DEBUG="false",
        )
        if options.workers is not None:
            os.environ["SYNC_WORKERS"] = str(options.workers)
        os.environ.pop("REDIS_URL", None)
        return run_benchmark(options, scratch)


def _create_payout_account(dolibarr_url: str) -> None:
    from reconciliation.sandbox.seed import dolibarr_bank_account_create

    dolibarr_bank_account_create(api_url=dolibarr_url, api_key=DOLIBARR_KEY)


def run_benchmark(options: argparse.Namespace, scratch: str) -> int:
    import django

    django.setup()
    from django.conf import settings
    from django.db import connection

    settings.DATABASES["default"].setdefault("TEST", {})["NAME"] = (
        str(Path(scratch) / "bench.sqlite3")
        if connection.vendor == "sqlite"
        else f"ap24sync_bench_{os.getpid()}"
    )
    original_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    bench_name = connection.settings_dict["NAME"]
    try:
        return measure(options)
    finally:
        if connection.vendor == "postgresql":
            # The lane keeps a session of its own on the database (its advisory lock): end
            # this process's sessions there, or the database cannot be dropped.
            connection.close()
            with connection._nodb_cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    [bench_name],
                )
        connection.creation.destroy_test_db(original_name, verbosity=0)


def measure(options: argparse.Namespace) -> int:
    from django.conf import settings
    from django.db import connection

    from reconciliation.connectors.dolibarr import DolibarrClient
    from reconciliation.connectors.stripe import StripeConnector
    from reconciliation.models import Mismatch, SyncRecord, SyncState
    from reconciliation.sync.engine import build_context, sync_due
    from reconciliation.sync.stripe_pull import STREAMS, stripe_pull_all

    stripe_account: dict[str, int] = {}
    if options.batched_fee_lookups:
        batch_fee_lookups(stripe_account)
    instrument_handlers()
    by_kind: Counter[tuple[str, str]] = Counter()
    by_kind_lock = threading.Lock()

    class CountingClient(DolibarrClient):
        def _send(self, method, url, endpoint, query, data):
            with by_kind_lock:
                by_kind[(getattr(_current_kind, "value", "engine"), endpoint)] += 1
            return super()._send(method, url, endpoint, query, data)

    from reconciliation.resilience import breaker_for

    # Behind the process's circuit breaker, as `DolibarrClient.from_settings()` is in a worker.
    client = CountingClient(
        base_url=settings.DOLIBARR_URL,
        api_key=settings.DOLIBARR_API_KEY,
        connect_timeout=settings.DOLIBARR_CONNECT_TIMEOUT,
        read_timeout=settings.DOLIBARR_READ_TIMEOUT,
        max_retries=settings.DOLIBARR_MAX_RETRIES,
        breaker=breaker_for("dolibarr"),
    )
    stripe = StripeConnector.from_settings()
    workers = settings.SYNC_WORKERS if connection.vendor != "sqlite" else 1
    print(f"database: {connection.vendor}, {workers} worker(s)", flush=True)

    with RssSampler() as rss:
        rss.phase = "pull"
        started = time.perf_counter()
        pulled = stripe_pull_all(connector=stripe)
        pull_seconds = time.perf_counter() - started
        stripe_pull_calls = sum(stripe.call_counts.values())
        print(f"pull: {sum(pulled.values())} objects in {pull_seconds:.1f} s {pulled}", flush=True)

        context = build_context(client=client, stripe=stripe)
        stripe_account["id"] = context.setup.stripe_bank_account_id
        lane = TimedLane(context.lane)
        context = replace(context, lane=lane)
        client.reset_call_counts()
        by_kind.clear()
        rss.phase = "sync"
        dolibarr_pid = SANDBOX_PIDS.get("Dolibarr")
        cpu_before = cpu_seconds(), cpu_seconds(dolibarr_pid) if dolibarr_pid else 0.0
        started = time.perf_counter()
        counts = sync_due(context=context)
        sync_seconds = time.perf_counter() - started
        cpu_sync = cpu_seconds() - cpu_before[0]
        cpu_dolibarr = (cpu_seconds(dolibarr_pid) if dolibarr_pid else 0.0) - cpu_before[1]
        sync_started = started
        sync_calls = Counter(client.call_counts)
        sync_by_kind = Counter(by_kind)
        print(f"sync: {dict(counts)} in {sync_seconds:.1f} s", flush=True)

        rss.phase = "second pass"
        second = sync_due(context=context)

        rss.phase = "no-op re-run"
        stripe.reset_call_counts()
        client.reset_call_counts()
        stripe_pull_all(connector=stripe)
        noop_stripe = Counter(stripe.call_counts)
        noop = sync_due(context=context)
        noop_dolibarr = Counter(client.call_counts)

    invoices = SyncRecord.objects.filter(kind="invoice")
    paid_synced = sum(
        1
        for status in invoices.filter(state=SyncState.SYNCED).values_list(
            "snapshot__status", flat=True
        )
        if status == "paid"
    )
    customers_new = sync_calls["POST /thirdparties"]
    refunds = SyncRecord.objects.filter(kind="refund", state=SyncState.SYNCED).count()
    states = Counter(SyncRecord.objects.values_list("kind", "state"))
    total_calls = sum(sync_calls.values())
    numbered = sum(sync_calls[name] for name in NUMBERED)
    latency = options.latency_ms / 1000
    invoice_numbered = (
        sync_by_kind[("invoice", "POST /invoices/{id}/validate")]
        + sync_by_kind[("invoice", "POST /invoices/paymentsdistributed")]
    ) / max(1, paid_synced)
    rate = paid_synced / sync_seconds
    lane_limit_all = 1 / (numbered / max(1, paid_synced) * latency)
    lane_limit_invoice = 1 / (invoice_numbered * latency)

    print()
    print(f"records by kind and state: {dict(sorted(states.items()))}")
    print(f"second pass: {dict(second)}")
    print(
        f"paid invoices synced: {paid_synced}; new customers: {customers_new}; refunds synced "
        f"(credit notes): {refunds} = {refunds / max(1, paid_synced):.1%} of the paid invoices"
    )
    print(f"sync wall time: {sync_seconds:.1f} s -> {rate:.2f} paid invoices/s")
    print(
        f"CPU during the sync: this process {cpu_sync:.1f} s ({cpu_sync / sync_seconds:.0%} of "
        f"one core), Dolibarr sandbox {cpu_dolibarr:.1f} s ({cpu_dolibarr / sync_seconds:.0%})"
    )
    print(
        f"Dolibarr calls: {total_calls} = {total_calls / max(1, paid_synced):.2f} per paid invoice"
    )
    print("  by endpoint (total, per paid invoice):")
    for endpoint, number in sync_calls.most_common():
        print(f"    {endpoint:45} {number:7d} {number / max(1, paid_synced):6.3f}")
    print("  by record kind (calls, records, calls per record):")
    per_kind: Counter[str] = Counter()
    for (kind, _), number in sync_by_kind.items():
        per_kind[kind] += number
    kinds_count = Counter(SyncRecord.objects.values_list("kind", flat=True))
    for kind, number in per_kind.most_common():
        records = kinds_count.get(kind.split(" ")[0], 0)
        print(f"    {kind:40} {number:7d} {records:7d} {number / max(1, records):6.3f}")
        for (k, endpoint), n in sorted(sync_by_kind.items(), key=lambda item: -item[1]):
            if k == kind:
                print(f"        {endpoint:44} {n:7d}")
    print(
        f"numbered calls: {numbered} = {numbered / max(1, paid_synced):.3f} per paid invoice "
        f"(invoice records alone: {invoice_numbered:.3f})"
    )
    print(
        f"lane limit at {options.latency_ms:g} ms: {lane_limit_all:.2f} invoices/s "
        f"(whole backfill), {lane_limit_invoice:.2f} (invoice records' validate + pay only); "
        f"achieved {rate / lane_limit_all:.0%} / {rate / lane_limit_invoice:.0%}"
    )
    print(
        f"lane held {lane.held:.1f} s in {lane.holds} holds = {lane.held / sync_seconds:.0%} "
        "of the sync's wall time"
    )
    print(
        "time per record kind (phase span from its first handler start to its last end; time "
        "in handlers and lane held, summed over workers):"
    )
    for kind in sorted(CLOCK.first, key=CLOCK.first.get):
        span = CLOCK.last[kind] - CLOCK.first[kind]
        print(
            f"    {kind:20} starts {CLOCK.first[kind] - sync_started:6.1f} s, span {span:6.1f} s, "
            f"in handlers {CLOCK.busy[kind]:7.1f} s, lane held {lane.held_by_kind[kind]:6.1f} s "
            f"({lane.held_by_kind[kind] / span if span else 0:.0%} of the span)"
        )
    print("engine steps (seconds summed over workers, per claimed phase):")
    for (kind, step), seconds in sorted(STEPS.items()):
        print(f"    {kind:40} {step:14} {seconds:7.1f} s")
    mismatches = Counter(Mismatch.objects.values_list("kind", "record__kind"))
    print(f"mismatches (kind, record kind): {dict(sorted(mismatches.items()))}")
    print(
        "peak RSS (MiB): "
        + ", ".join(f"{phase} {peak / 2**20:.0f}" for phase, peak in rss.peaks.items())
        + f"; ru_maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}"
    )
    print("no-op re-run:")
    stream_calls = {name: noop_stripe.get(f"GET /v1/{name}", 0) for name in STREAMS}
    print(f"  Stripe calls per stream: {stream_calls} (all: {dict(noop_stripe)})")
    writes = sum(n for endpoint, n in noop_dolibarr.items() if not endpoint.startswith("GET"))
    print(f"  sync: {dict(noop)}; Dolibarr calls {sum(noop_dolibarr.values())}, writes {writes}")
    print(f"  (pull of the backfill itself: {stripe_pull_calls} Stripe calls)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
