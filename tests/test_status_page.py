"""The staff status page (`/admin/status/`) and the read-only admin of breakers, incidents and
job leases."""

import socket
import uuid
from datetime import timedelta

import pytest
from django.contrib.admin.utils import quote
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.conf import Conf
from pytest_django.asserts import assertContains, assertInHTML, assertNotContains

from reconciliation.models import (
    BreakerState,
    CircuitBreaker,
    Incident,
    IncidentKind,
    JobLease,
    RunState,
    SyncRecord,
    SyncRun,
    SyncState,
)

pytestmark = pytest.mark.django_db

URL = "/admin/status/"


@pytest.fixture
def staff_client(client, django_user_model):
    user = django_user_model.objects.create_user("operator", password="x", is_staff=True)
    client.force_login(user)
    return client


@pytest.fixture
def queue(monkeypatch):
    """The django-q2 broker's queue under a name of its own, so that whatever else uses the
    broker (another test run sharing Redis) does not change its depth."""
    monkeypatch.setattr(Conf, "CLUSTER_NAME", f"status-test-{uuid.uuid4().hex[:8]}")
    broker = get_broker()
    yield broker
    broker.purge_queue()


def _record(external_id, **fields):
    return SyncRecord.objects.create(
        source="stripe", kind="invoice", external_id=external_id, **fields
    )


def _run(job, *, started_minutes_ago, state=RunState.SUCCEEDED, seconds=90, **fields):
    started = timezone.now() - timedelta(minutes=started_minutes_ago)
    return SyncRun.objects.create(
        job=job,
        state=state,
        started_at=started,
        finished_at=None if state == RunState.RUNNING else started + timedelta(seconds=seconds),
        **fields,
    )


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- Who may see it -------------------------------------------------------------------------


def test_an_anonymous_visitor_is_sent_to_the_login_page(client):
    response = client.get(URL)
    assert response.status_code == 302
    assert response["Location"] == f"/admin/login/?next={URL}"


def test_a_user_who_is_not_staff_is_sent_to_the_login_page(client, django_user_model):
    client.force_login(django_user_model.objects.create_user("viewer", password="x"))
    response = client.get(URL)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_the_status_page_is_never_cached(staff_client):
    assert "no-store" in staff_client.get(URL)["Cache-Control"]


def test_the_admin_index_links_to_the_status_page(admin_client):
    assertContains(admin_client.get("/admin/"), f'href="{URL}"')


# --- What it shows --------------------------------------------------------------------------


def test_staff_see_each_remote_breaker_state(staff_client):
    CircuitBreaker.objects.create(
        system="dolibarr",
        state=BreakerState.OPEN,
        consecutive_failures=5,
        opened_at=timezone.now() - timedelta(minutes=12),
        last_failure_at=timezone.now(),
        last_error="Dolibarr is unreachable at https://erp.example.org",
    )
    CircuitBreaker.objects.create(
        system="stripe", state=BreakerState.CLOSED, last_success_at=timezone.now()
    )
    response = staff_client.get(URL)
    dolibarr, stripe = (row for row in response.context["overview"].remotes)
    assert (dolibarr.breaker.state, stripe.breaker.state) == ("open", "closed")
    assertInHTML('<td class="state-open">Open</td>', response.content.decode())
    assertInHTML('<td class="state-closed">Closed</td>', response.content.decode())
    assertContains(response, "Dolibarr is unreachable at https://erp.example.org")


def test_a_remote_without_a_breaker_row_is_shown_closed(staff_client):
    response = staff_client.get(URL)
    assert [(r.breaker.system, r.breaker.state) for r in response.context["overview"].remotes] == [
        ("dolibarr", "closed"),
        ("stripe", "closed"),
    ]


def test_any_other_system_with_a_breaker_row_gets_its_own_line(staff_client):
    CircuitBreaker.objects.create(system="aipress24", state=BreakerState.HALF_OPEN)
    response = staff_client.get(URL)
    assertInHTML('<td class="state-half_open">Half-open (probing)</td>', response.content.decode())
    assertContains(response, 'id="remote-aipress24"')


