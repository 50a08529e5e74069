"""The console's own records (DESIGN.md §3).

State changes are methods here that check the transition and change fields in memory; only the
service functions in `reconciliation.services` call them, save, and write the audit event in the
same transaction.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models import F, Func
from django.db.models.functions import Coalesce, Lower
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from reconciliation.errors import InvalidTransition


def snapshot_hash(snapshot: Any) -> str:
    """A stable hash of a JSON-able snapshot (key order and whitespace do not matter)."""
    canonical = json.dumps(snapshot, sort_keys=True, separators=(",", ":"), cls=DjangoJSONEncoder)
    return hashlib.sha256(canonical.encode()).hexdigest()


class Source(models.TextChoices):
    STRIPE = "stripe", "Stripe"
    AIPRESS24 = "aipress24", "Aipress24"
    TALER = "taler", "GNU Taler"
    RECURRING = "recurring", _("Recurring billing")
    DOLIBARR = "dolibarr", "Dolibarr"


# --- Expressions over snapshots (used by indexes, so defined with the models) ----------------


class SnapshotText(Func):
    """A top-level key of a record's snapshot, as text. The key is written into the SQL rather
    than bound as a parameter, so that the statement matches an index built on the same
    expression (SQLite and PostgreSQL compare an indexed expression with the query's as
    written). Keys are identifiers of this module, never a visitor's text."""

    output_field = models.TextField()

    def __init__(self, key: str, **extra):
        if not re.fullmatch(r"[a-z_]+", key):
            raise ValueError(f"not a snapshot key: {key!r}")
        self.key = key
        super().__init__(F("snapshot"), **extra)

    def deconstruct(self):
        _path, _args, kwargs = super().deconstruct()
        return "reconciliation.models.SnapshotText", (self.key,), kwargs

    def as_sql(self, compiler, connection, **extra):
        sql, params = compiler.compile(self.source_expressions[0])
        return f"({sql} ->> '{self.key}')", params

    def as_sqlite(self, compiler, connection, **extra):
        sql, params = compiler.compile(self.source_expressions[0])
        return f"json_extract({sql}, '$.{self.key}')", params


def customer_email() -> Lower:
    """A customer record's e-mail, lower case: the Stripe customer's or Aipress24 user's
    `email`, the Aipress24 organisation's `billing_email`."""
    return Lower(Coalesce(SnapshotText("email"), SnapshotText("billing_email")))


def customer_name() -> Lower:
    """A customer record's name, lower case: `name` (a Stripe customer, an Aipress24
    organisation) or `last_name` (an Aipress24 user)."""
    return Lower(Coalesce(SnapshotText("name"), SnapshotText("last_name")))


# --- SyncRecord -----------------------------------------------------------------------------


class SyncState(models.TextChoices):
    PENDING = "pending", _("Pending")
    IN_PROGRESS = "in_progress", _("In progress")
    SYNCED = "synced", _("Synced")
    FAILED = "failed", _("Failed")
    NEEDS_REVIEW = "needs_review", _("Needs review")
    SKIPPED = "skipped", _("Skipped")


def _due(now) -> models.Q:
    return models.Q(state=SyncState.PENDING) & (
        models.Q(next_attempt_at__isnull=True) | models.Q(next_attempt_at__lte=now)
    )


class SyncRecordQuerySet(models.QuerySet):
    def due(self, *, now=None):
        return self.filter(_due(now or timezone.now()))

    def claimable(self, *, now, lease: timedelta):
        """Due, or left in progress past its lease by a worker that died."""
        stale = models.Q(state=SyncState.IN_PROGRESS, last_attempt_at__lt=now - lease)
        return self.filter(_due(now) | stale)

    def for_source(self, source: str):
        return self.filter(source=source)


