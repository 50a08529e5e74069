"""Run the sandbox Dolibarr alone (demo, manual tests, another process's tests):

    python -m reconciliation.sandbox.dolibarr --port 0 --api-key KEY [--latency-ms 20] ...
        [--multicurrency GBP=0.85,USD=1.08,JPY=162]

The first line printed is `Dolibarr sandbox listening on <api url>`; it then serves until
SIGINT or SIGTERM and exits with status 0.
"""

from __future__ import annotations

import argparse
import sys
from decimal import Decimal

from reconciliation.sandbox.base import Faults
from reconciliation.sandbox.dolibarr.multicurrency import parse_rates
from reconciliation.sandbox.dolibarr.server import DolibarrSandbox


def multicurrency_rates(text: str) -> dict[str, Decimal]:
    try:
        return parse_rates(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m reconciliation.sandbox.dolibarr",
        description="A stand-in for the Dolibarr REST API, on loopback.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback)")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--api-key", required=True, help="the DOLAPIKEY clients must send")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every request")
    parser.add_argument("--error-rate", type=float, default=0.0, help="probability of a 500")
    parser.add_argument("--timeout-rate", type=float, default=0.0, help="probability of a hang")
    parser.add_argument("--timeout-seconds", type=float, default=5.0, help="length of a hang")
    parser.add_argument(
        "--drop-rate", type=float, default=0.0, help="probability of closing without answer"
    )
    parser.add_argument(
        "--lost-response-rate",
        type=float,
        default=0.0,
        help="probability of applying the write and then closing without answer",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the fault dice")
    parser.add_argument(
        "--numbering-window-ms",
        type=float,
        default=3.0,
        help="read-then-insert gap of document numbering (races of parallel writes)",
    )
    parser.add_argument(
        "--multicurrency",
        type=multicurrency_rates,
        default=None,
        metavar="CODE=RATE,...",
        help="turn the Multicurrency module on with these currencies and rates "
        "(units per 1 EUR), e.g. GBP=0.85,USD=1.08,JPY=162; off when not given",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse_arguments(argv)
    faults = Faults(
        latency_ms=options.latency_ms,
        error_rate=options.error_rate,
        timeout_rate=options.timeout_rate,
        timeout_seconds=options.timeout_seconds,
        drop_rate=options.drop_rate,
        lost_response_rate=options.lost_response_rate,
        seed=options.seed,
    )
    sandbox = DolibarrSandbox(
        api_key=options.api_key,
        host=options.host,
        port=options.port,
        faults=faults,
        numbering_window_ms=options.numbering_window_ms,
        multicurrency=options.multicurrency,
    )
    sandbox.serve_until_signalled(banner=lambda s: f"Dolibarr sandbox listening on {s.api_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
