"""Incidents and the e-mails about them: the admins hear once when something goes wrong and once
when it is over, whatever the number of workers noticing it.

An incident is a breaker open longer than `ALERT_BREAKER_OPEN_MINUTES`
(`IncidentKind.BREAKER_OPEN`, subject = the system) or a job failing twice in a row
(`IncidentKind.JOB_FAILING`, subject = the job). `incident_open` and `incident_resolve` are
race-safe: one open incident per kind and subject (a partial unique constraint), and the mail is
sent by whoever marks the incident alerted first (a conditional UPDATE). Each mail also writes an
audit event. docs/runbook.md says what each alert means and what to do.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.mail import mail_admins
from django.db import IntegrityError, transaction
from django.utils import timezone

from reconciliation.audit import audit_record
from reconciliation.models import Incident, IncidentKind

logger = logging.getLogger(__name__)


def incident_open(
    *, kind: str, subject: str, title: str, message: str, details: dict[str, Any] | None = None
) -> Incident:
    """The open incident of this kind and subject, created if there is none; the admins are
    e-mailed (`title`, `message`) and an `alert.sent` audit event written, once per incident."""
    incident = _open_incident(kind=kind, subject=subject, details=details or {})
    now = timezone.now()
    claimed = Incident.objects.filter(pk=incident.pk, alerted_at__isnull=True).update(
        alerted_at=now
    )
    if claimed:
        _send(title=title, message=message)
        audit_record(
            action="alert.sent",
            target=incident,
            after={"kind": kind, "subject": subject, "title": title, **(details or {})},
        )
        incident.alerted_at = now
    return incident


def incident_resolve(*, kind: str, subject: str, title: str, message: str) -> Incident | None:
    """Close the open incident of this kind and subject, if any, and tell the admins once that
    it is over (`alert.recovered`). None when nothing was open."""
    incident = Incident.objects.filter(kind=kind, subject=subject, resolved_at__isnull=True).first()
    if incident is None:
        return None
    now = timezone.now()
    claimed = Incident.objects.filter(pk=incident.pk, resolved_at__isnull=True).update(
        resolved_at=now, recovery_alerted_at=now if incident.alerted_at else None
    )
    if not claimed:
        return None
    incident.resolved_at = now
    if incident.alerted_at is not None:
        # Only an incident the admins were told about gets a recovery mail.
        _send(title=title, message=message)
        audit_record(
            action="alert.recovered",
            target=incident,
            after={"kind": kind, "subject": subject, "title": title},
        )
    return incident


def open_incident(*, kind: str, subject: str) -> Incident | None:
    return Incident.objects.filter(kind=kind, subject=subject, resolved_at__isnull=True).first()


def _open_incident(*, kind: str, subject: str, details: dict[str, Any]) -> Incident:
    existing = open_incident(kind=kind, subject=subject)
    if existing is not None:
        return existing
    try:
        with transaction.atomic():
            return Incident.objects.create(kind=kind, subject=subject, details=details)
    except IntegrityError:  # another worker opened it between the look-up and the insert
        return Incident.objects.get(kind=kind, subject=subject, resolved_at__isnull=True)


def _send(*, title: str, message: str) -> None:
    """`mail_admins`; a mail server that fails is logged, never raised into the job."""
    try:
        mail_admins(title, message)  # prefixed with EMAIL_SUBJECT_PREFIX, "[ap24sync] "
    except Exception:  # SMTP errors of any kind: the alert is in the audit trail anyway
        logger.exception("could not e-mail the admins: %s", title)


__all__ = ["IncidentKind", "incident_open", "incident_resolve", "open_incident"]
