"""The console's dashboard (`/console/`): is Dolibarr in step, and if not, what is different
and where to act (docs/console.md, "Dashboard").

It costs the same few queries whatever the size of the tables, and reads no table whole on
every view:

- the open mismatches by kind and severity, with the money at stake per currency: one
  GROUP BY over the open ones (the `mismatch_state_kind` index), live;
- the failed records, for the headline: one count along the `state` index, live;
- the last run of each registered job: one query, a subquery per job along
  `syncrun_job_latest`;
- each connection's circuit breaker: one query (`resilience.breaker_states`);
- the records by source and state: a GROUP BY over every record, so computed at most once a
  minute and kept in the cache (`RECORDS_CACHE_SECONDS`), shown with the time it was counted;
- the chart of the last 30 days (records synced and failed, mismatches opened), counted from
  the audit trail's events per day: the days before today once a day, today at most once a
  minute, both kept in the cache.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from functools import wraps
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.db.models import Case, Count, IntegerField, Q, Subquery, Sum, Value, When
from django.db.models.functions import Abs
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.utils import formats, timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from reconciliation.console.records import records_url
from reconciliation.console.tables import first_line
from reconciliation.console.views import console_context
from reconciliation.health import counts_text, duration_text
from reconciliation.jobs import JOBS
from reconciliation.models import (
    AuditEvent,
    BreakerState,
    Mismatch,
    MismatchKind,
    RunState,
    Severity,
    Source,
    SyncRecord,
    SyncRun,
    SyncState,
)
from reconciliation.money import currency_exponent, is_known_currency, round_to_currency
from reconciliation.resilience import BreakerStatus, breaker_states

# Whoever may read any of the console's pages may read its dashboard.
CONSOLE_VIEW_PERMISSIONS = (
    "reconciliation.view_mismatch",
    "reconciliation.view_syncrecord",
    "reconciliation.view_syncrun",
    "reconciliation.view_auditevent",
)
# The connections shown, in this order (each has a circuit breaker).
CONNECTIONS = ("dolibarr", "stripe", "aipress24")
CONNECTION_SETTINGS = {
    "dolibarr": "DOLIBARR_URL",
    "stripe": "STRIPE_API_KEY",
    "aipress24": "AIPRESS24_DATABASE_URL",
}
MISMATCH_QUEUE_PATH = "/console/mismatches/"
SEVERITIES = (Severity.CRITICAL, Severity.WARNING, Severity.INFO)
CACHE_PREFIX = "ap24sync:console:dashboard"
RECORDS_CACHE_SECONDS = 60
TODAY_CACHE_SECONDS = 60
PAST_DAYS_CACHE_SECONDS = 26 * 3600
CHART_DAYS = 30
# The audit actions each series of the chart counts.
CHART_SERIES = (
    ("synced", gettext_lazy("Records synced"), ("record.synced",)),
    ("failed", gettext_lazy("Records failed"), ("record.failed",)),
    ("mismatches", gettext_lazy("Mismatches opened"), ("mismatch.opened", "mismatch.reopened")),
)
# The chart's geometry, in SVG user units.
CHART_LEFT = 8
CHART_BAR_WIDTH = 16
CHART_BAR_GAP = 4
CHART_PANEL_HEIGHT = 56
CHART_PANEL_LABEL = 20
CHART_AXIS = 18


def any_permission_required_403(*perms: str) -> Callable:
    """`permission_required_403` for a page that needs any one of `perms`."""

    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def checked(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path(), login_url=reverse("admin:login"))
            if not any(request.user.has_perm(perm) for perm in perms):
                raise PermissionDenied
            return view(request, *args, **kwargs)

        return checked

    return decorator


def url_or_path(name: str, path: str, **query: str) -> str:
    """The URL named `name` (a page another part of the console may not have yet), else
    `path`; with `query`."""
    try:
        url = reverse(name)
    except NoReverseMatch:
        url = path
    return f"{url}?{urlencode(query)}" if query else url


def number_text(value: int) -> str:
    """`1,234,567` (the language's grouping)."""
    return formats.number_format(value, force_grouping=True)


def money_text(amount: Decimal, currency: str) -> str:
    """`1,234.50 EUR` (the language's separators), to the currency's minor unit."""
    if is_known_currency(currency):
        amount = round_to_currency(amount, currency)
        places = currency_exponent(currency)
    else:
        places = None
    number = formats.number_format(amount, decimal_pos=places, force_grouping=True)
    return f"{number} {currency}".strip()


# --- Open mismatches ------------------------------------------------------------------------


@dataclass
class MismatchCell:
    count: int = 0
    at_stake: dict[str, Decimal] = field(default_factory=dict)
    url: str = ""

    @property
    def count_text(self) -> str:
        return number_text(self.count)

    @property
    def money(self) -> list[str]:
        return [money_text(amount, currency) for currency, amount in sorted(self.at_stake.items())]

    def add(self, *, count: int, currency: str, amount: Decimal | None) -> None:
        self.count += count
        if amount:
            self.at_stake[currency] = self.at_stake.get(currency, Decimal(0)) + amount


@dataclass
class MismatchRow:
    kind: str
    label: str
    cells: list[MismatchCell]
    total: MismatchCell


@dataclass
class OpenMismatches:
    rows: list[MismatchRow]
    totals: list[MismatchCell]
    total: MismatchCell

    @property
    def critical(self) -> int:
        return self.totals[SEVERITIES.index(Severity.CRITICAL)].count


def open_mismatches() -> OpenMismatches:
    """Open and approved mismatches by kind and severity: count, and the sum of the absolute
    amount differences per currency. One GROUP BY."""
    grouped = (
        Mismatch.objects.open()
        .order_by()
        .values("kind", "severity", "currency")
        .annotate(count=Count("pk"), at_stake=Sum(Abs("amount_difference")))
    )
    kind_labels = dict(MismatchKind.choices)
    cells: dict[str, dict[str, MismatchCell]] = defaultdict(dict)
    for row in grouped:
        severity = row["severity"] if row["severity"] in SEVERITIES else Severity.WARNING
        cell = cells[row["kind"]].setdefault(severity, MismatchCell())
        cell.add(count=row["count"], currency=row["currency"] or "", amount=row["at_stake"])
    queue = "console:mismatches"
    rows, totals = [], [MismatchCell() for _ in SEVERITIES]
    for kind in sorted(cells, key=lambda k: str(kind_labels.get(k, k))):
        row_cells = []
        total = MismatchCell(url=url_or_path(queue, MISMATCH_QUEUE_PATH, kind=kind))
        for index, severity in enumerate(SEVERITIES):
            cell = cells[kind].get(severity, MismatchCell())
            if cell.count:
                cell.url = url_or_path(queue, MISMATCH_QUEUE_PATH, kind=kind, severity=severity)
            row_cells.append(cell)
            for target in (total, totals[index]):
                target.count += cell.count
                for currency, amount in cell.at_stake.items():
                    target.add(count=0, currency=currency, amount=amount)
        rows.append(MismatchRow(kind, str(kind_labels.get(kind, kind)), row_cells, total))
    for index, severity in enumerate(SEVERITIES):
        if totals[index].count:
            totals[index].url = url_or_path(queue, MISMATCH_QUEUE_PATH, severity=severity)
    grand = MismatchCell(url=url_or_path(queue, MISMATCH_QUEUE_PATH))
    for cell in totals:
        grand.count += cell.count
        for currency, amount in cell.at_stake.items():
            grand.add(count=0, currency=currency, amount=amount)
    return OpenMismatches(rows=rows, totals=totals, total=grand)


# --- Records by state (cached) --------------------------------------------------------------


@dataclass
class RecordsByState:
    sources: list[tuple[str, str]]
    # One row per state: (state, label, [(count, text, url) per source], (total, text, url)).
    rows: list[tuple[str, str, list[tuple[int, str, str]], tuple[int, str, str]]]
    totals: list[tuple[int, str, str]]
    total: int
    counted_at: datetime

    @property
    def total_text(self) -> str:
        return number_text(self.total)


def _records_counts() -> dict[str, Any]:
    rows = SyncRecord.objects.order_by().values_list("source", "state").annotate(n=Count("pk"))
    return {
        "counts": {(source, state): n for source, state, n in rows},
        "counted_at": timezone.now(),
    }


def records_by_state() -> RecordsByState:
    """Every record counted by source and state, at most once every `RECORDS_CACHE_SECONDS`
    (a GROUP BY over the whole table)."""
    cached = cache.get_or_set(
        f"{CACHE_PREFIX}:records", _records_counts, timeout=RECORDS_CACHE_SECONDS
    )
    counts: dict[tuple[str, str], int] = cached["counts"]
    source_labels = dict(Source.choices)
    present = {source for source, _state in counts}
    sources = [(s, str(source_labels[s])) for s in Source.values if s in present]
    sources += [(s, s) for s in sorted(present - set(Source.values))]
    rows = []
    for state, label in SyncState.choices:
        per_source = [
            _counted(counts.get((source, state), 0), records_url(source=source, state=state))
            for source, _label in sources
        ]
        total = sum(n for n, _text, _url in per_source)
        rows.append((state, str(label), per_source, _counted(total, records_url(state=state))))
    totals = [
        _counted(
            sum(counts.get((source, state), 0) for state in SyncState.values),
            records_url(source=source),
        )
        for source, _label in sources
    ]
    return RecordsByState(
        sources=sources,
        rows=rows,
        totals=totals,
        total=sum(counts.values()),
        counted_at=cached["counted_at"],
    )


def _counted(count: int, url: str) -> tuple[int, str, str]:
    return count, number_text(count), url


def failed_records_count() -> int:
    """Live: the headline must not say "in step" for a minute after a record failed."""
    return SyncRecord.objects.filter(state=SyncState.FAILED).count()


# --- Jobs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobLastRun:
    name: str
    description: str
    run: SyncRun | None
    runs_url: str

    @property
    def duration(self) -> str:
        return duration_text(self.run.duration) if self.run and self.run.duration else ""

    @property
    def counts(self) -> str:
        return counts_text(self.run.counts or {}) if self.run else ""

    @property
    def error(self) -> str:
        return first_line(self.run.error) if self.run else ""

    @property
    def failed(self) -> bool:
        return bool(self.run and self.run.state == RunState.FAILED)


def jobs_last_runs() -> list[JobLastRun]:
    """The latest run of every registered job (None for a job that never ran): one query, whose
    subquery per job reads one entry of the `syncrun_job_latest` index."""
    names = sorted(JOBS)
    if not names:
        return []
    latest = Q()
    for name in names:
        newest = SyncRun.objects.filter(job=name).order_by("-started_at").values("pk")[:1]
        latest |= Q(pk=Subquery(newest))
    runs = {run.job: run for run in SyncRun.objects.filter(latest).select_related("started_by")}
    runs_page = reverse("console:runs")
    return [
        JobLastRun(
            name=name,
            description=JOBS[name].description,
            run=runs.get(name),
            runs_url=f"{runs_page}?{urlencode({'job': name})}",
        )
        for name in names
    ]


# --- Connections ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Connection:
    breaker: BreakerStatus
    configured: bool

    @property
    def health(self) -> str:
        """`down` (breaker open or probing), `degraded` (failures, still closed), `ok`, or
        `unconfigured` (never used: its setting is empty)."""
        if self.breaker.state != BreakerState.CLOSED:
            return "down"
        if self.breaker.consecutive_failures:
            return "degraded"
        return "ok" if self.configured else "unconfigured"


def connections_health() -> list[Connection]:
    """Each remote's circuit breaker (one query) and whether it is configured at all."""
    return [
        Connection(
            breaker=status,
            configured=bool(getattr(settings, CONNECTION_SETTINGS.get(status.system, ""), "")),
        )
        for status in breaker_states(systems=CONNECTIONS)
        if status.system in CONNECTIONS
    ]


# --- The chart (cached) ---------------------------------------------------------------------


def _midnight(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))


