"""Jobs: schedules installed once from the registry, one run at a time per job whatever starts
it, every attempt in the run history, and one e-mail when a job keeps failing and one when it
recovers."""

from __future__ import annotations

import queue
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core import mail
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone
from django_q.models import Schedule

from reconciliation import jobs
from reconciliation.errors import CircuitOpenError, ConfigurationError
from reconciliation.jobs import (
    JOBS,
    SCHEDULE_TASK,
    Job,
    JobError,
    JobResult,
    job_run,
    schedules_install,
)
from reconciliation.models import (
    AuditEvent,
    Cursor,
    Incident,
    IncidentKind,
    JobLease,
    RunState,
    SyncRun,
    Trigger,
)
from reconciliation.services.runs import run_finish, run_start
from reconciliation.tasks import JobFailed, job_task
from tests.processes import ROOT, isolated_env, run_manage

pytestmark = pytest.mark.django_db

PROBE = "probe"


def register(monkeypatch, function, *, name: str = PROBE) -> Job:
    """A job of the tests' own in the registry, for this test only."""
    job = Job(name=name, description="a job for the tests", function=function, cadence="every 5m")
    monkeypatch.setitem(JOBS, name, job)
    return job


def done(call):
    return JobResult(counts={"done": 1})


def failing(message: str = "Dolibarr answered 500"):
    def function(call):
        raise RuntimeError(message)

    return function


def _setup() -> list[str]:
    out = StringIO()
    call_command("setup_schedules", stdout=out)
    return out.getvalue().splitlines()


def _rows() -> list[tuple]:
    return list(
        Schedule.objects.order_by("pk").values_list(
            "pk", "name", "func", "args", "schedule_type", "minutes", "next_run", "repeats"
        )
    )


# --- schedules ------------------------------------------------------------------------------


def test_setup_schedules_installs_one_schedule_per_job():
    _setup()
    schedules = {s.name: s for s in Schedule.objects.all()}
    assert set(schedules) == set(JOBS)
    assert {s.func for s in schedules.values()} == {SCHEDULE_TASK}
    events = schedules["stripe_events"]
    assert (events.schedule_type, events.minutes, events.args) == (
        Schedule.MINUTES,
        5,
        "'stripe_events'",
    )
    assert schedules["stripe_sync"].minutes == 15
    assert schedules["breakers_check"].minutes == 5


def test_setup_schedules_twice_keeps_the_same_rows():
    _setup()
    before = _rows()
    second = _setup()
    assert _rows() == before
    assert second == [f"{name}: unchanged ({JOBS[name].cadence})" for name in JOBS]


def test_setup_schedules_says_what_it_did_per_job():
    assert _setup() == [f"{name}: created ({JOBS[name].cadence})" for name in JOBS]


def test_a_daily_cadence_is_a_daily_schedule_at_that_utc_time():
    _setup()
    rescan = Schedule.objects.get(name="stripe_full_rescan")
    next_run = rescan.next_run.astimezone(UTC)
    assert rescan.schedule_type == Schedule.DAILY
    assert (next_run.hour, next_run.minute, next_run.second) == (2, 30, 0)
    assert timezone.now() < next_run <= timezone.now() + timedelta(days=1)


def test_a_cadence_override_is_applied(settings):
    settings.JOB_CADENCES = {"stripe_sync": "every 2h", "sync_retry": "daily 04:15"}
    _setup()
    assert Schedule.objects.get(name="stripe_sync").minutes == 120
    retry = Schedule.objects.get(name="sync_retry")
    assert retry.schedule_type == Schedule.DAILY
    assert retry.next_run.astimezone(UTC).strftime("%H:%M") == "04:15"


def test_a_changed_cadence_updates_its_row_and_nothing_else(settings):
    _setup()
    before = {row[1]: row for row in _rows()}
    settings.JOB_CADENCES = {"stripe_sync": "every 2h"}
    lines = _setup()
    after = {row[1]: row for row in _rows()}
    assert "stripe_sync: updated (every 15m -> every 2h)" in lines
    assert after["stripe_sync"][0] == before["stripe_sync"][0]
    assert after["stripe_sync"][5] == 120
    assert {k: v for k, v in after.items() if k != "stripe_sync"} == {
        k: v for k, v in before.items() if k != "stripe_sync"
    }


