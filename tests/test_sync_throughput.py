"""What keeps a backfill fast without giving up a guarantee: audit events of a lane hold are
written after the lane is released (and still written when the hold fails), the fee lines of a
claimed batch are looked up in one call, and charges and payment intents that point at a
payment their invoice wrote in the same run ask Dolibarr nothing."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from reconciliation.models import AuditEvent, SyncRecord, SyncState
from reconciliation.services.records import record_observe
from reconciliation.sync.engine import side_workers, sync_due
from reconciliation.sync.remote import AuditAfterHold, AuditedDolibarr
from reconciliation.sync.stripe_pull import stripe_pull_all
from tests.sync_support import context_for, sync_until_settled

pytestmark = pytest.mark.django_db


class _Client:
    def __init__(self) -> None:
        self.next_id = 0

    def create_thirdparty(self, **kwargs):
        self.next_id += 1
        return self.next_id


class _CountingLane:
    """Records how many audit events existed when each hold ended."""

    def __init__(self) -> None:
        self.events_at_release: list[int] = []

    @contextmanager
    def hold(self) -> Iterator[None]:
        try:
            yield
        finally:
            self.events_at_release.append(AuditEvent.objects.count())


def test_audit_events_of_a_hold_are_written_once_the_lane_is_released():
    dolibarr = AuditedDolibarr(_Client())
    inner = _CountingLane()
    lane = AuditAfterHold(inner, dolibarr)

    with lane.hold():
        dolibarr.create_thirdparty(name="A")
        dolibarr.create_thirdparty(name="B")
        assert AuditEvent.objects.count() == 0

    assert inner.events_at_release == [0]
    actions = list(AuditEvent.objects.order_by("id").values_list("action", "target_id"))
    assert actions == [("dolibarr.thirdparty_created", "1"), ("dolibarr.thirdparty_created", "2")]


def test_a_hold_that_fails_after_a_write_still_audits_the_write():
    dolibarr = AuditedDolibarr(_Client())
    lane = AuditAfterHold(_CountingLane(), dolibarr)

    def write_then_fail() -> None:
        with lane.hold():
            dolibarr.create_thirdparty(name="A")
            raise RuntimeError("the next call failed")

    with pytest.raises(RuntimeError):
        write_then_fail()

    assert AuditEvent.objects.filter(action="dolibarr.thirdparty_created").count() == 1
    dolibarr.create_thirdparty(name="B")  # outside any hold: written at once
    assert AuditEvent.objects.filter(action="dolibarr.thirdparty_created").count() == 2


def test_the_engine_looks_the_fee_lines_of_a_batch_up_in_one_call(
    dolibarr_client, dolibarr_sandbox, stripe_connector, stripe_dataset
):
    fees = [
        t
        for t in stripe_dataset.collections["balance_transactions"]
        if t["type"] == "charge" and t["currency"] == "eur" and t["fee"] > 0
    ][:6]
    for txn in fees:
        record_observe(
            source="stripe", kind="balance_transaction", external_id=txn["id"], snapshot=txn
        )
    context = context_for(dolibarr_client, stripe_connector, url=dolibarr_sandbox.api_url)
    dolibarr_client.reset_call_counts()

    counts = sync_due(context=context, kinds=["balance_transaction"])

    assert counts["synced"] == len(fees)
    assert dolibarr_client.call_counts["GET /bankaccounts/{id}/lines"] == 1
    assert dolibarr_client.call_counts["POST /bankaccounts/{id}/lines"] == len(fees)


def test_pointers_to_payments_written_in_the_run_are_not_looked_up(
    dolibarr_client, dolibarr_sandbox, stripe_connector, monkeypatch
):
    stripe_pull_all(connector=stripe_connector)
    context = context_for(dolibarr_client, stripe_connector, url=dolibarr_sandbox.api_url)
    sync_due(context=context, kinds=["customer"])
    asked: list[str] = []
    find = dolibarr_client.find_payments_by_ref_exts

    def recording(*, ref_exts):
        asked.extend(ref_exts)
        return find(ref_exts=ref_exts)

    monkeypatch.setattr(dolibarr_client, "find_payments_by_ref_exts", recording)
    sync_due(context=context, kinds=["invoice", "charge", "payment_intent"])

    pointers = SyncRecord.objects.filter(
        kind__in=["charge", "payment_intent"], state=SyncState.SYNCED
    )
    assert pointers.exists()
    # A payment its invoice wrote or found is asked once, for the invoice: the pointers take
    # what the invoice noted (only payments no synced invoice holds are asked by them).
    paid = set(pointers.filter(kind="payment_intent").values_list("external_id", flat=True))
    assert paid
    assert all(asked.count(reference) == 1 for reference in paid)
    sync_until_settled(context)


@pytest.mark.parametrize(("workers", "side"), [(2, 1), (4, 1), (8, 2)])
def test_a_quarter_of_the_workers_run_the_independent_kinds_alongside(workers, side):
    assert side_workers(workers) == side