class SyncRecord(models.Model):
    """One source object (a Stripe invoice, an Aipress24 organisation …) and where it stands in
    Dolibarr."""

    source = models.CharField(max_length=20, choices=Source.choices)
    kind = models.CharField(max_length=40, help_text=_("Object kind at the source, e.g. invoice"))
    external_id = models.CharField(max_length=255, help_text=_("Identity at the source"))
    snapshot = models.JSONField(default=dict, encoder=DjangoJSONEncoder)
    snapshot_hash = models.CharField(max_length=64)
    state = models.CharField(
        max_length=20, choices=SyncState.choices, default=SyncState.PENDING, db_index=True
    )
    dolibarr_kind = models.CharField(max_length=40, blank=True)
    dolibarr_id = models.PositiveBigIntegerField(null=True, blank=True)
    dolibarr_ref = models.CharField(max_length=128, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    synced_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = SyncRecordQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["source", "kind", "external_id"], name="syncrecord_unique_source_identity"
            ),
        ]
        indexes = [
            models.Index(fields=["state", "next_attempt_at"], name="syncrecord_due"),
            models.Index(fields=["dolibarr_kind", "dolibarr_id"], name="syncrecord_dolibarr"),
            # The claim's order within one kind, pending records only: a claim of 20 reads 20
            # index entries instead of sorting every pending record of its kinds (at 163,000
            # records a claim took 30-60 ms that way).
            models.Index(
                fields=["kind", "next_attempt_at", "id"],
                condition=models.Q(state="pending"),
                name="syncrecord_claim_order",
            ),
            models.Index(
                fields=["last_attempt_at"],
                condition=models.Q(state="in_progress"),
                name="syncrecord_in_progress",
            ),
            # The console's record list (newest first, per source) and its searches: by
            # Dolibarr ref, by the start of a customer's e-mail or name. Not partial: SQLite
            # ignores a partial index when the kinds come as parameters.
            models.Index(fields=["updated_at", "id"], name="syncrecord_updated"),
            models.Index(fields=["source", "updated_at", "id"], name="syncrecord_source_updated"),
            models.Index(fields=["state", "updated_at", "id"], name="syncrecord_state_updated"),
            models.Index(fields=["dolibarr_ref"], name="syncrecord_dolibarr_ref"),
            models.Index(customer_email(), name="syncrecord_customer_email"),
            models.Index(customer_name(), name="syncrecord_customer_name"),
        ]
        ordering = ["-updated_at"]
        permissions = [("retry_record", "Retry sync records")]

    def __str__(self) -> str:
        return f"{self.source}:{self.kind}:{self.external_id}"

    # Transitions. Each raises InvalidTransition when the current state does not allow it.
    _ALLOWED = {
        "claim": {SyncState.PENDING},
        "finish": {SyncState.IN_PROGRESS},
        "retry": {SyncState.FAILED, SyncState.NEEDS_REVIEW, SyncState.SKIPPED, SyncState.SYNCED},
    }

    def _require(self, action: str) -> None:
        if self.state not in self._ALLOWED[action]:
            raise InvalidTransition(f"cannot {action} a record that is {self.state}")

    def observe(self, snapshot: dict) -> bool:
        """Take a new source snapshot. A changed snapshot makes a settled record pending again.
        Returns whether the snapshot changed."""
        new_hash = snapshot_hash(snapshot)
        if new_hash == self.snapshot_hash:
            return False
        self.snapshot, self.snapshot_hash = snapshot, new_hash
        if self.state in {SyncState.SYNCED, SyncState.SKIPPED, SyncState.FAILED}:
            self.state = SyncState.PENDING
            self.attempts = 0
            self.next_attempt_at = None
        return True

    def claim(self, *, now) -> None:
        self._require("claim")
        self.state = SyncState.IN_PROGRESS
        self.attempts += 1
        self.last_attempt_at = now

    def mark_synced(self, *, dolibarr_kind: str, dolibarr_id: int, dolibarr_ref: str, now) -> None:
        self._require("finish")
        self.state = SyncState.SYNCED
        self.dolibarr_kind, self.dolibarr_id, self.dolibarr_ref = (
            dolibarr_kind,
            dolibarr_id,
            dolibarr_ref,
        )
        self.synced_at = now
        self.last_error = ""
        self.next_attempt_at = None

    def mark_retry_later(self, *, error: str, delay: timedelta, now) -> None:
        self._require("finish")
        self.state = SyncState.PENDING
        self.last_error = error
        self.next_attempt_at = now + delay

    def mark_failed(self, *, error: str) -> None:
        self._require("finish")
        self.state = SyncState.FAILED
        self.last_error = error
        self.next_attempt_at = None

    def mark_needs_review(self, *, reason: str) -> None:
        self._require("finish")
        self.state = SyncState.NEEDS_REVIEW
        self.last_error = reason

    def mark_skipped(self, *, reason: str) -> None:
        self._require("finish")
        self.state = SyncState.SKIPPED
        self.last_error = reason

    def mark_pending_for_retry(self) -> None:
        self._require("retry")
        self.state = SyncState.PENDING
        self.attempts = 0
        self.next_attempt_at = None


