"""The console's list filters (django-filter), and the reads that build their choices.

The choices of a filter on a column with many rows (an audit event's action, a run's job) come
from `distinct_values`, which walks the column's index from one value to the next instead of
reading every row; the dates filter a range of whole days in the console's time zone, so that
the index on the timestamp column is used (`__date` would compute the date of every row).
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta

import django_filters
from django import forms
from django.db import connections, models, router
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from reconciliation.models import AuditEvent, RunState, SyncRun, Trigger

# A column with more distinct values than this is not a column to choose from.
DISTINCT_VALUES_LIMIT = 500


def distinct_values(
    model: type[models.Model], field_name: str, *, limit: int = DISTINCT_VALUES_LIMIT
) -> list[str]:
    """The distinct non-empty values of an indexed text column, in order, at most `limit`.

    A recursive query asks for the smallest value greater than the last one found: one index
    probe per distinct value (a "loose index scan"), where `SELECT DISTINCT` would read every
    row of the table. SQLite and PostgreSQL both run it."""
    connection = connections[router.db_for_read(model)]
    quote = connection.ops.quote_name
    table = quote(model._meta.db_table)
    column = quote(model._meta.get_field(field_name).column)
    # Names come from the model's metadata, never from a request; the limit is a parameter.
    sql = (
        f"WITH RECURSIVE walk(value, n) AS ("  # noqa: S608
        f" SELECT (SELECT {column} FROM {table} WHERE {column} > '' ORDER BY {column} LIMIT 1), 1"
        f" UNION ALL"
        f" SELECT (SELECT {column} FROM {table} WHERE {column} > walk.value"
        f" ORDER BY {column} LIMIT 1), n + 1"
        f" FROM walk WHERE walk.value IS NOT NULL AND n < %s"
        f") SELECT value FROM walk WHERE value IS NOT NULL"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [limit])
        return [row[0] for row in cursor.fetchall()]


def _day_start(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))


class DayRangeFilterSet(django_filters.FilterSet):
    """`date_from` and `date_to` (both included) on the subclass's `date_field`."""

    date_field = ""

    date_from = django_filters.DateFilter(
        label=_("From"),
        method="filter_date_from",
        widget=forms.DateInput(attrs={"type": "date"}),
    )
    date_to = django_filters.DateFilter(
        label=_("To"),
        method="filter_date_to",
        widget=forms.DateInput(attrs={"type": "date"}),
    )

    def filter_date_from(self, queryset, name, value):
        return queryset.filter(**{f"{self.date_field}__gte": _day_start(value)})

    def filter_date_to(self, queryset, name, value):
        return queryset.filter(**{f"{self.date_field}__lt": _day_start(value + timedelta(days=1))})


def _choices(values: list[str]) -> list[tuple[str, str]]:
    return [(value, value) for value in values]


class AuditEventFilter(DayRangeFilterSet):
    date_field = "occurred_at"

    actor = django_filters.CharFilter(label=_("Actor"), method="filter_actor")
    action = django_filters.ChoiceFilter(label=_("Action"), choices=[], empty_label=_("Any"))
    target_type = django_filters.ChoiceFilter(
        label=_("Object type"), choices=[], empty_label=_("Any")
    )
    target_id = django_filters.CharFilter(label=_("Object id"), field_name="target_id")

    class Meta:
        model = AuditEvent
        fields = ["actor", "action", "target_type", "target_id", "date_from", "date_to"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.filters["action"].extra["choices"] = _choices(distinct_values(AuditEvent, "action"))
        self.filters["target_type"].extra["choices"] = _choices(
            distinct_values(AuditEvent, "target_type")
        )

    def filter_actor(self, queryset, name, value):
        """The label recorded with the event (a user's name then, the system, an API client)
        or the user's current name, if it changed since."""
        value = value.strip()
        if not value:
            return queryset
        return queryset.filter(
            models.Q(actor_label__icontains=value) | models.Q(actor__username__icontains=value)
        )


class SyncRunFilter(DayRangeFilterSet):
    date_field = "started_at"

    job = django_filters.ChoiceFilter(label=_("Job"), choices=[], empty_label=_("Any"))
    state = django_filters.ChoiceFilter(
        label=_("State"), choices=RunState.choices, empty_label=_("Any")
    )
    trigger = django_filters.ChoiceFilter(
        label=_("Trigger"), choices=Trigger.choices, empty_label=_("Any")
    )

    class Meta:
        model = SyncRun
        fields = ["job", "state", "trigger", "date_from", "date_to"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.filters["job"].extra["choices"] = _choices(distinct_values(SyncRun, "job"))
