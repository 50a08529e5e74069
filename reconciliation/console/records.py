"""The console's sync records: the list (`/console/records/`) and one record's page
(`/console/records/<id>/`), with its retry for operators (docs/console.md, "Sync records").

The list is read newest first (`updated_at`) one page at a time (`LazyPaginator`, no count),
in a constant number of queries: the session and the user, their permissions and role, the
(source, kind) pairs (walked along the identity index: they give the kind filter its choices
and the search its index ranges), and the page's rows without their snapshots.

The search box stays on indexes whatever the table's size:

- an external id and a Dolibarr ref match exactly or as a prefix, written as index ranges
  (`>= q AND < q⁺`, plus the prefix itself for safety): `LIKE 'q%'` reads no index on SQLite
  (its LIKE ignores case) nor on PostgreSQL under a `C.UTF-8` collation. The external id's
  ranges are one per (source, kind) pair, along the identity index (source, kind,
  external_id), so that no index of its own is needed;
- a customer's e-mail or name is matched from its start, case aside, among the records of
  customer kinds only (Stripe customers, Aipress24 organisations and users): the e-mail is the
  snapshot's `email` or else `billing_email`, the name its `name` or else `last_name`. Both are
  expressions (`customer_email`, `customer_name`) that an index on the same expression serves
  (docs/console.md gives the two indexes); without those indexes, only the customer records'
  snapshots are read, never the invoices', payments' and the rest, most of the table.

The record's page fetches its Dolibarr object live, with short timeouts and no retry, and
falls back to what the record knows when Dolibarr does not answer: it never fails because
Dolibarr does."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import django_filters
import django_tables2 as tables
from django.conf import settings
from django.contrib import messages
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections, router
from django.db.models import Q, QuerySet
from django.db.models.lookups import GreaterThanOrEqual, LessThan, StartsWith
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.html import escape, format_html
from django.utils.safestring import mark_safe
from django.utils.text import Truncator
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST, require_safe

from reconciliation.console.filters import DayRangeFilterSet
from reconciliation.console.tables import (
    TIME_FORMAT,
    AuditEventTable,
    ConsoleTable,
    first_line,
)
from reconciliation.console.views import _paginate, console_context
from reconciliation.errors import Ap24SyncError, InvalidTransition
from reconciliation.logs import redact
from reconciliation.models import (
    AuditEvent,
    Mismatch,
    Source,
    SourceAlias,
    SyncRecord,
    SyncState,
    customer_email,
    customer_name,
)
from reconciliation.permissions import permission_required_403
from reconciliation.services.records import record_retry_now

# The records of these kinds are customers: their snapshots hold the names and e-mails the
# search box looks for (a Stripe customer, an Aipress24 organisation or user).
CUSTOMER_KINDS = ("customer", "organisation", "user")
# More (source, kind) pairs than this and the table is not what this console knows.
SOURCE_KINDS_LIMIT = 200
SEARCH_MAX_CHARS = 200
LIST_FIELDS = (
    "id",
    "source",
    "kind",
    "external_id",
    "state",
    "dolibarr_kind",
    "dolibarr_id",
    "dolibarr_ref",
    "attempts",
    "last_error",
    "next_attempt_at",
    "updated_at",
)
AUDIT_HISTORY_ROWS = 50
RECORD_MISMATCHES_ROWS = 20
# The record's page waits this long for Dolibarr, once: a person is waiting.
DOLIBARR_CONNECT_TIMEOUT = 2.0
DOLIBARR_READ_TIMEOUT = 5.0


# --- Reads ----------------------------------------------------------------------------------


def record_source_kinds(*, limit: int = SOURCE_KINDS_LIMIT) -> list[tuple[str, str]]:
    """Every (source, kind) pair that has records, in order. One query that walks the identity
    index (source, kind, external_id) from one kind to the next within each known source (one
    index probe per pair), where `SELECT DISTINCT` would read every record."""
    connection = connections[router.db_for_read(SyncRecord)]
    quote = connection.ops.quote_name
    table = quote(SyncRecord._meta.db_table)
    source, kind = quote("source"), quote("kind")
    sources = list(Source.values)
    anchor = " UNION ALL ".join(["SELECT %s AS source"] * len(sources))
    # Names come from the model's metadata, never from a request; values are parameters.
    sql = (
        f"WITH RECURSIVE walk(source, kind, n) AS ("  # noqa: S608
        f" SELECT known.source, (SELECT {kind} FROM {table} WHERE {source} = known.source"
        f" ORDER BY {kind} LIMIT 1), 1 FROM ({anchor}) AS known"
        f" UNION ALL"
        f" SELECT walk.source, (SELECT {kind} FROM {table} WHERE {source} = walk.source"
        f" AND {kind} > walk.kind ORDER BY {kind} LIMIT 1), walk.n + 1"
        f" FROM walk WHERE walk.kind IS NOT NULL AND walk.n < %s"
        f") SELECT source, kind FROM walk WHERE kind IS NOT NULL ORDER BY source, kind"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*sources, limit])
        return [(row[0], row[1]) for row in cursor.fetchall()]


def _after_prefix(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with `prefix`, in code-point
    order; None when there is none to write."""
    following = ord(prefix[-1]) + 1
    if following > 0x10FFFF:
        return None
    if 0xD800 <= following <= 0xDFFF:  # surrogates cannot be encoded: skip past them
        following = 0xE000
    return prefix[:-1] + chr(following)