def audit_daily_counts(*, days: list[date]) -> dict[str, list[int]]:
    """How many events of each chart action happened on each of `days` (consecutive, in the
    console's time zone): one GROUP BY over those days' events of those actions, each event
    put in its day by comparing it with the days' midnights (no date function per row)."""
    starts = [_midnight(day) for day in days] + [_midnight(days[-1] + timedelta(days=1))]
    whens = [
        When(occurred_at__gte=start, then=Value(index))
        for index, start in reversed(list(enumerate(starts[:-1])))
    ]
    actions = [action for _key, _label, names in CHART_SERIES for action in names]
    rows = (
        AuditEvent.objects.filter(
            action__in=actions, occurred_at__gte=starts[0], occurred_at__lt=starts[-1]
        )
        .annotate(day=Case(*whens, default=Value(-1), output_field=IntegerField()))
        .order_by()
        .values_list("action", "day")
        .annotate(n=Count("pk"))
    )
    counts = {action: [0] * len(days) for action in actions}
    for action, index, n in rows:
        if 0 <= index < len(days):
            counts[action][index] += n
    return counts


def chart_counts(*, today: date) -> tuple[list[date], dict[str, list[int]]]:
    """The last `CHART_DAYS` days and, per series, the events of each: the days before today
    counted once a day (they no longer change: the trail is append-only), today at most once
    a minute."""
    days = [today - timedelta(days=n) for n in range(CHART_DAYS - 1, -1, -1)]
    past = cache.get_or_set(
        f"{CACHE_PREFIX}:chart:{days[0].isoformat()}:{today.isoformat()}",
        lambda: audit_daily_counts(days=days[:-1]),
        timeout=PAST_DAYS_CACHE_SECONDS,
    )
    current = cache.get_or_set(
        f"{CACHE_PREFIX}:chart-today:{today.isoformat()}",
        lambda: audit_daily_counts(days=[today]),
        timeout=TODAY_CACHE_SECONDS,
    )
    series = {
        key: [sum(past[action][index] for action in actions) for index in range(len(days) - 1)]
        + [sum(current[action][0] for action in actions)]
        for key, _label, actions in CHART_SERIES
    }
    return days, series