def test_a_bad_cadence_override_is_refused_naming_the_variable(settings):
    settings.JOB_CADENCES = {"stripe_sync": "hourly"}
    with pytest.raises(CommandError) as error:
        _setup()
    assert str(error.value) == (
        "JOB_CADENCES: stripe_sync='hourly': 'hourly' is not a cadence; write it as "
        "'every 15m', 'every 2h' or 'daily 02:30' (UTC); see docs/jobs.md"
    )
    assert not Schedule.objects.exists()


def test_an_override_for_an_unknown_job_is_refused(settings):
    settings.JOB_CADENCES = {"stripe_synk": "every 5m"}
    with pytest.raises(ConfigurationError, match=r"^JOB_CADENCES names 'stripe_synk', which"):
        schedules_install()


def test_a_schedule_of_a_job_no_longer_registered_is_removed():
    Schedule.objects.create(name="stripe_old_job", func=SCHEDULE_TASK, args="'stripe_old_job'")
    foreign = Schedule.objects.create(name="someone_elses", func="other.module.task")
    lines = _setup()
    assert "stripe_old_job: removed (no longer a job)" in lines
    assert not Schedule.objects.filter(name="stripe_old_job").exists()
    assert Schedule.objects.filter(pk=foreign.pk).exists()


def test_a_registered_job_gets_its_schedule(monkeypatch):
    register(monkeypatch, done)
    _setup()
    assert Schedule.objects.get(name=PROBE).args == repr(PROBE)


# --- running through the lease ---------------------------------------------------------------


def test_a_run_is_recorded_with_its_trigger_times_and_counts(monkeypatch):
    register(monkeypatch, done)
    outcome = job_run(PROBE, trigger=Trigger.MANUAL)
    run = SyncRun.objects.get(job=PROBE)
    assert outcome.run == run
    assert (run.state, run.trigger, run.counts, run.error) == (
        "succeeded",
        "manual",
        {"done": 1},
        "",
    )
    assert run.started_at <= run.finished_at


def test_the_lease_names_its_holder_and_run_while_the_job_works(monkeypatch):
    seen = {}

    def look(call):
        seen["lease"] = JobLease.objects.get(job=PROBE)

    register(monkeypatch, look)
    outcome = job_run(PROBE, trigger=Trigger.MANUAL)
    lease = seen["lease"]
    assert lease.holder.startswith(f"{socket.gethostname()} pid ")
    assert " thread MainThread #" in lease.holder
    assert lease.run_id == outcome.run.pk
    assert lease.expires_at > timezone.now() + timedelta(seconds=800)


def test_the_lease_is_released_when_the_run_ends(monkeypatch):
    register(monkeypatch, failing())
    job_run(PROBE, trigger=Trigger.MANUAL)
    lease = JobLease.objects.get(job=PROBE)
    assert (lease.holder, lease.run, lease.expires_at) == ("", None, None)


def test_a_job_held_elsewhere_is_deferred_saying_by_whom_and_since_when(monkeypatch):
    calls = []
    register(monkeypatch, calls.append)
    acquired = datetime(2026, 12, 2, 6, 45, 1, tzinfo=UTC)
    JobLease.objects.create(
        job=PROBE,
        holder="worker-2 pid 4242 thread MainThread #a1b2c3",
        acquired_at=acquired,
        expires_at=timezone.now() + timedelta(minutes=10),
    )
    outcome = job_run(PROBE, trigger=Trigger.SCHEDULE)
    run = SyncRun.objects.get(job=PROBE)
    assert calls == []
    assert outcome.state == run.state == RunState.DEFERRED
    assert run.error == (
        "already running on worker-2 pid 4242 thread MainThread #a1b2c3 "
        "since 2026-12-02 06:45:01 UTC"
    )
    assert JobLease.objects.get(job=PROBE).holder.startswith("worker-2 ")