def prefix_match(field_name: str, prefix: str) -> Q:
    """`field_name` starts with `prefix` (or equals it), as an index range."""
    condition = Q(**{f"{field_name}__gte": prefix, f"{field_name}__startswith": prefix})
    upper = _after_prefix(prefix)
    return condition & Q(**{f"{field_name}__lt": upper}) if upper else condition


def _expression_prefix(expression, prefix: str) -> Q:
    condition = Q(GreaterThanOrEqual(expression, prefix)) & Q(StartsWith(expression, prefix))
    upper = _after_prefix(prefix)
    return condition & Q(LessThan(expression, upper)) if upper else condition


def records_search(query: str, *, source_kinds: list[tuple[str, str]]) -> Q:
    """The records `query` names, each way along an index: by external id or Dolibarr ref
    (exact or its start), or by the start of a customer's e-mail or name (case aside), among
    customer records only."""
    external_id = prefix_match("external_id", query)
    condition = prefix_match("dolibarr_ref", query)
    for source, kind in source_kinds:
        condition |= Q(source=source, kind=kind) & external_id
    if any(kind in CUSTOMER_KINDS for _source, kind in source_kinds):
        lowered = query.lower()
        # Two branches rather than one with a nested OR: SQLite plans each branch of a
        # top-level OR on its own index, and no deeper.
        for expression in (customer_email(), customer_name()):
            condition |= Q(kind__in=CUSTOMER_KINDS) & _expression_prefix(expression, lowered)
    return condition


def records_listed() -> QuerySet[SyncRecord]:
    """Newest change first, without the snapshots (the list shows none)."""
    return SyncRecord.objects.only(*LIST_FIELDS).order_by("-updated_at", "-pk")


# --- The list -------------------------------------------------------------------------------