@dataclass(frozen=True)
class ChartBar:
    x: int
    y: float
    height: float
    title: str


@dataclass(frozen=True)
class ChartPanel:
    key: str
    label: str
    top: int
    baseline: int
    highest: str
    bars: list[ChartBar]


@dataclass(frozen=True)
class Chart:
    days: list[date]
    series: dict[str, list[int]]
    panels: list[ChartPanel]
    width: int
    height: int
    ticks: list[tuple[int, str]]

    @property
    def table(self) -> list[tuple[date, list[int]]]:
        keys = [key for key, _label, _actions in CHART_SERIES]
        return [
            (day, [self.series[key][index] for key in keys]) for index, day in enumerate(self.days)
        ]

    @property
    def labels(self) -> list[str]:
        return [str(label) for _key, label, _actions in CHART_SERIES]


def activity_chart(*, today: date | None = None) -> Chart:
    """Three small bar charts over the same days, each on its own scale (thousands synced a
    day would flatten a handful of failures)."""
    today = today or timezone.localdate()
    days, series = chart_counts(today=today)
    step = CHART_BAR_WIDTH + CHART_BAR_GAP
    panels, top = [], 0
    for key, label, _actions in CHART_SERIES:
        values = series[key]
        highest = max(values) if values else 0
        baseline = top + CHART_PANEL_LABEL + CHART_PANEL_HEIGHT
        bars = []
        for index, (day, value) in enumerate(zip(days, values, strict=True)):
            height = CHART_PANEL_HEIGHT * value / highest if highest else 0
            bars.append(
                ChartBar(
                    x=CHART_LEFT + index * step,
                    y=round(baseline - height, 1),
                    height=round(height, 1),
                    title=f"{formats.date_format(day, 'SHORT_DATE_FORMAT')}: "
                    f"{formats.number_format(value, force_grouping=True)} {label}",
                )
            )
        panels.append(
            ChartPanel(
                key=key,
                label=str(label),
                top=top,
                baseline=baseline,
                highest=number_text(highest),
                bars=bars,
            )
        )
        top = baseline + 10
    ticks = [
        (CHART_LEFT + index * step, formats.date_format(days[index], "M j"))
        for index in range(0, len(days), 7)
    ]
    return Chart(
        days=days,
        series=series,
        panels=panels,
        width=CHART_LEFT + len(days) * step,
        height=top + CHART_AXIS,
        ticks=ticks,
    )


