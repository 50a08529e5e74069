"""What the numbered-write lane itself costs per hold, next to the ~59 ms of numbered Dolibarr
calls (validate + pay) it guards.

    .venv/bin/python bench/lane_overhead.py [--holds 2000] [--postgres postgresql://…]
        [--redis redis://127.0.0.1:6379/9]

For each lane (local, file, PostgreSQL, Redis; a backend that does not answer is reported and
skipped): `uncontended` is one thread taking and releasing the lane `--holds` times (mean, p50,
p99 per hold); `two processes` is two processes each taking it `--holds / 2` times with an empty
body, so every hold waits for the other process's release: total time ÷ holds is the cost of
handing the lane from one process to the other. Nothing leaves loopback.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from multiprocessing import get_context
from pathlib import Path
from typing import Any

# Run as a script from the repository root: make the project importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reconciliation.sync.lane import FileLane, LocalLane, PostgresLane, RedisLane

LOCK_DIR = Path("/tmp/ap24sync-lane-bench")


def build(spec: dict[str, Any]) -> Any:
    url, backend = spec["url"], spec["backend"]
    if backend == "local":
        return LocalLane(url, timeout=30)
    if backend == "file":
        return FileLane(url, timeout=30, directory=LOCK_DIR)
    if backend == "postgresql":
        return PostgresLane(url, timeout=30, connect_kwargs={"conninfo": spec["postgres"]})
    return RedisLane(url, timeout=30, redis_url=spec["redis"])


def uncontended(spec: dict[str, Any], holds: int) -> list[float]:
    lane = build(spec)
    with lane.hold():  # connect once before measuring
        pass
    costs = []
    for _ in range(holds):
        started = time.perf_counter()
        with lane.hold():
            pass
        costs.append(time.perf_counter() - started)
    return costs


def _take_in_turns(spec: dict[str, Any], holds: int, ready: Any, go: Any) -> None:
    lane = build(spec)
    with lane.hold():
        pass
    ready.wait()
    go.wait()
    for _ in range(holds):
        with lane.hold():
            pass


def two_processes(spec: dict[str, Any], holds: int) -> float:
    context = get_context("spawn")
    ready, go = context.Barrier(3), context.Event()
    workers = [
        context.Process(target=_take_in_turns, args=(spec, holds // 2, ready, go)) for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    ready.wait()
    started = time.perf_counter()
    go.set()
    for worker in workers:
        worker.join()
    return (time.perf_counter() - started) / (holds // 2 * 2)


def reachable(spec: dict[str, Any]) -> str:
    """Empty when the backend answers, else why not."""
    try:
        with build(spec).hold():
            return ""
    except Exception as exc:  # reported, and the backend skipped
        return f"{type(exc).__name__}: {exc}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--holds", type=int, default=2000)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/9")
    options = parser.parse_args()
    url = f"http://bench.invalid/{uuid.uuid4().hex}/api/index.php"
    print("| lane | uncontended mean | p50 | p99 | two processes, per hold |")
    print("| --- | --- | --- | --- | --- |")
    for backend in ("local", "file", "postgresql", "redis"):
        spec = {"backend": backend, "url": url, "postgres": options.postgres}
        spec["redis"] = options.redis
        problem = reachable(spec)
        if problem:
            print(f"| {backend} | skipped: {problem} | | | |")
            continue
        costs = sorted(uncontended(spec, options.holds))
        handoff = (
            "-" if backend == "local" else f"{two_processes(spec, options.holds) * 1e6:.0f} µs"
        )
        print(
            f"| {backend} | {statistics.fmean(costs) * 1e6:.1f} µs "
            f"| {costs[len(costs) // 2] * 1e6:.1f} µs "
            f"| {costs[int(len(costs) * 0.99)] * 1e6:.1f} µs | {handoff} |"
        )


if __name__ == "__main__":
    main()