def test_a_crashed_holders_lease_expires_and_the_next_run_proceeds(monkeypatch, settings):
    register(monkeypatch, done)
    crashed = run_start(job=PROBE, trigger=Trigger.SCHEDULE)
    long_ago = timezone.now() - timedelta(seconds=settings.JOB_LEASE_SECONDS + 60)
    JobLease.objects.create(
        job=PROBE,
        holder="lost-machine pid 999999 thread MainThread #dead00",
        run=crashed,
        acquired_at=long_ago,
        expires_at=long_ago + timedelta(seconds=settings.JOB_LEASE_SECONDS),
    )
    outcome = job_run(PROBE, trigger=Trigger.SCHEDULE)
    crashed.refresh_from_db()
    assert outcome.state == RunState.SUCCEEDED
    assert crashed.state == RunState.FAILED
    assert crashed.error.startswith(
        "abandoned: lost-machine pid 999999 thread MainThread #dead00 stopped renewing its lease"
    )
    assert JobLease.objects.get(job=PROBE).holder == ""


def test_a_function_opening_a_run_of_its_jobs_name_leaves_one_run_with_the_cursor(monkeypatch):
    def pull(call):
        run = run_start(job=PROBE, trigger=call.trigger)
        run_finish(run=run, counts={"seen": 3}, cursor_after="evt_3@1767225600")

    register(monkeypatch, pull)
    Cursor.objects.create(stream=PROBE, value="evt_0@1767139200")
    job_run(PROBE, trigger=Trigger.SCHEDULE)
    run = SyncRun.objects.get(job=PROBE)
    assert (run.cursor_before, run.cursor_after) == ("evt_0@1767139200", "evt_3@1767225600")
    assert run.counts == {"seen": 3}
    assert Cursor.objects.get(stream=PROBE).value == "evt_3@1767225600"


def test_an_open_circuit_defers_the_run(monkeypatch, settings):
    settings.ADMINS = [("Finance admin", "admin@example.org")]

    def breaker_open(call):
        raise CircuitOpenError("Dolibarr's circuit breaker is open", system="dolibarr")

    register(monkeypatch, breaker_open)
    for _ in range(3):
        outcome = job_run(PROBE, trigger=Trigger.SCHEDULE)
    assert outcome.state == RunState.DEFERRED
    assert outcome.run.error == "Dolibarr's circuit breaker is open"
    assert mail.outbox == []


def test_a_failure_is_one_line_without_secrets(monkeypatch, settings):
    settings.STRIPE_API_KEY = "sk_test_leaky0123456789"
    register(monkeypatch, failing("refused\n  key sk_test_leaky0123456789 was sent"))
    outcome = job_run(PROBE, trigger=Trigger.SCHEDULE)
    assert outcome.state == RunState.FAILED
    assert outcome.run.error == "internal error: RuntimeError: refused key [redacted] was sent"


def test_the_scheduled_task_runs_the_job_as_a_schedule(monkeypatch):
    register(monkeypatch, done)
    result = job_task(PROBE)
    assert result["state"] == "succeeded"
    assert SyncRun.objects.get(pk=result["run"]).trigger == Trigger.SCHEDULE


def test_a_failed_scheduled_run_is_recorded_then_raised_for_django_q(monkeypatch):
    register(monkeypatch, failing("Dolibarr answered 500"))
    with pytest.raises(JobFailed, match="Dolibarr answered 500"):
        job_task(PROBE)
    assert SyncRun.objects.get(job=PROBE).state == RunState.FAILED


def test_an_unknown_job_is_refused_naming_the_jobs():
    with pytest.raises(JobError, match=r"^unknown job 'nope'; one of stripe_events, stripe_sync"):
        job_run("nope", trigger=Trigger.MANUAL)


def test_a_job_without_a_dry_run_refuses_one():
    with pytest.raises(JobError, match=r"^stripe_events cannot dry-run: it writes nothing"):
        job_run("stripe_events", trigger=Trigger.MANUAL, dry_run=True)


def test_breakers_check_runs_the_resilience_check(monkeypatch):
    import reconciliation.resilience as resilience

    monkeypatch.setattr(resilience, "breakers_check_alerts", lambda: 1)
    outcome = job_run("breakers_check", trigger=Trigger.SCHEDULE)
    assert outcome.state == RunState.SUCCEEDED
    assert outcome.run.counts == {"open_too_long": 1}


# --- alerts ---------------------------------------------------------------------------------