class SyncBaseline(models.Model):
    """What each side held, field by field, when the console last brought a record's Dolibarr
    object in step with its source: the base of the three-way comparison that tells a one-sided
    edit (it follows that side) from an edit on both sides (a `customer_conflict` mismatch).

    Two dicts, because after an edit made in Dolibarr only, the sides stay different on purpose:
    the source keeps its old value, Dolibarr its new one, and neither must look changed at the
    next sync."""

    record = models.OneToOneField(
        SyncRecord, primary_key=True, on_delete=models.CASCADE, related_name="baseline"
    )
    source_values = models.JSONField(default=dict, encoder=DjangoJSONEncoder)
    dolibarr_values = models.JSONField(default=dict, encoder=DjangoJSONEncoder)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"baseline of {self.record_id}"


class SourceAlias(models.Model):
    """An id in another system that stands for one of the console's records: each Stripe
    customer of an Aipress24 organisation (Dolibarr keeps one Stripe link per thirdparty, so the
    console keeps the others), the payment intent of an Aipress24 purchase. Written by the pull
    that observes the record, read by the handlers of the other system's records."""

    class Role(models.TextChoices):
        BILLING = "billing", _("Billing (linked in Dolibarr)")
        OTHER = "other", _("Other (mapped by the console)")

    system = models.CharField(max_length=20, choices=Source.choices)
    kind = models.CharField(max_length=40)
    external_id = models.CharField(max_length=255)
    record = models.ForeignKey(SyncRecord, on_delete=models.CASCADE, related_name="aliases")
    role = models.CharField(max_length=20, choices=Role.choices, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["system", "kind", "external_id"], name="sourcealias_unique_identity"
            ),
        ]
        verbose_name_plural = "source aliases"

    def __str__(self) -> str:
        return f"{self.system}:{self.kind}:{self.external_id} -> {self.record_id}"


# --- Mismatch -------------------------------------------------------------------------------


class MismatchKind(models.TextChoices):
    MISSING_IN_DOLIBARR = "missing_in_dolibarr", _("Missing in Dolibarr")
    MISSING_AT_SOURCE = "missing_at_source", _("Orphan in Dolibarr (unknown at source)")
    DUPLICATE_IN_DOLIBARR = "duplicate_in_dolibarr", _("Duplicate in Dolibarr")
    TOTAL_DIFFERS = "total_differs", _("Total differs")
    STATUS_DIFFERS = "status_differs", _("Status differs")
    PAYMENT_UNLINKED = "payment_unlinked", _("Payment not linked")
    REFUND_MISSING = "refund_missing", _("Refund missing")
    CURRENCY_UNSUPPORTED = "currency_unsupported", _("Currency not supported")
    CUSTOMER_CONFLICT = "customer_conflict", _("Customer conflict")
    PAYOUT_UNBALANCED = "payout_unbalanced", _("Payout unbalanced")
    BALANCE_DIFFERS = "balance_differs", _("Balance differs")
    SYNC_FAILED = "sync_failed", _("Sync failed")


