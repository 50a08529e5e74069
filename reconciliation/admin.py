"""Admin registration of the core records. The admin shows and filters; it never writes state
directly: records, mismatches, runs and events change only through `reconciliation.services`, and
audit events are read-only. Circuit breakers, incidents and job leases are written only by
the jobs and the breakers themselves; the admin shows them, and the status page
(`/admin/status/`, linked from the admin index) sums them up.

Actions are gated on the finance permissions (docs/permissions.md), and each passes the
signed-in user to its service, which audits them as the actor."""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.utils import timezone
from django.utils.text import Truncator
from django.utils.translation import gettext_lazy as _

from reconciliation.errors import Ap24SyncError, InvalidTransition
from reconciliation.models import (
    AuditEvent,
    CircuitBreaker,
    Cursor,
    InboundEvent,
    Incident,
    JobLease,
    Mismatch,
    Source,
    SyncRecord,
    SyncRun,
)
from reconciliation.services.records import record_retry
from reconciliation.sync.aipress24_events import aipress24_events_reprocess
from reconciliation.sync.stripe_events import Result, stripe_events_reprocess

# The admin index links to the status page (reconciliation.health.status_page).
admin.site.index_template = "reconciliation/admin_index.html"


class ForbiddenActionsMixin:
    """Answer 403 to a POST of an action the user may not run.

    The admin leaves such an action out of the page, but answers a crafted POST of it with the
    change list again (200, "No action selected." at most), which hides a probe; here it is
    refused outright."""

    def changelist_view(self, request, extra_context=None):
        if request.method == "POST":
            posted = set(request.POST.getlist("action"))
            if posted & (self._declared_action_names() - set(self.get_actions(request))):
                raise PermissionDenied
        return super().changelist_view(request, extra_context)

    def _declared_action_names(self) -> set[str]:
        declared = (self.get_action(action) for action in self.actions or [])
        names = {action[1] for action in declared if action}
        return names | {name for name, _func in self.admin_site.actions}


