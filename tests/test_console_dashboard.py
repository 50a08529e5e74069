"""The console's dashboard (`/console/`): the headline, the open mismatches with the money at
stake, the records by state, each job's last run, each connection's health, the chart of the
last 30 days, and its constant query budget."""

from datetime import datetime, time, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group
from django.core.cache import cache
from django.utils import timezone

from reconciliation.audit import audit_event, audit_records
from reconciliation.jobs import JOBS
from reconciliation.models import (
    BreakerState,
    CircuitBreaker,
    Mismatch,
    MismatchState,
    RunState,
    SyncRecord,
    SyncRun,
    SyncState,
)
from reconciliation.permissions import FINANCE_VIEWER

pytestmark = pytest.mark.django_db

URL = "/console/"
# Session, user, permissions (2), role, open mismatches, failed records, last runs, breakers,
# records by state, the chart's past days and today, and headroom.
DASHBOARD_QUERY_BUDGET = 14


@pytest.fixture(autouse=True)
def _fresh_cache():
    """The dashboard keeps its costly counts in the cache: every test counts anew."""
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def viewer(django_user_model):
    user = django_user_model.objects.create_user("vera", password="pw", is_staff=True)
    user.groups.add(Group.objects.get(name=FINANCE_VIEWER))
    return user


@pytest.fixture
def viewer_client(client, viewer):
    client.force_login(viewer)
    return client


def _mismatch(
    n: int,
    *,
    kind="total_differs",
    severity="critical",
    amount=None,
    currency="",
    state=MismatchState.OPEN,
):
    return Mismatch.objects.create(
        kind=kind,
        severity=severity,
        fingerprint=f"fp-{n}",
        summary=f"difference {n}",
        amount_difference=amount,
        currency=currency,
        state=state,
    )


def _headline(page) -> str:
    content = page.content.decode()
    return content.split('id="headline"')[1].split("</section>")[0]


# --- Who may see it -------------------------------------------------------------------------


def test_an_anonymous_visitor_is_sent_to_the_admin_login(client):
    answer = client.get(URL)
    assert answer.status_code == 302
    assert answer["Location"].startswith("/admin/login/?next=/console/")


def test_a_user_without_any_finance_role_is_forbidden(client, django_user_model):
    client.force_login(django_user_model.objects.create_user("nobody", password="pw"))
    assert client.get(URL).status_code == 403


# --- The headline ---------------------------------------------------------------------------


def test_with_nothing_open_the_headline_says_in_step(viewer_client):
    SyncRecord.objects.create(source="stripe", kind="invoice", external_id="in_1", state="synced")
    _mismatch(1, state=MismatchState.RESOLVED)
    page = viewer_client.get(URL)
    assert page.status_code == 200
    assert page.context["in_step"] is True
    assert "In step" in _headline(page)


def test_open_mismatches_and_failed_records_are_counted_in_the_headline_with_links(
    viewer_client,
):
    _mismatch(1)
    _mismatch(2, severity="warning")
    SyncRecord.objects.create(source="stripe", kind="invoice", external_id="in_1", state="failed")
    headline = _headline(viewer_client.get(URL))
    assert "3 things need attention" in headline
    assert "2 open mismatches (1 critical)" in headline
    assert 'href="/console/records/?state=failed"' in headline
    assert "1 failed record" in headline


def test_an_open_circuit_breaker_needs_attention(viewer_client):
    CircuitBreaker.objects.create(
        system="dolibarr",
        state=BreakerState.OPEN,
        consecutive_failures=5,
        opened_at=timezone.now(),
        last_error="connection refused",
    )
    page = viewer_client.get(URL)
    assert page.context["in_step"] is False
    assert "Dolibarr cannot be reached" in _headline(page)
    health = page.content.decode().split('id="connection-dolibarr"')[1].split("</li>")[0]
    assert "circuit breaker open" in health
    assert "connection refused" in health


# --- Open mismatches ------------------------------------------------------------------------


def test_open_mismatches_are_counted_by_kind_and_severity_with_the_money_at_stake(
    viewer_client,
):
    _mismatch(1, amount=Decimal("-1.50"), currency="EUR")
    _mismatch(2, amount=Decimal("2.25"), currency="EUR", state=MismatchState.APPROVED)
    _mismatch(3, amount=Decimal("10"), currency="USD")
    _mismatch(4, kind="status_differs", severity="warning")
    _mismatch(5, amount=Decimal("99"), currency="EUR", state=MismatchState.RESOLVED)
    _mismatch(6, amount=Decimal("99"), currency="EUR", state=MismatchState.IGNORED)
    page = viewer_client.get(URL)
    summary = page.context["mismatches"]
    rows = {row.kind: row for row in summary.rows}
    critical = rows["total_differs"].cells[0]
    assert (critical.count, critical.money) == (3, ["3.75 EUR", "10.00 USD"])
    assert rows["status_differs"].cells[1].count == 1
    assert rows["status_differs"].cells[1].money == []
    assert summary.total.count == 4
    content = page.content.decode()
    assert 'href="/console/mismatches/?kind=total_differs&amp;severity=critical"' in content
    assert "3.75 EUR" in content


# --- Records, jobs --------------------------------------------------------------------------


def test_records_are_counted_by_state_and_source_and_say_when(viewer_client):
    SyncRecord.objects.bulk_create(
        [
            SyncRecord(source="stripe", kind="invoice", external_id="in_1", state="synced"),
            SyncRecord(source="stripe", kind="invoice", external_id="in_2", state="synced"),
            SyncRecord(source="aipress24", kind="user", external_id="u1", state="synced"),
            SyncRecord(source="aipress24", kind="user", external_id="u2", state="pending"),
        ]
    )
    page = viewer_client.get(URL)
    records = page.context["records"]
    synced = next(row for row in records.rows if row[0] == SyncState.SYNCED)
    assert [source for source, _label in records.sources] == ["stripe", "aipress24"]
    assert [count for count, _text, _url in synced[2]] == [2, 1]
    assert synced[3][0] == 3
    assert records.total == 4
    assert 'href="/console/records/?source=stripe&amp;state=synced"' in page.content.decode()
    assert "As of " in page.content.decode()


