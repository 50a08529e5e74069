"""The mismatch queue (`/console/mismatches/`) and a mismatch's page: what differs, side by
side, what the engine proposes, and the decisions a person takes about it (docs/console.md,
docs/mismatch-fixes.md). The pages read; every decision goes through
`reconciliation.reconcile.fixes`, which audits the person and applies Dolibarr writes.

The queue costs the same queries whatever its page size, like the other lists: its filters'
choices are fixed lists, and its rows come with their sync records in one query
(`select_related`, only the columns shown), read one past the page (`LazyPaginator`)."""

from __future__ import annotations

import json
from typing import Any

import django_filters
import django_tables2 as tables
from django import forms
from django.contrib import messages
from django.contrib.admin.utils import quote
from django.core.exceptions import PermissionDenied
from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.text import Truncator
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST, require_safe

from reconciliation.console.filters import DayRangeFilterSet
from reconciliation.console.tables import TIME_FORMAT, ConsoleTable
from reconciliation.console.views import _paginate, console_context
from reconciliation.errors import Ap24SyncError
from reconciliation.models import (
    AuditEvent,
    Mismatch,
    MismatchKind,
    MismatchState,
    Severity,
    Source,
)
from reconciliation.permissions import permission_required_403
from reconciliation.reconcile import fixes
from reconciliation.services.mismatches import mismatch_ignore

ACT = "reconciliation.act_on_mismatch"
RETRY = "reconciliation.retry_record"
DEFAULT_STATES = (MismatchState.OPEN, MismatchState.APPROVED)
HISTORY_EVENTS = 50
VALUE_CHARS = 200
# The columns the queue shows: never the snapshots, which can be large.
LIST_COLUMNS = (
    "kind",
    "severity",
    "severity_rank",
    "summary",
    "amount_difference",
    "currency",
    "proposed_fix",
    "state",
    "last_seen_at",
    "record__source",
    "record__kind",
    "record__external_id",
)


# --- reads --------------------------------------------------------------------------------------


def mismatches_queue() -> QuerySet[Mismatch]:
    """Most severe first, then the most recently seen, with their records."""
    return (
        Mismatch.objects.select_related("record")
        .only(*LIST_COLUMNS)
        .order_by("severity_rank", "-last_seen_at", "-pk")
    )


def record_url(record_id: int) -> str:
    """The record's page: the console's own if there is one, else the admin's."""
    try:
        return reverse("console:record", args=[record_id])
    except NoReverseMatch:
        return reverse("admin:reconciliation_syncrecord_change", args=[quote(record_id)])


def amount_text(amount, currency: str) -> str:
    if amount is None:
        return ""
    text = f"{amount:f}"
    if "." in text:
        whole, fraction = text.split(".")
        fraction = fraction.rstrip("0").ljust(2, "0")
        text = f"{whole}.{fraction}"
    return f"{text} {currency}".strip()


def _value_text(value: Any) -> str:
    if value is None:
        return "—"
    text = value if isinstance(value, str) else json.dumps(value, cls=DjangoJSONEncoder)
    return Truncator(text).chars(VALUE_CHARS)


def side_by_side(source: dict, dolibarr: dict) -> list[dict[str, Any]]:
    """The snapshots' top-level keys, one row each: the keys both sides hold first (those whose
    values differ marked), then the source's own, then Dolibarr's."""
    source, dolibarr = source or {}, dolibarr or {}
    keys = [
        *(key for key in source if key in dolibarr),
        *(key for key in source if key not in dolibarr),
        *(key for key in dolibarr if key not in source),
    ]
    return [
        {
            "key": key,
            "source": _value_text(source[key]) if key in source else "",
            "dolibarr": _value_text(dolibarr[key]) if key in dolibarr else "",
            "differs": key in source and key in dolibarr and source[key] != dolibarr[key],
        }
        for key in keys
    ]


def pretty(payload: Any) -> str:
    return json.dumps(payload or {}, cls=DjangoJSONEncoder, indent=2, sort_keys=True)


