"""The finance roles (docs/permissions.md): the groups the migration creates, the admin actions
they gate, CSRF on those actions, and the check for console views."""

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group, Permission
from django.http import HttpResponse
from django.test import Client
from django.urls import path

from reconciliation.models import AuditEvent, InboundEvent, SyncRecord, SyncState
from reconciliation.permissions import (
    FINANCE_ADMIN,
    FINANCE_OPERATOR,
    FINANCE_VIEWER,
    permission_required_403,
    user_role,
)

pytestmark = pytest.mark.django_db

RECORDS = "/admin/reconciliation/syncrecord/"
EVENTS = "/admin/reconciliation/inboundevent/"
OPERATOR_PERMS = {
    "reconciliation.act_on_mismatch",
    "reconciliation.retry_record",
    "reconciliation.reprocess_event",
    "reconciliation.run_job",
}
ADMIN_PERMS = {
    "reconciliation.manage_configuration",
    "auth.view_user",
    "auth.add_user",
    "auth.change_user",
    "auth.view_group",
    "auth.add_group",
    "auth.change_group",
}


# A throw-away console view behind the decorator, with the admin for its login page.
@permission_required_403("reconciliation.retry_record")
def _console_view(request):
    return HttpResponse("console")


urlpatterns = [
    path("console/", _console_view),
    path("admin/", admin.site.urls),
]


def _perms(group: Group) -> set[str]:
    return {
        f"{app_label}.{codename}"
        for app_label, codename in group.permissions.values_list(
            "content_type__app_label", "codename"
        )
    }


def _member_of(django_user_model, group_name: str, username: str):
    user = django_user_model.objects.create_user(username, password="pw", is_staff=True)
    user.groups.add(Group.objects.get(name=group_name))
    return user


@pytest.fixture
def viewer(django_user_model):
    return _member_of(django_user_model, FINANCE_VIEWER, "vera")


@pytest.fixture
def operator(django_user_model):
    return _member_of(django_user_model, FINANCE_OPERATOR, "otto")


@pytest.fixture
def failed_record():
    return SyncRecord.objects.create(
        source="stripe",
        kind="invoice",
        external_id="in_1",
        state=SyncState.FAILED,
        attempts=3,
        last_error="400 Bad Request",
    )


@pytest.fixture
def failed_event():
    return InboundEvent.objects.create(
        source="stripe", event_id="evt_1", event_type="invoice.paid", body="{}", error="boom"
    )


def _retry(client, record):
    return client.post(RECORDS, {"action": "retry_selected", "_selected_action": [record.pk]})


# --- The groups -----------------------------------------------------------------------------


def test_the_migration_creates_the_three_finance_groups():
    names = set(Group.objects.values_list("name", flat=True))
    assert {FINANCE_VIEWER, FINANCE_OPERATOR, FINANCE_ADMIN} <= names


def test_a_viewer_has_every_view_permission_of_the_app_and_nothing_else():
    every_view = {
        f"reconciliation.{codename}"
        for codename in Permission.objects.filter(
            content_type__app_label="reconciliation", codename__startswith="view_"
        ).values_list("codename", flat=True)
    }
    assert "reconciliation.view_auditevent" in every_view
    assert _perms(Group.objects.get(name=FINANCE_VIEWER)) == every_view


def test_an_operator_has_the_viewers_permissions_and_the_actions():
    viewer = _perms(Group.objects.get(name=FINANCE_VIEWER))
    assert _perms(Group.objects.get(name=FINANCE_OPERATOR)) == viewer | OPERATOR_PERMS


def test_an_admin_has_the_operators_permissions_configuration_and_users_and_groups():
    operator = _perms(Group.objects.get(name=FINANCE_OPERATOR))
    assert _perms(Group.objects.get(name=FINANCE_ADMIN)) == operator | ADMIN_PERMS


