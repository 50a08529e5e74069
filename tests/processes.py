"""Running `manage.py` in a separate process, as an operator or a worker would, with only the
variables a test gives it: none of the project's variables leak in from the environment of
whoever runs the tests, and no `.env` file is read."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
PROJECT_VARIABLES = (
    "AIPRESS24_",
    "AP24SYNC",
    "DATABASE_URL",
    "DJANGO_",
    "DOLIBARR_",
    "REDIS_URL",
    "SECRET_KEY",
    "STRIPE_",
    "SYNC_",
)


def isolated_env(**variables: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(PROJECT_VARIABLES)}
    env["AP24SYNC_ENV_FILE"] = str(ROOT / "does-not-exist.env")
    env.update(variables)
    return env


def run_manage(env: dict[str, str], *args: str, timeout: float = 120):
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def concurrently(calls: list[Callable[[], requests.Response]]) -> list[requests.Response]:
    """Release all calls at the same instant from their own threads, like the recorded races."""
    barrier = threading.Barrier(len(calls))
    results: list[requests.Response | None] = [None] * len(calls)

    def run(index: int) -> None:
        barrier.wait()
        results[index] = calls[index]()

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [result for result in results if result is not None]
