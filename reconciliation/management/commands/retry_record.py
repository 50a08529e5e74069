"""`manage.py retry_record <id> [--no-run]`: make one sync record due now (a failed or
needs-review one too), audited, then process what is due (the sync_retry job)."""

from __future__ import annotations

import getpass

from django.core.management.base import BaseCommand, CommandError

from reconciliation.errors import Ap24SyncError
from reconciliation.jobs import job_run
from reconciliation.management.commands.run_job import CommandProgress, outcome_line
from reconciliation.models import RunState, SyncRecord, SyncState, Trigger
from reconciliation.services.records import record_retry_now


def operator_label(command: str) -> str:
    """Who ran an operator command, for the audit trail."""
    try:
        user = getpass.getuser()
    except Exception:  # no login name in some containers
        user = "an operator"
    return f"{user} via manage.py {command}"[:150]


def process_due(command: BaseCommand, verbosity: int) -> None:
    """Run sync_retry now; a run held elsewhere is said in one line (the records are due, and
    that run or the next takes them), a failed one is a CommandError."""
    progress = CommandProgress(
        "sync_retry", stdout=command.stdout, stderr=command.stderr, verbosity=verbosity
    )
    try:
        outcome = job_run("sync_retry", trigger=Trigger.MANUAL, progress=progress)
    except Ap24SyncError as exc:
        raise CommandError(str(exc)) from exc
    if outcome.state == RunState.DEFERRED:
        command.stdout.write(
            f"sync_retry did not run now ({outcome.error}); the records are due and the next "
            "sync_retry run takes them"
        )
        return
    command.stdout.write(outcome_line(outcome))


def record_line(record: SyncRecord) -> str:
    record.refresh_from_db()
    if record.state == SyncState.SYNCED:
        where = f"Dolibarr {record.dolibarr_kind} {record.dolibarr_id}"
        return f"record {record.pk} ({record}): synced -> {where} {record.dolibarr_ref}".rstrip()
    detail = f": {record.last_error}" if record.last_error else ""
    if record.state == SyncState.PENDING and record.next_attempt_at:
        detail = f", next attempt {record.next_attempt_at:%Y-%m-%d %H:%M:%S}{detail}"
    return f"record {record.pk} ({record}): {record.state}{detail}"


class Command(BaseCommand):
    help = "Make one sync record due now (also a failed or needs-review one), then process it."

    def add_arguments(self, parser):
        parser.add_argument("record_id", type=int, help="the sync record's id (see the admin)")
        parser.add_argument(
            "--no-run", action="store_true", help="only make it due; the schedule processes it"
        )

    def handle(self, *args, **options):
        record_id = options["record_id"]
        record = SyncRecord.objects.filter(pk=record_id).defer("snapshot").first()
        if record is None:
            raise CommandError(f"no sync record has id {record_id}; see Sync records in the admin")
        was = record.state
        try:
            record, changed = record_retry_now(
                record_id=record.pk,
                actor_label=operator_label("retry_record"),
                reason="retry asked for with manage.py retry_record",
            )
        except Ap24SyncError as exc:
            raise CommandError(str(exc)) from exc
        if changed:
            self.stdout.write(f"record {record.pk} ({record}) is due now (was {was})")
        else:
            self.stdout.write(f"record {record.pk} ({record}) was already due")
        if options["no_run"]:
            return
        process_due(self, options["verbosity"])
        self.stdout.write(record_line(record))
