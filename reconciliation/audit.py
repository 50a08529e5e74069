"""The only writer of AuditEvent.

Every automatic write to Dolibarr and every human decision calls `audit_record` inside the same
transaction as the change it explains. Payloads pass through `redact` so that a secret placed in
a snapshot by mistake never lands in the trail.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models

from reconciliation.logs import redact
from reconciliation.models import ActorType, AuditEvent

SYSTEM_LABEL = "ap24sync"


def _clean(payload: dict[str, Any] | None) -> dict[str, Any]:
    if not payload:
        return {}
    text = json.dumps(payload, cls=DjangoJSONEncoder)
    return json.loads(redact(text))


def _target(target: models.Model | tuple[str, str] | None) -> tuple[str, str, str]:
    if target is None:
        return "", "", ""
    if isinstance(target, tuple):
        kind, identity = target
        return kind, str(identity), ""
    return target._meta.model_name, str(target.pk), str(target)[:300]


def audit_record(**fields: Any) -> AuditEvent:
    """Append one audit event, built from `audit_event`'s arguments: `actor` is a user (a human
    decision) or None (the system); `target` is a model instance or a (kind, identity) pair for
    remote objects."""
    event = audit_event(**fields)
    event.save()
    return event


def audit_records(events: Iterable[AuditEvent]) -> list[AuditEvent]:
    """Append several events built with `audit_event` in one statement (a batch of records
    settled together)."""
    return AuditEvent.objects.bulk_create(list(events))


def audit_event(
    *,
    action: str,
    actor=None,
    actor_type: str | None = None,
    actor_label: str = "",
    target: models.Model | tuple[str, str] | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    reason: str = "",
) -> AuditEvent:
    """An unsaved, redacted event, for `audit_records`."""
    if actor is not None:
        kind = actor_type or ActorType.USER
        label = actor_label or actor.get_username()
    else:
        kind = actor_type or ActorType.SYSTEM
        label = actor_label or SYSTEM_LABEL
    target_type, target_id, target_label = _target(target)
    return AuditEvent(
        actor_type=kind,
        actor=actor,
        actor_label=label,
        action=action,
        target_type=target_type,
        target_id=target_id,
        target_label=redact(target_label),
        before=_clean(before),
        after=_clean(after),
        reason=redact(reason),
    )
