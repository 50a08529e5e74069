"""The Stripe webhook endpoint, through the Django test client, with bodies signed exactly as
Stripe signs them (`reconciliation.sandbox.webhooks`) and re-fetches served by the sandbox Stripe
over HTTP. Queued processing runs inline (django-q2's sync mode) once the test's transaction
"commits" (`django_capture_on_commit_callbacks`)."""

from __future__ import annotations

import logging
import time

import pytest
from django.db import DatabaseError
from django.test import Client, RequestFactory
from django_q.conf import Conf

from reconciliation.models import AuditEvent, Cursor, InboundEvent, SyncRecord, SyncState
from reconciliation.sandbox.webhooks import event_payload, sign_payload
from reconciliation.services.records import record_claim, record_mark_synced, record_observe
from reconciliation.sync.stripe_events import EVENTS_JOB, EventCursor, stripe_events_pull
from reconciliation.webhooks import stripe_webhook
from tests.fixtures_stripe import STRIPE_TEST_KEY, STRIPE_TEST_WEBHOOK_SECRET

pytestmark = pytest.mark.django_db

URL = "/webhooks/stripe/"


@pytest.fixture
def stripe_settings(settings, stripe_sandbox):
    settings.STRIPE_API_KEY = STRIPE_TEST_KEY
    settings.STRIPE_API_BASE = stripe_sandbox.base_url
    settings.STRIPE_MAX_NETWORK_RETRIES = 0
    settings.STRIPE_WEBHOOK_SECRET = STRIPE_TEST_WEBHOOK_SECRET
    return settings


@pytest.fixture
def tasks_inline(monkeypatch):
    """django-q2 runs a queued task in the calling process (Q_CLUSTER["sync"])."""
    monkeypatch.setattr(Conf, "SYNC", True)


def _event(dataset, event_type, index=0):
    return [e for e in dataset.collections["events"] if e["type"] == event_type][index]


def _post(client, body: bytes, signature: str | None, path: str = URL, **headers):
    if signature is not None:
        headers["HTTP_STRIPE_SIGNATURE"] = signature
    return client.post(path, data=body, content_type="application/json", **headers)


def _deliver(client, event, *, secret=STRIPE_TEST_WEBHOOK_SECRET, signed_at=None, **headers):
    body = event_payload(event)
    signature = sign_payload(body, secret, int(time.time()) if signed_at is None else signed_at)
    return _post(client, body, signature, **headers)


def _nothing_stored():
    return not InboundEvent.objects.exists() and not AuditEvent.objects.exists()


# --- accepted ---------------------------------------------------------------------------------


def test_a_signed_event_is_stored_processed_and_acknowledged(
    client, stripe_settings, stripe_dataset, tasks_inline, django_capture_on_commit_callbacks
):
    event = _event(stripe_dataset, "invoice.paid")
    with django_capture_on_commit_callbacks(execute=True):
        answer = _deliver(client, event)
    assert answer.status_code == 200
    assert answer.json() == {"received": True}
    stored = InboundEvent.objects.get(event_id=event["id"])
    assert (stored.source, stored.event_type, stored.verified) == ("stripe", "invoice.paid", True)
    assert stored.body == event_payload(event).decode()
    assert stored.processed_at is not None
    invoice = SyncRecord.objects.get(kind="invoice", external_id=event["data"]["object"]["id"])
    assert invoice.state == SyncState.PENDING


def test_the_event_is_stored_before_the_answer_and_processed_only_after_it(
    client, stripe_settings, stripe_dataset, django_capture_on_commit_callbacks
):
    event = _event(stripe_dataset, "charge.succeeded")
    with django_capture_on_commit_callbacks(execute=False) as queued:
        answer = _deliver(client, event)
        assert answer.status_code == 200
        stored = InboundEvent.objects.get(event_id=event["id"])
        assert stored.processed_at is None
    assert len(queued) == 1
    assert not SyncRecord.objects.exists()


def test_a_failure_to_store_the_event_is_never_acknowledged(
    stripe_settings, stripe_dataset, monkeypatch, django_capture_on_commit_callbacks
):
    def broken_store(**kwargs):
        raise DatabaseError("disk full")

    monkeypatch.setattr("reconciliation.webhooks.inbound_event_store", broken_store)
    client = Client(raise_request_exception=False)
    with django_capture_on_commit_callbacks(execute=False) as queued:
        answer = _deliver(client, _event(stripe_dataset, "charge.succeeded"))
    assert answer.status_code == 500
    assert queued == []


