"""Two django-q2 clusters, as on two machines, share the PostgreSQL database and Redis; the same
job queued on both at once runs once, and the other run is recorded as deferred.

The clusters are real `manage.py qcluster` processes, each with its own queue in Redis
(`Q_CLUSTER_NAME`), working on this test's database. The job is `stripe_events` against the
sandbox Stripe, whose `/v1/events` answer is held back until the other run has been deferred:
whichever cluster takes the lease first is still running when the second one looks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django_q.models import Task

from reconciliation.models import RunState, SyncRun
from tests.fixtures_stripe import STRIPE_TEST_KEY
from tests.processes import ROOT, isolated_env

JOB = "stripe_events"
DEADLINE_SECONDS = 25


def _database_url() -> str:
    """The URL of the test database itself (not the one DATABASE_URL names)."""
    db = connection.settings_dict
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return (
        f"postgres://{db.get('USER') or 'postgres'}{password}@{db.get('HOST') or '127.0.0.1'}"
        f":{db.get('PORT') or 5432}/{db['NAME']}"
    )


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what}")


@pytest.fixture
def held_events(stripe_sandbox, monkeypatch):
    """The sandbox Stripe, answering `/v1/events` only once the returned event is set."""
    release = threading.Event()
    answer = stripe_sandbox.handle

    def held(request):
        if request.path == "/v1/events":
            release.wait(timeout=DEADLINE_SECONDS)
        return answer(request)

    monkeypatch.setattr(stripe_sandbox, "handle", held)
    yield stripe_sandbox, release
    release.set()


@pytest.mark.django_db(transaction=True)
def test_the_same_job_queued_on_two_clusters_runs_once(held_events, tmp_path: Path):
    if not settings.REDIS_URL:
        pytest.skip("REDIS_URL is not set (CI sets it in its PostgreSQL pass)")
    if connection.vendor != "postgresql":
        pytest.skip("the clusters share the test database, which needs PostgreSQL")
    import redis

    sandbox, release = held_events
    names = [f"jobs{os.getpid()}{side}" for side in "ab"]
    base = isolated_env(
        DATABASE_URL=_database_url(),
        REDIS_URL=settings.REDIS_URL,
        STRIPE_API_KEY=STRIPE_TEST_KEY,
        STRIPE_API_BASE=sandbox.base_url,
        STRIPE_MAX_NETWORK_RETRIES="0",
        Q_WORKERS="1",
    )
    envs = [{**base, "Q_CLUSTER_NAME": name} for name in names]
    clusters = [
        subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"],
            cwd=ROOT,
            env=env,
            stdout=(tmp_path / f"{env['Q_CLUSTER_NAME']}.log").open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for env in envs
    ]
    try:
        # One task on each cluster's own queue, queued together.
        queueing = [
            subprocess.Popen(
                [
                    sys.executable,
                    "manage.py",
                    "shell",
                    "--no-imports",
                    "-c",
                    f"from django_q.tasks import async_task; "
                    f"async_task('reconciliation.tasks.job_task', {JOB!r})",
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for env in envs
        ]
        for process in queueing:
            assert process.wait(timeout=DEADLINE_SECONDS) == 0, process.stderr.read()[-2000:]

        runs = SyncRun.objects.filter(job=JOB)
        _wait_for(lambda: runs.filter(state=RunState.DEFERRED).exists(), "a deferred run")
        release.set()
        _wait_for(lambda: not runs.filter(state=RunState.RUNNING).exists(), "the other run")
        tasks = Task.objects.filter(func="reconciliation.tasks.job_task")
        _wait_for(lambda: tasks.count() >= 2, "both tasks' results")

        assert sorted(runs.values_list("state", flat=True)) == ["deferred", "succeeded"]
        assert runs.get(state=RunState.DEFERRED).error.startswith("already running on ")
        assert set(tasks.values_list("cluster", flat=True)) == set(names)
    finally:
        release.set()
        for cluster in clusters:
            os.killpg(cluster.pid, signal.SIGKILL)
        for cluster in clusters:
            cluster.wait(timeout=10)
        queues = redis.Redis.from_url(settings.REDIS_URL)
        for name in names:
            for key in queues.scan_iter(f"django_q:{name}:*"):
                queues.delete(key)
