"""`manage.py stripe_sync`: pull then write, a dry run that writes nothing, one-line errors."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from reconciliation.models import AuditEvent, SyncRecord, SyncRun, SyncState
from reconciliation.tasks import stripe_sync_task

pytestmark = pytest.mark.django_db


def _run(*args):
    out = StringIO()
    call_command("stripe_sync", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_stripe_sync_pulls_then_writes_and_says_what_it_did(remotes, dolibarr_client):
    output = _run()

    assert "pulled invoices:" in output
    assert "processed " in output
    assert "synced " in output
    assert dolibarr_client.list_invoices(limit=1).total > 0
    assert SyncRun.objects.filter(job="stripe_sync", state="succeeded").exists()


def test_a_dry_run_writes_nothing_to_dolibarr_and_prints_the_plan(remotes, dolibarr_client):
    output = _run("--dry-run")

    assert "plan: " in output
    assert "  create invoice in_" in output
    assert "  create payment pi_" in output
    assert "  validate invoice new#" in output
    assert "flagged currency_unsupported" in output
    assert "nothing was written" in output
    assert dolibarr_client.list_invoices(limit=1).total == 0
    assert dolibarr_client.find_thirdparties_by_ref_exts(ref_exts=["x"]) == {"x": []}
    assert not SyncRecord.objects.exclude(state=SyncState.PENDING).exists()
    assert not AuditEvent.objects.filter(action__startswith="dolibarr.").exists()


def test_one_stream_only_processes_its_own_records(remotes, dolibarr_client):
    output = _run("--stream", "customers")

    assert "pulled customers:" in output
    assert "pulled invoices:" not in output
    assert set(SyncRecord.objects.values_list("kind", flat=True)) == {"customer"}
    assert not SyncRecord.objects.exclude(state=SyncState.SYNCED).exists()


def test_a_missing_stripe_bank_account_is_one_clear_line(remotes):
    remotes.DOLIBARR_STRIPE_BANK_ACCOUNT = "NOPE"
    with pytest.raises(CommandError) as error:
        _run("--stream", "customers")
    assert str(error.value) == (
        "Dolibarr has no bank account with ref 'NOPE' (DOLIBARR_STRIPE_BANK_ACCOUNT): create "
        "it in Dolibarr or set the variable to an existing ref"
    )


def test_since_takes_a_day(remotes):
    with pytest.raises(CommandError, match="YYYY-MM-DD"):
        _run("--since", "21/11/2026")


def test_the_scheduled_task_pulls_and_writes(remotes):
    result = stripe_sync_task(streams=["customers"])
    assert result["processed"]["synced"] == result["pulled"]["customers"]["seen"]


def test_stripe_sync_refuses_to_run_beside_a_scheduled_run_holding_its_lease(remotes):
    from reconciliation.jobs import holder_id, lease_take

    lease_take(job="stripe_sync", holder=holder_id(), seconds=600)
    with pytest.raises(CommandError, match=r"stripe_sync is already running on .* since"):
        _run()
    assert not SyncRun.objects.filter(job="stripe_sync").exists()


def test_stripe_sync_releases_its_lease_when_it_ends(remotes):
    from reconciliation.models import JobLease

    _run("--stream", "customers")
    assert JobLease.objects.get(job="stripe_sync").holder == ""