class Severity(models.TextChoices):
    INFO = "info", _("Info")
    WARNING = "warning", _("Warning")
    CRITICAL = "critical", _("Critical")


SEVERITY_RANKS = {Severity.CRITICAL: 0, Severity.WARNING: 1, Severity.INFO: 2}


class MismatchState(models.TextChoices):
    OPEN = "open", _("Open")
    APPROVED = "approved", _("Approved")
    RESOLVED = "resolved", _("Resolved")
    IGNORED = "ignored", _("Ignored")


class MismatchQuerySet(models.QuerySet):
    def open(self):
        return self.filter(state__in=[MismatchState.OPEN, MismatchState.APPROVED])


class Mismatch(models.Model):
    """A difference between a source and Dolibarr, with what to do about it."""

    kind = models.CharField(max_length=40, choices=MismatchKind.choices, db_index=True)
    severity = models.CharField(max_length=10, choices=Severity.choices, default=Severity.WARNING)
    # Critical 0, warning 1, info 2: the queue's order, kept with the severity (`save`).
    severity_rank = models.PositiveSmallIntegerField(default=1, editable=False)
    fingerprint = models.CharField(
        max_length=64, unique=True, help_text=_("Same difference detected again = same row")
    )
    record = models.ForeignKey(
        SyncRecord, null=True, blank=True, on_delete=models.SET_NULL, related_name="mismatches"
    )
    summary = models.CharField(max_length=300)
    amount_difference = models.DecimalField(max_digits=24, decimal_places=8, null=True, blank=True)
    currency = models.CharField(max_length=3, blank=True)
    source_snapshot = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)
    dolibarr_snapshot = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)
    proposed_fix = models.CharField(max_length=60, blank=True)
    proposed_fix_params = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)
    state = models.CharField(
        max_length=10, choices=MismatchState.choices, default=MismatchState.OPEN, db_index=True
    )
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    note = models.TextField(blank=True)
    detected_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now)
    closed_at = models.DateTimeField(null=True, blank=True)

    objects = MismatchQuerySet.as_manager()

    class Meta:
        verbose_name_plural = "mismatches"
        ordering = ["-last_seen_at"]
        indexes = [
            models.Index(fields=["state", "kind"], name="mismatch_state_kind"),
            # The queue: open and approved ones, most severe first, then the latest seen.
            models.Index(
                fields=["severity_rank", "-last_seen_at", "-id"],
                condition=models.Q(state__in=["open", "approved"]),
                name="mismatch_queue",
            ),
        ]
        permissions = [("act_on_mismatch", "Approve, resolve or ignore mismatches")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()}: {self.summary}"

    def save(self, *args, **kwargs):
        self.severity_rank = SEVERITY_RANKS.get(self.severity, 1)
        update_fields = kwargs.get("update_fields")
        if update_fields is not None and "severity" in update_fields:
            kwargs["update_fields"] = {*update_fields, "severity_rank"}
        super().save(*args, **kwargs)

    def _require(self, *states: str, action: str) -> None:
        if self.state not in states:
            raise InvalidTransition(f"cannot {action} a mismatch that is {self.state}")

    def approve(self, *, by, now) -> None:
        self._require(MismatchState.OPEN, action="approve")
        if not self.proposed_fix:
            raise InvalidTransition("this mismatch has no proposed fix to approve")
        self.state, self.decided_by, self.decided_at = MismatchState.APPROVED, by, now

    def resolve(self, *, by, now, note: str = "") -> None:
        self._require(MismatchState.OPEN, MismatchState.APPROVED, action="resolve")
        self.state, self.closed_at = MismatchState.RESOLVED, now
        if by is not None:
            self.decided_by, self.decided_at = by, now
        if note:
            self.note = note

    def ignore(self, *, by, now, reason: str) -> None:
        self._require(MismatchState.OPEN, action="ignore")
        if not reason.strip():
            raise InvalidTransition("a reason is required to ignore a mismatch")
        self.state, self.decided_by, self.decided_at = MismatchState.IGNORED, by, now
        self.closed_at, self.note = now, reason.strip()

    def reopen(self, *, now) -> None:
        self._require(MismatchState.RESOLVED, action="reopen")
        self.state, self.closed_at = MismatchState.OPEN, None
        self.decided_by, self.decided_at = None, None