# --- The headline ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Attention:
    count: int
    text: str
    url: str


def attention_items(
    *,
    mismatches: OpenMismatches | None,
    failed_records: int | None,
    connections: list[Connection],
    jobs: list[JobLastRun],
) -> list[Attention]:
    """What needs a person, each with where to act."""
    items = []
    if mismatches and mismatches.total.count:
        count = mismatches.total.count
        text = ngettext("%(n)s open mismatch", "%(n)s open mismatches", count) % {
            "n": number_text(count)
        }
        if mismatches.critical:
            text += " " + _("(%(n)s critical)") % {"n": number_text(mismatches.critical)}
        items.append(Attention(count, text, mismatches.total.url))
    if failed_records:
        text = ngettext("%(n)s failed record", "%(n)s failed records", failed_records) % {
            "n": number_text(failed_records)
        }
        items.append(Attention(failed_records, text, records_url(state=SyncState.FAILED)))
    for connection in connections:
        if connection.health == "down":
            text = _("%(system)s cannot be reached (circuit breaker open)") % {
                "system": connection.breaker.label
            }
            items.append(Attention(1, text, "#connections"))
    for job in jobs:
        if job.failed:
            text = _("the last run of %(job)s failed") % {"job": job.name}
            url = f"{job.runs_url}&{urlencode({'state': RunState.FAILED})}"
            items.append(Attention(1, text, url))
    return items