def test_an_event_delivered_twice_is_stored_and_processed_once(
    client, stripe_settings, stripe_dataset, tasks_inline, django_capture_on_commit_callbacks
):
    event = _event(stripe_dataset, "payment_intent.succeeded")
    with django_capture_on_commit_callbacks(execute=True):
        first = _deliver(client, event)
    with django_capture_on_commit_callbacks(execute=True) as queued_again:
        second = _deliver(client, event)
    assert (first.status_code, second.status_code) == (200, 200)
    assert second.json() == {"received": True, "duplicate": True}
    assert queued_again == []
    stored = InboundEvent.objects.get(event_id=event["id"])
    assert stored.attempts == 1
    assert AuditEvent.objects.filter(action="event.processed").count() == 1
    assert AuditEvent.objects.filter(target_type="syncrecord").count() == 1


def test_a_replay_of_an_event_whose_processing_failed_queues_it_again(
    client, stripe_settings, stripe_sandbox, stripe_dataset, tasks_inline,
    django_capture_on_commit_callbacks,
):  # fmt: skip
    event = _event(stripe_dataset, "payout.paid")
    stripe_sandbox.faults.update(error_rate=1.0)
    with django_capture_on_commit_callbacks(execute=True):
        _deliver(client, event)
    assert InboundEvent.objects.get(event_id=event["id"]).error
    stripe_sandbox.faults.update(error_rate=0.0)
    with django_capture_on_commit_callbacks(execute=True):
        answer = _deliver(client, event)
    assert answer.json()["duplicate"] is True
    stored = InboundEvent.objects.get(event_id=event["id"])
    assert (stored.processed_at is not None, stored.error, stored.attempts) == (True, "", 2)


def test_an_invoice_paid_event_makes_the_synced_invoice_pending_with_the_new_snapshot(
    client, stripe_settings, stripe_dataset, stripe_connector, tasks_inline,
    django_capture_on_commit_callbacks,
):  # fmt: skip
    paid = _event(stripe_dataset, "invoice.paid")
    invoice_id = paid["data"]["object"]["id"]
    finalized = next(
        e
        for e in stripe_dataset.collections["events"]
        if e["type"] == "invoice.finalized" and e["data"]["object"]["id"] == invoice_id
    )
    record, _ = record_observe(
        source="stripe",
        kind="invoice",
        external_id=invoice_id,
        snapshot=finalized["data"]["object"],
    )
    record_claim(record_id=record.pk)
    record_mark_synced(record_id=record.pk, dolibarr_kind="invoice", dolibarr_id=7)
    with django_capture_on_commit_callbacks(execute=True):
        _deliver(client, paid)
    record.refresh_from_db()
    assert record.state == SyncState.PENDING
    assert record.snapshot["status"] == "paid"
    assert record.snapshot == stripe_connector.invoice(invoice_id, with_payments=True)


def test_a_webhook_then_the_pull_of_the_same_event_processes_it_once(
    client, stripe_settings, stripe_dataset, stripe_connector, tasks_inline,
    django_capture_on_commit_callbacks,
):  # fmt: skip
    events = stripe_dataset.collections["events"]
    before, last = events[-2], events[-1]
    with django_capture_on_commit_callbacks(execute=True):
        _deliver(client, last)
    Cursor.objects.create(
        stream=EVENTS_JOB, value=str(EventCursor(before["id"], before["created"]))
    )
    run = stripe_events_pull(connector=stripe_connector)
    assert run.counts == {"seen": 1, "known": 1, "already_processed": 1}
    assert InboundEvent.objects.get(event_id=last["id"]).attempts == 1
    assert AuditEvent.objects.filter(action="event.processed").count() == 1


def test_the_url_without_its_trailing_slash_is_accepted_too(
    client, stripe_settings, stripe_dataset, django_capture_on_commit_callbacks
):
    event = _event(stripe_dataset, "customer.created")
    body = event_payload(event)
    signature = sign_payload(body, STRIPE_TEST_WEBHOOK_SECRET, int(time.time()))
    with django_capture_on_commit_callbacks(execute=False):
        answer = _post(client, body, signature, path="/webhooks/stripe")
    assert answer.status_code == 200


