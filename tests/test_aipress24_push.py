"""The Aipress24 event push (`POST /webhooks/aipress24`), through the Django test client with
raw bodies signed as docs/aipress24-push.md tells Aipress24 to sign them. The endpoint's clock is
frozen at NOW; queued processing runs inline (django-q2's sync mode) once the test's
transaction "commits" (`django_capture_on_commit_callbacks`)."""

from __future__ import annotations

import json
import logging
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import DatabaseError, connection
from django.test import Client
from django_q.conf import Conf

from reconciliation.models import AuditEvent, InboundEvent, SyncRecord, SyncState
from reconciliation.services.records import (
    record_claim,
    record_mark_needs_review,
    record_mark_retry_later,
    record_mark_synced,
    record_observe,
)
from reconciliation.sync.aipress24_events import (
    EVENT_KINDS,
    NO_RECORD_YET,
    aipress24_event_process,
    aipress24_events_reprocess,
)
from reconciliation.sync.stripe_events import Result
from reconciliation.tasks import aipress24_event_process_task
from reconciliation.webhooks import InvalidPushSignature, push_signature, verify_push_signature

pytestmark = pytest.mark.django_db

URL = "/webhooks/aipress24/"
SECRET = "ap24push_test_secret"
NOW = 1782984605  # 2026-07-02T09:30:05Z
ORGANISATION_ID = "7413705309148774401"  # a snowflake id, above 2^53


@pytest.fixture(autouse=True)
def push_settings(settings):
    settings.AIPRESS24_PUSH_SECRET = SECRET
    settings.AIPRESS24_PUSH_TOLERANCE_SECONDS = 300
    settings.AIPRESS24_PUSH_MAX_BYTES = 65536
    return settings


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch):
    monkeypatch.setattr("reconciliation.webhooks._unix_now", lambda: NOW)


@pytest.fixture
def tasks_inline(monkeypatch):
    """django-q2 runs a queued task in the calling process (Q_CLUSTER["sync"])."""
    monkeypatch.setattr(Conf, "SYNC", True)


def _body(**fields) -> bytes:
    event = {
        "id": "ap24evt_0001",
        "type": "organisation.changed",
        "object_id": ORGANISATION_ID,
        "occurred_at": "2026-07-02T09:30:00Z",
    }
    event.update(fields)
    return json.dumps({k: v for k, v in event.items() if v is not None}).encode()


def _post(client, body: bytes, signature: str | None, path: str = URL, **headers):
    if signature is not None:
        headers["HTTP_X_AIPRESS24_SIGNATURE"] = signature
    return client.post(path, data=body, content_type="application/json", **headers)


def _push(client, body: bytes, *, secrets=(SECRET,), signed_at=NOW, **headers):
    signature = push_signature(body=body, secrets=list(secrets), timestamp=signed_at)
    return _post(client, body, signature, **headers)


def _synced_record(kind: str = "organisation", external_id: str = ORGANISATION_ID):
    record, _ = record_observe(
        source="aipress24", kind=kind, external_id=external_id, snapshot={"id": external_id}
    )
    record_claim(record_id=record.pk)
    record_mark_synced(record_id=record.pk, dolibarr_kind="thirdparty", dolibarr_id=7)
    return record


def _record_in_progress():
    """A record a sync worker is writing right now."""
    record, _ = record_observe(
        source="aipress24", kind="organisation", external_id=ORGANISATION_ID, snapshot={}
    )
    return record_claim(record_id=record.pk)


def _nothing_stored():
    return not InboundEvent.objects.exists() and not AuditEvent.objects.exists()


# --- accepted ---------------------------------------------------------------------------------


def test_a_valid_event_is_stored_whole_and_acknowledged_with_202(
    client, django_capture_on_commit_callbacks
):
    body = _body()
    with django_capture_on_commit_callbacks(execute=False):
        answer = _push(client, body, HTTP_AUTHORIZATION="Bearer proxy-token")
    assert answer.status_code == 202
    assert answer.json() == {"received": True}
    stored = InboundEvent.objects.get()
    assert (stored.source, stored.event_id, stored.event_type, stored.verified) == (
        "aipress24",
        "ap24evt_0001",
        "organisation.changed",
        True,
    )
    assert stored.body == body.decode()
    headers = {name.lower() for name in stored.headers}
    assert "x-aipress24-signature" in headers
    assert "authorization" not in headers


