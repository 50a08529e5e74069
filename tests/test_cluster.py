"""A task queued by the console is run by a separate django-q2 cluster, on the embedded ORM
broker and on Redis. The cluster is a real `manage.py qcluster` process sharing a database file
with the test, and the task pulls from the sandbox Stripe over HTTP."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures_stripe import STRIPE_TEST_KEY
from tests.processes import isolated_env, run_manage

ROOT = Path(__file__).resolve().parent.parent
REDIS_TEST_URL = os.environ.get("AP24SYNC_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")


def _redis_available() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_TEST_URL, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def _env(tmp_path, stripe_sandbox, **extra):
    return isolated_env(
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        STRIPE_API_KEY=STRIPE_TEST_KEY,
        STRIPE_API_BASE=stripe_sandbox.base_url,
        STRIPE_MAX_NETWORK_RETRIES="0",
        Q_CLUSTER_NAME=f"test{os.getpid()}{tmp_path.name[-6:]}",
        **extra,
    )


def _manage(env, *args):
    completed = run_manage(env, *args)
    completed.check_returncode()
    return completed.stdout.strip()


def _queued_pull_is_run_by_the_cluster(env) -> int:
    _manage(env, "migrate", "--verbosity", "0")
    _manage(
        env,
        "shell",
        "--no-imports",
        "-c",
        "from django_q.tasks import async_task; "
        "async_task('reconciliation.tasks.stripe_stream_pull_task', 'customers')",
    )
    cluster = subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    database = env["DATABASE_URL"].removeprefix("sqlite:///")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with sqlite3.connect(database) as db:
                finished = db.execute(
                    "SELECT count(*) FROM reconciliation_syncrun "
                    "WHERE job = 'stripe_customers' AND state != 'running'"
                ).fetchone()[0]
                (count,) = db.execute(
                    "SELECT count(*) FROM reconciliation_syncrecord WHERE kind = 'customer'"
                ).fetchone()
            if finished:
                return count
            time.sleep(0.3)
        return 0
    finally:
        # How the cluster stops is not under test here: end it at once.
        os.killpg(cluster.pid, signal.SIGKILL)
        cluster.wait(timeout=10)


def test_a_task_queued_on_the_orm_broker_is_run_by_the_cluster(
    tmp_path, stripe_sandbox, stripe_dataset
):
    env = _env(tmp_path, stripe_sandbox)
    assert _queued_pull_is_run_by_the_cluster(env) == len(stripe_dataset.collections["customers"])


@pytest.mark.skipif(not _redis_available(), reason="no Redis on 127.0.0.1:6379 (CI starts one)")
def test_a_task_queued_on_redis_is_run_by_the_cluster(tmp_path, stripe_sandbox, stripe_dataset):
    import redis

    redis.Redis.from_url(REDIS_TEST_URL).flushdb()
    env = _env(tmp_path, stripe_sandbox, REDIS_URL=REDIS_TEST_URL)
    assert _queued_pull_is_run_by_the_cluster(env) == len(stripe_dataset.collections["customers"])
