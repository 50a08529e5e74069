import pytest
from django.contrib import admin
from django.test import RequestFactory

from reconciliation.audit import audit_record
from reconciliation.models import AppendOnlyError, AuditEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def event():
    return audit_record(action="test.happened", target=("invoice", "in_1"), after={"x": 1})


def test_audit_events_cannot_be_updated_through_save(event):
    event.action = "rewritten"
    with pytest.raises(AppendOnlyError):
        event.save()


def test_audit_events_cannot_be_updated_through_a_queryset(event):
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.filter(pk=event.pk).update(action="rewritten")
    assert AuditEvent.objects.get(pk=event.pk).action == "test.happened"


def test_audit_events_cannot_be_deleted(event):
    with pytest.raises(AppendOnlyError):
        event.delete()
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.all().delete()
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_the_admin_offers_no_add_change_or_delete_on_audit_events(admin_user, event):
    request = RequestFactory().get("/")
    request.user = admin_user
    model_admin = admin.site._registry[AuditEvent]
    assert not model_admin.has_add_permission(request)
    assert not model_admin.has_change_permission(request, event)
    assert not model_admin.has_delete_permission(request, event)


def test_a_superuser_cannot_post_a_change_to_an_audit_event(admin_client, event):
    url = f"/admin/reconciliation/auditevent/{event.pk}/change/"
    admin_client.post(url, {"action": "rewritten"})
    assert AuditEvent.objects.get(pk=event.pk).action == "test.happened"


def test_a_superuser_cannot_delete_an_audit_event_from_the_admin(admin_client, event):
    response = admin_client.post(
        f"/admin/reconciliation/auditevent/{event.pk}/delete/", {"post": "yes"}
    )
    assert response.status_code == 403
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_system_events_are_labelled_as_the_system(event):
    assert (event.actor_type, event.actor_label) == ("system", "ap24sync")


def test_configured_secrets_are_redacted_from_audit_payloads(settings):
    settings.DOLIBARR_API_KEY = "doli-secret-key-123456"
    event = audit_record(
        action="test.leak", after={"url": "x?DOLAPIKEY=doli-secret-key-123456"}, reason="k"
    )
    assert "doli-secret-key-123456" not in str(event.after)
    assert event.after["url"] == "x?DOLAPIKEY=[redacted]"


def test_the_admin_lists_audit_events(admin_client, event):
    response = admin_client.get("/admin/reconciliation/auditevent/")
    assert response.status_code == 200
    assert b"test.happened" in response.content