def test_user_role_names_the_highest_finance_group(django_user_model, viewer):
    viewer.groups.add(Group.objects.get(name=FINANCE_OPERATOR))
    nobody = django_user_model.objects.create_user("nobody")
    assert (user_role(viewer), user_role(nobody)) == (FINANCE_OPERATOR, "")


# --- The admin actions ----------------------------------------------------------------------


def test_a_viewer_sees_the_records_but_no_retry_action(client, viewer, failed_record):
    client.force_login(viewer)
    page = client.get(RECORDS)
    assert page.status_code == 200
    assert failed_record.external_id in page.content.decode()
    assert "retry_selected" not in page.content.decode()


def test_an_operator_is_offered_the_retry_action(client, operator, failed_record):
    client.force_login(operator)
    assert "retry_selected" in client.get(RECORDS).content.decode()


def test_a_viewers_crafted_retry_is_forbidden_and_changes_nothing(client, viewer, failed_record):
    client.force_login(viewer)
    answer = _retry(client, failed_record)
    failed_record.refresh_from_db()
    assert answer.status_code == 403
    assert (failed_record.state, failed_record.attempts) == (SyncState.FAILED, 3)
    assert not AuditEvent.objects.exists()


def test_a_viewers_crafted_reprocess_is_forbidden_and_changes_nothing(client, viewer, failed_event):
    client.force_login(viewer)
    answer = client.post(
        EVENTS, {"action": "reprocess_selected", "_selected_action": [failed_event.pk]}
    )
    failed_event.refresh_from_db()
    assert answer.status_code == 403
    assert (failed_event.processed_at, failed_event.attempts) == (None, 0)
    assert not AuditEvent.objects.exists()


def test_a_crafted_action_the_admin_never_offers_is_forbidden_to_an_operator(
    client, operator, failed_record
):
    client.force_login(operator)
    answer = client.post(
        RECORDS, {"action": "delete_selected", "_selected_action": [failed_record.pk]}
    )
    assert answer.status_code == 403
    assert SyncRecord.objects.filter(pk=failed_record.pk).exists()


def test_an_operators_retry_makes_the_record_pending_and_audits_the_operator(
    client, operator, failed_record
):
    client.force_login(operator)
    answer = _retry(client, failed_record)
    failed_record.refresh_from_db()
    event = AuditEvent.objects.get(action="record.retry_requested")
    assert answer.status_code == 302
    assert failed_record.state == SyncState.PENDING
    assert (event.actor, event.actor_label, event.target_id) == (
        operator,
        "otto",
        str(failed_record.pk),
    )


def test_an_anonymous_retry_is_sent_to_the_login_page_and_changes_nothing(client, failed_record):
    answer = _retry(client, failed_record)
    failed_record.refresh_from_db()
    assert answer.status_code == 302
    assert answer["Location"].startswith("/admin/login/")
    assert failed_record.state == SyncState.FAILED
    assert not AuditEvent.objects.exists()


def test_a_retry_without_a_csrf_token_is_refused(operator, failed_record):
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    answer = _retry(client, failed_record)
    failed_record.refresh_from_db()
    assert answer.status_code == 403
    assert failed_record.state == SyncState.FAILED
    assert not AuditEvent.objects.exists()


# --- permission_required_403 ----------------------------------------------------------------


@pytest.mark.urls(__name__)
def test_the_decorator_sends_an_anonymous_visitor_to_the_admin_login(client):
    answer = client.get("/console/")
    assert answer.status_code == 302
    assert answer["Location"] == "/admin/login/?next=/console/"


@pytest.mark.urls(__name__)
def test_the_decorator_forbids_a_user_without_the_permission(client, viewer):
    client.force_login(viewer)
    assert client.get("/console/").status_code == 403


@pytest.mark.urls(__name__)
def test_the_decorator_lets_a_user_with_the_permission_through(client, operator):
    client.force_login(operator)
    answer = client.get("/console/")
    assert (answer.status_code, answer.content) == (200, b"console")