@pytest.fixture
def admins(settings):
    settings.ADMINS = [("Finance admin", "admin@example.org")]


def test_one_failure_sends_nothing(monkeypatch, admins):
    register(monkeypatch, failing())
    job_run(PROBE, trigger=Trigger.SCHEDULE)
    assert mail.outbox == []


def test_two_failures_in_a_row_send_one_alert_mail(monkeypatch, admins):
    register(monkeypatch, failing("Dolibarr answered 500"))
    job_run(PROBE, trigger=Trigger.SCHEDULE)
    job_run(PROBE, trigger=Trigger.SCHEDULE)
    assert [m.subject for m in mail.outbox] == ["[ap24sync] Job probe failed twice in a row"]
    body = mail.outbox[0].body
    assert body.count("Dolibarr answered 500") == 2
    assert 'see docs/runbook.md, "Job failing"' in body
    assert Incident.objects.get().kind == IncidentKind.JOB_FAILING
    assert AuditEvent.objects.filter(action="alert.sent").count() == 1


def test_a_third_failure_sends_no_new_mail(monkeypatch, admins):
    register(monkeypatch, failing())
    for _ in range(3):
        job_run(PROBE, trigger=Trigger.SCHEDULE)
    assert len(mail.outbox) == 1


def test_the_next_success_sends_one_recovery_mail(monkeypatch, admins):
    function = {"now": failing()}
    register(monkeypatch, lambda call: function["now"](call))
    job_run(PROBE, trigger=Trigger.SCHEDULE)
    job_run(PROBE, trigger=Trigger.SCHEDULE)
    function["now"] = done
    job_run(PROBE, trigger=Trigger.SCHEDULE)
    job_run(PROBE, trigger=Trigger.SCHEDULE)
    assert [m.subject for m in mail.outbox] == [
        "[ap24sync] Job probe failed twice in a row",
        "[ap24sync] Job probe succeeds again",
    ]
    assert Incident.objects.get().resolved_at is not None


def test_a_deferred_run_between_two_failures_does_not_break_the_streak(monkeypatch, admins):
    function = {"now": failing()}
    register(monkeypatch, lambda call: function["now"](call))
    job_run(PROBE, trigger=Trigger.SCHEDULE)

    def breaker_open(call):
        raise CircuitOpenError("Stripe's circuit breaker is open", system="stripe")

    function["now"] = breaker_open
    job_run(PROBE, trigger=Trigger.SCHEDULE)
    assert mail.outbox == []
    function["now"] = failing()
    job_run(PROBE, trigger=Trigger.SCHEDULE)
    assert len(mail.outbox) == 1


def test_a_deferred_run_after_failures_sends_no_recovery_mail(monkeypatch, admins):
    function = {"now": failing()}
    register(monkeypatch, lambda call: function["now"](call))
    job_run(PROBE, trigger=Trigger.SCHEDULE)
    job_run(PROBE, trigger=Trigger.SCHEDULE)
    JobLease.objects.filter(job=PROBE).update(
        holder="elsewhere pid 1 thread MainThread #000000",
        expires_at=timezone.now() + timedelta(minutes=5),
    )
    job_run(PROBE, trigger=Trigger.SCHEDULE)
    assert len(mail.outbox) == 1
    assert Incident.objects.get().resolved_at is None


