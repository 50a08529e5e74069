"""Incidents: the admins hear once when something goes wrong and once when it is over."""

from __future__ import annotations

import pytest
from django.core import mail

from reconciliation.alerts import incident_open, incident_resolve
from reconciliation.models import AuditEvent, Incident, IncidentKind

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def admins(settings):
    settings.ADMINS = [("Finance admin", "admin@example.org")]


def _open():
    return incident_open(
        kind=IncidentKind.BREAKER_OPEN,
        subject="dolibarr",
        title="Dolibarr unavailable",
        message="The breaker opened.",
    )


def _resolve():
    return incident_resolve(
        kind=IncidentKind.BREAKER_OPEN,
        subject="dolibarr",
        title="Dolibarr available again",
        message="The probe succeeded.",
    )


def test_an_incident_noticed_three_times_sends_one_mail():
    for _ in range(3):
        _open()
    assert Incident.objects.count() == 1
    assert [m.subject for m in mail.outbox] == ["[ap24sync] Dolibarr unavailable"]
    assert AuditEvent.objects.filter(action="alert.sent").count() == 1


def test_its_end_sends_one_recovery_mail_and_closes_it():
    _open()
    _resolve()
    _resolve()
    assert [m.subject for m in mail.outbox][1:] == ["[ap24sync] Dolibarr available again"]
    assert Incident.objects.get().resolved_at is not None
    assert AuditEvent.objects.filter(action="alert.recovered").count() == 1


def test_a_new_outage_after_recovery_is_a_new_incident_with_its_own_mail():
    _open()
    _resolve()
    _open()
    assert Incident.objects.count() == 2
    assert len(mail.outbox) == 3


def test_resolving_when_nothing_is_open_sends_nothing():
    assert _resolve() is None
    assert mail.outbox == []


def test_a_mail_server_that_fails_leaves_the_alert_in_the_audit_trail(settings, caplog):
    settings.EMAIL_BACKEND = "tests.test_alerts.FailingBackend"
    _open()
    assert AuditEvent.objects.filter(action="alert.sent").exists()
    assert "could not e-mail the admins" in caplog.text


class FailingBackend:
    def __init__(self, *args, **kwargs):
        pass

    def send_messages(self, messages):
        raise ConnectionRefusedError("SMTP down")