def test_a_breaker_error_is_escaped(staff_client):
    CircuitBreaker.objects.create(
        system="dolibarr", state=BreakerState.OPEN, last_error="<script>alert(1)</script>"
    )
    response = staff_client.get(URL)
    assertNotContains(response, "<script>alert(1)</script>")
    assertContains(response, "&lt;script&gt;alert(1)&lt;/script&gt;")


def test_staff_see_the_queue_depth(staff_client, queue):
    for _ in range(3):
        queue.enqueue("payload")
    response = staff_client.get(URL)
    assertInHTML('<td id="queue-depth" class="number">3</td>', response.content.decode())


def test_the_queue_depth_is_unknown_when_the_broker_cannot_be_reached(staff_client, monkeypatch):
    monkeypatch.setattr(Conf, "ORM", None)
    monkeypatch.setattr(Conf, "DJANGO_REDIS", None)
    monkeypatch.setattr(Conf, "REDIS", f"redis://127.0.0.1:{_closed_port()}/0")
    response = staff_client.get(URL)
    assert response.status_code == 200
    assertInHTML('<td id="queue-depth" class="number">unknown</td>', response.content.decode())


def test_staff_see_the_record_due_the_longest_and_how_many_are_due(staff_client):
    now = timezone.now()
    oldest = _record("in_oldest", next_attempt_at=now - timedelta(hours=2))
    _record("in_new")  # pending since now, no next attempt
    _record("in_later", next_attempt_at=now + timedelta(hours=1))  # not due yet
    _record("in_done", state=SyncState.SYNCED)
    response = staff_client.get(URL)
    due = response.context["overview"].due
    assert (due.count, due.oldest) == (2, oldest)
    assertInHTML('<td id="due-count" class="number">2</td>', response.content.decode())
    assertContains(response, reverse("admin:reconciliation_syncrecord_change", args=[oldest.pk]))


def test_staff_see_how_many_records_failed(staff_client):
    _record("in_failed_1", state=SyncState.FAILED)
    _record("in_failed_2", state=SyncState.FAILED)
    response = staff_client.get(URL)
    assert response.context["overview"].due.failed_count == 2
    assertContains(response, "?state__exact=failed")


def test_staff_see_each_jobs_latest_run(staff_client):
    _run("stripe_sync", started_minutes_ago=30, state=RunState.FAILED, error="older failure")
    latest = _run(
        "stripe_sync", started_minutes_ago=5, seconds=125, counts={"pulled": 1200, "failed": 1}
    )
    _run("sync_retry", started_minutes_ago=2, state=RunState.FAILED, error="Dolibarr said 500")
    response = staff_client.get(URL)
    jobs = {job.job: job for job in response.context["overview"].jobs}
    assert jobs["stripe_sync"].last_run == latest
    assert jobs["stripe_sync"].duration == "2 min 05 s"
    assertContains(response, "failed 1, pulled 1,200")
    assertContains(response, "Dolibarr said 500")
    assertNotContains(response, "older failure")


def test_a_running_job_shows_no_duration_yet(staff_client):
    _run("stripe_events", started_minutes_ago=1, state=RunState.RUNNING)
    (job,) = staff_client.get(URL).context["overview"].jobs
    assert (job.last_run.state, job.duration) == ("running", "")


def test_staff_see_who_holds_a_jobs_lease(staff_client):
    run = _run("stripe_sync", started_minutes_ago=1, state=RunState.RUNNING)
    JobLease.objects.create(
        job="stripe_sync",
        holder="worker-a:4242",
        run=run,
        acquired_at=timezone.now(),
        expires_at=timezone.now() + timedelta(minutes=15),
    )
    response = staff_client.get(URL)
    assert response.context["overview"].jobs[0].lease_held
    assertContains(response, "held by worker-a:4242")


def test_an_expired_lease_is_not_shown_held(staff_client):
    JobLease.objects.create(
        job="stripe_full_rescan",
        holder="worker-b:99",
        acquired_at=timezone.now() - timedelta(hours=1),
        expires_at=timezone.now() - timedelta(minutes=45),
    )
    response = staff_client.get(URL)
    (job,) = response.context["overview"].jobs
    assert (job.job, job.last_run, job.lease_held) == ("stripe_full_rescan", None, False)
    assertContains(response, "free (expired; last held by worker-b:99)")


