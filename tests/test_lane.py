"""The numbered-write lane: one holder at a time per Dolibarr instance across threads and
processes, freed when its holder dies, a clear transient error when it stays busy — and, against
the sandbox Dolibarr's numbering race, the reason it exists."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from reconciliation.connectors.dolibarr import DolibarrClient
from reconciliation.connectors.dolibarr_types import NewLine
from reconciliation.errors import TransientError
from reconciliation.sandbox.dolibarr import DolibarrSandbox
from reconciliation.sync.lane import (
    FileLane,
    LocalLane,
    PostgresLane,
    RedisLane,
    lane_from_settings,
    lane_key,
    lane_name,
    postgres_connect_kwargs,
)

ROOT = Path(__file__).resolve().parent.parent
REDIS_TEST_URL = os.environ.get("AP24SYNC_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
POSTGRES_FALLBACK = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_LEASE = 1.0

# A lane in a child process, driven by a JSON spec: `hold` takes the lane `holds` times from
# `threads` threads and logs each interval (monotonic ns, one clock for the whole machine) plus
# a read-modify-write counter; `park` takes it and sleeps until killed; `churn` re-takes it in
# a tight loop for `seconds`. Children start together when the `go` file appears.
PROBE = r"""
import json, os, sys, threading, time
from pathlib import Path
from reconciliation.sync.lane import FileLane, PostgresLane, RedisLane

spec = json.loads(sys.argv[1])
backend, url, out = spec["backend"], spec["url"], Path(spec["out"])
if backend == "file":
    lane = FileLane(url, timeout=spec["timeout"], directory=Path(spec["directory"]))
elif backend == "postgresql":
    lane = PostgresLane(url, timeout=spec["timeout"], connect_kwargs=spec["connect_kwargs"])
else:
    lane = RedisLane(url, timeout=spec["timeout"], redis_url=spec["redis_url"], lease=spec["lease"])

def say(line):
    with open(out, "a") as stream:
        stream.write(line + "\n")

say("ready")
while not Path(spec["go"]).exists():
    time.sleep(0.002)

if spec["mode"] == "park":
    with lane.hold():
        say("held")
        time.sleep(120)
elif spec["mode"] == "churn":
    stop = time.monotonic() + spec["seconds"]
    say("churning")
    while time.monotonic() < stop:
        with lane.hold():
            time.sleep(0.005)