def test_the_records_counts_are_kept_for_a_minute(viewer_client):
    SyncRecord.objects.create(source="stripe", kind="invoice", external_id="in_1")
    assert viewer_client.get(URL).context["records"].total == 1
    SyncRecord.objects.create(source="stripe", kind="invoice", external_id="in_2")
    assert viewer_client.get(URL).context["records"].total == 1
    cache.clear()
    assert viewer_client.get(URL).context["records"].total == 2


def test_the_last_run_of_each_registered_job_is_shown(viewer_client):
    now = timezone.now()
    SyncRun.objects.create(
        job="stripe_sync", state=RunState.SUCCEEDED, started_at=now - timedelta(hours=2)
    )
    latest = SyncRun.objects.create(
        job="stripe_sync",
        state=RunState.FAILED,
        started_at=now - timedelta(minutes=5),
        finished_at=now - timedelta(minutes=4),
        counts={"seen": 12},
        error="Dolibarr answered 500\nnot shown",
    )
    retry = SyncRun.objects.create(job="sync_retry", state=RunState.SUCCEEDED, started_at=now)
    SyncRun.objects.create(job="not_a_registered_job", started_at=now)
    page = viewer_client.get(URL)
    jobs = {job.name: job for job in page.context["jobs"]}
    assert set(jobs) == set(JOBS)
    assert jobs["stripe_sync"].run == latest
    assert jobs["sync_retry"].run == retry
    assert jobs["breakers_check"].run is None
    content = page.content.decode()
    assert "Dolibarr answered 500" in content
    assert "not shown" not in content
    assert "the last run of stripe_sync failed" in _headline(page)


# --- The chart ------------------------------------------------------------------------------


def test_the_charts_numbers_for_a_day_match_the_events_of_that_day(viewer_client):
    day = timezone.localdate() - timedelta(days=3)
    noon = timezone.make_aware(datetime.combine(day, time(12, 0)))
    made = (
        ["record.synced"] * 4
        + ["record.failed"] * 2
        + ["mismatch.opened", "mismatch.reopened"]
        + ["record.observed", "mismatch.resolved"]
    )
    events = []
    for action in made:
        event = audit_event(action=action, target=("syncrecord", "1"))
        event.occurred_at = noon
        events.append(event)
    late = audit_event(action="record.synced", target=("syncrecord", "1"))
    late.occurred_at = noon + timedelta(hours=11, minutes=59)  # 23:59, still that day
    old = audit_event(action="record.synced", target=("syncrecord", "1"))
    old.occurred_at = noon - timedelta(days=40)
    audit_records([*events, late, old])
    page = viewer_client.get(URL)
    chart = page.context["chart"]
    index = chart.days.index(day)
    assert chart.days[-1] == timezone.localdate()
    assert len(chart.days) == 30
    assert (
        chart.series["synced"][index],
        chart.series["failed"][index],
        chart.series["mismatches"][index],
    ) == (5, 2, 2)
    assert sum(chart.series["synced"]) == 5
    row = page.content.decode().split(f'id="day-{day:%Y-%m-%d}"')[1].split("</tr>")[0]
    assert [cell.split("<")[0] for cell in row.split('<td class="number">')[1:]] == [
        "5",
        "2",
        "2",
    ]


def test_todays_events_are_in_the_chart(viewer_client):
    audit_records([audit_event(action="record.failed", target=("syncrecord", "1"))])
    chart = viewer_client.get(URL).context["chart"]
    assert chart.series["failed"][-1] == 1


def test_the_chart_is_an_inline_svg_with_its_numbers_in_a_table(viewer_client):
    audit_records([audit_event(action="record.synced", target=("syncrecord", "1"))])
    content = viewer_client.get(URL).content.decode()
    assert '<svg class="chart"' in content
    assert '<rect class="bar-synced"' in content
    assert "<details>" in content
    assert 'id="activity-table"' in content
    assert "<script" not in content


# --- The query budget -----------------------------------------------------------------------


@pytest.mark.parametrize("rows", [5, 200])
def test_the_dashboard_costs_the_same_queries_whatever_the_data(
    client, viewer, django_assert_max_num_queries, rows
):
    kinds = ["total_differs", "status_differs", "payment_unlinked", "sync_failed"]
    Mismatch.objects.bulk_create(
        Mismatch(
            kind=kinds[n % 4],
            severity=["critical", "warning", "info"][n % 3],
            fingerprint=f"fp-{n}",
            summary="s",
            amount_difference=Decimal(n),
            currency=["EUR", "USD"][n % 2],
        )
        for n in range(rows)
    )
    SyncRecord.objects.bulk_create(
        SyncRecord(
            source=["stripe", "aipress24"][n % 2],
            kind="invoice",
            external_id=f"x{n}",
            state=list(SyncState.values)[n % 6],
        )
        for n in range(rows)
    )
    SyncRun.objects.bulk_create(
        SyncRun(job=list(JOBS)[n % len(JOBS)], state=RunState.SUCCEEDED) for n in range(rows)
    )
    audit_records(
        audit_event(action="record.synced", target=("syncrecord", str(n))) for n in range(rows)
    )
    client.force_login(viewer)
    with django_assert_max_num_queries(DASHBOARD_QUERY_BUDGET):
        page = client.get(URL)
    assert page.context["mismatches"].total.count == rows
    assert page.context["records"].total == rows