def test_staff_see_the_open_incidents_only(staff_client):
    still_open = Incident.objects.create(
        kind=IncidentKind.BREAKER_OPEN,
        subject="dolibarr",
        alerted_at=timezone.now(),
        details={"error": "Dolibarr is unreachable"},
    )
    Incident.objects.create(
        kind=IncidentKind.JOB_FAILING, subject="stripe_sync", resolved_at=timezone.now()
    )
    response = staff_client.get(URL)
    assert response.context["overview"].incidents == [still_open]
    assertContains(response, "Remote system unavailable")
    assertContains(response, "error: Dolibarr is unreachable")
    assertNotContains(response, "stripe_sync")


def _page_queries(client) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(URL).status_code == 200
    return len(queries)


def _rows(n: int, *, tag: str) -> None:
    now = timezone.now()
    for i in range(n):
        job = f"job_{tag}_{i}"
        CircuitBreaker.objects.create(system=f"system_{tag}_{i}", state=BreakerState.OPEN)
        _run(job, started_minutes_ago=10, counts={"synced": i})
        run = _run(job, started_minutes_ago=1, state=RunState.RUNNING)
        JobLease.objects.create(job=job, holder="w", run=run, expires_at=now + timedelta(hours=1))
        Incident.objects.create(kind=IncidentKind.JOB_FAILING, subject=job)
        _record(f"in_{tag}_{i}", next_attempt_at=now - timedelta(minutes=i))
        _record(f"in_{tag}_{i}_failed", state=SyncState.FAILED)


def test_the_status_page_takes_the_same_few_queries_whatever_the_number_of_rows(
    staff_client, django_assert_max_num_queries
):
    _rows(1, tag="few")
    few = _page_queries(staff_client)
    _rows(25, tag="many")
    with django_assert_max_num_queries(12):
        many = _page_queries(staff_client)
    assert many == few


# --- The admin of breakers, incidents and leases: read-only -----------------------------------

READ_ONLY_MODELS = ["circuitbreaker", "incident", "joblease"]


@pytest.fixture
def rows():
    run = _run("stripe_sync", started_minutes_ago=1, state=RunState.RUNNING)
    return {
        "circuitbreaker": CircuitBreaker.objects.create(
            system="dolibarr", state=BreakerState.OPEN, last_error="Dolibarr timed out"
        ),
        "incident": Incident.objects.create(kind=IncidentKind.BREAKER_OPEN, subject="dolibarr"),
        "joblease": JobLease.objects.create(
            job="stripe_sync", holder="worker-a:1", run=run, expires_at=timezone.now()
        ),
    }


@pytest.mark.parametrize("model", READ_ONLY_MODELS)
def test_the_admin_lists_the_rows(admin_client, rows, model):
    response = admin_client.get(reverse(f"admin:reconciliation_{model}_changelist"))
    change_url = reverse(f"admin:reconciliation_{model}_change", args=[quote(rows[model].pk)])
    assertContains(response, change_url)


@pytest.mark.parametrize("model", READ_ONLY_MODELS)
def test_a_superuser_cannot_add_from_the_admin(admin_client, model):
    assert admin_client.get(reverse(f"admin:reconciliation_{model}_add")).status_code == 403


@pytest.mark.parametrize("model", READ_ONLY_MODELS)
def test_a_superuser_cannot_change_from_the_admin(admin_client, rows, model):
    url = reverse(f"admin:reconciliation_{model}_change", args=[quote(rows[model].pk)])
    assert admin_client.post(url, {}).status_code == 403


@pytest.mark.parametrize("model", READ_ONLY_MODELS)
def test_a_superuser_cannot_delete_from_the_admin(admin_client, rows, model):
    url = reverse(f"admin:reconciliation_{model}_delete", args=[quote(rows[model].pk)])
    assert admin_client.post(url, {"post": "yes"}).status_code == 403
    assert type(rows[model]).objects.filter(pk=rows[model].pk).exists()


@pytest.mark.parametrize("model", READ_ONLY_MODELS)
def test_the_admin_offers_no_delete_action(admin_client, rows, model):
    response = admin_client.get(reverse(f"admin:reconciliation_{model}_changelist"))
    assertNotContains(response, "delete_selected")