# --- SyncRun and Cursor ---------------------------------------------------------------------


class Trigger(models.TextChoices):
    SCHEDULE = "schedule", _("Schedule")
    MANUAL = "manual", _("Manual")
    WEBHOOK = "webhook", _("Webhook")


class RunState(models.TextChoices):
    RUNNING = "running", _("Running")
    SUCCEEDED = "succeeded", _("Succeeded")
    FAILED = "failed", _("Failed")
    DEFERRED = "deferred", _("Deferred")


class SyncRun(models.Model):
    """One run of a job, with what it saw and did."""

    job = models.CharField(max_length=60, db_index=True)
    trigger = models.CharField(max_length=10, choices=Trigger.choices, default=Trigger.SCHEDULE)
    state = models.CharField(max_length=10, choices=RunState.choices, default=RunState.RUNNING)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    counts = models.JSONField(default=dict, blank=True)
    cursor_before = models.CharField(max_length=255, blank=True)
    cursor_after = models.CharField(max_length=255, blank=True)
    error = models.TextField(blank=True)
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["job", "-started_at"], name="syncrun_job_latest")]
        permissions = [("run_job", "Run a job now")]

    def __str__(self) -> str:
        return f"{self.job} {self.started_at:%Y-%m-%d %H:%M} {self.state}"

    @property
    def duration(self) -> timedelta | None:
        return self.finished_at - self.started_at if self.finished_at else None

    def finish(
        self,
        *,
        state: str,
        now,
        counts: dict | None = None,
        cursor_after: str = "",
        error: str = "",
    ) -> None:
        if self.state != RunState.RUNNING:
            raise InvalidTransition(f"run {self.pk} already finished ({self.state})")
        if state == RunState.RUNNING:
            raise InvalidTransition("a run finishes in a final state")
        self.state, self.finished_at, self.error = state, now, error
        if counts is not None:
            self.counts = counts
        if cursor_after:
            self.cursor_after = cursor_after


class Cursor(models.Model):
    """Per stream high-water mark (a timestamp, an event id …), kept as text."""

    stream = models.CharField(max_length=80, unique=True)
    value = models.CharField(max_length=255, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.stream} = {self.value or '∅'}"


# --- RemoteCreation -------------------------------------------------------------------------


class RemoteCreation(models.Model):
    """A Dolibarr object this console creates once per `ref_ext` whoever asks for it (a
    thirdparty shared by several Stripe customers, or by Stripe and Aipress24), noted inside the
    numbered lane before its create call is sent (`services/creations.py`).

    Whoever takes the lane next for the same `ref_ext` reads the note instead of asking Dolibarr:
    with `remote_id` the object exists and is adopted; without it the earlier call's outcome is
    unknown (a timeout, a crash) and Dolibarr is asked. The Dolibarr write itself is audited."""

    kind = models.CharField(max_length=40)
    ref_ext = models.CharField(max_length=255)
    remote_id = models.PositiveBigIntegerField(null=True, blank=True)
    noted_at = models.DateTimeField(default=timezone.now)
    confirmed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["kind", "ref_ext"], name="remotecreation_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.ref_ext} -> {self.remote_id or '?'}"


# --- InboundEvent ---------------------------------------------------------------------------