def test_the_event_is_stored_before_the_answer_and_processed_only_after_it(
    client, django_capture_on_commit_callbacks
):
    record = _synced_record()
    with django_capture_on_commit_callbacks(execute=False) as queued:
        answer = _push(client, _body())
        assert answer.status_code == 202
        assert InboundEvent.objects.get().processed_at is None
    assert len(queued) == 1
    record.refresh_from_db()
    assert record.state == SyncState.SYNCED


def test_a_valid_event_makes_the_existing_record_due_now(
    client, tasks_inline, django_capture_on_commit_callbacks
):
    record = _synced_record()
    with django_capture_on_commit_callbacks(execute=True):
        _push(client, _body())
    record.refresh_from_db()
    assert (record.state, record.next_attempt_at) == (SyncState.PENDING, None)
    audit = AuditEvent.objects.get(action="record.retry_requested", target_id=str(record.pk))
    assert audit.actor_label == "aipress24 push"
    assert "organisation.changed event ap24evt_0001" in audit.reason
    assert InboundEvent.objects.get().processed_at is not None


def test_a_valid_event_brings_forward_a_record_waiting_for_a_later_attempt(
    client, tasks_inline, django_capture_on_commit_callbacks
):
    record, _ = record_observe(
        source="aipress24", kind="purchase", external_id="7413705309148770001", snapshot={}
    )
    record_claim(record_id=record.pk)
    record_mark_retry_later(
        record_id=record.pk, error="Dolibarr timed out", delay=timedelta(hours=1)
    )
    with django_capture_on_commit_callbacks(execute=True):
        _push(client, _body(type="purchase.paid", object_id="7413705309148770001"))
    record.refresh_from_db()
    assert (record.state, record.next_attempt_at) == (SyncState.PENDING, None)


@pytest.mark.parametrize(
    ("event_type", "kind"),
    [
        ("organisation.changed", "organisation"),
        ("user.changed", "user"),
        ("purchase.paid", "purchase"),
        ("subscription.changed", "subscription"),
    ],
)
def test_each_event_type_makes_its_own_kind_of_record_due(
    client, tasks_inline, django_capture_on_commit_callbacks, event_type, kind
):
    records = {k: _synced_record(kind=k, external_id="42") for k in EVENT_KINDS.values()}
    with django_capture_on_commit_callbacks(execute=True):
        _push(client, _body(type=event_type, object_id="42"))
    states = {k: SyncRecord.objects.get(pk=r.pk).state for k, r in records.items()}
    assert states == {k: SyncState.PENDING if k == kind else SyncState.SYNCED for k in records}


