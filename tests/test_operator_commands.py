"""The operator commands: run a job now (or only plan it), retry one record, re-verify a date
range. Against the sandbox Dolibarr and Stripe over HTTP; each error is one line."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from reconciliation.models import AuditEvent, JobLease, SyncRecord, SyncRun, SyncState
from reconciliation.services.records import record_claim, record_mark_failed, record_retry

pytestmark = pytest.mark.django_db


def _call(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


@pytest.fixture
def synced(remotes):
    """Every Stripe object pulled and written to the sandbox Dolibarr."""
    _call("run_job", "stripe_sync")
    return remotes


def _created(record: SyncRecord) -> datetime:
    return datetime.fromtimestamp(record.snapshot["created"], tz=UTC)


# --- run_job --------------------------------------------------------------------------------


def test_run_job_runs_the_job_now_as_one_manual_run(remotes, dolibarr_client):
    output = _call("run_job", "stripe_sync")

    run = SyncRun.objects.get(job="stripe_sync")
    assert "pulled invoices: " in output
    assert re.match(
        rf"stripe_sync succeeded \(run {run.pk}\): seen \d+, new \d+, processed \d+, synced \d+",
        output.splitlines()[-1],
    )
    assert (run.state, run.trigger) == ("succeeded", "manual")
    assert run.counts["synced"] > 0
    assert dolibarr_client.list_invoices(limit=1).total > 0


def test_run_job_full_rescan_is_one_run_of_its_own(remotes):
    _call("run_job", "stripe_full_rescan")

    assert SyncRun.objects.get(job="stripe_full_rescan").state == "succeeded"
    assert not SyncRun.objects.filter(job="stripe_sync").exists()
    assert SyncRun.objects.filter(job="stripe_invoices").count() == 1


def test_run_job_dry_run_prints_the_plan_and_writes_nothing_to_dolibarr(remotes, dolibarr_client):
    output = _call("run_job", "stripe_sync", "--dry-run")

    assert "plan: " in output
    assert "  create invoice in_" in output
    assert output.splitlines()[-1].endswith("; nothing was written")
    assert dolibarr_client.list_invoices(limit=1).total == 0
    assert not SyncRun.objects.filter(job="stripe_sync").exists()
    assert not SyncRecord.objects.exclude(state=SyncState.PENDING).exists()


def test_run_job_dry_run_of_the_retries_plans_the_due_records(synced):
    record = SyncRecord.objects.filter(kind="invoice", state=SyncState.SYNCED).first()
    call_command("retry_record", str(record.pk), "--no-run", stdout=StringIO())

    output = _call("run_job", "sync_retry", "--dry-run")

    assert output.splitlines()[-1] == "dry run: synced 1; nothing was written"
    record.refresh_from_db()
    assert record.state == SyncState.PENDING


def test_run_job_dry_run_of_a_job_without_one_says_so(remotes):
    with pytest.raises(CommandError) as error:
        _call("run_job", "stripe_events", "--dry-run")
    assert str(error.value).startswith(
        "stripe_events cannot dry-run: it writes nothing to Dolibarr itself"
    )


def test_run_job_of_an_unknown_job_is_one_line():
    with pytest.raises(CommandError) as error:
        _call("run_job", "stripe_synk")
    assert str(error.value) == (
        "unknown job 'stripe_synk'; one of stripe_events, stripe_sync, stripe_full_rescan, "
        "aipress24_sync, aipress24_full_pass, reconcile, reconcile_full, sync_retry, "
        "breakers_check"
    )


def test_run_job_full_on_a_job_without_a_full_rescan_is_refused():
    with pytest.raises(CommandError) as error:
        _call("run_job", "sync_retry", "--full")
    assert str(error.value) == (
        "sync_retry takes no --full (jobs that do: stripe_sync, aipress24_sync, reconcile)"
    )


def test_run_job_held_elsewhere_says_who_holds_it_and_since_when(remotes):
    JobLease.objects.create(
        job="sync_retry",
        holder="worker-2 pid 4242 thread MainThread #a1b2c3",
        acquired_at=datetime(2026, 12, 2, 6, 45, tzinfo=UTC),
        expires_at=timezone.now() + timedelta(minutes=10),
    )
    with pytest.raises(CommandError) as error:
        _call("run_job", "sync_retry")
    run = SyncRun.objects.get(job="sync_retry")
    assert str(error.value) == (
        f"sync_retry did not run (run {run.pk}): already running on worker-2 pid 4242 thread "
        "MainThread #a1b2c3 since 2026-12-02 06:45:00 UTC"
    )
    assert run.state == "deferred"


def test_run_job_that_fails_says_what_to_fix_in_one_line(settings):
    settings.STRIPE_API_KEY = ""
    with pytest.raises(CommandError) as error:
        _call("run_job", "stripe_events")
    run = SyncRun.objects.get(job="stripe_events")
    assert str(error.value) == (
        f"stripe_events failed (run {run.pk}): STRIPE_API_KEY is not set; see .env.example"
    )
    assert run.error == "STRIPE_API_KEY is not set; see .env.example"


# --- retry_record ---------------------------------------------------------------------------


def test_retry_record_makes_a_failed_record_due_and_processes_it(synced):
    record = SyncRecord.objects.filter(kind="customer", state=SyncState.SYNCED).first()
    record_mark_failed(record_id=record_claim_synced(record).pk, error="refused for the test")

    output = _call("retry_record", str(record.pk))

    record.refresh_from_db()
    lines = output.splitlines()
    assert lines[0] == f"record {record.pk} ({record}) is due now (was failed)"
    assert lines[-1].startswith(f"record {record.pk} ({record}): synced -> Dolibarr thirdparty ")
    assert record.state == SyncState.SYNCED
    event = AuditEvent.objects.filter(action="record.retry_requested").latest("id")
    assert event.target_id == str(record.pk)
    assert event.actor_label.endswith(" via manage.py retry_record")
    assert event.before["state"] == "failed"


def record_claim_synced(record: SyncRecord) -> SyncRecord:
    """A synced record taken for another attempt, as a worker would (so that it can fail)."""
    record_retry(record=record, actor=None)
    return record_claim(record_id=record.pk)


def test_retry_record_brings_a_record_waiting_for_its_next_attempt_forward(remotes):
    record = SyncRecord.objects.create(
        source="stripe",
        kind="invoice",
        external_id="in_waiting",
        snapshot={"id": "in_waiting"},
        snapshot_hash="x",
        next_attempt_at=timezone.now() + timedelta(hours=3),
    )

    output = _call("retry_record", str(record.pk), "--no-run")

    record.refresh_from_db()
    assert output == f"record {record.pk} ({record}) is due now (was pending)\n"
    assert record.next_attempt_at is None
    assert SyncRecord.objects.due().filter(pk=record.pk).exists()


def test_retry_record_of_an_unknown_id_is_one_line():
    with pytest.raises(CommandError) as error:
        _call("retry_record", "987654")
    assert str(error.value) == "no sync record has id 987654; see Sync records in the admin"


def test_retry_record_of_a_record_being_worked_on_is_refused():
    record = SyncRecord.objects.create(
        source="stripe", kind="invoice", external_id="in_busy", snapshot={}, snapshot_hash="x"
    )
    record_claim(record_id=record.pk)
    with pytest.raises(CommandError) as error:
        _call("retry_record", str(record.pk))
    assert str(error.value).startswith(
        f"record {record.pk} (stripe:invoice:in_busy) is being worked on (attempt started "
    )
    assert not AuditEvent.objects.filter(action="record.retry_requested").exists()


# --- reverify ---------------------------------------------------------------------------------


FEBRUARY = ("--since", "2026-02-01", "--until", "2026-02-28")


def _february(kind: str) -> tuple[set[int], set[int]]:
    """Synced records of `kind` created in February 2026, and the others."""
    inside, outside = set(), set()
    for record in SyncRecord.objects.filter(kind=kind, state=SyncState.SYNCED):
        (inside if _created(record).month == 2 else outside).add(record.pk)
    return inside, outside


def test_reverify_makes_the_synced_records_created_in_the_range_due_again(synced):
    inside, outside = _february("invoice")
    assert inside
    assert outside

    output = _call(
        "reverify",
        "--since",
        "2026-02-01",
        "--until",
        "2026-02-28",
        "--kind",
        "invoice",
        "--no-run",
    )

    assert output == (
        f"{len(inside)} synced stripe invoice records created 2026-02-01 to 2026-02-28 are due "
        "again\n"
    )
    due = set(SyncRecord.objects.due().values_list("pk", flat=True))
    assert due == inside
    event = AuditEvent.objects.get(action="records.reverify_requested")
    assert event.after["count"] == len(inside)
    assert set(event.after["records"]) == inside


def test_reverify_then_checks_them_against_dolibarr_without_duplicates(synced, dolibarr_client):
    inside, _ = _february("invoice")
    invoices = dolibarr_client.list_invoices(limit=1).total

    output = _call(
        "reverify", "--since", "2026-02-01", "--until", "2026-02-28", "--kind", "invoice"
    )

    assert "sync_retry succeeded (run " in output
    assert SyncRecord.objects.filter(pk__in=inside, state=SyncState.SYNCED).count() == len(inside)
    assert dolibarr_client.list_invoices(limit=1).total == invoices


def test_reverify_with_nothing_in_the_range_says_so(synced):
    output = _call("reverify", "--since", "2030-01-01", "--until", "2030-01-31")
    assert output == (
        "nothing to re-verify: no synced stripe records created 2030-01-01 to 2030-01-31\n"
    )


def test_reverify_with_a_bad_date_is_one_line():
    with pytest.raises(CommandError) as error:
        _call("reverify", "--since", "01/02/2026")
    assert str(error.value) == "--since takes a date as YYYY-MM-DD, not '01/02/2026'"


def test_reverify_with_the_range_the_wrong_way_round_is_one_line():
    with pytest.raises(CommandError) as error:
        _call("reverify", "--since", "2026-03-01", "--until", "2026-02-01")
    assert str(error.value) == "--until 2026-02-01 comes before --since 2026-03-01"


def test_reverify_of_an_unknown_kind_is_one_line():
    with pytest.raises(CommandError) as error:
        _call("reverify", "--since", "2026-02-01", "--kind", "invoices")
    assert str(error.value).startswith("stripe has no kind 'invoices'; one of customer, invoice")