class InboundEvent(models.Model):
    """A webhook or pushed event, stored whole before it is acknowledged and processed."""

    source = models.CharField(max_length=20, choices=Source.choices)
    event_id = models.CharField(max_length=255)
    event_type = models.CharField(max_length=120, blank=True)
    received_at = models.DateTimeField(default=timezone.now)
    headers = models.JSONField(default=dict, blank=True)
    body = models.TextField(blank=True)
    verified = models.BooleanField(default=False)
    processed_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["source", "event_id"], name="inboundevent_unique"),
        ]
        ordering = ["-received_at"]
        indexes = [models.Index(fields=["processed_at"], name="inboundevent_processed")]
        permissions = [("reprocess_event", "Reprocess inbound events")]

    def __str__(self) -> str:
        return f"{self.source} {self.event_type} {self.event_id}"

    def mark_processed(self, *, now) -> None:
        if self.processed_at is not None:
            raise InvalidTransition(f"event {self.event_id} was already processed")
        self.processed_at, self.error = now, ""
        self.attempts += 1

    def mark_processing_failed(self, *, error: str) -> None:
        if self.processed_at is not None:
            raise InvalidTransition(f"event {self.event_id} was already processed")
        self.error = error
        self.attempts += 1


# --- AuditEvent -----------------------------------------------------------------------------


class AppendOnlyError(Exception):
    """Raised on any attempt to change or remove an audit event."""


class AuditEventQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AppendOnlyError("audit events are append-only: they cannot be updated")

    def delete(self):
        raise AppendOnlyError("audit events are append-only: they cannot be deleted")

    def bulk_update(self, objs, fields, batch_size=None):
        raise AppendOnlyError("audit events are append-only: they cannot be updated")

    def update_or_create(self, defaults=None, create_defaults=None, **kwargs):
        raise AppendOnlyError("audit events are append-only: use audit.audit_record")


# --- Jobs, circuit breakers, incidents (issue 6) --------------------------------------------


class JobLease(models.Model):
    """Who is running a job right now, shared by every cluster on every machine: one row per job,
    taken with a conditional UPDATE (free, or its lease expired) so that two runs of a job never
    overlap. The holder renews `expires_at` while it works; a crashed holder's lease expires."""

    job = models.CharField(max_length=60, primary_key=True)
    holder = models.CharField(max_length=200, blank=True)
    run = models.ForeignKey(
        "SyncRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    acquired_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        # The app has no configuration model: the permission needs a model to hang on, and the
        # jobs (their schedules, their leases) are what configuration will mostly be about.
        permissions = [("manage_configuration", "Manage the console's configuration")]

    def __str__(self) -> str:
        return f"{self.job} held by {self.holder or 'nobody'}"


class BreakerState(models.TextChoices):
    CLOSED = "closed", _("Closed")
    OPEN = "open", _("Open")
    HALF_OPEN = "half_open", _("Half-open (probing)")


class CircuitBreaker(models.Model):
    """The circuit breaker of one remote system (dolibarr, stripe, aipress24, taler), shared by
    every worker: opens after consecutive failures, fails calls fast while open, lets one probe
    through after the cool-down."""

    system = models.CharField(max_length=30, primary_key=True)
    state = models.CharField(
        max_length=10, choices=BreakerState.choices, default=BreakerState.CLOSED
    )
    consecutive_failures = models.PositiveIntegerField(default=0)
    opened_at = models.DateTimeField(null=True, blank=True)
    # Half-open: the one probe's start; another worker may probe once this is old.
    probe_started_at = models.DateTimeField(null=True, blank=True)
    last_failure_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.system} breaker {self.state}"


class IncidentKind(models.TextChoices):
    BREAKER_OPEN = "breaker_open", _("Remote system unavailable")
    JOB_FAILING = "job_failing", _("Job failing")


