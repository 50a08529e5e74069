import threading
from datetime import timedelta

import pytest
from django.db import connection

from reconciliation.errors import InvalidTransition
from reconciliation.models import AuditEvent, SyncRecord, SyncState
from reconciliation.services.records import (
    Observed,
    record_claim,
    record_mark_failed,
    record_mark_needs_review,
    record_mark_retry_later,
    record_mark_synced,
    record_observe,
    record_retry,
    records_claim_due,
    records_observe,
)

pytestmark = pytest.mark.django_db


def _observe(snapshot=None, external_id="in_1"):
    record, _ = record_observe(
        source="stripe", kind="invoice", external_id=external_id, snapshot=snapshot or {"a": 1}
    )
    return record


def test_a_new_source_object_becomes_a_pending_record():
    record = _observe()
    assert record.state == SyncState.PENDING
    assert AuditEvent.objects.filter(action="record.observed", target_id=str(record.pk)).exists()


def test_observing_the_same_snapshot_twice_keeps_one_record_and_writes_nothing_new():
    _observe({"a": 1, "b": 2})
    audit_count = AuditEvent.objects.count()
    _, outcome = record_observe(
        source="stripe", kind="invoice", external_id="in_1", snapshot={"b": 2, "a": 1}
    )
    assert outcome == Observed.UNCHANGED
    assert SyncRecord.objects.count() == 1
    assert AuditEvent.objects.count() == audit_count


def test_a_changed_snapshot_makes_a_synced_record_pending_again():
    record = _observe({"status": "open"})
    record_claim(record_id=record.pk)
    record_mark_synced(record_id=record.pk, dolibarr_kind="invoice", dolibarr_id=7)
    record = _observe({"status": "paid"})
    assert record.state == SyncState.PENDING
    assert record.dolibarr_id == 7


def test_synced_keeps_the_dolibarr_id_and_audits_the_change():
    record = _observe()
    record_claim(record_id=record.pk)
    record = record_mark_synced(
        record_id=record.pk, dolibarr_kind="invoice", dolibarr_id=42, dolibarr_ref="FA2611-0001"
    )
    event = AuditEvent.objects.get(action="record.synced")
    assert (record.state, record.dolibarr_id) == (SyncState.SYNCED, 42)
    assert event.before["state"] == SyncState.IN_PROGRESS
    assert event.after["dolibarr_id"] == 42


def test_a_record_cannot_be_claimed_twice():
    record = _observe()
    record_claim(record_id=record.pk)
    with pytest.raises(InvalidTransition):
        record_claim(record_id=record.pk)


def test_retry_later_sets_the_next_attempt_and_keeps_the_error():
    record = _observe()
    record_claim(record_id=record.pk)
    record = record_mark_retry_later(
        record_id=record.pk, error="Dolibarr 503", delay=timedelta(minutes=5)
    )
    assert record.state == SyncState.PENDING
    assert record.last_error == "Dolibarr 503"
    assert not SyncRecord.objects.due().filter(pk=record.pk).exists()


def test_a_failed_record_is_retried_by_a_person_and_the_actor_is_audited(django_user_model):
    operator = django_user_model.objects.create_user("olga")
    record = _observe()
    record_claim(record_id=record.pk)
    record_mark_failed(record_id=record.pk, error="400 Bad Request: name field missing")
    record = record_retry(record=record, actor=operator, reason="fixed the name")
    event = AuditEvent.objects.get(action="record.retry_requested")
    assert record.state == SyncState.PENDING
    assert (event.actor, event.actor_label, event.reason) == (operator, "olga", "fixed the name")


def test_a_pending_record_cannot_be_sent_to_review_without_being_claimed():
    record = _observe()
    with pytest.raises(InvalidTransition):
        record_mark_needs_review(record_id=record.pk, reason="two candidates")
    assert SyncRecord.objects.get(pk=record.pk).state == SyncState.PENDING


def test_records_are_unique_on_source_kind_and_external_id():
    from django.db import IntegrityError

    _observe()
    with pytest.raises(IntegrityError):
        SyncRecord.objects.create(
            source="stripe", kind="invoice", external_id="in_1", snapshot_hash="x"
        )


def test_claiming_due_records_takes_each_once():
    for n in range(3):
        _observe(external_id=f"in_{n}")
    first = records_claim_due(limit=2)
    second = records_claim_due(limit=2)
    assert len(first) == 2
    assert len(second) == 1
    assert {r.pk for r in first}.isdisjoint({r.pk for r in second})
    assert records_claim_due(limit=2) == []


def test_a_record_held_past_its_lease_is_claimed_again():
    _observe()
    (record,) = records_claim_due()
    assert records_claim_due(lease=timedelta(minutes=15)) == []
    SyncRecord.objects.filter(pk=record.pk).update(
        last_attempt_at=record.last_attempt_at - timedelta(hours=1)
    )
    (again,) = records_claim_due(lease=timedelta(minutes=15))
    assert (again.pk, again.attempts) == (record.pk, 2)
    assert AuditEvent.objects.filter(action="record.lease_expired").count() == 1


