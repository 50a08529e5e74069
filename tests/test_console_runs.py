"""The console's job runs (`/console/runs/`) and its "run now": the history shown, who may
queue a run, what is queued and audited, and what is refused."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone
from django_q.conf import Conf

from reconciliation import jobs
from reconciliation.console import services
from reconciliation.jobs import Job, JobResult
from reconciliation.models import AuditEvent, RunState, SyncRun, Trigger
from reconciliation.permissions import FINANCE_OPERATOR, FINANCE_VIEWER

pytestmark = pytest.mark.django_db

URL = "/console/runs/"
RUN_NOW = "/console/runs/run/"
PAGE_QUERY_BUDGET = 8  # session, user, permissions, role, the jobs' choices, the rows, headroom


def _member(django_user_model, group: str, username: str):
    user = django_user_model.objects.create_user(username, password="pw", is_staff=True)
    user.groups.add(Group.objects.get(name=group))
    return user


@pytest.fixture
def viewer(django_user_model):
    return _member(django_user_model, FINANCE_VIEWER, "vera")


@pytest.fixture
def operator(django_user_model):
    return _member(django_user_model, FINANCE_OPERATOR, "otto")


@pytest.fixture
def queued(monkeypatch):
    """The tasks the console hands to django-q2, instead of the broker."""
    calls = []
    monkeypatch.setattr(
        services, "async_task", lambda func, *args, **kwargs: calls.append((func, args, kwargs))
    )
    return calls


@pytest.fixture
def runs(operator):
    now = timezone.now()
    failed = SyncRun.objects.create(
        job="stripe_sync",
        trigger=Trigger.SCHEDULE,
        state=RunState.FAILED,
        started_at=now - timedelta(hours=2),
        finished_at=now - timedelta(hours=2) + timedelta(seconds=75),
        counts={"seen": 1200, "synced": 3},
        error="Dolibarr answered 500 on /invoices\nTraceback line that is not shown",
    )
    manual = SyncRun.objects.create(
        job="sync_retry",
        trigger=Trigger.MANUAL,
        state=RunState.SUCCEEDED,
        started_at=now - timedelta(hours=1),
        finished_at=now - timedelta(hours=1) + timedelta(seconds=4),
        counts={"synced": 2},
        started_by=operator,
    )
    return failed, manual


def _post_run(client, job):
    return client.post(RUN_NOW, {"job": job})


# --- The history ----------------------------------------------------------------------------


def test_an_anonymous_visitor_is_sent_to_the_admin_login(client):
    answer = client.get(URL)
    assert answer.status_code == 302
    assert answer["Location"].startswith("/admin/login/?next=/console/runs/")


def test_the_runs_page_lists_runs_newest_first_with_counts_and_error(client, viewer, runs):
    client.force_login(viewer)
    page = client.get(URL)
    content = page.content.decode()
    shown = [row.record for row in page.context["table"].page.object_list]
    assert page.status_code == 200
    assert shown == [runs[1], runs[0]]
    assert "seen 1,200, synced 3" in content
    assert "Dolibarr answered 500 on /invoices" in content
    assert "Traceback line that is not shown" not in content
    assert "1 min 15 s" in content
    assert "otto" in content


def test_filtering_by_state_keeps_that_state(client, viewer, runs):
    client.force_login(viewer)
    page = client.get(URL, {"state": RunState.FAILED})
    assert [row.record for row in page.context["table"].page.object_list] == [runs[0]]


def test_filtering_by_job_and_trigger_keeps_those_runs(client, viewer, runs):
    client.force_login(viewer)
    page = client.get(URL, {"job": "sync_retry", "trigger": Trigger.MANUAL})
    assert [row.record for row in page.context["table"].page.object_list] == [runs[1]]


@pytest.mark.parametrize(("runs_made", "rows_shown"), [(5, 5), (60, 50)])
def test_the_page_costs_the_same_queries_whatever_its_size(
    client, operator, django_assert_max_num_queries, runs_made, rows_shown
):
    SyncRun.objects.bulk_create(
        SyncRun(job=f"job_{n % 4}", started_by=operator if n % 2 else None)
        for n in range(runs_made)
    )
    client.force_login(operator)
    with django_assert_max_num_queries(PAGE_QUERY_BUDGET) as captured:
        page = client.get(URL)
    assert len(page.context["table"].page.object_list) == rows_shown
    assert not [q["sql"] for q in captured.captured_queries if "COUNT(" in q["sql"].upper()]


# --- Run now --------------------------------------------------------------------------------


def test_a_viewer_is_offered_no_run_now_button(client, viewer, runs):
    client.force_login(viewer)
    content = client.get(URL).content.decode()
    assert "Run now" not in content
    assert RUN_NOW not in content


def test_an_operator_is_offered_run_now_for_every_registered_job(client, operator):
    client.force_login(operator)
    content = client.get(URL).content.decode()
    for name in jobs.JOBS:
        assert f'name="job" value="{name}"' in content


def test_a_viewers_crafted_run_now_is_forbidden_queues_nothing_and_audits_nothing(
    client, viewer, queued, django_capture_on_commit_callbacks
):
    client.force_login(viewer)
    with django_capture_on_commit_callbacks(execute=True):
        answer = _post_run(client, "sync_retry")
    assert answer.status_code == 403
    assert queued == []
    assert not AuditEvent.objects.exists()


def test_an_operators_run_now_queues_a_manual_run_of_the_job(
    client, operator, queued, django_capture_on_commit_callbacks
):
    client.force_login(operator)
    with django_capture_on_commit_callbacks(execute=True):
        answer = _post_run(client, "sync_retry")
    assert answer.status_code == 302
    assert answer["Location"] == URL
    [(func, args, kwargs)] = queued
    assert (func, args, kwargs["trigger"]) == (
        "reconciliation.jobs.job_run",
        ("sync_retry",),
        "manual",
    )
    assert kwargs["actor"] == operator


def test_an_operators_run_now_is_audited_with_the_operator(
    client, operator, queued, django_capture_on_commit_callbacks
):
    client.force_login(operator)
    with django_capture_on_commit_callbacks(execute=True):
        _post_run(client, "sync_retry")
    event = AuditEvent.objects.get()
    assert (event.action, event.actor, event.actor_label) == ("job.run_requested", operator, "otto")
    assert (event.target_type, event.target_id) == ("job", "sync_retry")
    assert event.after == {"job": "sync_retry", "trigger": "manual"}


def test_the_run_now_is_queued_only_once_the_audit_is_committed(
    client, operator, queued, django_capture_on_commit_callbacks
):
    client.force_login(operator)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        _post_run(client, "sync_retry")
    assert queued == []
    assert len(callbacks) == 1


def test_the_operator_is_told_the_job_is_queued(
    client, operator, queued, django_capture_on_commit_callbacks
):
    client.force_login(operator)
    with django_capture_on_commit_callbacks(execute=True):
        page = _post_run(client, "sync_retry")
    page = client.get(page["Location"])
    assert "sync_retry is queued" in page.content.decode()


def test_the_queued_task_runs_the_job_as_a_manual_run_by_the_operator(
    client, operator, monkeypatch, django_capture_on_commit_callbacks
):
    """Through django-q2 for real (run in this process), with a job of the test's own."""
    monkeypatch.setattr(Conf, "SYNC", True)
    monkeypatch.setitem(
        jobs.JOBS,
        "console_probe",
        Job(
            name="console_probe",
            description="a job of the tests",
            function=lambda call: JobResult(counts={"seen": 1}),
            cadence="every 5m",
        ),
    )
    client.force_login(operator)
    with django_capture_on_commit_callbacks(execute=True):
        _post_run(client, "console_probe")
    run = SyncRun.objects.get(job="console_probe")
    assert (run.state, run.trigger, run.started_by, run.counts) == (
        RunState.SUCCEEDED,
        Trigger.MANUAL,
        operator,
        {"seen": 1},
    )


def test_an_unknown_job_is_a_bad_request_that_queues_and_audits_nothing(
    client, operator, queued, django_capture_on_commit_callbacks
):
    client.force_login(operator)
    with django_capture_on_commit_callbacks(execute=True):
        answer = _post_run(client, "no_such_job")
    assert answer.status_code == 400
    assert "There is no job named “no_such_job”" in answer.content.decode()
    assert queued == []
    assert not AuditEvent.objects.exists()


def test_a_run_now_without_its_csrf_token_is_forbidden(operator, queued):
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    answer = _post_run(client, "sync_retry")
    assert answer.status_code == 403
    assert queued == []
    assert not AuditEvent.objects.exists()


def test_run_now_answers_only_posts(client, operator, queued):
    client.force_login(operator)
    assert client.get(RUN_NOW, {"job": "sync_retry"}).status_code == 405
    assert queued == []


def test_the_runs_page_is_in_french_when_the_browser_asks_for_it(client, operator, runs):
    client.force_login(operator)
    content = client.get(URL, HTTP_ACCEPT_LANGUAGE="fr").content.decode()
    assert "Exécutions des tâches" in content
    assert "Lancer maintenant" in content