class SyncRecordFilter(DayRangeFilterSet):
    date_field = "updated_at"

    q = django_filters.CharFilter(
        label=gettext_lazy("Search"),
        method="filter_search",
        help_text=gettext_lazy(
            "An external id or a Dolibarr ref, or a customer's e-mail or name: exact or its start"
        ),
    )
    source = django_filters.ChoiceFilter(
        label=gettext_lazy("Source"), choices=Source.choices, empty_label=gettext_lazy("Any")
    )
    kind = django_filters.ChoiceFilter(
        label=gettext_lazy("Kind"), choices=[], empty_label=gettext_lazy("Any")
    )
    state = django_filters.ChoiceFilter(
        label=gettext_lazy("State"), choices=SyncState.choices, empty_label=gettext_lazy("Any")
    )

    class Meta:
        model = SyncRecord
        fields = ["q", "source", "kind", "state", "date_from", "date_to"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.source_kinds = record_source_kinds()
        kinds = sorted({kind for _source, kind in self.source_kinds})
        self.filters["kind"].extra["choices"] = [(kind, kind) for kind in kinds]
        self.filters["date_from"].label = gettext_lazy("Updated from")
        self.filters["date_to"].label = gettext_lazy("Updated to")

    def filter_search(self, queryset, name, value):
        value = value.strip()[:SEARCH_MAX_CHARS]
        if not value:
            return queryset
        return queryset.filter(records_search(value, source_kinds=self.source_kinds))


def state_badge(record: SyncRecord) -> str:
    return format_html(
        "<span class='state state-{}'>{}</span>", record.state, record.get_state_display()
    )


def dolibarr_summary(record: SyncRecord) -> str:
    """`invoice FA2403-0012 #45`, or "—" for a record with no Dolibarr object yet."""
    if not record.dolibarr_id and not record.dolibarr_ref:
        return "—"
    parts = [record.dolibarr_kind or "?"]
    if record.dolibarr_ref:
        parts.append(record.dolibarr_ref)
    if record.dolibarr_id:
        parts.append(f"#{record.dolibarr_id}")
    return " ".join(parts)


class SyncRecordTable(ConsoleTable):
    source = tables.Column(verbose_name=gettext_lazy("Source"), accessor="get_source_display")
    kind = tables.Column(verbose_name=gettext_lazy("Kind"), attrs={"td": {"class": "code"}})
    external_id = tables.Column(
        verbose_name=gettext_lazy("External id"), attrs={"td": {"class": "code"}}
    )
    state = tables.Column(verbose_name=gettext_lazy("State"), empty_values=())
    dolibarr = tables.Column(
        verbose_name=gettext_lazy("Dolibarr"),
        accessor="pk",
        empty_values=(),
        attrs={"td": {"class": "code"}},
    )
    attempts = tables.Column(
        verbose_name=gettext_lazy("Attempts"), attrs={"td": {"class": "number"}}
    )
    last_error = tables.Column(
        verbose_name=gettext_lazy("Last error"), attrs={"td": {"class": "error"}}
    )
    updated_at = tables.DateTimeColumn(verbose_name=gettext_lazy("Updated"), format=TIME_FORMAT)

    class Meta(ConsoleTable.Meta):
        row_attrs = {"id": lambda record: f"record-{record.pk}"}

    def render_external_id(self, record: SyncRecord):
        return format_html(
            "<a href='{}'>{}</a>",
            reverse("console:record", args=[record.pk]),
            Truncator(record.external_id).chars(60),
        )

    def render_state(self, record: SyncRecord):
        badge = state_badge(record)
        if record.state == SyncState.PENDING and record.next_attempt_at:
            return format_html(
                "{}<br><span class='quiet'>{}</span>",
                badge,
                _("next %(when)s") % {"when": _local(record.next_attempt_at)},
            )
        return badge

    def render_dolibarr(self, record: SyncRecord):
        return dolibarr_summary(record)

    def render_last_error(self, value: str):
        return format_html("<span class='bad'>{}</span>", first_line(value, limit=120))


def _local(moment) -> str:
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S")


@require_safe
@never_cache
@permission_required_403("reconciliation.view_syncrecord")
def record_list(request: HttpRequest) -> TemplateResponse:
    filterset = SyncRecordFilter(request.GET, queryset=records_listed())
    table = _paginate(request, SyncRecordTable(filterset.qs))
    context = console_context(
        request,
        title=_("Sync records"),
        section="records",
        filter=filterset,
        table=table,
    )
    return TemplateResponse(request, "console/record_list.html", context)


# --- Links to the other systems -------------------------------------------------------------

# Dolibarr's own pages, by the record's `dolibarr_kind`.
DOLIBARR_PAGES = {
    "thirdparty": "/societe/card.php?socid={id}",
    "invoice": "/compta/facture/card.php?facid={id}",
    "credit_note": "/compta/facture/card.php?facid={id}",
    "order": "/commande/card.php?id={id}",
    "payment": "/compta/paiement/card.php?id={id}",
    "bank_line": "/compta/bank/line.php?rowid={id}",
    "shipment": "/expedition/card.php?id={id}",
}
# Stripe's dashboard pages, by the id's prefix.
STRIPE_PAGES = {
    "cus_": "customers",
    "in_": "invoices",
    "pi_": "payments",
    "ch_": "payments",
    "py_": "payments",
    "re_": "refunds",
    "po_": "payouts",
    "sub_": "subscriptions",
}
STRIPE_DASHBOARD = "https://dashboard.stripe.com"
STRIPE_TEST_KEYS = ("sk_test_", "rk_test_", "pk_test_")


def dolibarr_ui_url(*, dolibarr_kind: str, dolibarr_id: int | None) -> str:
    """The object's page in Dolibarr's web UI (`DOLIBARR_UI_URL`), or "" when unknown."""
    root = (settings.DOLIBARR_UI_URL or "").rstrip("/")
    page = DOLIBARR_PAGES.get(dolibarr_kind)
    if not root or not page or not dolibarr_id:
        return ""
    return root + page.format(id=int(dolibarr_id))


def stripe_dashboard_url(object_id: str) -> str:
    """The object's page in Stripe's dashboard (test mode when the configured key is a test
    key), or "" for an id whose page is not known."""
    prefix = next((p for p in STRIPE_PAGES if object_id.startswith(p)), None)
    if prefix is None or not re.fullmatch(r"[A-Za-z0-9_]+", object_id):
        return ""
    test = (settings.STRIPE_API_KEY or "").startswith(STRIPE_TEST_KEYS)
    return f"{STRIPE_DASHBOARD}{'/test' if test else ''}/{STRIPE_PAGES[prefix]}/{object_id}"


@dataclass(frozen=True)
class OutsideLink:
    system: str
    object_id: str
    url: str
    note: str = ""


def record_links(record: SyncRecord, aliases: list[SourceAlias]) -> list[OutsideLink]:
    """Where the record's objects are shown outside the console: Dolibarr's page, and Stripe's
    for the record itself and every Stripe id that stands for it."""
    links = []
    if record.dolibarr_id:
        links.append(
            OutsideLink(
                system="Dolibarr",
                object_id=f"{record.dolibarr_kind} {record.dolibarr_id}",
                url=dolibarr_ui_url(
                    dolibarr_kind=record.dolibarr_kind, dolibarr_id=record.dolibarr_id
                ),
                note="" if settings.DOLIBARR_UI_URL else _("set DOLIBARR_UI_URL to link to it"),
            )
        )
    stripe_ids = [record.external_id] if record.source == Source.STRIPE else []
    stripe_ids += [a.external_id for a in aliases if a.system == Source.STRIPE]
    for object_id in dict.fromkeys(stripe_ids):
        links.append(OutsideLink("Stripe", object_id, stripe_dashboard_url(object_id)))
    if record.source == Source.AIPRESS24:
        links.append(
            OutsideLink(
                "Aipress24",
                f"{record.kind} {record.external_id}",
                "",
                _("Aipress24 has no page to link to"),
            )
        )
    return links


# --- The Dolibarr side ----------------------------------------------------------------------


@dataclass(frozen=True)
class DolibarrSide:
    """What Dolibarr holds for a record, read now: `objects` (as Dolibarr answered, shown as
    JSON), or `error` saying why not; `note` when there is nothing to read."""

    objects: list[str] = field(default_factory=list)
    error: str = ""
    note: str = ""


def _dolibarr_client():
    from reconciliation.config import setting_required
    from reconciliation.connectors.dolibarr import SYSTEM, DolibarrClient
    from reconciliation.resilience import breaker_for

    return DolibarrClient(
        base_url=setting_required("DOLIBARR_URL"),
        api_key=setting_required("DOLIBARR_API_KEY"),
        connect_timeout=DOLIBARR_CONNECT_TIMEOUT,
        read_timeout=DOLIBARR_READ_TIMEOUT,
        max_retries=0,
        breaker=breaker_for(SYSTEM),
    )


def _read_dolibarr(client, record: SyncRecord) -> list[dict[str, Any]] | None:
    kind, object_id = record.dolibarr_kind, record.dolibarr_id
    if kind == "thirdparty":
        return [client.get_thirdparty(thirdparty_id=object_id).raw]
    if kind in ("invoice", "credit_note"):
        return [client.get_invoice(invoice_id=object_id).raw]
    if kind == "order":
        return [client.get_order(order_id=object_id).raw]
    if kind == "bank_line":
        return [client.get_bank_line(line_id=object_id).raw]
    if kind == "payment":
        payments = client.find_payments(ref_ext=record.external_id)
        mine = [p for p in payments if p.id == object_id]
        return [p.raw for p in (mine or payments)]
    return None


def dolibarr_side(record: SyncRecord) -> DolibarrSide:
    """The record's Dolibarr object as Dolibarr answers now. Any failure (not configured,
    refused, timed out, the breaker open, not found) is the answer's `error`, never an
    exception: the page shows the record's own values instead."""
    if not record.dolibarr_id:
        return DolibarrSide(note=_("Not in Dolibarr yet: the record has no Dolibarr id."))
    try:
        client = _dolibarr_client()
    except Ap24SyncError as exc:
        return DolibarrSide(error=str(exc))
    try:
        objects = _read_dolibarr(client, record)
    except Ap24SyncError as exc:
        return DolibarrSide(error=redact(str(exc)))
    except Exception as exc:  # an answer the client could not read must not break the page
        return DolibarrSide(error=redact(f"{type(exc).__name__}: {exc}"))
    finally:
        client.close()
    if objects is None:
        return DolibarrSide(
            note=_("The console does not read Dolibarr objects of kind “%(kind)s”.")
            % {"kind": record.dolibarr_kind}
        )
    if not objects:
        return DolibarrSide(error=_("Dolibarr has no such object any more."))
    return DolibarrSide(objects=[pretty_json(_without_empty(raw)) for raw in objects])


def _without_empty(raw: dict[str, Any]) -> dict[str, Any]:
    """Dolibarr answers every column, most of them empty: the ones with a value are shown."""
    return {key: value for key, value in raw.items() if value not in (None, "", [], {})}


# Snapshot keys that hold money, highlighted in the JSON.
MONEY_KEY = re.compile(
    r"(amount|total|price|subtotal|fee|net|tax|balance|paid|remaining|_ht|_ttc|_tva)",
    re.IGNORECASE,
)
_JSON_KEY = re.compile(r'^\s*"((?:[^"\\]|\\.)*)":')


def pretty_json(payload: Any) -> str:
    """Indented JSON, keys sorted, secrets redacted, the lines of money keys marked."""
    text = redact(
        json.dumps(payload, cls=DjangoJSONEncoder, indent=2, sort_keys=True, ensure_ascii=False)
    )
    lines = []
    for line in text.splitlines():
        key = _JSON_KEY.match(line)
        if key and MONEY_KEY.search(key.group(1)):
            lines.append(f"<mark>{escape(line)}</mark>")
        else:
            lines.append(escape(line))
    return mark_safe("\n".join(lines))  # noqa: S308 - every line escaped above


# --- The record's page ----------------------------------------------------------------------


def mismatch_url(mismatch_id: int) -> str:
    """The mismatch's page in the console, or its admin page until the console has one."""
    for name in ("console:mismatch", "admin:reconciliation_mismatch_change"):
        try:
            return reverse(name, args=[mismatch_id])
        except NoReverseMatch:
            continue
    return ""


def record_audit_history(record: SyncRecord) -> QuerySet[AuditEvent]:
    """The record's audit events, newest first (the `audit_target` index), at most 50."""
    return (
        AuditEvent.objects.filter(target_type="syncrecord", target_id=str(record.pk))
        .select_related("actor")
        .order_by("-occurred_at", "-pk")[:AUDIT_HISTORY_ROWS]
    )


class RecordHistoryTable(AuditEventTable):
    class Meta(AuditEventTable.Meta):
        exclude = ("target",)
        empty_text = gettext_lazy("No audit event names this record.")


@require_safe
@never_cache
@permission_required_403("reconciliation.view_syncrecord")
def record_detail(request: HttpRequest, pk: int) -> TemplateResponse:
    record = get_object_or_404(SyncRecord, pk=pk)
    aliases = list(record.aliases.order_by("system", "kind", "external_id"))
    mismatches = list(
        Mismatch.objects.filter(record=record)
        .only("id", "kind", "severity", "state", "summary", "amount_difference", "currency")
        .order_by("-last_seen_at")[:RECORD_MISMATCHES_ROWS]
    )
    for mismatch in mismatches:
        mismatch.console_url = mismatch_url(mismatch.pk)
    history = RecordHistoryTable(list(record_audit_history(record)))
    context = console_context(
        request,
        title=_("Record %(record)s") % {"record": record},
        section="records",
        record=record,
        state_badge=state_badge(record),
        dolibarr_summary=dolibarr_summary(record),
        snapshot_json=pretty_json(record.snapshot),
        dolibarr=dolibarr_side(record),
        known_values=_known_values(record),
        links=record_links(record, aliases),
        aliases=aliases,
        mismatches=mismatches,
        history=history,
        can_retry=request.user.has_perm("reconciliation.retry_record")
        and record.state != SyncState.IN_PROGRESS,
        records_url=reverse("console:records"),
    )
    return TemplateResponse(request, "console/record_detail.html", context)


def _known_values(record: SyncRecord) -> list[tuple[str, str]]:
    """What the record itself knows of its Dolibarr object, shown when Dolibarr cannot say."""
    return [
        (_("Kind"), record.dolibarr_kind or "—"),
        (_("Id"), str(record.dolibarr_id) if record.dolibarr_id else "—"),
        (_("Ref"), record.dolibarr_ref or "—"),
        (_("Synced"), _local(record.synced_at) if record.synced_at else "—"),
    ]


@require_POST
@permission_required_403("reconciliation.retry_record")
def record_retry(request: HttpRequest, pk: int) -> HttpResponse:
    """Make the record due now (`record_retry_now`), as the person, and say what happened."""
    record = get_object_or_404(SyncRecord.objects.only("id"), pk=pk)
    reason = request.POST.get("reason", "").strip()[:500] or _("Retry from the console")
    try:
        record, changed = record_retry_now(record_id=record.pk, actor=request.user, reason=reason)
    except InvalidTransition as exc:
        messages.error(request, str(exc))
    else:
        if changed:
            messages.success(
                request,
                _("%(record)s is pending: the next sync_retry run tries it again.")
                % {"record": record},
            )
        else:
            messages.info(
                request, _("%(record)s was already due: nothing changed.") % {"record": record}
            )
    return redirect("console:record", pk=pk)


def records_url(**query: str) -> str:
    """The record list filtered by `query` (source, state …)."""
    url = reverse("console:records")
    return f"{url}?{urlencode(query)}" if query else url