class ReadOnlyAdmin(ForbiddenActionsMixin, admin.ModelAdmin):
    """Viewable, never edited through a form: changes go through the services."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(SyncRecord)
class SyncRecordAdmin(ReadOnlyAdmin):
    list_display = (
        "external_id",
        "source",
        "kind",
        "state",
        "dolibarr_kind",
        "dolibarr_ref",
        "attempts",
        "next_attempt_at",
        "updated_at",
    )
    list_filter = ("source", "kind", "state")
    search_fields = ("external_id", "dolibarr_ref")
    date_hierarchy = "updated_at"
    list_select_related = False
    actions = ["retry_selected"]
    readonly_fields = [f.name for f in SyncRecord._meta.fields]

    def has_retry_permission(self, request):
        return request.user.has_perm("reconciliation.retry_record")

    @admin.action(description=_("Retry selected records"), permissions=["retry"])
    def retry_selected(self, request, queryset):
        done, refused = 0, []
        for record in queryset:
            try:
                record_retry(record=record, actor=request.user, reason="Retry from the admin")
                done += 1
            except InvalidTransition as exc:
                refused.append(f"{record}: {exc}")
        if done:
            self.message_user(request, _("%d record(s) queued for retry.") % done)
        for line in refused:
            self.message_user(request, line, level=messages.WARNING)


@admin.register(Mismatch)
class MismatchAdmin(ReadOnlyAdmin):
    list_display = (
        "summary",
        "kind",
        "severity",
        "amount_difference",
        "currency",
        "state",
        "proposed_fix",
        "last_seen_at",
    )
    list_filter = ("state", "kind", "severity")
    search_fields = ("summary", "record__external_id")
    readonly_fields = [f.name for f in Mismatch._meta.fields]


@admin.register(SyncRun)
class SyncRunAdmin(ReadOnlyAdmin):
    list_display = ("job", "trigger", "state", "started_at", "finished_at", "counts", "error")
    list_filter = ("job", "state", "trigger")
    readonly_fields = [f.name for f in SyncRun._meta.fields]


@admin.register(Cursor)
class CursorAdmin(ReadOnlyAdmin):
    list_display = ("stream", "value", "updated_at")
    readonly_fields = ("stream", "value", "updated_at")


@admin.register(InboundEvent)
class InboundEventAdmin(ReadOnlyAdmin):
    list_display = (
        "event_id",
        "source",
        "event_type",
        "verified",
        "received_at",
        "processed_at",
        "error",
    )
    list_filter = ("source", "verified", "event_type")
    search_fields = ("event_id",)
    readonly_fields = [f.name for f in InboundEvent._meta.fields]
    actions = ["reprocess_selected"]
    reprocess_limit = 100  # each event is re-fetched from Stripe while the page waits

    def has_reprocess_permission(self, request):
        return request.user.has_perm("reconciliation.reprocess_event")

    @admin.action(description=_("Reprocess selected events"), permissions=["reprocess"])
    def reprocess_selected(self, request, queryset):
        if queryset.count() > self.reprocess_limit:
            self.message_user(
                request,
                _("Select at most %d events to reprocess at once.") % self.reprocess_limit,
                level=messages.ERROR,
            )
            return
        events = queryset.order_by("pk")
        try:
            # Each source's events go to its own processing.
            outcomes = stripe_events_reprocess(
                events=events.exclude(source=Source.AIPRESS24), actor=request.user
            ) + aipress24_events_reprocess(
                events=events.filter(source=Source.AIPRESS24), actor=request.user
            )
        except Ap24SyncError as exc:
            self.message_user(request, str(exc), level=messages.ERROR)
            return
        levels = {
            Result.PROCESSED: messages.SUCCESS,
            Result.FAILED: messages.ERROR,
            Result.ALREADY_PROCESSED: messages.INFO,
            Result.NOT_STRIPE: messages.WARNING,
        }
        for outcome in outcomes:
            self.message_user(request, outcome.message, level=levels[outcome.result])


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = (
        "occurred_at",
        "actor_label",
        "action",
        "target_type",
        "target_id",
        "target_label",
    )
    list_filter = ("action", "actor_type", "target_type")
    search_fields = ("actor_label", "target_id", "target_label", "reason")
    date_hierarchy = "occurred_at"
    readonly_fields = [f.name for f in AuditEvent._meta.fields]


@admin.register(CircuitBreaker)
class CircuitBreakerAdmin(ReadOnlyAdmin):
    list_display = (
        "system",
        "state",
        "consecutive_failures",
        "opened_at",
        "last_success_at",
        "last_failure_at",
        "last_error_short",
    )
    list_filter = ("state",)
    readonly_fields = [f.name for f in CircuitBreaker._meta.fields]

    @admin.display(description=_("last error"))
    def last_error_short(self, breaker):
        return Truncator(breaker.last_error).chars(120)


class IncidentStatusFilter(admin.SimpleListFilter):
    title = _("status")
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [("open", _("Open")), ("resolved", _("Resolved"))]

    def queryset(self, request, queryset):
        if self.value() == "open":
            return queryset.filter(resolved_at__isnull=True)
        if self.value() == "resolved":
            return queryset.filter(resolved_at__isnull=False)
        return queryset


@admin.register(Incident)
class IncidentAdmin(ReadOnlyAdmin):
    list_display = (
        "kind",
        "subject",
        "opened_at",
        "alerted_at",
        "resolved_at",
        "recovery_alerted_at",
    )
    list_filter = (IncidentStatusFilter, "kind", "subject")
    search_fields = ("subject",)
    date_hierarchy = "opened_at"
    readonly_fields = [f.name for f in Incident._meta.fields]


@admin.register(JobLease)
class JobLeaseAdmin(ReadOnlyAdmin):
    list_display = ("job", "held", "holder", "run", "acquired_at", "expires_at")
    list_select_related = ("run",)
    readonly_fields = [f.name for f in JobLease._meta.fields]

    @admin.display(description=_("held"), boolean=True)
    def held(self, lease):
        return bool(lease.holder and lease.expires_at and lease.expires_at > timezone.now())