# --- filters and table --------------------------------------------------------------------------


class MismatchFilter(DayRangeFilterSet):
    """State (open and approved unless chosen), kind, severity, source, last seen between."""

    date_field = "last_seen_at"

    state = django_filters.MultipleChoiceFilter(
        label=gettext_lazy("State"), choices=MismatchState.choices
    )
    kind = django_filters.ChoiceFilter(
        label=gettext_lazy("Kind"), choices=MismatchKind.choices, empty_label=gettext_lazy("Any")
    )
    severity = django_filters.ChoiceFilter(
        label=gettext_lazy("Severity"), choices=Severity.choices, empty_label=gettext_lazy("Any")
    )
    source = django_filters.ChoiceFilter(
        label=gettext_lazy("Source"),
        field_name="record__source",
        choices=Source.choices,
        empty_label=gettext_lazy("Any"),
    )

    class Meta:
        model = Mismatch
        fields = ["state", "kind", "severity", "source", "date_from", "date_to"]

    def __init__(self, data=None, *args, **kwargs):
        if data is not None and "state" not in data:
            data = data.copy()
            data.setlist("state", list(DEFAULT_STATES))
        super().__init__(data, *args, **kwargs)


class MismatchTable(ConsoleTable):
    select = tables.Column(
        verbose_name=gettext_lazy("Select"), accessor="pk", empty_values=(), orderable=False
    )
    id = tables.Column(verbose_name="#", accessor="pk", attrs={"td": {"class": "number"}})
    severity = tables.Column(verbose_name=gettext_lazy("Severity"), empty_values=())
    kind = tables.Column(verbose_name=gettext_lazy("Kind"), accessor="get_kind_display")
    summary = tables.Column(verbose_name=gettext_lazy("Summary"), attrs={"td": {"class": "change"}})
    amount = tables.Column(
        verbose_name=gettext_lazy("Amount"),
        accessor="amount_difference",
        empty_values=(),
        attrs={"td": {"class": "number"}},
    )
    record = tables.Column(verbose_name=gettext_lazy("Record"), empty_values=())
    proposed_fix = tables.Column(
        verbose_name=gettext_lazy("Proposed fix"), attrs={"td": {"class": "code"}}
    )
    state = tables.Column(verbose_name=gettext_lazy("State"), empty_values=())
    last_seen_at = tables.DateTimeColumn(verbose_name=gettext_lazy("Last seen"), format=TIME_FORMAT)

    class Meta(ConsoleTable.Meta):
        row_attrs = {"id": lambda record: f"mismatch-{record.pk}"}

    def render_select(self, value):
        return format_html(
            "<input type='checkbox' name='selected' value='{}' form='bulk' aria-label='{}'>",
            value,
            _("Select #%(id)s") % {"id": value},
        )

    def render_id(self, value):
        return format_html("<a href='{}'>{}</a>", reverse("console:mismatch", args=[value]), value)

    def render_severity(self, record: Mismatch):
        return format_html(
            "<span class='severity severity-{}'>{}</span>",
            record.severity,
            record.get_severity_display(),
        )

    def render_summary(self, record: Mismatch):
        return format_html(
            "<a href='{}'>{}</a>",
            reverse("console:mismatch", args=[record.pk]),
            Truncator(record.summary).chars(160),
        )

    def render_amount(self, record: Mismatch):
        return amount_text(record.amount_difference, record.currency) or "—"

    def render_record(self, record: Mismatch):
        if record.record_id is None:
            return "—"
        synced = record.record
        label = f"{synced.source} {synced.kind} {synced.external_id}"
        return format_html(
            "<a href='{}'>{}</a>", record_url(record.record_id), Truncator(label).chars(60)
        )

    def render_proposed_fix(self, record: Mismatch):
        if not record.proposed_fix:
            return "—"
        automatic = fixes.is_automatic(record)
        return format_html(
            "{} <span class='quiet'>({})</span>",
            record.proposed_fix,
            _("automatic") if automatic else _("by hand"),
        )

    def render_state(self, record: Mismatch):
        return format_html(
            "<span class='state mismatch-{}'>{}</span>", record.state, record.get_state_display()
        )