else:
    counter = Path(spec["counter"])
    def work():
        for _ in range(spec["holds"]):
            with lane.hold():
                start = time.monotonic_ns()
                value = int(counter.read_text() or "0")
                time.sleep(spec["hold_seconds"])
                counter.write_text(str(value + 1))
                say(f"{os.getpid()} {start} {time.monotonic_ns()}")
    threads = [threading.Thread(target=work) for _ in range(spec["threads"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
"""


# --- Where the shared lanes live ----------------------------------------------------------------


def _postgres_connect_kwargs() -> dict[str, Any] | None:
    """The default database when it is PostgreSQL and exists (CI), else the local server's
    `postgres` database; None when no PostgreSQL answers."""
    import psycopg
    from django.conf import settings

    candidates: list[dict[str, Any]] = [{"conninfo": POSTGRES_FALLBACK}]
    if settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        candidates.insert(0, postgres_connect_kwargs())
    for kwargs in candidates:
        try:
            psycopg.connect(**kwargs, connect_timeout=2).close()
        except psycopg.Error:
            continue
        return kwargs
    return None


def _redis_reachable() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_TEST_URL, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture
def dolibarr_url() -> str:
    """A Dolibarr URL no other test (or concurrent test run) shares, hence a lane of its own."""
    return f"http://127.0.0.1:1/{uuid.uuid4().hex}/api/index.php"


@pytest.fixture(params=["file", "postgresql", "redis"])
def shared_spec(request, tmp_path: Path, dolibarr_url: str) -> dict[str, Any]:
    """How a child process builds the lane under test (JSON, passed on its command line)."""
    spec: dict[str, Any] = {"backend": request.param, "url": dolibarr_url, "timeout": 20.0}
    if request.param == "file":
        spec["directory"] = str(tmp_path / "locks")
    elif request.param == "postgresql":
        kwargs = _postgres_connect_kwargs()
        if kwargs is None:
            pytest.skip(f"PostgreSQL unreachable ({POSTGRES_FALLBACK} and DATABASE_URL)")
        spec["connect_kwargs"] = kwargs
    else:
        if not _redis_reachable():
            pytest.skip(f"Redis unreachable at {REDIS_TEST_URL}")
        spec.update(redis_url=REDIS_TEST_URL, lease=REDIS_LEASE)
    return spec


def _lane_in_this_process(spec: dict[str, Any], *, timeout: float) -> Any:
    if spec["backend"] == "file":
        return FileLane(spec["url"], timeout=timeout, directory=Path(spec["directory"]))
    if spec["backend"] == "postgresql":
        return PostgresLane(spec["url"], timeout=timeout, connect_kwargs=spec["connect_kwargs"])
    return RedisLane(spec["url"], timeout=timeout, redis_url=spec["redis_url"], lease=spec["lease"])


class Children:
    """Probe processes started from one spec, released together, killed if still running."""

    def __init__(self, tmp_path: Path, spec: dict[str, Any]) -> None:
        self.tmp_path = tmp_path
        self.spec = spec
        self.go = tmp_path / f"go-{uuid.uuid4().hex}"
        self.processes: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, count: int, **mode: Any) -> list[Path]:
        outs = []
        for _ in range(count):
            out = self.tmp_path / f"out-{uuid.uuid4().hex}"
            spec = {**self.spec, **mode, "out": str(out), "go": str(self.go)}
            process = subprocess.Popen(
                [sys.executable, "-c", PROBE, json.dumps(spec)], cwd=ROOT, env=_child_env()
            )
            self.processes.append((process, out))
            outs.append(out)
        for out in outs:
            _wait_for_line(out, "ready", timeout=20)
        self.go.touch()
        return outs

    def wait(self, timeout: float) -> None:
        for process, _ in self.processes:
            assert process.wait(timeout=timeout) == 0

    def kill_all(self) -> None:
        for process, _ in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    return env


def _wait_for_line(path: Path, line: str, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and line in path.read_text().splitlines():
            return
        time.sleep(0.01)
    raise AssertionError(f"no {line!r} in {path.name} after {timeout} s")


@pytest.fixture
def children(tmp_path: Path, shared_spec: dict[str, Any]) -> Iterator[Children]:
    started = Children(tmp_path, shared_spec)
    yield started
    started.kill_all()


def _intervals(outs: list[Path]) -> list[tuple[int, int]]:
    rows = []
    for out in outs:
        for line in out.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:
                rows.append((int(parts[1]), int(parts[2])))
    return sorted(rows)


# --- Identity ---------------------------------------------------------------------------------


def test_the_same_instance_spelled_differently_is_one_lane() -> None:
    spellings = [
        "https://ERP.example.org/api/index.php",
        "https://erp.example.org:443/api/index.php/",
        "https://user:secret@erp.example.org/api/index.php",
    ]
    assert {lane_name(url) for url in spellings} == {"https://erp.example.org/api/index.php"}
    assert len({lane_key(url) for url in spellings}) == 1
    assert lane_key("https://erp.example.org/api/index.php") != lane_key(
        "https://erp2.example.org/api/index.php"
    )


def test_the_key_is_stable_across_processes_and_versions() -> None:
    # A bigint for pg_advisory_lock; a change here would let old and new workers run together.
    assert lane_key("https://erp.example.org/api/index.php") == -2859996000860021745
    assert -(2**63) <= lane_key("http://x") < 2**63


# --- Threads ---------------------------------------------------------------------------------


def _hold_from_threads(lane: Any, *, threads: int, holds: int) -> tuple[int, int]:
    """Threads take the lane and bump a counter non-atomically; returns (count, most inside)."""
    state = {"count": 0, "inside": 0, "most": 0}

    def work() -> None:
        for _ in range(holds):
            with lane.hold():
                state["inside"] += 1
                state["most"] = max(state["most"], state["inside"])
                value = state["count"]
                time.sleep(0.0002)
                state["count"] = value + 1
                state["inside"] -= 1

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return state["count"], state["most"]


def test_local_lane_lets_one_thread_in_at_a_time(dolibarr_url: str) -> None:
    assert _hold_from_threads(LocalLane(dolibarr_url, timeout=10), threads=8, holds=25) == (200, 1)


def test_threads_of_one_process_queue_on_the_shared_lane_too(
    shared_spec: dict[str, Any],
) -> None:
    lane = _lane_in_this_process(shared_spec, timeout=10)
    assert _hold_from_threads(lane, threads=6, holds=10) == (60, 1)


def test_local_lane_busy_past_its_timeout_is_a_transient_error(dolibarr_url: str) -> None:
    lane = LocalLane(dolibarr_url, timeout=0.05)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lane.hold():
            holding.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(5)
    try:
        with (
            pytest.raises(TransientError, match="numbered-write lane busy") as raised,
            lane.hold(),
        ):
            pass
        assert raised.value.system == "dolibarr"
    finally:
        release.set()
        holder.join()


def test_lanes_of_two_instances_do_not_wait_for_each_other(tmp_path: Path) -> None:
    first = FileLane("https://erp1.example.org/api/index.php", timeout=0.1, directory=tmp_path)
    second = FileLane("https://erp2.example.org/api/index.php", timeout=0.1, directory=tmp_path)
    with first.hold(), second.hold():
        assert first.path != second.path


# --- Processes ------------------------------------------------------------------------------


def test_processes_never_hold_the_lane_together(children: Children, tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    counter.write_text("0")
    outs = children.start(
        3, mode="hold", holds=8, threads=2, hold_seconds=0.003, counter=str(counter)
    )
    children.wait(timeout=40)
    intervals = _intervals(outs)
    assert len(intervals) == 3 * 2 * 8
    overlaps = [(a, b) for a, b in itertools.pairwise(intervals) if b[0] < a[1]]
    assert overlaps == []
    assert counter.read_text() == str(3 * 2 * 8)


def test_a_busy_lane_past_its_timeout_is_a_transient_error(
    children: Children, shared_spec: dict[str, Any]
) -> None:
    (out,) = children.start(1, mode="park")
    _wait_for_line(out, "held", timeout=20)
    lane = _lane_in_this_process(shared_spec, timeout=0.3)
    started = time.monotonic()
    with (
        pytest.raises(TransientError, match=r"numbered-write lane busy: not free after 0\.3 s"),
        lane.hold(),
    ):
        pass
    assert 0.25 <= time.monotonic() - started < 3


def test_a_holder_killed_while_holding_frees_the_lane(
    children: Children, shared_spec: dict[str, Any]
) -> None:
    (out,) = children.start(1, mode="park")
    _wait_for_line(out, "held", timeout=20)
    process = children.processes[0][0]
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed = time.monotonic()
    with _lane_in_this_process(shared_spec, timeout=10).hold():
        freed_after = time.monotonic() - killed
    # The session or the flock goes with the process; a Redis key waits for its lease.
    assert freed_after < (REDIS_LEASE + 1 if shared_spec["backend"] == "redis" else 1)


def test_a_process_retaking_the_lane_in_a_loop_does_not_starve_a_waiter(
    children: Children, shared_spec: dict[str, Any]
) -> None:
    (out,) = children.start(1, mode="churn", seconds=4)
    _wait_for_line(out, "churning", timeout=20)
    time.sleep(0.1)
    lane = _lane_in_this_process(shared_spec, timeout=1.5)
    for _ in range(3):
        with lane.hold():
            pass


def test_the_postgres_lane_holds_no_transaction_open(dolibarr_url: str) -> None:
    import psycopg

    kwargs = _postgres_connect_kwargs()
    if kwargs is None:
        pytest.skip(f"PostgreSQL unreachable ({POSTGRES_FALLBACK} and DATABASE_URL)")
    key = lane_key(dolibarr_url)
    with (
        PostgresLane(dolibarr_url, timeout=5, connect_kwargs=kwargs).hold(),
        psycopg.connect(**kwargs, autocommit=True) as probe,
    ):
        states = probe.execute(
            "SELECT a.state FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s",
            ((key >> 32) & 0xFFFF_FFFF, key & 0xFFFF_FFFF),
        ).fetchall()
    # Idle, not "idle in transaction": the lane's session holds a lock and nothing else.
    assert states == [("idle",)]


def test_the_postgres_lane_reconnects_after_losing_its_session(dolibarr_url: str) -> None:
    import psycopg

    kwargs = _postgres_connect_kwargs()
    if kwargs is None:
        pytest.skip(f"PostgreSQL unreachable ({POSTGRES_FALLBACK} and DATABASE_URL)")
    lane = PostgresLane(dolibarr_url, timeout=5, connect_kwargs=kwargs)
    with lane.hold():
        session = lane._shared._connection.info.backend_pid
    with psycopg.connect(**kwargs, autocommit=True) as admin:
        (terminated,) = admin.execute("SELECT pg_terminate_backend(%s)", (session,)).fetchone()
    assert terminated
    time.sleep(0.05)
    with lane.hold():
        assert lane._shared._connection.info.backend_pid != session


def test_the_default_lane_follows_the_deployment(settings, tmp_path: Path) -> None:
    settings.DOLIBARR_URL = "https://erp.example.org/api/index.php"
    settings.REDIS_URL = ""
    engine = settings.DATABASES["default"]["ENGINE"]
    expected = PostgresLane if engine == "django.db.backends.postgresql" else FileLane
    assert type(lane_from_settings()) is expected
    assert lane_from_settings() is lane_from_settings()
    settings.REDIS_URL = REDIS_TEST_URL
    assert type(lane_from_settings()) is RedisLane


# --- The sandbox Dolibarr's numbering race: why the lane exists ------------------------------

RACERS = 6


@pytest.fixture
def racing_sandbox(dolibarr_api_key: str) -> Iterator[DolibarrSandbox]:
    """A sandbox whose numbered writes pause 20 ms between reading and using a number."""
    sandbox = DolibarrSandbox(api_key=dolibarr_api_key, numbering_window_ms=20)
    sandbox.start()
    try:
        yield sandbox
    finally:
        sandbox.stop()


@pytest.fixture
def racing_client(racing_sandbox: DolibarrSandbox, dolibarr_api_key: str) -> Iterator[Any]:
    """No retries: a collision shows as the error Dolibarr answered."""
    client = DolibarrClient(
        base_url=racing_sandbox.api_url, api_key=dolibarr_api_key, max_retries=0, read_timeout=10
    )
    yield client
    client.close()


class _NoLane:
    def hold(self) -> Any:
        from contextlib import nullcontext

        return nullcontext()


def _together(calls: list[Callable[[], Any]], lane: Any) -> list[Any]:
    """Run the calls from their own threads released at once, each inside `lane.hold()`;
    returns each call's result or the exception it raised."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(index: int) -> None:
        barrier.wait()
        try:
            with lane.hold():
                results[index] = calls[index]()
        except Exception as exc:  # the race's outcome is what is asserted
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _drafts(client: DolibarrClient, count: int) -> list[int]:
    customer = client.create_thirdparty(name="Race Test", ref_ext="cus_race")
    line = NewLine(qty=Decimal(1), subprice=Decimal("50"), tva_tx=Decimal("20"), description="x")
    return [
        client.create_invoice(thirdparty_id=customer, lines=[line], ref_ext=f"in_race{n}")
        for n in range(count)
    ]


def _validate_together(client: DolibarrClient, lane: Any) -> tuple[list[Any], list[str]]:
    drafts = _drafts(client, RACERS)
    results = _together([lambda i=i: client.validate_invoice(invoice_id=i) for i in drafts], lane)
    refs = [client.get_invoice(invoice_id=i, properties=("ref",)).ref or "" for i in drafts]
    return results, refs


def _pay_together(client: DolibarrClient, lane: Any) -> list[str]:
    invoices = _drafts(client, RACERS)
    for invoice in invoices:
        client.validate_invoice(invoice_id=invoice)
    card = client.payment_type_id(code="CB")

    def pay(invoice: int) -> int:
        return client.create_payment(
            amounts={invoice: Decimal("60.00")},
            date=date(2026, 11, 21),
            payment_type_id=card,
            bank_account_id=1,
            ref_ext=f"pi_race{invoice}",
        )

    results = _together([lambda i=i: pay(i) for i in invoices], lane)
    assert all(isinstance(result, int) for result in results), results
    return [client.find_payments(ref_ext=f"pi_race{i}")[0].ref or "" for i in invoices]


def _create_customers_together(client: DolibarrClient, lane: Any) -> list[Any]:
    return _together(
        [
            lambda n=n: client.create_thirdparty(name=f"Client {n}", ref_ext=f"cus_auto{n}")
            for n in range(RACERS)
        ],
        lane,
    )


def test_without_the_lane_parallel_validations_collide(racing_client: DolibarrClient) -> None:
    results, refs = _validate_together(racing_client, _NoLane())
    failures = [result for result in results if isinstance(result, Exception)]
    assert failures, "no collision: the race emulation is off"
    assert all(isinstance(f, TransientError) and f.status == 500 for f in failures)
    assert all("Duplicate entry" in str(f) for f in failures)
    assert sum(ref.startswith("(PROV") for ref in refs) == len(failures)


def test_with_the_lane_parallel_validations_all_get_their_own_number(
    racing_client: DolibarrClient, dolibarr_url: str
) -> None:
    results, refs = _validate_together(racing_client, LocalLane(dolibarr_url, timeout=30))
    assert not [result for result in results if isinstance(result, Exception)]
    assert all(ref.startswith("FA") for ref in refs)
    assert len(set(refs)) == RACERS


def test_without_the_lane_parallel_payments_share_a_number(
    racing_client: DolibarrClient,
) -> None:
    refs = _pay_together(racing_client, _NoLane())
    assert len(set(refs)) < RACERS, refs


def test_with_the_lane_parallel_payments_each_get_their_own_number(
    racing_client: DolibarrClient, dolibarr_url: str
) -> None:
    refs = _pay_together(racing_client, LocalLane(dolibarr_url, timeout=30))
    assert len(set(refs)) == RACERS, refs


def test_without_the_lane_parallel_customer_codes_collide(
    racing_client: DolibarrClient,
) -> None:
    results = _create_customers_together(racing_client, _NoLane())
    failures = [result for result in results if isinstance(result, Exception)]
    assert failures
    assert all("Error creating thirdparty" in str(f) for f in failures)


def test_with_the_lane_parallel_customers_are_all_created(
    racing_client: DolibarrClient, dolibarr_url: str
) -> None:
    results = _create_customers_together(racing_client, LocalLane(dolibarr_url, timeout=30))
    assert all(isinstance(result, int) for result in results), results
