"""The mismatch queue (`/console/mismatches/`) and a mismatch's page, through the test client:
what is listed, what each decision does in the sandbox Dolibarr (over HTTP) and in the audit
trail, and what is refused to whom."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone
from django.utils.html import escape
from django_q.conf import Conf

from reconciliation.console import services
from reconciliation.models import (
    AuditEvent,
    Mismatch,
    MismatchKind,
    MismatchState,
    SyncBaseline,
    SyncRecord,
    SyncState,
)
from reconciliation.permissions import FINANCE_OPERATOR, FINANCE_VIEWER
from reconciliation.reconcile import fixes
from reconciliation.services.mismatches import mismatch_detected
from reconciliation.services.records import record_observe
from tests.sync_support import context_for, sync_until_settled
from tests.test_sync_aipress24 import RIVAGE, _edit_aipress24, _world

pytestmark = pytest.mark.django_db

QUEUE = "/console/mismatches/"
BULK = "/console/mismatches/bulk/"
# session, user, permissions (user's and groups'), role, the rows with their records, headroom
PAGE_QUERY_BUDGET = 8


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
    """The tasks handed to django-q2 (fix tasks, sync_retry runs), instead of the broker."""
    calls = []

    def record(func, *args, **kwargs):
        calls.append((func, args, kwargs))

    monkeypatch.setattr(fixes, "async_task", record)
    monkeypatch.setattr(services, "async_task", record)
    return calls


@pytest.fixture
def dolibarr_settings(settings, dolibarr_sandbox, dolibarr_api_key):
    """The console's settings pointing at the sandbox Dolibarr, as a worker's would."""
    settings.DOLIBARR_URL = dolibarr_sandbox.api_url
    settings.DOLIBARR_API_KEY = dolibarr_api_key
    return settings


@pytest.fixture
def run_tasks(monkeypatch):
    """django-q2 runs each queued task at once, in this process."""
    monkeypatch.setattr(Conf, "SYNC", True)


def _detail(mismatch: Mismatch) -> str:
    return f"/console/mismatches/{mismatch.pk}/"


def _act(mismatch: Mismatch) -> str:
    return f"/console/mismatches/{mismatch.pk}/act/"


def _record(external_id: str, *, kind: str = "customer", source: str = "stripe", state=None):
    record, _ = record_observe(
        source=source,
        kind=kind,
        external_id=external_id,
        snapshot={"id": external_id, "name": "Atelier", "metadata": {}},
    )
    if state is not None:
        SyncRecord.objects.filter(pk=record.pk).update(state=state)
        record.refresh_from_db()
    return record


def _mismatch(name: str, *, record=None, state=MismatchState.OPEN, **facts) -> Mismatch:
    facts.setdefault("kind", MismatchKind.TOTAL_DIFFERS)
    facts.setdefault("summary", f"difference {name}")
    mismatch = mismatch_detected(fingerprint_parts=("test", name), record=record, **facts)
    if state != MismatchState.OPEN:
        Mismatch.objects.filter(pk=mismatch.pk).update(state=state)
        mismatch.refresh_from_db()
    return mismatch


def _linked_thirdparty(client, customer_id: str) -> int:
    thirdparty = client.create_thirdparty(name="Atelier", ref_ext="ap24-org-7", code_client="-1")
    client.link_stripe_customer(thirdparty_id=thirdparty, customer_id=customer_id, live=False)
    return thirdparty


def _link_conflict(thirdparty: int, *, current: str = "cus_old", wanted: str = "cus_new"):
    return _mismatch(
        "link",
        record=_record(wanted, state=SyncState.NEEDS_REVIEW),
        kind=MismatchKind.CUSTOMER_CONFLICT,
        summary=f"thirdparty {thirdparty} is linked to {current}",
        source_snapshot={"id": wanted},
        dolibarr_snapshot={"thirdparty_id": thirdparty, "linked": current},
        proposed_fix="replace_stripe_link",
        proposed_fix_params={
            "thirdparty_id": thirdparty,
            "customer_id": wanted,
            "current_customer_id": current,
        },
    )


def _messages(page) -> list[str]:
    return [str(message) for message in page.context["messages"]]


# --- the queue ----------------------------------------------------------------------------------


def test_an_anonymous_visitor_is_sent_to_the_admin_login(client):
    page = client.get(QUEUE)
    assert page.status_code == 302
    assert page["Location"].startswith("/admin/login/")


def test_the_queue_lists_open_and_approved_mismatches_unless_told_otherwise(client, viewer):
    shown = [_mismatch("open"), _mismatch("approved", state=MismatchState.APPROVED)]
    _mismatch("resolved", state=MismatchState.RESOLVED)
    _mismatch("ignored", state=MismatchState.IGNORED)
    client.force_login(viewer)

    page = client.get(QUEUE)

    rows = [row.record for row in page.context["table"].page.object_list]
    assert sorted(row.pk for row in rows) == sorted(mismatch.pk for mismatch in shown)


def test_the_queue_filters_by_state_kind_severity_and_source(client, viewer):
    wanted = _mismatch(
        "wanted",
        record=_record("in_1", kind="invoice"),
        kind=MismatchKind.DUPLICATE_IN_DOLIBARR,
        severity="critical",
        state=MismatchState.IGNORED,
    )
    _mismatch("other kind", record=_record("in_2", kind="invoice"), state=MismatchState.IGNORED)
    _mismatch(
        "other source",
        record=_record("7", kind="purchase", source="aipress24"),
        kind=MismatchKind.DUPLICATE_IN_DOLIBARR,
        severity="critical",
        state=MismatchState.IGNORED,
    )
    client.force_login(viewer)

    page = client.get(
        QUEUE,
        {
            "state": "ignored",
            "kind": "duplicate_in_dolibarr",
            "severity": "critical",
            "source": "stripe",
        },
    )

    assert [row.record for row in page.context["table"].page.object_list] == [wanted]


def test_the_queue_shows_the_most_severe_first_then_the_latest_seen(client, viewer):
    old_critical = _mismatch("a", severity="critical")
    Mismatch.objects.filter(pk=old_critical.pk).update(
        last_seen_at=timezone.now() - timedelta(days=3)
    )
    warning = _mismatch("b", severity="warning")
    new_critical = _mismatch("c", severity="critical")
    client.force_login(viewer)

    page = client.get(QUEUE)

    rows = [row.record for row in page.context["table"].page.object_list]
    assert rows == [new_critical, old_critical, warning]


@pytest.mark.parametrize(("made", "shown"), [(5, 5), (50, 50)])
def test_the_queue_costs_the_same_queries_whatever_its_size(
    client, operator, django_assert_max_num_queries, made, shown
):
    for number in range(made):
        _mismatch(
            f"m{number}",
            record=_record(f"in_{number}", kind="invoice"),
            amount_difference=Decimal("0.01"),
            currency="EUR",
            proposed_fix="retry" if number % 2 else "correct_draft_lines",
        )
    client.force_login(operator)

    with django_assert_max_num_queries(PAGE_QUERY_BUDGET) as captured:
        page = client.get(QUEUE)

    assert len(page.context["table"].page.object_list) == shown
    assert not [q["sql"] for q in captured.captured_queries if "COUNT(" in q["sql"].upper()]


def test_a_viewer_is_offered_no_action_on_the_queue_or_a_mismatch(client, viewer):
    mismatch = _link_conflict(4)
    client.force_login(viewer)

    listing = client.get(QUEUE).content.decode()
    detail = client.get(_detail(mismatch)).content.decode()

    assert 'name="selected"' not in listing
    assert BULK not in listing
    assert _act(mismatch) not in detail


# --- approving: the fix applied by the task -------------------------------------------------------


def test_an_operators_approval_replaces_the_stripe_link_in_dolibarr_through_the_task(
    client, operator, dolibarr_client, dolibarr_settings, run_tasks,
    django_capture_on_commit_callbacks,
):  # fmt: skip
    thirdparty = _linked_thirdparty(dolibarr_client, "cus_old")
    mismatch = _link_conflict(thirdparty)
    client.force_login(operator)

    with django_capture_on_commit_callbacks(execute=True):
        client.post(_act(mismatch), {"action": "approve"})

    assert dolibarr_client.stripe_link(thirdparty_id=thirdparty).customer_id == "cus_new"


def test_an_applied_fix_resolves_the_mismatch_with_its_outcome(
    client, operator, dolibarr_client, dolibarr_settings, run_tasks,
    django_capture_on_commit_callbacks,
):  # fmt: skip
    thirdparty = _linked_thirdparty(dolibarr_client, "cus_old")
    mismatch = _link_conflict(thirdparty)
    client.force_login(operator)

    with django_capture_on_commit_callbacks(execute=True):
        client.post(_act(mismatch), {"action": "approve"})

    mismatch.refresh_from_db()
    assert mismatch.state == MismatchState.RESOLVED
    assert mismatch.note == (
        f"Thirdparty {thirdparty} is now linked to Stripe customer cus_new "
        "(it was linked to cus_old)."
    )
    assert mismatch.note in client.get(_detail(mismatch)).content.decode()


def test_an_applied_fix_is_audited_in_the_operators_name(
    client, operator, dolibarr_client, dolibarr_settings, run_tasks,
    django_capture_on_commit_callbacks,
):  # fmt: skip
    thirdparty = _linked_thirdparty(dolibarr_client, "cus_old")
    mismatch = _link_conflict(thirdparty)
    client.force_login(operator)

    with django_capture_on_commit_callbacks(execute=True):
        client.post(_act(mismatch), {"action": "approve"})

    actors = {
        event.action: event.actor
        for event in AuditEvent.objects.filter(
            action__in=[
                "mismatch.approved",
                "mismatch.fix_applied",
                "mismatch.resolved",
                "dolibarr.stripe_link_set",
            ]
        )
    }
    assert actors == {
        "mismatch.approved": operator,
        "mismatch.fix_applied": operator,
        "mismatch.resolved": operator,
        "dolibarr.stripe_link_set": operator,
    }


def test_approving_queues_the_fix_task_only_once_the_approval_is_committed(
    client, operator, queued, django_capture_on_commit_callbacks
):
    mismatch = _link_conflict(4)
    client.force_login(operator)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        client.post(_act(mismatch), {"action": "approve"})
        assert queued == []

    assert len(callbacks) == 1
    callbacks[0]()
    assert queued == [("reconciliation.tasks.mismatch_fix_task", (mismatch.pk, operator.pk), {})]


def test_a_fix_whose_facts_changed_leaves_the_mismatch_approved_and_shows_why(
    client, operator, dolibarr_client, dolibarr_settings, run_tasks,
    django_capture_on_commit_callbacks,
):  # fmt: skip
    thirdparty = _linked_thirdparty(dolibarr_client, "cus_old")
    mismatch = _link_conflict(thirdparty)
    # Someone links it to a third customer in Dolibarr after the fix was proposed.
    dolibarr_client.link_stripe_customer(
        thirdparty_id=thirdparty, customer_id="cus_other", live=False, replace=True
    )
    client.force_login(operator)

    with django_capture_on_commit_callbacks(execute=True):
        client.post(_act(mismatch), {"action": "approve"})

    mismatch.refresh_from_db()
    assert mismatch.state == MismatchState.APPROVED
    assert dolibarr_client.stripe_link(thirdparty_id=thirdparty).customer_id == "cus_other"
    page = client.get(_detail(mismatch)).content.decode()
    assert "The last attempt to apply a fix failed" in page
    assert "is now linked to cus_other, not to cus_old" in page


def test_a_failed_fix_is_audited_with_its_error_and_the_operator(
    client, operator, dolibarr_client, dolibarr_settings, run_tasks,
    django_capture_on_commit_callbacks,
):  # fmt: skip
    thirdparty = _linked_thirdparty(dolibarr_client, "cus_old")
    mismatch = _link_conflict(thirdparty)
    dolibarr_client.link_stripe_customer(
        thirdparty_id=thirdparty, customer_id="cus_other", live=False, replace=True
    )
    client.force_login(operator)

    with django_capture_on_commit_callbacks(execute=True):
        client.post(_act(mismatch), {"action": "approve"})

    failed = AuditEvent.objects.get(action="mismatch.fix_failed")
    assert failed.actor == operator
    assert failed.target_id == str(mismatch.pk)
    assert "is now linked to cus_other" in failed.reason


def test_a_mismatch_with_a_manual_fix_says_what_to_do_and_offers_no_approval(client, operator):
    mismatch = _mismatch("draft", proposed_fix="correct_draft_lines")
    client.force_login(operator)

    page = client.get(_detail(mismatch)).content.decode()

    assert escape(str(fixes.MANUAL_FIXES["correct_draft_lines"])) in page
    assert 'value="approve"' not in page


def test_approving_a_manual_fix_by_a_crafted_post_changes_nothing(client, operator):
    mismatch = _mismatch("draft", proposed_fix="correct_draft_lines")
    client.force_login(operator)

    page = client.post(_act(mismatch), {"action": "approve"}, follow=True)

    mismatch.refresh_from_db()
    assert mismatch.state == MismatchState.OPEN
    assert "has no automatic fix" in " ".join(_messages(page))


# --- choosing the side of a customer conflict --------------------------------------------------


@pytest.fixture
def world(settings, aipress24_sqlite, dolibarr_client, dolibarr_sandbox, dolibarr_api_key):
    settings.DOLIBARR_URL = dolibarr_sandbox.api_url
    settings.DOLIBARR_API_KEY = dolibarr_api_key
    yield from _world(settings, aipress24_sqlite, dolibarr_client, dolibarr_sandbox)


def _town_conflict(world) -> Mismatch:
    """Rivage's town changed in Dolibarr (Toulon) and in Aipress24 (Marseille) since the last
    sync, found by the real Aipress24 sync."""
    world.sync()
    thirdparty = world.thirdparty(f"ap24-org-{RIVAGE}")
    world.dolibarr.update_thirdparty(thirdparty_id=thirdparty.id, changes={"town": "Toulon"})
    _edit_aipress24(world, "billing_city", "Marseille")
    world.sync()
    return Mismatch.objects.get(kind=MismatchKind.CUSTOMER_CONFLICT)


def _sync_again(world) -> None:
    context = context_for(world.dolibarr, world.stripe, url=world.dolibarr_sandbox.api_url)
    sync_until_settled(context)


def test_choosing_aipress24_writes_its_value_to_dolibarr_and_to_both_baselines(
    client, operator, world
):
    conflict = _town_conflict(world)
    client.force_login(operator)

    client.post(_act(conflict), {"action": "choose_side", "side_town": "aipress24"})

    assert world.thirdparty(f"ap24-org-{RIVAGE}").town == "Marseille"
    baseline = SyncBaseline.objects.get(record=conflict.record)
    assert (baseline.source_values["town"], baseline.dolibarr_values["town"]) == (
        "Marseille",
        "Marseille",
    )


def test_after_choosing_aipress24_the_next_sync_settles_the_record_without_a_conflict(
    client, operator, world
):
    conflict = _town_conflict(world)
    client.force_login(operator)
    client.post(_act(conflict), {"action": "choose_side", "side_town": "aipress24"})

    _sync_again(world)

    assert not Mismatch.objects.open().filter(kind=MismatchKind.CUSTOMER_CONFLICT).exists()
    assert world.record("organisation", RIVAGE).state == SyncState.SYNCED
    assert world.thirdparty(f"ap24-org-{RIVAGE}").town == "Marseille"


def test_choosing_dolibarr_keeps_its_value_and_the_next_sync_raises_no_conflict(
    client, operator, world
):
    conflict = _town_conflict(world)
    client.force_login(operator)
    client.post(_act(conflict), {"action": "choose_side", "side_town": "dolibarr"})

    _sync_again(world)

    assert world.thirdparty(f"ap24-org-{RIVAGE}").town == "Toulon"
    assert not Mismatch.objects.open().filter(kind=MismatchKind.CUSTOMER_CONFLICT).exists()
    assert world.record("organisation", RIVAGE).state == SyncState.SYNCED


def test_choosing_no_side_is_refused_and_changes_nothing(client, operator, world):
    conflict = _town_conflict(world)
    client.force_login(operator)

    page = client.post(_act(conflict), {"action": "choose_side"})

    assert "Choose the side that wins for every field." in page.content.decode()
    conflict.refresh_from_db()
    assert conflict.state == MismatchState.OPEN
    assert world.thirdparty(f"ap24-org-{RIVAGE}").town == "Toulon"


# --- ignore, link, merge, retry -----------------------------------------------------------------


def test_ignoring_without_a_reason_is_a_form_error_that_changes_nothing(client, operator):
    mismatch = _mismatch("x")
    client.force_login(operator)

    page = client.post(_act(mismatch), {"action": "ignore", "reason": "  "})

    assert "a reason is required to ignore" in page.content.decode()
    mismatch.refresh_from_db()
    assert mismatch.state == MismatchState.OPEN
    assert not AuditEvent.objects.filter(action="mismatch.ignored").exists()


def test_ignoring_with_a_reason_ignores_and_audits_the_operator_and_the_reason(client, operator):
    mismatch = _mismatch("x")
    client.force_login(operator)

    client.post(_act(mismatch), {"action": "ignore", "reason": "Test invoice, voided by hand"})

    mismatch.refresh_from_db()
    assert (mismatch.state, mismatch.note) == (
        MismatchState.IGNORED,
        "Test invoice, voided by hand",
    )
    event = AuditEvent.objects.get(action="mismatch.ignored")
    assert (event.actor, event.reason) == (operator, "Test invoice, voided by hand")


def test_linking_to_an_existing_dolibarr_object_marks_the_record_synced_to_it(
    client, operator, dolibarr_client, dolibarr_settings
):
    thirdparty = dolibarr_client.create_thirdparty(
        name="Atelier", ref_ext="cus_link", code_client="-1"
    )
    record = _record("cus_link", state=SyncState.FAILED)
    mismatch = _mismatch("missing", record=record, kind=MismatchKind.MISSING_IN_DOLIBARR)
    client.force_login(operator)

    client.post(_act(mismatch), {"action": "link", "dolibarr_id": thirdparty})

    record.refresh_from_db()
    mismatch.refresh_from_db()
    assert (record.state, record.dolibarr_kind, record.dolibarr_id) == (
        SyncState.SYNCED,
        "thirdparty",
        thirdparty,
    )
    assert mismatch.state == MismatchState.RESOLVED
    assert AuditEvent.objects.get(action="record.linked_by_hand").actor == operator


def test_linking_to_an_object_that_is_not_in_dolibarr_is_refused_and_shown(
    client, operator, dolibarr_settings
):
    record = _record("cus_link", state=SyncState.FAILED)
    mismatch = _mismatch("missing", record=record, kind=MismatchKind.MISSING_IN_DOLIBARR)
    client.force_login(operator)

    page = client.post(_act(mismatch), {"action": "link", "dolibarr_id": 4242}, follow=True)

    record.refresh_from_db()
    assert record.state == SyncState.FAILED
    assert "there is no Dolibarr thirdparty 4242" in page.content.decode()


def test_merging_duplicates_from_the_page_keeps_the_chosen_thirdparty(
    client, operator, dolibarr_client, dolibarr_settings
):
    ids = [
        dolibarr_client.create_thirdparty(name=f"Atelier {n}", ref_ext="cus_dup", code_client="-1")
        for n in range(2)
    ]
    mismatch = _mismatch(
        "dup",
        record=_record("cus_dup", state=SyncState.NEEDS_REVIEW),
        kind=MismatchKind.DUPLICATE_IN_DOLIBARR,
        dolibarr_snapshot={"thirdparty_ids": ids},
        proposed_fix="merge_thirdparties",
        proposed_fix_params={"keep": ids[0], "merge": ids[1:]},
    )
    client.force_login(operator)

    client.post(_act(mismatch), {"action": "merge", "keep_id": ids[1]})

    assert [found.id for found in dolibarr_client.find_thirdparties(ref_ext="cus_dup")] == ids[1:]
    mismatch.refresh_from_db()
    assert mismatch.state == MismatchState.RESOLVED


def test_retrying_makes_the_record_due_and_queues_a_sync_retry_run(
    client, operator, queued, django_capture_on_commit_callbacks
):
    record = _record("in_failed", kind="invoice", state=SyncState.FAILED)
    mismatch = _mismatch("failed", record=record, kind=MismatchKind.SYNC_FAILED)
    client.force_login(operator)

    with django_capture_on_commit_callbacks(execute=True):
        client.post(_act(mismatch), {"action": "retry"})

    record.refresh_from_db()
    assert record.state == SyncState.PENDING
    assert [(func, args) for func, args, _ in queued] == [
        ("reconciliation.jobs.job_run", ("sync_retry",))
    ]
    assert AuditEvent.objects.get(action="record.retry_requested").actor == operator


# --- bulk actions -------------------------------------------------------------------------------


def test_bulk_approve_reports_each_mismatchs_outcome(client, operator, queued):
    automatic = _link_conflict(4)
    manual = _mismatch("manual", proposed_fix="correct_draft_lines")
    ignored = _mismatch("ignored", proposed_fix="retry", state=MismatchState.IGNORED)
    client.force_login(operator)

    page = client.post(
        BULK,
        {"action": "approve", "selected": [automatic.pk, manual.pk, ignored.pk]},
        follow=True,
    )

    assert _messages(page) == [
        f"#{automatic.pk} approved, fix queued",
        f"#{manual.pk}: no automatic fix",
        f"#{ignored.pk}: cannot approve a mismatch that is ignored",
    ]
    automatic.refresh_from_db()
    assert automatic.state == MismatchState.APPROVED


def test_bulk_ignore_without_a_reason_ignores_nothing(client, operator):
    mismatch = _mismatch("x")
    client.force_login(operator)

    page = client.post(BULK, {"action": "ignore", "selected": [mismatch.pk]}, follow=True)

    mismatch.refresh_from_db()
    assert mismatch.state == MismatchState.OPEN
    assert _messages(page) == ["Nothing was ignored: a reason is required to ignore."]


def test_bulk_ignore_with_a_reason_reports_each_mismatch(client, operator):
    first, second = _mismatch("a"), _mismatch("b", state=MismatchState.RESOLVED)
    client.force_login(operator)

    page = client.post(
        BULK,
        {"action": "ignore", "selected": [first.pk, second.pk], "reason": "known test data"},
        follow=True,
    )

    assert _messages(page) == [
        f"#{first.pk} ignored",
        f"#{second.pk}: cannot ignore a mismatch that is resolved",
    ]


def test_bulk_retry_makes_each_record_due_and_queues_one_run(
    client, operator, queued, django_capture_on_commit_callbacks
):
    with_record = _mismatch("a", record=_record("in_a", kind="invoice", state=SyncState.FAILED))
    without = _mismatch("b")
    client.force_login(operator)

    with django_capture_on_commit_callbacks(execute=True):
        page = client.post(
            BULK, {"action": "retry", "selected": [with_record.pk, without.pk]}, follow=True
        )

    assert _messages(page) == [
        f"#{with_record.pk}: its record is due, sync queued",
        f"#{without.pk}: mismatch #{without.pk} has no sync record to retry",
    ]
    assert len(queued) == 1


# --- who may act --------------------------------------------------------------------------------

CRAFTED = [
    {"action": "approve"},
    {"action": "apply_again"},
    {"action": "retry"},
    {"action": "ignore", "reason": "because"},
    {"action": "choose_side", "side_town": "aipress24"},
    {"action": "link", "dolibarr_id": "1"},
    {"action": "merge", "keep_id": "1"},
]


@pytest.mark.parametrize("form", CRAFTED, ids=[form["action"] for form in CRAFTED])
def test_a_viewers_crafted_action_is_forbidden_and_changes_and_audits_nothing(
    client, viewer, queued, form
):
    mismatch = _link_conflict(4)
    events = AuditEvent.objects.count()
    client.force_login(viewer)

    answer = client.post(_act(mismatch), form)

    assert answer.status_code == 403
    mismatch.refresh_from_db()
    assert mismatch.state == MismatchState.OPEN
    assert AuditEvent.objects.count() == events
    assert queued == []


@pytest.mark.parametrize("action", ["approve", "ignore", "retry"])
def test_a_viewers_crafted_bulk_action_is_forbidden_and_changes_nothing(
    client, viewer, queued, action
):
    mismatch = _link_conflict(4)
    events = AuditEvent.objects.count()
    client.force_login(viewer)

    answer = client.post(BULK, {"action": action, "selected": [mismatch.pk], "reason": "r"})

    assert answer.status_code == 403
    mismatch.refresh_from_db()
    assert mismatch.state == MismatchState.OPEN
    assert AuditEvent.objects.count() == events


def test_an_action_without_its_csrf_token_is_forbidden(operator, queued):
    mismatch = _link_conflict(4)
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)

    answer = client.post(_act(mismatch), {"action": "approve"})

    assert answer.status_code == 403
    mismatch.refresh_from_db()
    assert mismatch.state == MismatchState.OPEN
    assert queued == []


def test_an_anonymous_action_is_sent_to_the_login_and_changes_nothing(client, queued):
    mismatch = _link_conflict(4)

    answer = client.post(_act(mismatch), {"action": "approve"})

    assert answer.status_code == 302
    assert answer["Location"].startswith("/admin/login/")
    mismatch.refresh_from_db()
    assert mismatch.state == MismatchState.OPEN


def test_actions_answer_only_posts(client, operator):
    mismatch = _link_conflict(4)
    client.force_login(operator)

    assert client.get(_act(mismatch)).status_code == 405
    assert client.get(BULK).status_code == 405