# --- forms --------------------------------------------------------------------------------------


class IgnoreForm(forms.Form):
    reason = forms.CharField(
        label=gettext_lazy("Why it can be ignored"),
        widget=forms.Textarea(attrs={"rows": 3}),
        max_length=2000,
        error_messages={"required": gettext_lazy("Say why: a reason is required to ignore.")},
    )


class LinkForm(forms.Form):
    dolibarr_id = forms.IntegerField(label=gettext_lazy("Dolibarr id"), min_value=1)


class MergeForm(forms.Form):
    keep_id = forms.TypedChoiceField(
        label=gettext_lazy("Thirdparty to keep"), coerce=int, widget=forms.RadioSelect
    )

    def __init__(self, *args, ids: list[int], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["keep_id"].choices = [(value, str(value)) for value in ids]


class ChooseSideForm(forms.Form):
    """One choice per conflicting field: `side_<field>` = aipress24 or dolibarr."""

    def __init__(self, *args, names: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        for name in names:
            self.fields[f"side_{name}"] = forms.ChoiceField(
                label=name,
                choices=[("aipress24", "Aipress24"), ("dolibarr", "Dolibarr")],
                widget=forms.RadioSelect,
                error_messages={"required": gettext_lazy("Choose the side that wins.")},
            )

    def sides(self) -> dict[str, str]:
        return {key.removeprefix("side_"): value for key, value in self.cleaned_data.items()}


class BulkForm(forms.Form):
    action = forms.ChoiceField(choices=[("approve", ""), ("ignore", ""), ("retry", "")])
    selected = forms.TypedMultipleChoiceField(coerce=int, choices=[], required=True)
    reason = forms.CharField(required=False, max_length=2000)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Any id: the ones that do not exist are reported per item.
        self.fields["selected"].choices = [
            (value, value) for value in self.data.getlist("selected") if value.isdigit()
        ]


# --- the queue ----------------------------------------------------------------------------------


@require_safe
@never_cache
@permission_required_403("reconciliation.view_mismatch")
def mismatch_list(request: HttpRequest) -> TemplateResponse:
    filterset = MismatchFilter(request.GET, queryset=mismatches_queue())
    can_act = request.user.has_perm(ACT)
    table = MismatchTable(filterset.qs, exclude=() if can_act else ("select",))
    _paginate(request, table)
    context = console_context(
        request,
        title=_("Mismatches"),
        section="mismatches",
        filter=filterset,
        table=table,
        can_act=can_act,
        can_retry=can_act and request.user.has_perm(RETRY),
    )
    return TemplateResponse(request, "console/mismatch_list.html", context)


def _back(request: HttpRequest) -> HttpResponse:
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return redirect(target)
    return redirect("console:mismatches")


@require_POST
@permission_required_403(ACT)
def mismatch_bulk(request: HttpRequest) -> HttpResponse:
    """Approve, ignore (with one reason for all) or retry the selected mismatches; each one's
    outcome is its own message."""
    form = BulkForm(request.POST)
    if not form.is_valid():
        if "selected" in form.errors:
            messages.error(request, _("Select the mismatches to act on."))
            return _back(request)
        return HttpResponseBadRequest(
            _("Unknown bulk action."), content_type="text/plain; charset=utf-8"
        )
    action = form.cleaned_data["action"]
    if action == "retry" and not request.user.has_perm(RETRY):
        raise PermissionDenied
    reason = form.cleaned_data["reason"].strip()
    if action == "ignore" and not reason:
        messages.error(request, _("Nothing was ignored: a reason is required to ignore."))
        return _back(request)
    ids = list(dict.fromkeys(form.cleaned_data["selected"]))
    found = {mismatch.pk: mismatch for mismatch in Mismatch.objects.filter(pk__in=ids)}
    chosen = [found[pk] for pk in ids if pk in found]
    if action == "approve":
        results = fixes.bulk_approve(mismatches=chosen, actor=request.user)
    elif action == "ignore":
        results = fixes.bulk_ignore(mismatches=chosen, actor=request.user, reason=reason)
    else:
        results = fixes.bulk_retry(mismatches=chosen, actor=request.user)
    for pk in ids:
        if pk not in found:
            messages.error(request, _("#%(id)s: there is no such mismatch") % {"id": pk})
    for result in results:
        (messages.success if result.ok else messages.error)(request, result.message)
    return _back(request)


# --- one mismatch -------------------------------------------------------------------------------


def _history(mismatch: Mismatch) -> list[AuditEvent]:
    return list(
        AuditEvent.objects.filter(target_type="mismatch", target_id=str(mismatch.pk))
        .select_related("actor")
        .order_by("-occurred_at", "-pk")[:HISTORY_EVENTS]
    )


def _conflict_rows(mismatch: Mismatch, data=None) -> list[dict[str, Any]]:
    rows = []
    for name, values in sorted(fixes.conflict_fields(mismatch).items()):
        rows.append(
            {
                "name": name,
                "last_synced": _value_text(values.get("last_synced")),
                "aipress24": _value_text(values.get("aipress24")),
                "dolibarr": _value_text(values.get("dolibarr")),
                "chosen": (data or {}).get(f"side_{name}", ""),
            }
        )
    return rows


def _detail(request: HttpRequest, mismatch: Mismatch, *, forms_: dict | None = None, status=200):
    user = request.user
    can_act = user.has_perm(ACT)
    decidable = mismatch.state in DEFAULT_STATES
    history = _history(mismatch)
    last_fix = next((event for event in history if event.action.startswith("mismatch.fix_")), None)
    record = mismatch.record
    forms_ = forms_ or {}
    duplicates = fixes.duplicate_thirdparties(mismatch)
    conflict = _conflict_rows(mismatch, forms_.get("choose_side_data"))
    context = console_context(
        request,
        title=_("Mismatch #%(id)s") % {"id": mismatch.pk},
        section="mismatches",
        mismatch=mismatch,
        record=record,
        record_link=record_url(record.pk) if record is not None else "",
        amount=amount_text(mismatch.amount_difference, mismatch.currency),
        conflict=conflict,
        differences=side_by_side(mismatch.source_snapshot, mismatch.dolibarr_snapshot),
        source_json=pretty(mismatch.source_snapshot),
        dolibarr_json=pretty(mismatch.dolibarr_snapshot),
        fix_automatic=fixes.is_automatic(mismatch),
        fix_label=fixes.fix_label(mismatch.proposed_fix),
        fix_manual=fixes.manual_instructions(mismatch.proposed_fix),
        fix_params=pretty(mismatch.proposed_fix_params),
        last_fix=last_fix,
        history=history,
        audit_url=f"{reverse('console:audit')}?target_type=mismatch&target_id={mismatch.pk}",
        can_act=can_act,
        can_retry=can_act and user.has_perm(RETRY) and record is not None,
        can_approve=can_act
        and mismatch.state == MismatchState.OPEN
        and fixes.is_automatic(mismatch),
        can_apply_again=can_act
        and mismatch.state == MismatchState.APPROVED
        and fixes.is_automatic(mismatch),
        can_choose_side=can_act and decidable and bool(conflict) and record is not None,
        can_link=can_act
        and decidable
        and record is not None
        and mismatch.kind in (MismatchKind.MISSING_IN_DOLIBARR, MismatchKind.DUPLICATE_IN_DOLIBARR),
        link_kind=fixes.link_kind(record),
        can_merge=can_act and decidable and len(duplicates) > 1,
        duplicates=duplicates,
        can_ignore=can_act and mismatch.state == MismatchState.OPEN,
        ignore_form=forms_.get("ignore") or IgnoreForm(),
        link_form=forms_.get("link") or LinkForm(),
        merge_form=forms_.get("merge") or MergeForm(ids=duplicates),
        choose_side_errors=forms_.get("choose_side_errors"),
    )
    return TemplateResponse(request, "console/mismatch_detail.html", context, status=status)


def _mismatch(pk: int) -> Mismatch:
    return get_object_or_404(Mismatch.objects.select_related("record", "decided_by"), pk=pk)


@require_safe
@never_cache
@permission_required_403("reconciliation.view_mismatch")
def mismatch_detail(request: HttpRequest, pk: int) -> TemplateResponse:
    return _detail(request, _mismatch(pk))


ACTIONS = ("approve", "apply_again", "retry", "ignore", "choose_side", "link", "merge")


@require_POST
@permission_required_403(ACT)
def mismatch_act(request: HttpRequest, pk: int) -> HttpResponse:
    """One decision about one mismatch (the `action` field), then back to its page, which
    shows the outcome; a form that is not valid is its page again, with the error."""
    action = request.POST.get("action", "")
    if action not in ACTIONS:
        return HttpResponseBadRequest(
            _("Unknown action. The actions are: %(actions)s.") % {"actions": ", ".join(ACTIONS)},
            content_type="text/plain; charset=utf-8",
        )
    if action == "retry" and not request.user.has_perm(RETRY):
        raise PermissionDenied
    mismatch = _mismatch(pk)
    actor = request.user
    try:
        if action == "approve":
            fixes.fix_approve(mismatch=mismatch, actor=actor)
            messages.success(
                request,
                _(
                    "#%(id)s approved, fix queued: it is applied in the background, and its "
                    "outcome shows here."
                )
                % {"id": mismatch.pk},
            )
        elif action == "apply_again":
            fixes.fix_apply_again(mismatch=mismatch, actor=actor)
            messages.success(request, _("#%(id)s: the fix is queued again.") % {"id": mismatch.pk})
        elif action == "retry":
            messages.success(request, fixes.mismatch_retry_record(mismatch=mismatch, actor=actor))
        elif action == "ignore":
            form = IgnoreForm(request.POST)
            if not form.is_valid():
                return _detail(request, mismatch, forms_={"ignore": form})
            mismatch_ignore(mismatch=mismatch, actor=actor, reason=form.cleaned_data["reason"])
            messages.success(request, _("#%(id)s ignored.") % {"id": mismatch.pk})
        else:
            result = _resolve(request, mismatch, action)
            if isinstance(result, HttpResponse):
                return result
            if result["applied"]:
                messages.success(request, result["outcome"])
            else:
                messages.error(request, _("Not done: %(error)s") % {"error": result["outcome"]})
    except Ap24SyncError as exc:
        messages.error(request, _("Not done: %(error)s") % {"error": exc})
    return redirect("console:mismatch", pk=mismatch.pk)


def _resolve(request: HttpRequest, mismatch: Mismatch, action: str) -> dict | HttpResponse:
    """The resolutions by hand: Dolibarr is written now, while the person waits."""
    actor = request.user
    if action == "choose_side":
        names = sorted(fixes.conflict_fields(mismatch))
        form = ChooseSideForm(request.POST, names=names)
        if not names or not form.is_valid():
            return _detail(
                request,
                mismatch,
                forms_={
                    "choose_side_data": request.POST,
                    "choose_side_errors": _("Choose the side that wins for every field."),
                },
            )
        return fixes.resolve_choose_side(mismatch=mismatch, side=form.sides(), actor=actor)
    if action == "link":
        form = LinkForm(request.POST)
        if not form.is_valid():
            return _detail(request, mismatch, forms_={"link": form})
        return fixes.resolve_link_existing(
            mismatch=mismatch, dolibarr_id=form.cleaned_data["dolibarr_id"], actor=actor
        )
    form = MergeForm(request.POST, ids=fixes.duplicate_thirdparties(mismatch))
    if not form.is_valid():
        return _detail(request, mismatch, forms_={"merge": form})
    return fixes.resolve_merge(mismatch=mismatch, keep_id=form.cleaned_data["keep_id"], actor=actor)