def test_stored_headers_keep_the_signature_and_drop_credentials(
    client, stripe_settings, stripe_dataset, django_capture_on_commit_callbacks
):
    event = _event(stripe_dataset, "customer.created")
    with django_capture_on_commit_callbacks(execute=False):
        _deliver(client, event, HTTP_AUTHORIZATION="Bearer proxy-token", HTTP_COOKIE="s=1")
    headers = {k.lower() for k in InboundEvent.objects.get(event_id=event["id"]).headers}
    assert "stripe-signature" in headers
    assert not headers & {"authorization", "cookie"}


# --- refused ----------------------------------------------------------------------------------


def test_a_forged_event_is_refused_and_nothing_is_stored_or_queued(
    client, stripe_settings, stripe_dataset, django_capture_on_commit_callbacks
):
    event = _event(stripe_dataset, "invoice.paid")
    body = event_payload(event)
    signature = sign_payload(body, STRIPE_TEST_WEBHOOK_SECRET, int(time.time()))
    forged = body.replace(event["id"].encode(), b"evt_forged0000000000000000")
    with django_capture_on_commit_callbacks(execute=False) as queued:
        answer = _post(client, forged, signature)
    assert answer.status_code == 400
    assert answer.json() == {"error": "invalid signature"}
    assert _nothing_stored()
    assert queued == []


def test_an_event_signed_with_another_secret_is_refused(client, stripe_settings, stripe_dataset):
    answer = _deliver(client, _event(stripe_dataset, "invoice.paid"), secret="whsec_other_secret")
    assert answer.status_code == 400
    assert _nothing_stored()


def test_an_event_without_a_signature_is_refused(client, stripe_settings, stripe_dataset):
    answer = _post(client, event_payload(_event(stripe_dataset, "invoice.paid")), None)
    assert answer.status_code == 400
    assert _nothing_stored()


def test_a_signature_older_than_five_minutes_is_refused(client, stripe_settings, stripe_dataset):
    event = _event(stripe_dataset, "invoice.paid")
    answer = _deliver(client, event, signed_at=int(time.time()) - 301)
    assert answer.status_code == 400
    assert _nothing_stored()


def test_a_body_over_the_size_limit_is_refused_with_413(client, stripe_settings):
    stripe_settings.STRIPE_WEBHOOK_MAX_BYTES = 1024
    body = b'{"id": "evt_big", "type": "invoice.paid", "pad": "' + b"x" * 2000 + b'"}'
    answer = _post(client, body, sign_payload(body, STRIPE_TEST_WEBHOOK_SECRET, int(time.time())))
    assert answer.status_code == 413
    assert _nothing_stored()


def test_a_body_without_a_declared_length_is_measured_as_it_is_read(stripe_settings):
    stripe_settings.STRIPE_WEBHOOK_MAX_BYTES = 1024
    body = b'{"id": "evt_big", "type": "invoice.paid", "pad": "' + b"x" * 2000 + b'"}'
    request = RequestFactory().post(URL, data=body, content_type="application/json")
    del request.META["CONTENT_LENGTH"]  # the stream still holds the whole body
    assert stripe_webhook(request).status_code == 413
    assert _nothing_stored()


def test_malformed_json_with_a_valid_signature_is_refused(client, stripe_settings):
    body = b'{"id": "evt_1", "type": "invoice.paid",'
    answer = _post(client, body, sign_payload(body, STRIPE_TEST_WEBHOOK_SECRET, int(time.time())))
    assert answer.status_code == 400
    assert answer.json() == {"error": "body is not a JSON event"}
    assert _nothing_stored()


def test_a_missing_webhook_secret_answers_503_and_logs_the_variable(
    client, stripe_settings, stripe_dataset, caplog
):
    stripe_settings.STRIPE_WEBHOOK_SECRET = ""
    with caplog.at_level(logging.ERROR, logger="reconciliation.webhooks"):
        answer = _deliver(client, _event(stripe_dataset, "invoice.paid"))
    assert answer.status_code == 503
    assert "STRIPE_WEBHOOK_SECRET is not set" in caplog.text
    assert _nothing_stored()


def test_the_endpoint_answers_only_post(client, stripe_settings):
    assert client.get(URL).status_code == 405
