import pytest

from reconciliation.errors import InvalidTransition
from reconciliation.models import AuditEvent, InboundEvent, RunState
from reconciliation.services.events import (
    inbound_event_failed,
    inbound_event_processed,
    inbound_event_store,
)
from reconciliation.services.runs import cursor_value, run_finish, run_start

pytestmark = pytest.mark.django_db


def test_a_successful_run_advances_its_cursor():
    run = run_start(job="stripe_invoices")
    run_finish(run=run, counts={"seen": 3}, cursor_after="1795260000")
    assert cursor_value(stream="stripe_invoices") == "1795260000"
    assert run_start(job="stripe_invoices").cursor_before == "1795260000"


def test_a_failed_run_never_moves_the_cursor():
    run_finish(run=run_start(job="stripe_invoices"), cursor_after="100")
    run = run_start(job="stripe_invoices")
    run_finish(run=run, state=RunState.FAILED, cursor_after="200", error="Dolibarr down")
    assert cursor_value(stream="stripe_invoices") == "100"


def test_a_run_cannot_finish_twice():
    run = run_finish(run=run_start(job="reconcile"))
    with pytest.raises(InvalidTransition):
        run_finish(run=run)


def _store(event_id="evt_1"):
    return inbound_event_store(
        source="stripe",
        event_id=event_id,
        event_type="invoice.paid",
        body='{"id": "evt_1"}',
        headers={"Stripe-Signature": "t=1,v1=x"},
        verified=True,
    )


def test_an_event_delivered_twice_is_stored_once():
    first, created_first = _store()
    second, created_second = _store()
    assert (created_first, created_second) == (True, False)
    assert first.pk == second.pk
    assert InboundEvent.objects.count() == 1


def test_a_failed_event_keeps_its_error_and_can_still_be_processed():
    event, _ = _store()
    event = inbound_event_failed(event_id=event.pk, error="Dolibarr 503")
    assert (event.error, event.processed_at, event.attempts) == ("Dolibarr 503", None, 1)
    event = inbound_event_processed(event_id=event.pk)
    assert event.processed_at is not None
    assert event.error == ""
    assert AuditEvent.objects.filter(action="event.processing_failed").count() == 1


def test_a_processed_event_is_not_processed_again():
    event, _ = _store()
    inbound_event_processed(event_id=event.pk)
    with pytest.raises(InvalidTransition):
        inbound_event_processed(event_id=event.pk)
