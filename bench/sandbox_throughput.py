"""Throughput of the sandbox Dolibarr with zero latency: how many requests per second it serves.

    .venv/bin/python bench/sandbox_throughput.py [--reads 3000] [--writes 1000]
        [--numbering-window-ms 3] [--in-process]

By default the sandbox runs as its own process (`python -m reconciliation.sandbox.dolibarr`),
as in the demo, and one client loops over a keep-alive `requests.Session` on loopback: first
`--reads` GETs (an invoice with `properties=`, a thirdparty search, a full invoice), then
`--writes` writes cycling through the sync's calls (create thirdparty, create invoice with two
lines, validate, pay with paymentsdistributed). Validations and payments each sleep the
numbering window (default 3 ms, the sandbox's default) to reproduce Dolibarr's numbering races;
`--numbering-window-ms 0` measures the server alone. `--in-process` starts it in this process
instead (client and server then share one interpreter lock). Nothing leaves loopback.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

# Run as a script from the repository root: make the project importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

API_KEY = "bench-key-0123456789abcdef"


@contextmanager
def sandbox_url(*, in_process: bool, window_ms: float) -> Iterator[str]:
    if in_process:
        from reconciliation.sandbox.dolibarr import DolibarrSandbox

        with DolibarrSandbox(api_key=API_KEY, numbering_window_ms=window_ms) as sandbox:
            yield sandbox.api_url
        return
    command = [sys.executable, "-m", "reconciliation.sandbox.dolibarr", "--port", "0"]
    command += ["--api-key", API_KEY, "--numbering-window-ms", str(window_ms)]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent
    )
    try:
        line = process.stdout.readline().strip()
        yield line.rsplit(" ", 1)[-1]
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()


def timed(label: str, count: int, step: Callable[[int], None]) -> float:
    started = time.perf_counter()
    for index in range(count):
        step(index)
    elapsed = time.perf_counter() - started
    rate = count / elapsed
    print(f"{label:<34} {count:>6} requests in {elapsed:6.2f} s = {rate:8.1f} req/s")
    return rate


def run(url: str, *, reads: int, writes: int) -> None:
    session = requests.Session()
    session.headers["DOLAPIKEY"] = API_KEY

    def call(method: str, path: str, **kwargs) -> requests.Response:
        response = session.request(method, url + path, timeout=10, **kwargs)
        if response.status_code >= 400 and response.status_code != 404:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:200]}")
        return response

    socid = call("POST", "/thirdparties", json={"name": "Bench", "client": 1}).json()
    invoice = call(
        "POST",
        "/invoices",
        json={
            "socid": socid,
            "ref_ext": "in_bench",
            "lines": [{"desc": "Subscription", "qty": 1, "subprice": "20", "tva_tx": 20}],
        },
    ).json()
    read_paths = [
        (f"/invoices/{invoice}", {"properties": "id,ref,ref_ext,statut,paye,total_ttc"}),
        ("/thirdparties", {"sqlfilters": "(t.nom:=:'Bench')"}),
        (f"/invoices/{invoice}", {}),
    ]

    def read(index: int) -> None:
        path, params = read_paths[index % len(read_paths)]
        call("GET", path, params=params)

    state: dict[str, int] = {}

    def write(index: int) -> None:
        phase = index % 4
        if phase == 0:
            state["socid"] = call(
                "POST", "/thirdparties", json={"name": f"Customer {index}", "client": 1}
            ).json()
        elif phase == 1:
            state["invoice"] = call(
                "POST",
                "/invoices",
                json={
                    "socid": state["socid"],
                    "ref_ext": f"in_{index}",
                    "lines": [
                        {"desc": "Article", "qty": 1, "subprice": "4.90", "tva_tx": "2.1"},
                        {"desc": "Subscription", "qty": 1, "subprice": "20", "tva_tx": 20},
                    ],
                },
            ).json()
        elif phase == 2:
            call("POST", f"/invoices/{state['invoice']}/validate", json={"notrigger": 0})
        else:
            call(
                "POST",
                "/invoices/paymentsdistributed",
                json={
                    "arrayofamounts": {str(state["invoice"]): {"amount": "remain"}},
                    "datepaye": 1795262178,
                    "paymentid": 6,
                    "closepaidinvoices": "yes",
                    "accountid": 1,
                    "ref_ext": f"ch_{index}",
                },
            )

    read_rate = timed("GET (3 kinds of reads)", reads, read)
    write_rate = timed("writes (create/create/validate/pay)", writes, write)
    total = reads + writes
    print(f"overall: {total / (reads / read_rate + writes / write_rate):.1f} req/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=3000)
    parser.add_argument("--writes", type=int, default=1000)
    parser.add_argument("--numbering-window-ms", type=float, default=3.0)
    parser.add_argument("--in-process", action="store_true")
    options = parser.parse_args()
    with sandbox_url(in_process=options.in_process, window_ms=options.numbering_window_ms) as url:
        where = "in process" if options.in_process else "own process"
        print(f"sandbox at {url} ({where}, numbering window {options.numbering_window_ms} ms)")
        run(url, reads=options.reads, writes=options.writes)


if __name__ == "__main__":
    main()