# --- two runs racing for one job --------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_two_runs_racing_in_threads_one_runs_and_the_other_is_deferred(monkeypatch):
    """Both call job_run at the same instant; the winner holds the job until the loser has
    come back, so the loser can only have found it held."""
    if connection.vendor == "sqlite":
        pytest.skip(
            "the SQLite test database is in memory, where threads meet table locks instead of "
            "waiting; test_two_processes_racing_on_sqlite covers SQLite"
        )
    release = threading.Event()

    def hold(call):
        release.wait(timeout=30)
        return JobResult(counts={"held": 1})

    register(monkeypatch, hold)
    barrier = threading.Barrier(2)
    outcomes: queue.Queue = queue.Queue()

    def contender() -> None:
        try:
            barrier.wait(timeout=10)
            outcomes.put(job_run(PROBE, trigger=Trigger.SCHEDULE))
        finally:
            connection.close()

    threads = [threading.Thread(target=contender) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        first = outcomes.get(timeout=20)
    finally:
        release.set()
        for thread in threads:
            thread.join(timeout=30)
    second = outcomes.get(timeout=5)
    assert (first.state, second.state) == (RunState.DEFERRED, RunState.SUCCEEDED)
    assert first.error.startswith("already running on ")
    assert sorted(SyncRun.objects.filter(job=PROBE).values_list("state", flat=True)) == [
        "deferred",
        "succeeded",
    ]


@pytest.mark.django_db(transaction=True)
def test_the_lease_is_renewed_while_the_job_works(monkeypatch, settings):
    if connection.vendor == "sqlite":
        pytest.skip(
            "the heartbeat writes from its own thread, which the in-memory SQLite test "
            "database answers with table locks instead of waits"
        )
    settings.JOB_LEASE_SECONDS = 3  # a beat every second
    seen = []

    def watch(call):
        first = JobLease.objects.get(job=PROBE).expires_at
        deadline = time.monotonic() + 20
        while not seen and time.monotonic() < deadline:
            later = JobLease.objects.get(job=PROBE).expires_at
            if later > first:
                seen.append(later)
            time.sleep(0.1)

    register(monkeypatch, watch)
    outcome = job_run(PROBE, trigger=Trigger.SCHEDULE)
    assert outcome.state == RunState.SUCCEEDED
    assert seen, "the lease was never renewed"


# A racer: registers a job that holds on until the test says so, waits at a barrier (files)
# for the other racers, then runs it and prints how it ended.
RACER = r"""
import os, time
from pathlib import Path
from reconciliation import jobs
from reconciliation.models import Trigger

here = Path(os.environ["RACE_DIR"])

def hold(call):
    deadline = time.monotonic() + 60
    while not (here / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return jobs.JobResult(counts={"held": 1})

jobs.job_register(
    jobs.Job(name="race_probe", description="racing", function=hold, cadence="every 5m")
)
(here / f"ready-{os.getpid()}").touch()
deadline = time.monotonic() + 60
while len(list(here.glob("ready-*"))) < int(os.environ["RACERS"]) and time.monotonic() < deadline:
    time.sleep(0.005)
outcome = jobs.job_run("race_probe", trigger=Trigger.SCHEDULE)
print(outcome.state, outcome.error)
"""


def test_two_processes_racing_on_sqlite_one_runs_and_the_other_is_deferred(tmp_path: Path):
    database = tmp_path / "db.sqlite3"
    env = isolated_env(DATABASE_URL=f"sqlite:///{database}", RACE_DIR=str(tmp_path), RACERS="2")
    migrated = run_manage(env, "migrate", "--verbosity", "0")
    assert migrated.returncode == 0, migrated.stderr[-2000:]
    racers = [
        subprocess.Popen(
            [sys.executable, "manage.py", "shell", "--no-imports", "-c", RACER],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        deadline = time.monotonic() + 60
        while all(racer.poll() is None for racer in racers) and time.monotonic() < deadline:
            time.sleep(0.05)
        loser = next(racer for racer in racers if racer.poll() is not None)
        (tmp_path / "release").touch()
        outputs = {racer: racer.communicate(timeout=60) for racer in racers}
    finally:
        (tmp_path / "release").touch()
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
    winner = next(racer for racer in racers if racer is not loser)
    assert outputs[loser][0].startswith("deferred already running on "), outputs[loser][1][-2000:]
    assert outputs[winner][0].strip() == "succeeded", outputs[winner][1][-2000:]
    with sqlite3.connect(database) as db:
        states = db.execute(
            "SELECT state FROM reconciliation_syncrun WHERE job = 'race_probe' ORDER BY state"
        ).fetchall()
        lease = db.execute(
            "SELECT holder FROM reconciliation_joblease WHERE job = 'race_probe'"
        ).fetchone()
    assert states == [("deferred",), ("succeeded",)]
    assert lease == ("",)


def test_jobs_module_names_every_job_with_a_cadence():
    cadences = jobs.job_cadences()
    assert list(cadences) == list(JOBS)
    assert str(cadences["stripe_full_rescan"]) == "daily 02:30"