def test_an_event_for_an_object_without_a_record_is_processed_with_a_note(
    client, tasks_inline, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        answer = _push(client, _body(type="user.changed", object_id="314"))
    assert answer.status_code == 202
    event = InboundEvent.objects.get()
    assert (event.processed_at is not None, event.error) == (True, "")
    processed = AuditEvent.objects.get(action="event.processed", target_id=str(event.pk))
    assert processed.reason == f"user 314: {NO_RECORD_YET}"
    assert not SyncRecord.objects.exists()


def test_a_record_that_needs_review_is_left_for_a_person(
    client, tasks_inline, django_capture_on_commit_callbacks
):
    record, _ = record_observe(
        source="aipress24", kind="organisation", external_id=ORGANISATION_ID, snapshot={}
    )
    record_claim(record_id=record.pk)
    record_mark_needs_review(record_id=record.pk, reason="customer_conflict on tva_intra")
    with django_capture_on_commit_callbacks(execute=True):
        _push(client, _body())
    record.refresh_from_db()
    assert record.state == SyncState.NEEDS_REVIEW
    assert InboundEvent.objects.get().processed_at is not None


def test_a_header_signed_with_the_old_and_the_new_secret_is_accepted(
    client, push_settings, django_capture_on_commit_callbacks
):
    push_settings.AIPRESS24_PUSH_SECRET = "ap24push_next_secret"
    with django_capture_on_commit_callbacks(execute=False):
        answer = _push(client, _body(), secrets=(SECRET, "ap24push_next_secret"))
    assert answer.status_code == 202


def test_a_timestamp_at_the_edge_of_the_tolerance_is_accepted(
    client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False):
        answer = _push(client, _body(), signed_at=NOW - 300)
    assert answer.status_code == 202


def test_the_endpoint_needs_no_csrf_token(django_capture_on_commit_callbacks):
    machine = Client(enforce_csrf_checks=True)
    with django_capture_on_commit_callbacks(execute=False):
        answer = _push(machine, _body())
    assert answer.status_code == 202


def test_the_url_without_its_trailing_slash_is_accepted_too(
    client, django_capture_on_commit_callbacks
):
    body = _body()
    signature = push_signature(body=body, secrets=[SECRET], timestamp=NOW)
    with django_capture_on_commit_callbacks(execute=False):
        answer = _post(client, body, signature, path="/webhooks/aipress24")
    assert answer.status_code == 202


def test_a_failure_to_store_the_event_is_never_acknowledged(
    monkeypatch, django_capture_on_commit_callbacks
):
    def broken_store(**kwargs):
        raise DatabaseError("disk full")

    monkeypatch.setattr("reconciliation.webhooks.inbound_event_store", broken_store)
    with django_capture_on_commit_callbacks(execute=False) as queued:
        answer = _push(Client(raise_request_exception=False), _body())
    assert answer.status_code == 500
    assert queued == []


# --- refused ----------------------------------------------------------------------------------


def test_a_bad_signature_is_refused_and_nothing_is_stored(
    client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as queued:
        answer = _push(client, _body(), secrets=("another_secret",))
    assert answer.status_code == 400
    assert answer.json() == {"error": "invalid signature"}
    assert _nothing_stored()
    assert queued == []


def test_a_body_changed_after_signing_is_refused(client):
    signature = push_signature(body=_body(), secrets=[SECRET], timestamp=NOW)
    answer = _post(client, _body(object_id="7413705309148774402"), signature)
    assert answer.status_code == 400
    assert _nothing_stored()


def test_a_missing_signature_header_is_refused(client):
    answer = _post(client, _body(), None)
    assert answer.status_code == 400
    assert answer.json() == {"error": "missing X-Aipress24-Signature header"}
    assert _nothing_stored()


def test_a_malformed_signature_header_is_refused(client):
    answer = _post(client, _body(), "sha256=0123abcd")
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("malformed signature header")
    assert _nothing_stored()


def test_an_old_timestamp_is_refused_and_nothing_is_stored(client):
    answer = _push(client, _body(), signed_at=NOW - 301)
    assert answer.status_code == 400
    assert answer.json() == {"error": "timestamp outside the tolerance (300 s)"}
    assert _nothing_stored()


def test_a_future_timestamp_beyond_the_tolerance_is_refused(client):
    answer = _push(client, _body(), signed_at=NOW + 301)
    assert answer.status_code == 400
    assert answer.json() == {"error": "timestamp outside the tolerance (300 s)"}
    assert _nothing_stored()


def test_a_replay_of_a_stored_event_is_refused_with_409(client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        _push(client, _body())
    with django_capture_on_commit_callbacks(execute=False):
        answer = _push(client, _body(), signed_at=NOW - 10)
    assert answer.status_code == 409
    assert answer.json() == {"error": "event ap24evt_0001 already received"}
    assert InboundEvent.objects.count() == 1
    assert AuditEvent.objects.filter(action="event.received").count() == 1


def test_a_replay_of_a_processed_event_queues_nothing(
    client, tasks_inline, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        _push(client, _body())
    with django_capture_on_commit_callbacks(execute=True) as queued:
        answer = _push(client, _body())
    assert answer.status_code == 409
    assert queued == []


def test_a_replay_of_an_event_whose_processing_failed_queues_it_again(
    client, tasks_inline, django_capture_on_commit_callbacks
):
    record = _record_in_progress()
    with django_capture_on_commit_callbacks(execute=True):
        _push(client, _body())
    assert "is being worked on" in InboundEvent.objects.get().error
    record_mark_synced(record_id=record.pk, dolibarr_kind="thirdparty", dolibarr_id=7)
    with django_capture_on_commit_callbacks(execute=True):
        answer = _push(client, _body())
    assert answer.status_code == 409
    event = InboundEvent.objects.get()
    assert (event.processed_at is not None, event.error, event.attempts) == (True, "", 2)


def test_a_body_over_the_limit_is_refused_with_413(client, push_settings):
    push_settings.AIPRESS24_PUSH_MAX_BYTES = 1024
    body = _body(padding="x" * 2000)
    answer = _push(client, body)
    assert answer.status_code == 413
    assert answer.json() == {"error": "body larger than 1024 bytes"}
    assert _nothing_stored()


def test_a_numeric_object_id_is_refused_naming_the_field(client):
    body = b'{"id": "ap24evt_0001", "type": "organisation.changed", '
    body += b'"object_id": 7413705309148774401, "occurred_at": "2026-07-02T09:30:00Z"}'
    answer = _push(client, body)
    assert answer.status_code == 400
    assert answer.json()["field"] == "object_id"
    assert answer.json()["error"].startswith("object_id must be a JSON string, not a number")
    assert _nothing_stored()


def test_an_unknown_event_type_is_refused_naming_the_field(client):
    answer = _push(client, _body(type="invoice.paid"))
    assert answer.status_code == 400
    assert answer.json() == {
        "error": 'type "invoice.paid" is not one of organisation.changed, user.changed, '
        "purchase.paid, subscription.changed",
        "field": "type",
    }
    assert _nothing_stored()


@pytest.mark.parametrize("field", ["id", "type", "object_id", "occurred_at"])
def test_a_missing_field_is_refused_naming_it(client, field):
    answer = _push(client, _body(**{field: None}))
    assert answer.status_code == 400
    assert answer.json() == {"error": f"{field} is missing", "field": field}
    assert _nothing_stored()


def test_an_occurred_at_without_its_utc_offset_is_refused(client):
    answer = _push(client, _body(occurred_at="2026-07-02T09:30:00"))
    assert answer.status_code == 400
    assert answer.json()["field"] == "occurred_at"
    assert _nothing_stored()


def test_malformed_json_with_a_valid_signature_is_refused(client):
    answer = _push(client, b'{"id": "ap24evt_0001", "type": ')
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("body is not UTF-8 JSON")
    assert _nothing_stored()


def test_a_missing_secret_answers_503_and_logs_the_variable(client, push_settings, caplog):
    push_settings.AIPRESS24_PUSH_SECRET = ""
    with caplog.at_level(logging.ERROR, logger="reconciliation.webhooks"):
        answer = _push(client, _body())
    assert answer.status_code == 503
    assert "AIPRESS24_PUSH_SECRET is not set" in caplog.text
    assert _nothing_stored()


def test_the_endpoint_answers_only_post(client):
    assert client.get(URL).status_code == 405


# --- processing -------------------------------------------------------------------------------


def _stored_event(body: bytes | None = None) -> InboundEvent:
    return InboundEvent.objects.create(
        source="aipress24",
        event_id="ap24evt_0001",
        event_type="organisation.changed",
        body=(body or _body()).decode(),
        verified=True,
    )


def test_the_processing_task_run_twice_changes_nothing_the_second_time():
    record = _synced_record()
    event = _stored_event()
    first = aipress24_event_process_task(event.pk)
    audit_count = AuditEvent.objects.count()
    second = aipress24_event_process_task(event.pk)
    assert (first["result"], second["result"]) == ("processed", "already_processed")
    assert AuditEvent.objects.count() == audit_count
    event.refresh_from_db()
    assert event.attempts == 1
    assert SyncRecord.objects.get(pk=record.pk).state == SyncState.PENDING


@pytest.mark.django_db(transaction=True)
def test_two_workers_processing_one_event_at_once_process_it_once():
    if connection.vendor != "postgresql":
        pytest.skip("SQLite takes one writer at a time; CI runs this on PostgreSQL")
    record = _synced_record()
    event = _stored_event()
    barrier = threading.Barrier(2)
    results = []

    def worker() -> None:
        try:
            barrier.wait()
            results.append(aipress24_event_process(event_id=event.pk).result)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [Result.ALREADY_PROCESSED, Result.PROCESSED]
    assert InboundEvent.objects.get(pk=event.pk).attempts == 1
    assert AuditEvent.objects.filter(action="event.processed").count() == 1
    retries = AuditEvent.objects.filter(action="record.retry_requested", target_id=str(record.pk))
    assert retries.count() == 1


def test_a_failed_processing_is_kept_on_the_event_and_reprocessed_on_request(django_user_model):
    record = _record_in_progress()
    event = _stored_event()
    failed = aipress24_event_process(event_id=event.pk)
    assert failed.result == Result.FAILED
    assert "is being worked on" in InboundEvent.objects.get(pk=event.pk).error

    record_mark_synced(record_id=record.pk, dolibarr_kind="thirdparty", dolibarr_id=7)
    operator = django_user_model.objects.create_user("operator")
    [outcome] = aipress24_events_reprocess(
        events=InboundEvent.objects.filter(pk=event.pk), actor=operator
    )
    assert outcome.result == Result.PROCESSED
    assert outcome.message == (
        f"ap24evt_0001 (organisation.changed): processed; organisation {ORGANISATION_ID} due now"
    )
    assert AuditEvent.objects.get(action="event.reprocess_requested").actor == operator


def test_a_stored_body_that_breaks_the_contract_fails_with_its_reason():
    event = _stored_event(_body(object_id=12))
    outcome = aipress24_event_process(event_id=event.pk)
    assert outcome.result == Result.FAILED
    assert InboundEvent.objects.get(pk=event.pk).error.startswith("object_id must be a JSON")


# --- the contract as documented -----------------------------------------------------------------


def test_the_documented_worked_example_verifies():
    body = (
        b'{"id":"ap24evt_01J1Z8K4M6","type":"organisation.changed",'
        b'"object_id":"7413705309148774401","occurred_at":"2026-07-02T09:30:00Z"}'
    )
    header = "t=1782984605,v1=10a80f2365524e296d4cd4719d6d76ab00e6ce5b8ccf7c836417df3cfd85b018"
    doc = (Path(__file__).parent.parent / "docs" / "aipress24-push.md").read_text()
    assert body.decode() in doc
    assert header in doc
    assert (
        push_signature(
            body=body, secrets=["ap24push_example_secret_not_for_production"], timestamp=NOW
        )
        == header
    )
    signed_at = verify_push_signature(
        body=body,
        header=header,
        secret="ap24push_example_secret_not_for_production",
        tolerance=300,
        now=NOW,
    )
    assert signed_at == NOW


def test_a_signature_is_checked_against_the_timestamp_it_was_made_with():
    body = _body()
    header = push_signature(body=body, secrets=[SECRET], timestamp=NOW)
    moved = header.replace(f"t={NOW}", f"t={NOW + 1}")
    with pytest.raises(InvalidPushSignature, match="invalid signature"):
        verify_push_signature(body=body, header=moved, secret=SECRET, tolerance=300, now=NOW)


def test_the_admins_reprocess_action_retries_a_failed_push(client, django_user_model):
    from django.contrib.auth.models import Permission

    record = _record_in_progress()
    event = _stored_event()
    aipress24_event_process(event_id=event.pk)
    record_mark_synced(record_id=record.pk, dolibarr_kind="thirdparty", dolibarr_id=7)
    operator = django_user_model.objects.create_user("operator", password="pw", is_staff=True)
    operator.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_inboundevent", "reprocess_event"])
    )
    client.force_login(operator)

    answer = client.post(
        "/admin/reconciliation/inboundevent/",
        {"action": "reprocess_selected", "_selected_action": [event.pk]},
        follow=True,
    )

    assert [str(m) for m in answer.context["messages"]] == [
        f"ap24evt_0001 (organisation.changed): processed; organisation {ORGANISATION_ID} due now"
    ]
    assert InboundEvent.objects.get(pk=event.pk).processed_at is not None
