"""The console's pages: the audit trail (with its CSV export) and the job runs (with "run
now"). Views read through a FilterSet and a table, and act through `console.services`.

Each list page costs the same few queries whatever its page size: the session and the user,
their permissions and role, one query per filter's choices, and one for the page's rows (with
the users they name); `LazyPaginator` reads one row past the page instead of counting the
table."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from datetime import UTC

from django.contrib import messages
from django.core.paginator import EmptyPage, PageNotAnInteger
from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import QuerySet
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    StreamingHttpResponse,
)
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.text import Truncator
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST, require_safe
from django_tables2 import Table
from django_tables2.paginators import LazyPaginator

from reconciliation.console.filters import AuditEventFilter, SyncRunFilter
from reconciliation.console.services import job_run_request
from reconciliation.console.tables import AuditEventTable, SyncRunTable
from reconciliation.jobs import JOBS
from reconciliation.logs import redact
from reconciliation.models import AuditEvent, SyncRun
from reconciliation.permissions import (
    FINANCE_ADMIN,
    FINANCE_OPERATOR,
    FINANCE_VIEWER,
    permission_required_403,
    user_role,
)

PER_PAGE = 50
PER_PAGE_MAX = 200
EXPORT_CHUNK_ROWS = 2000
EXPORT_COLUMNS = (
    "time",
    "actor",
    "action",
    "target type",
    "target id",
    "reason",
    "before",
    "after",
)
# A cell a spreadsheet would run as a formula (OWASP, "CSV injection") starts with one of these.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


ROLE_LABELS = {
    FINANCE_VIEWER: gettext_lazy("Finance viewer"),
    FINANCE_OPERATOR: gettext_lazy("Finance operator"),
    FINANCE_ADMIN: gettext_lazy("Finance admin"),
}


def console_context(request: HttpRequest, **extra) -> dict:
    role = user_role(request.user)
    return {"user_role": ROLE_LABELS.get(role, role), **extra}


def _paginate(request: HttpRequest, table: Table) -> Table:
    """One page of `table`, `?per_page=` capped, never counting the table. A page past the
    last is a 404."""
    try:
        per_page = min(max(int(request.GET.get("per_page", PER_PAGE)), 1), PER_PAGE_MAX)
    except ValueError:
        per_page = PER_PAGE
    try:
        table.paginate(
            paginator_class=LazyPaginator, per_page=per_page, page=request.GET.get("page") or 1
        )
    except PageNotAnInteger:
        table.paginate(paginator_class=LazyPaginator, per_page=per_page, page=1)
    except EmptyPage:
        raise Http404(_("There is no such page.")) from None
    return table


def _export_url(request: HttpRequest) -> str:
    """The CSV export of the rows the page's filters select (all pages)."""
    query = request.GET.copy()
    for name in ("page", "per_page"):
        query.pop(name, None)
    url = reverse("console:audit-export")
    return f"{url}?{query.urlencode()}" if query else url


# --- Audit trail ----------------------------------------------------------------------------


def audit_events() -> QuerySet[AuditEvent]:
    """Newest first, with the users who acted."""
    return AuditEvent.objects.select_related("actor").order_by("-occurred_at", "-pk")


@require_safe
@never_cache
@permission_required_403("reconciliation.view_auditevent")
def audit_list(request: HttpRequest) -> TemplateResponse:
    filterset = AuditEventFilter(request.GET, queryset=audit_events())
    table = _paginate(request, AuditEventTable(filterset.qs))
    context = console_context(
        request,
        title=_("Audit trail"),
        section="audit",
        filter=filterset,
        table=table,
        export_url=_export_url(request),
    )
    return TemplateResponse(request, "console/audit.html", context)


class _Echo:
    """The file csv.writer writes to: each row comes back as the text to stream."""

    def write(self, value: str) -> str:
        return value


def _cell(value: str) -> str:
    value = redact(value)
    return f"'{value}" if value.startswith(FORMULA_STARTS) else value


def _json(payload: dict) -> str:
    return json.dumps(payload or {}, cls=DjangoJSONEncoder, ensure_ascii=False, sort_keys=True)


def audit_csv_rows(events: Iterable[AuditEvent]) -> Iterator[str]:
    """The BOM (Excel reads UTF-8 only with it), the header, then one line per event, as
    recorded (payloads were redacted when the event was written)."""
    writer = csv.writer(_Echo())
    yield "\ufeff"
    yield writer.writerow(EXPORT_COLUMNS)
    for event in events:
        yield writer.writerow(
            [
                _cell(event.occurred_at.astimezone(UTC).isoformat().replace("+00:00", "Z")),
                _cell(event.actor_label),
                _cell(event.action),
                _cell(event.target_type),
                _cell(event.target_id),
                _cell(event.reason),
                _cell(_json(event.before)),
                _cell(_json(event.after)),
            ]
        )


@require_safe
@never_cache
@permission_required_403("reconciliation.view_auditevent")
def audit_export(request: HttpRequest) -> HttpResponse:
    """The audit trail page's rows, all of them, as CSV, read and sent in chunks."""
    filterset = AuditEventFilter(
        request.GET, queryset=AuditEvent.objects.order_by("-occurred_at", "-pk")
    )
    if not filterset.is_valid():
        errors = "; ".join(
            f"{name}: {' '.join(messages_)}" for name, messages_ in filterset.errors.items()
        )
        return HttpResponseBadRequest(
            _("The filters are not valid: %(errors)s") % {"errors": errors},
            content_type="text/plain; charset=utf-8",
        )
    events = filterset.qs.iterator(chunk_size=EXPORT_CHUNK_ROWS)
    response = StreamingHttpResponse(audit_csv_rows(events), content_type="text/csv; charset=utf-8")
    stamp = timezone.localtime().strftime("%Y%m%d-%H%M")
    response["Content-Disposition"] = f'attachment; filename="ap24sync-audit-{stamp}.csv"'
    return response


# --- Job runs -------------------------------------------------------------------------------


def job_runs() -> QuerySet[SyncRun]:
    """Newest first, with the people who started them."""
    return SyncRun.objects.select_related("started_by").order_by("-started_at", "-pk")


@require_safe
@never_cache
@permission_required_403("reconciliation.view_syncrun")
def run_list(request: HttpRequest) -> TemplateResponse:
    filterset = SyncRunFilter(request.GET, queryset=job_runs())
    table = _paginate(request, SyncRunTable(filterset.qs))
    context = console_context(
        request,
        title=_("Job runs"),
        section="runs",
        filter=filterset,
        table=table,
        jobs=sorted(JOBS.values(), key=lambda job: job.name),
        can_run=request.user.has_perm("reconciliation.run_job"),
    )
    return TemplateResponse(request, "console/runs.html", context)


@require_POST
@permission_required_403("reconciliation.run_job")
def run_now(request: HttpRequest) -> HttpResponse:
    name = request.POST.get("job", "").strip()
    if name not in JOBS:
        message = _("There is no job named “%(name)s”. The jobs are: %(jobs)s.") % {
            "name": Truncator(name).chars(60),
            "jobs": ", ".join(sorted(JOBS)),
        }
        return HttpResponseBadRequest(message, content_type="text/plain; charset=utf-8")
    job_run_request(name=name, actor=request.user)
    messages.success(
        request,
        _("%(job)s is queued: it starts when a worker is free, and its run appears below.")
        % {"job": name},
    )
    return redirect("console:runs")