def test_a_record_that_syncs_after_review_closes_its_mismatch(django_user_model):
    from reconciliation.models import Mismatch, MismatchState
    from reconciliation.services.records import record_mark_needs_review_with_mismatch
    from reconciliation.sync.base import MismatchSpec

    operator = django_user_model.objects.create_user("olga")
    record = _observe()
    record_claim(record_id=record.pk)
    record_mark_needs_review_with_mismatch(
        record_id=record.pk,
        reason="customer unknown",
        mismatch=MismatchSpec(
            kind="missing_in_dolibarr", fingerprint_parts=("in_1",), summary="customer unknown"
        ),
    )
    record_retry(record=SyncRecord.objects.get(pk=record.pk), actor=operator)
    record_claim(record_id=record.pk)
    record_mark_synced(record_id=record.pk, dolibarr_kind="invoice", dolibarr_id=9)
    mismatch = Mismatch.objects.get(record=record)
    assert mismatch.state == MismatchState.RESOLVED
    assert AuditEvent.objects.filter(
        action="mismatch.closed_automatically", target_id=str(mismatch.pk)
    ).exists()


# -- a page of objects at once (`records_observe`) ---------------------------------------------


def _observe_page(objects):
    return records_observe(source="stripe", kind="invoice", objects=objects)


def test_a_page_of_new_objects_becomes_pending_records_each_audited():
    outcomes = _observe_page([(f"in_{n}", {"n": n}) for n in range(3)])
    assert outcomes == [Observed.NEW] * 3
    records = SyncRecord.objects.order_by("external_id")
    assert [(r.external_id, r.state, r.snapshot) for r in records] == [
        (f"in_{n}", SyncState.PENDING, {"n": n}) for n in range(3)
    ]
    observed = AuditEvent.objects.filter(action="record.observed")
    assert sorted(observed.values_list("target_id", flat=True)) == sorted(
        str(r.pk) for r in records
    )


def test_a_page_says_new_changed_or_unchanged_for_each_object_in_order():
    settled = _observe({"status": "open"}, external_id="in_settled")
    record_claim(record_id=settled.pk)
    record_mark_synced(record_id=settled.pk, dolibarr_kind="invoice", dolibarr_id=7)
    _observe({"same": True}, external_id="in_same")

    outcomes = _observe_page(
        [("in_new", {"a": 1}), ("in_settled", {"status": "paid"}), ("in_same", {"same": True})]
    )

    assert outcomes == [Observed.NEW, Observed.CHANGED, Observed.UNCHANGED]
    settled.refresh_from_db()
    assert (settled.state, settled.snapshot, settled.dolibarr_id) == (
        SyncState.PENDING,
        {"status": "paid"},
        7,
    )
    assert AuditEvent.objects.filter(
        action="record.source_changed", target_id=str(settled.pk)
    ).exists()


def test_a_page_of_a_hundred_objects_takes_a_handful_of_queries(django_assert_max_num_queries):
    _observe_page([(f"in_{n}", {"n": n}) for n in range(50)])
    page = [(f"in_{n}", {"n": n, "v": 2}) for n in range(50)]
    page += [(f"in_{n}", {"n": n}) for n in range(50, 100)]
    # Savepoint, select, update of the changed, insert of the new, insert of the audits.
    with django_assert_max_num_queries(8):
        outcomes = _observe_page(page)
    assert outcomes == [Observed.CHANGED] * 50 + [Observed.NEW] * 50


@pytest.mark.django_db(transaction=True)
def test_a_page_another_writer_created_a_record_of_is_stored_object_by_object(monkeypatch):
    if connection.vendor != "postgresql":
        pytest.skip("SQLite takes one writer at a time; CI runs this on PostgreSQL")
    bulk_create = SyncRecord.objects.bulk_create

    def webhook() -> None:
        try:
            _observe({"from": "webhook"}, external_id="in_2")
        finally:
            connection.close()

    def raced(records, *args, **kwargs):
        # Another writer (a webhook, on its own connection) creates one of the records after
        # the page looked for them.
        monkeypatch.setattr(SyncRecord.objects, "bulk_create", bulk_create)
        writer = threading.Thread(target=webhook)
        writer.start()
        writer.join()
        return bulk_create(records, *args, **kwargs)

    monkeypatch.setattr(SyncRecord.objects, "bulk_create", raced)

    outcomes = _observe_page([("in_1", {"a": 1}), ("in_2", {"from": "pull"})])

    assert outcomes == [Observed.NEW, Observed.CHANGED]
    assert SyncRecord.objects.get(external_id="in_2").snapshot == {"from": "pull"}
    assert SyncRecord.objects.count() == 2
