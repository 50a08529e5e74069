import pytest

from reconciliation.errors import TransientError
from reconciliation.models import Cursor, RunState, SyncRecord, SyncRun
from reconciliation.sync.stripe_pull import OVERLAP_SECONDS, stripe_pull_all, stripe_stream_pull

pytestmark = pytest.mark.django_db


def test_a_first_pull_stores_every_stripe_invoice_once(stripe_connector, stripe_dataset):
    run = stripe_stream_pull(connector=stripe_connector, stream="invoices")
    invoices = SyncRecord.objects.filter(source="stripe", kind="invoice")
    assert invoices.count() == len(stripe_dataset.collections["invoices"])
    assert run.counts["new"] == len(stripe_dataset.collections["invoices"])
    assert set(invoices.values_list("state", flat=True)) == {"pending"}


def test_the_cursor_is_the_newest_created_seen(stripe_connector, stripe_dataset):
    stripe_stream_pull(connector=stripe_connector, stream="customers")
    newest = max(customer["created"] for customer in stripe_dataset.collections["customers"])
    assert Cursor.objects.get(stream="stripe_customers").value == str(newest)


def test_a_second_pull_reads_only_the_overlap_window_and_changes_nothing(stripe_connector):
    stripe_stream_pull(connector=stripe_connector, stream="charges")
    stored = SyncRecord.objects.count()
    run = stripe_stream_pull(connector=stripe_connector, stream="charges")
    assert SyncRecord.objects.count() == stored
    assert run.counts.get("new", 0) == 0
    assert run.counts.get("changed", 0) == 0
    assert run.counts.get("seen", 0) < stored


def test_the_window_starts_an_overlap_before_the_cursor(stripe_connector, stripe_dataset):
    stripe_stream_pull(connector=stripe_connector, stream="charges")
    cursor = int(Cursor.objects.get(stream="stripe_charges").value)
    in_window = [
        c for c in stripe_dataset.collections["charges"] if c["created"] >= cursor - OVERLAP_SECONDS
    ]
    run = stripe_stream_pull(connector=stripe_connector, stream="charges")
    assert run.counts["seen"] == len(in_window)


def test_an_unchanged_stream_costs_one_list_call(stripe_connector):
    stripe_stream_pull(connector=stripe_connector, stream="payouts")
    stripe_connector.reset_call_counts()
    stripe_stream_pull(connector=stripe_connector, stream="payouts")
    assert sum(stripe_connector.call_counts.values()) == 1


def test_a_stripe_outage_fails_the_run_and_keeps_the_cursor(stripe_connector, stripe_sandbox):
    stripe_stream_pull(connector=stripe_connector, stream="refunds")
    cursor = Cursor.objects.get(stream="stripe_refunds").value
    stripe_sandbox.faults.update(error_rate=1.0)
    with pytest.raises(TransientError):
        stripe_stream_pull(connector=stripe_connector, stream="refunds", full=True)
    failed = SyncRun.objects.filter(job="stripe_refunds").first()
    assert failed.state == RunState.FAILED
    assert Cursor.objects.get(stream="stripe_refunds").value == cursor


def test_pulling_everything_stores_each_kind(stripe_connector):
    seen = stripe_pull_all(connector=stripe_connector)
    kinds = set(SyncRecord.objects.values_list("kind", flat=True))
    assert kinds == {
        "customer",
        "invoice",
        "charge",
        "payment_intent",
        "refund",
        "balance_transaction",
        "payout",
    }
    assert sum(seen.values()) == SyncRecord.objects.count()


def test_the_pull_command_names_a_missing_variable_in_one_line(settings):
    from django.core.management import CommandError, call_command

    settings.STRIPE_API_KEY = ""
    with pytest.raises(CommandError) as failure:
        call_command("stripe_pull", "--stream", "customers")
    assert str(failure.value) == "STRIPE_API_KEY is not set; see .env.example"
    assert not SyncRun.objects.exists()


def test_the_pull_command_reports_what_each_stream_saw(settings, stripe_sandbox, capsys):
    from django.core.management import call_command

    from tests.fixtures_stripe import STRIPE_TEST_KEY

    settings.STRIPE_API_KEY = STRIPE_TEST_KEY
    settings.STRIPE_API_BASE = stripe_sandbox.base_url
    call_command("stripe_pull", "--stream", "payouts", verbosity=0)
    out = capsys.readouterr().out
    assert out.startswith("payouts: new ")
