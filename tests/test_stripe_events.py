"""Processing Stripe events (re-fetch, observe, once) and the `/v1/events` pull, against the
sandbox Stripe over HTTP; the admin's "Reprocess selected events" through the Django test
client."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command

from reconciliation.errors import PermanentError, TransientError
from reconciliation.models import AuditEvent, Cursor, InboundEvent, RunState, SyncRecord, SyncRun
from reconciliation.services.events import inbound_event_store
from reconciliation.services.records import Observed
from reconciliation.sync.stripe_events import (
    EVENTS_JOB,
    RETRIEVE,
    EventCursor,
    EventFailed,
    Result,
    Target,
    event_targets,
    stripe_event_process,
    stripe_events_pull,
)
from reconciliation.sync.stripe_pull import STREAMS, stripe_stream_pull
from tests.fixtures_stripe import STRIPE_TEST_KEY

pytestmark = pytest.mark.django_db


@pytest.fixture
def stripe_settings(settings, stripe_sandbox):
    settings.STRIPE_API_KEY = STRIPE_TEST_KEY
    settings.STRIPE_API_BASE = stripe_sandbox.base_url
    settings.STRIPE_MAX_NETWORK_RETRIES = 0
    return settings


def _store(payload: dict) -> InboundEvent:
    event, _ = inbound_event_store(
        source="stripe",
        event_id=payload["id"],
        event_type=payload["type"],
        body=json.dumps(payload),
        headers={},
        verified=True,
    )
    return event


def _event(dataset, event_type, index=0):
    return [e for e in dataset.collections["events"] if e["type"] == event_type][index]


def _about(kind: str, object_id: str, event_type: str | None = None, **fields) -> dict:
    return {
        "id": f"evt_test_{kind}_{object_id}",
        "type": event_type or f"{kind}.updated",
        "created": 1767225600,
        "data": {"object": {"id": object_id, "object": kind, **fields}},
    }


def _set_cursor_before(dataset, count: int) -> list[dict]:
    """Put the events cursor `count` events before the end; returns the events after it."""
    events = dataset.collections["events"]
    anchor = events[-count - 1]
    Cursor.objects.create(
        stream=EVENTS_JOB, value=str(EventCursor(anchor["id"], anchor["created"]))
    )
    return events[-count:]


# --- which objects an event concerns ----------------------------------------------------------


def test_every_pulled_kind_has_a_retrieve():
    assert set(RETRIEVE) == {stream.kind for stream in STREAMS.values()}


@pytest.mark.parametrize("stream", list(STREAMS))
def test_a_refetched_object_equals_the_pulled_one(stream, stripe_connector):
    stripe_stream_pull(connector=stripe_connector, stream=stream)
    record = SyncRecord.objects.filter(kind=STREAMS[stream].kind).first()
    event = _store(_about(record.kind, record.external_id))
    outcome = stripe_event_process(event_id=event.pk, connector=stripe_connector)
    assert outcome.observed == [(record.kind, record.external_id, Observed.UNCHANGED)]


@pytest.mark.parametrize(
    ("payload", "targets"),
    [
        (_about("invoice_payment", "inpay_1", "invoice_payment.paid", invoice="in_1"),
         [Target("invoice", "in_1")]),
        (_about("dispute", "dp_1", "charge.dispute.created", charge="ch_1"),
         [Target("charge", "ch_1")]),
        (_about("charge", "ch_1", "charge.refunded"),
         [Target("charge", "ch_1", with_refunds=True)]),
        (_about("discount", "di_1", "customer.discount.created", customer={"id": "cus_1"}),
         [Target("customer", "cus_1")]),
        (_about("subscription", "sub_1", "customer.subscription.updated"), []),
    ],
    ids=["invoice_payment", "dispute", "charge_refunded", "discount", "subscription"],
)  # fmt: skip
def test_an_event_concerns_the_object_its_data_names(payload, targets):
    assert event_targets(payload) == targets


# --- processing -------------------------------------------------------------------------------


def test_a_charge_refunded_event_observes_the_charge_and_its_refunds(
    stripe_connector, stripe_dataset
):
    payload = _event(stripe_dataset, "charge.refunded")
    charge_id = payload["data"]["object"]["id"]
    outcome = stripe_event_process(event_id=_store(payload).pk, connector=stripe_connector)
    assert outcome.result == Result.PROCESSED
    refunds = [r["id"] for r in stripe_dataset.collections["refunds"] if r["charge"] == charge_id]
    assert [(k, i) for k, i, _ in outcome.observed] == [("charge", charge_id)] + [
        ("refund", refund_id) for refund_id in refunds
    ]


def test_an_unhandled_event_type_is_processed_without_effect_and_says_so(stripe_connector):
    event = _store(_about("subscription", "sub_1", "customer.subscription.updated"))
    outcome = stripe_event_process(event_id=event.pk, connector=stripe_connector)
    assert outcome.result == Result.PROCESSED
    assert sum(stripe_connector.call_counts.values()) == 0
    note = AuditEvent.objects.get(action="event.processed").reason
    assert note == "no effect: customer.subscription.updated does not concern a synced object"


def test_a_deleted_customer_changes_nothing(stripe_connector):
    event = _store(_about("customer", "cus_gone", "customer.deleted", deleted=True))
    outcome = stripe_event_process(event_id=event.pk, connector=stripe_connector)
    assert outcome.result == Result.PROCESSED
    assert not SyncRecord.objects.exists()


def test_a_deleted_draft_invoice_is_processed_without_effect(stripe_connector):
    event = _store(_about("invoice", "in_deleted_draft", "invoice.created", status="draft"))
    outcome = stripe_event_process(event_id=event.pk, connector=stripe_connector)
    assert outcome.result == Result.PROCESSED
    assert "no longer exists" in outcome.effect


def test_an_object_stripe_does_not_know_fails_the_event(stripe_connector):
    event = _store(_about("charge", "ch_unknown", "charge.succeeded"))
    outcome = stripe_event_process(event_id=event.pk, connector=stripe_connector)
    assert outcome.result == Result.FAILED
    assert "No such charge" in InboundEvent.objects.get(pk=event.pk).error


def test_a_processed_event_is_not_processed_again(stripe_connector, stripe_dataset):
    event = _store(_event(stripe_dataset, "payout.paid"))
    stripe_event_process(event_id=event.pk, connector=stripe_connector)
    stripe_connector.reset_call_counts()
    outcome = stripe_event_process(event_id=event.pk, connector=stripe_connector)
    assert outcome.result == Result.ALREADY_PROCESSED
    assert sum(stripe_connector.call_counts.values()) == 0


def test_a_stripe_outage_keeps_the_event_with_its_error(
    stripe_connector, stripe_sandbox, stripe_dataset
):
    event = _store(_event(stripe_dataset, "invoice.paid"))
    stripe_sandbox.faults.update(error_rate=1.0)
    outcome = stripe_event_process(event_id=event.pk, connector=stripe_connector)
    event.refresh_from_db()
    assert outcome.result == Result.FAILED
    assert event.processed_at is None
    assert event.error.startswith("Stripe is unavailable on GET /v1/invoices/{id} (500)")


# --- the admin action -------------------------------------------------------------------------


@pytest.fixture
def operator(django_user_model):
    user = django_user_model.objects.create_user("operator", password="pw", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_inboundevent", "reprocess_event"])
    )
    return user


def _changelist_messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_a_failed_event_is_shown_with_its_error_and_reprocessed_once_stripe_is_back(
    client, operator, stripe_settings, stripe_connector, stripe_sandbox, stripe_dataset
):
    event = _store(_event(stripe_dataset, "invoice.paid"))
    stripe_sandbox.faults.update(error_rate=1.0)
    stripe_event_process(event_id=event.pk, connector=stripe_connector)
    client.force_login(operator)
    page = client.get("/admin/reconciliation/inboundevent/")
    assert "Stripe is unavailable" in page.content.decode()

    stripe_sandbox.faults.update(error_rate=0.0)
    answer = client.post(
        "/admin/reconciliation/inboundevent/",
        {"action": "reprocess_selected", "_selected_action": [event.pk]},
        follow=True,
    )
    event.refresh_from_db()
    assert event.processed_at is not None
    assert event.error == ""
    invoice_id = json.loads(event.body)["data"]["object"]["id"]
    assert _changelist_messages(answer) == [
        f"{event.event_id} (invoice.paid): processed; invoice {invoice_id} new"
    ]
    audit = AuditEvent.objects.get(action="event.reprocess_requested")
    assert audit.actor == operator


def test_reprocessing_a_processed_event_says_so_and_does_nothing(
    client, operator, stripe_settings, stripe_connector, stripe_dataset
):
    event = _store(_event(stripe_dataset, "payout.paid"))
    stripe_event_process(event_id=event.pk, connector=stripe_connector)
    client.force_login(operator)
    answer = client.post(
        "/admin/reconciliation/inboundevent/",
        {"action": "reprocess_selected", "_selected_action": [event.pk]},
        follow=True,
    )
    assert _changelist_messages(answer) == [
        f"{event.event_id} (payout.paid): already processed, nothing done"
    ]


def test_a_viewer_cannot_reprocess_events(client, django_user_model, stripe_dataset):
    viewer = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_inboundevent"))
    event = _store(_event(stripe_dataset, "payout.paid"))
    client.force_login(viewer)
    page = client.get("/admin/reconciliation/inboundevent/")
    assert "reprocess_selected" not in page.content.decode()
    client.post(
        "/admin/reconciliation/inboundevent/",
        {"action": "reprocess_selected", "_selected_action": [event.pk]},
    )
    event.refresh_from_db()
    assert (event.processed_at, event.attempts) == (None, 0)


# --- the events pull --------------------------------------------------------------------------


def test_the_events_pull_stores_and_processes_the_events_after_the_cursor(
    stripe_connector, stripe_dataset
):
    after = _set_cursor_before(stripe_dataset, 6)
    run = stripe_events_pull(connector=stripe_connector)
    stored = InboundEvent.objects.filter(source="stripe")
    assert sorted(stored.values_list("event_id", flat=True)) == sorted(e["id"] for e in after)
    assert not stored.filter(processed_at__isnull=True).exists()
    assert all(stored.values_list("verified", flat=True))
    assert run.counts == {"seen": 6, "stored": 6, "processed": 6}
    assert (
        Cursor.objects.get(stream=EVENTS_JOB).value == f"{after[-1]['id']}@{after[-1]['created']}"
    )


def test_a_second_events_pull_with_nothing_new_makes_one_stripe_call_and_changes_nothing(
    stripe_connector, stripe_dataset
):
    _set_cursor_before(stripe_dataset, 3)
    stripe_events_pull(connector=stripe_connector)
    cursor = Cursor.objects.get(stream=EVENTS_JOB).value
    records = list(SyncRecord.objects.values_list("pk", "snapshot_hash", "state"))
    events = InboundEvent.objects.count()
    stripe_connector.reset_call_counts()
    run = stripe_events_pull(connector=stripe_connector)
    assert sum(stripe_connector.call_counts.values()) == 1
    assert run.counts == {}
    assert Cursor.objects.get(stream=EVENTS_JOB).value == cursor
    assert list(SyncRecord.objects.values_list("pk", "snapshot_hash", "state")) == records
    assert InboundEvent.objects.count() == events


def test_a_first_events_pull_reads_only_its_window(stripe_connector, stripe_dataset):
    events = stripe_dataset.collections["events"]
    since = datetime.fromtimestamp(events[-4]["created"], tz=UTC)
    window = datetime.now(tz=UTC) - since
    run = stripe_events_pull(connector=stripe_connector, first_window=window)
    recent = [e["id"] for e in events if e["created"] >= events[-4]["created"]]
    assert sorted(InboundEvent.objects.values_list("event_id", flat=True)) == sorted(recent)
    assert run.cursor_after == f"{events[-1]['id']}@{events[-1]['created']}"


def test_a_first_events_pull_with_no_recent_event_costs_one_call_and_sets_no_cursor(
    stripe_connector,
):
    run = stripe_events_pull(connector=stripe_connector, first_window=timedelta(hours=1))
    assert sum(stripe_connector.call_counts.values()) == 1
    assert run.state == RunState.SUCCEEDED
    assert not Cursor.objects.filter(stream=EVENTS_JOB).exists()


def test_a_failed_event_stops_the_pull_and_the_cursor_stays_before_it(
    stripe_connector, stripe_dataset, monkeypatch
):
    after = _set_cursor_before(stripe_dataset, 5)
    cursor = Cursor.objects.get(stream=EVENTS_JOB).value
    broken = after[2]
    kind, broken_id = broken["data"]["object"]["object"], broken["data"]["object"]["id"]
    healthy = RETRIEVE[kind]

    def failing(connector, object_id):
        if object_id == broken_id:
            raise PermanentError("refused for the test", system="stripe", status=400)
        return healthy(connector, object_id)

    monkeypatch.setitem(RETRIEVE, kind, failing)
    with pytest.raises(EventFailed, match=broken["id"]):
        stripe_events_pull(connector=stripe_connector)
    assert Cursor.objects.get(stream=EVENTS_JOB).value == cursor
    assert SyncRun.objects.get(job=EVENTS_JOB).state == RunState.FAILED
    stored = {e.event_id: e for e in InboundEvent.objects.all()}
    assert set(stored) == {e["id"] for e in after[:3]}
    assert stored[broken["id"]].error == "refused for the test"
    assert all(stored[e["id"]].processed_at for e in after[:2])


def test_the_next_pull_retries_the_failed_event_and_moves_on(
    stripe_connector, stripe_dataset, monkeypatch
):
    after = _set_cursor_before(stripe_dataset, 4)
    broken = after[1]

    def refused(connector, object_id):
        raise TransientError("Stripe is unavailable", system="stripe")

    kind = broken["data"]["object"]["object"]
    with monkeypatch.context() as patch:
        patch.setitem(RETRIEVE, kind, refused)
        with pytest.raises(EventFailed):
            stripe_events_pull(connector=stripe_connector)
    stripe_connector.reset_call_counts()
    run = stripe_events_pull(connector=stripe_connector)
    assert run.counts == {
        "seen": 4,
        "known": 2,
        "stored": 2,
        "already_processed": 1,
        "processed": 3,
    }
    assert not InboundEvent.objects.filter(processed_at__isnull=True).exists()
    assert Cursor.objects.get(stream=EVENTS_JOB).value.startswith(after[-1]["id"])


def test_a_cursor_stripe_no_longer_holds_falls_back_to_its_time(stripe_connector, stripe_dataset):
    events = stripe_dataset.collections["events"]
    since = events[-3]["created"]
    Cursor.objects.create(stream=EVENTS_JOB, value=f"evt_aged_out_000000000000@{since}")
    stripe_events_pull(connector=stripe_connector)
    expected = sorted(e["id"] for e in events if e["created"] >= since)
    assert sorted(InboundEvent.objects.values_list("event_id", flat=True)) == expected


def test_a_stripe_outage_fails_the_events_run_and_keeps_the_cursor(
    stripe_connector, stripe_sandbox, stripe_dataset
):
    _set_cursor_before(stripe_dataset, 2)
    cursor = Cursor.objects.get(stream=EVENTS_JOB).value
    stripe_sandbox.faults.update(error_rate=1.0)
    with pytest.raises(TransientError):
        stripe_events_pull(connector=stripe_connector)
    assert SyncRun.objects.get(job=EVENTS_JOB).state == RunState.FAILED
    assert Cursor.objects.get(stream=EVENTS_JOB).value == cursor
    assert not InboundEvent.objects.exists()


# --- command and task -------------------------------------------------------------------------


def test_the_events_command_reports_what_it_processed(stripe_settings, stripe_dataset, capsys):
    _set_cursor_before(stripe_dataset, 2)
    call_command("stripe_events", verbosity=0)
    assert capsys.readouterr().out == "events: processed 2, seen 2, stored 2\n"


def test_the_events_command_names_a_missing_variable_in_one_line(settings):
    settings.STRIPE_API_KEY = ""
    with pytest.raises(CommandError) as failure:
        call_command("stripe_events", verbosity=0)
    assert str(failure.value) == "STRIPE_API_KEY is not set; see .env.example"
    assert not SyncRun.objects.exists()


def test_the_events_command_reports_a_failed_event_in_one_line(
    stripe_settings, stripe_dataset, monkeypatch
):
    after = _set_cursor_before(stripe_dataset, 1)
    kind = after[0]["data"]["object"]["object"]

    def refused(connector, object_id):
        raise PermanentError("refused for the test", system="stripe", status=400)

    monkeypatch.setitem(RETRIEVE, kind, refused)
    with pytest.raises(CommandError) as failure:
        call_command("stripe_events", verbosity=0)
    assert str(failure.value) == (
        f"{after[0]['id']} ({after[0]['type']}): failed: refused for the test; "
        "the cursor stays before it"
    )


def test_the_events_task_runs_one_pull(stripe_settings, stripe_dataset):
    from reconciliation.tasks import stripe_events_pull_task

    _set_cursor_before(stripe_dataset, 1)
    result = stripe_events_pull_task()
    assert result["counts"] == {"seen": 1, "stored": 1, "processed": 1}
    assert SyncRun.objects.get(pk=result["run"]).job == EVENTS_JOB
