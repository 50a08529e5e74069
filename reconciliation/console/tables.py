"""The console's tables (django-tables2). Each renders from the row and what its queryset
selected with it (`select_related`), never with a query per row; none is orderable by the
visitor, since each list is read newest first along an index."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import django_tables2 as tables
from django.contrib.admin.utils import quote
from django.core.serializers.json import DjangoJSONEncoder
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html
from django.utils.text import Truncator
from django.utils.translation import gettext_lazy as _

from reconciliation.health import counts_text, duration_text
from reconciliation.models import AuditEvent, SyncRun

TIME_FORMAT = "Y-m-d H:i:s"
# Audit targets that have an admin change page, by `target_type` (the model's name).
ADMIN_TARGETS = {"syncrecord", "mismatch", "syncrun", "inboundevent"}
SUMMARY_CHARS = 160
VALUE_CHARS = 40


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, cls=DjangoJSONEncoder)
    return Truncator(text).chars(VALUE_CHARS)


def change_summary(before: dict, after: dict, *, limit: int = SUMMARY_CHARS) -> str:
    """`state: failed → pending; attempts: 3 → 0`: the keys whose value changed, a missing side
    shown as "—", cut at `limit` characters."""
    before, after = before or {}, after or {}
    parts = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key, _MISSING), after.get(key, _MISSING)
        if old == new:
            continue
        old_text = "—" if old is _MISSING else _short(old)
        new_text = "—" if new is _MISSING else _short(new)
        parts.append(f"{key}: {old_text} → {new_text}")
    return Truncator("; ".join(parts)).chars(limit)


_MISSING = object()


def target_url(target_type: str, target_id: str) -> str:
    """Where an audit event's target is shown: its admin change page, a job's runs, or ""."""
    if not target_id:
        return ""
    if target_type == "job":
        return f"{reverse('console:runs')}?{urlencode({'job': target_id})}"
    if target_type not in ADMIN_TARGETS:
        return ""
    try:
        return reverse(f"admin:reconciliation_{target_type}_change", args=[quote(target_id)])
    except NoReverseMatch:
        return ""


class ConsoleTable(tables.Table):
    class Meta:
        template_name = "console/_table.html"
        orderable = False
        attrs = {"class": "listing"}
        empty_text = _("Nothing to show.")


class AuditEventTable(ConsoleTable):
    occurred_at = tables.DateTimeColumn(verbose_name=_("Time"), format=TIME_FORMAT)
    actor = tables.Column(verbose_name=_("Actor"), accessor="actor_label", empty_values=())
    action = tables.Column(verbose_name=_("Action"), attrs={"td": {"class": "code"}})
    target = tables.Column(verbose_name=_("Object"), accessor="target_type", empty_values=())
    reason = tables.Column(verbose_name=_("Reason"))
    change = tables.Column(
        verbose_name=_("Before → after"),
        accessor="pk",
        empty_values=(),
        attrs={"td": {"class": "change"}},
    )

    class Meta(ConsoleTable.Meta):
        row_attrs = {"id": lambda record: f"event-{record.pk}"}

    def render_actor(self, record: AuditEvent):
        user = record.actor
        if user is not None:
            full_name = user.get_full_name()
            name = user.get_username()
            return (
                format_html("{} <span class='quiet'>({})</span>", full_name, name)
                if full_name
                else name
            )
        return format_html(
            "{} <span class='quiet'>({})</span>",
            record.actor_label,
            record.get_actor_type_display(),
        )

    def render_target(self, record: AuditEvent):
        if not record.target_type:
            return "—"
        identity = f"{record.target_type} {record.target_id}".strip()
        url = target_url(record.target_type, record.target_id)
        link = format_html("<a href='{}'>{}</a>", url, identity) if url else identity
        if record.target_label:
            return format_html(
                "{}<br><span class='quiet'>{}</span>",
                link,
                Truncator(record.target_label).chars(80),
            )
        return link

    def render_reason(self, value: str):
        return Truncator(value).chars(200)

    def render_change(self, record: AuditEvent):
        return change_summary(record.before, record.after) or "—"


def first_line(text: str, *, limit: int = 200) -> str:
    lines = (text or "").strip().splitlines()
    return Truncator(lines[0]).chars(limit) if lines else ""


class SyncRunTable(ConsoleTable):
    job = tables.Column(verbose_name=_("Job"), attrs={"td": {"class": "code"}})
    trigger = tables.Column(verbose_name=_("Trigger"), accessor="get_trigger_display")
    state = tables.Column(verbose_name=_("State"), empty_values=())
    started_at = tables.DateTimeColumn(verbose_name=_("Started"), format=TIME_FORMAT)
    finished_at = tables.DateTimeColumn(verbose_name=_("Finished"), format=TIME_FORMAT)
    duration = tables.Column(
        verbose_name=_("Duration"),
        accessor="pk",
        empty_values=(),
        attrs={"td": {"class": "number"}},
    )
    counts = tables.Column(verbose_name=_("Counts"), empty_values=())
    error = tables.Column(verbose_name=_("Error"), attrs={"td": {"class": "error"}})
    started_by = tables.Column(verbose_name=_("Started by"), empty_values=())

    class Meta(ConsoleTable.Meta):
        row_attrs = {"id": lambda record: f"run-{record.pk}"}

    def render_state(self, record: SyncRun):
        return format_html(
            "<span class='state state-{}'>{}</span>", record.state, record.get_state_display()
        )

    def render_duration(self, record: SyncRun):
        return duration_text(record.duration) if record.duration is not None else "—"

    def render_counts(self, value: dict):
        return counts_text(value or {}) or "—"

    def render_error(self, value: str):
        return format_html("<span class='bad'>{}</span>", first_line(value))

    def render_started_by(self, record: SyncRun):
        user = record.started_by
        return (
            user.get_username()
            if user is not None
            else format_html("<span class='quiet'>{}</span>", _("the system"))
        )