class Incident(models.Model):
    """Something the admins are told about once when it starts and once when it ends: a breaker
    open too long, a job failing twice in a row. At most one open incident per kind and
    subject (the system or the job)."""

    kind = models.CharField(max_length=20, choices=IncidentKind.choices)
    subject = models.CharField(max_length=60)
    opened_at = models.DateTimeField(default=timezone.now)
    alerted_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    recovery_alerted_at = models.DateTimeField(null=True, blank=True)
    details = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)

    class Meta:
        ordering = ["-opened_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "subject"],
                condition=models.Q(resolved_at__isnull=True),
                name="incident_one_open_per_subject",
            )
        ]

    def __str__(self) -> str:
        state = "resolved" if self.resolved_at else "open"
        return f"{self.get_kind_display()} {self.subject} ({state})"


class ActorType(models.TextChoices):
    USER = "user", _("User")
    SYSTEM = "system", _("System")
    CLIENT = "client", _("API client")


class AuditEvent(models.Model):
    """Who or what did what, when, to which object, with the before and after. Written only by
    `reconciliation.audit.audit_record`."""

    occurred_at = models.DateTimeField(default=timezone.now, db_index=True)
    actor_type = models.CharField(max_length=10, choices=ActorType.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    actor_label = models.CharField(max_length=150)
    action = models.CharField(max_length=80, db_index=True)
    target_type = models.CharField(max_length=60, blank=True)
    target_id = models.CharField(max_length=255, blank=True)
    target_label = models.CharField(max_length=300, blank=True)
    before = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)
    after = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)
    reason = models.TextField(blank=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-occurred_at", "-id"]
        indexes = [models.Index(fields=["target_type", "target_id"], name="audit_target")]

    def __str__(self) -> str:
        return f"{self.occurred_at:%Y-%m-%d %H:%M:%S} {self.actor_label} {self.action}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AppendOnlyError("audit events are append-only: they cannot be updated")
        kwargs["force_insert"] = True
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("audit events are append-only: they cannot be deleted")


# --- Invoice PDFs and the Aipress24 API -------------------------------------------------------


class InvoicePdf(models.Model):
    """The last PDF downloaded from Dolibarr for one invoice or credit note (docs/invoice-pdfs.md).
    Every successful download replaces it; it is served, marked cached, only while Dolibarr
    cannot be reached (DESIGN.md §7)."""

    dolibarr_invoice_id = models.PositiveBigIntegerField(unique=True)
    invoice_ref = models.CharField(max_length=128, db_index=True)
    thirdparty_id = models.PositiveBigIntegerField()
    filename = models.CharField(max_length=160)
    content = models.BinaryField()
    sha256 = models.CharField(max_length=64)
    size = models.PositiveIntegerField()
    fetched_at = models.DateTimeField(help_text=_("When this copy was downloaded from Dolibarr"))

    class Meta:
        verbose_name = _("invoice PDF")
        verbose_name_plural = _("invoice PDFs")

    def __str__(self) -> str:
        return f"{self.filename} ({self.size} bytes, {self.fetched_at:%Y-%m-%d %H:%M})"


class ApiClientTokenQuerySet(models.QuerySet):
    def active(self):
        return self.filter(revoked_at__isnull=True)


class ApiClientToken(models.Model):
    """A token with which Aipress24 reads one customer's invoice PDFs (docs/invoice-pdfs.md).
    Only its SHA-256 is kept: the token itself is shown once, when it is created."""

    name = models.CharField(max_length=100)
    token_hash = models.CharField(max_length=64, unique=True)
    token_prefix = models.CharField(
        max_length=8, unique=True, help_text=_("The token's first characters, to tell it apart")
    )
    thirdparty_id = models.PositiveBigIntegerField(
        db_index=True, help_text=_("The Dolibarr thirdparty whose invoices it may read")
    )
    thirdparty_ref_ext = models.CharField(max_length=255, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    objects = ApiClientTokenQuerySet.as_manager()

    class Meta:
        verbose_name = _("API client token")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        state = " (revoked)" if self.revoked_at else ""
        return f"{self.token_prefix}… {self.name}{state}"