# --- The page -------------------------------------------------------------------------------


@require_safe
@never_cache
@any_permission_required_403(*CONSOLE_VIEW_PERMISSIONS)
def dashboard(request: HttpRequest) -> TemplateResponse:
    user = request.user
    may_mismatches = user.has_perm("reconciliation.view_mismatch")
    may_records = user.has_perm("reconciliation.view_syncrecord")
    may_runs = user.has_perm("reconciliation.view_syncrun")
    mismatches = open_mismatches() if may_mismatches else None
    failed = failed_records_count() if may_records else None
    jobs = jobs_last_runs() if may_runs else []
    connections = connections_health()
    items = attention_items(
        mismatches=mismatches, failed_records=failed, connections=connections, jobs=jobs
    )
    attention = sum(item.count for item in items)
    context = console_context(
        request,
        title=_("Dashboard"),
        section="dashboard",
        in_step=not items,
        attention=attention,
        attention_text=number_text(attention),
        attention_items=items,
        mismatches=mismatches,
        severities=[(s, str(Severity(s).label)) for s in SEVERITIES],
        records=records_by_state() if may_records else None,
        jobs=jobs,
        connections=connections,
        chart=activity_chart() if user.has_perm("reconciliation.view_auditevent") else None,
        mismatch_queue_url=url_or_path("console:mismatches", MISMATCH_QUEUE_PATH),
        status_url=reverse("status") if user.is_staff else "",
    )
    return TemplateResponse(request, "console/dashboard.html", context)
