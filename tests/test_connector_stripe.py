"""The Stripe connector, through the official SDK, against the sandbox Stripe over HTTP."""

from __future__ import annotations

import json
import logging
import math
import socket
import time
import traceback
from datetime import UTC, datetime

import pytest

from reconciliation.connectors.stripe import (
    InvalidWebhookSignature,
    StripeConnector,
    endpoint_label,
)
from reconciliation.errors import (
    AuthenticationError,
    ConfigurationError,
    NotFoundError,
    PermanentError,
    TransientError,
)
from reconciliation.sandbox.webhooks import event_payload, sign_payload
from tests.fixtures_stripe import STRIPE_TEST_KEY, STRIPE_TEST_WEBHOOK_SECRET

WRONG_KEY = "sk_test_thisisnotthekey98765"


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def every_text_of(exc: BaseException) -> str:
    return "\n".join([str(exc), repr(exc), *traceback.format_exception(exc)])


# --- lists ----------------------------------------------------------------------------------
def test_auto_paging_reads_every_invoice_in_ceil_n_over_limit_calls(
    stripe_connector, stripe_dataset
):
    expected = len(stripe_dataset.collections["invoices"])

    invoices = list(stripe_connector.invoices(limit=7))

    assert len(invoices) == len({i["id"] for i in invoices}) == expected
    assert stripe_connector.call_counts["GET /v1/invoices"] == math.ceil(expected / 7)


def test_reset_call_counts_starts_again_from_zero(stripe_connector):
    list(stripe_connector.customers(limit=100))
    stripe_connector.reset_call_counts()
    assert sum(stripe_connector.call_counts.values()) == 0


def test_created_window_is_half_open(stripe_connector, stripe_dataset):
    charges = stripe_dataset.collections["charges"]
    low, high = charges[5]["created"], charges[20]["created"]

    found = list(stripe_connector.charges(created_gte=low, created_lt=high))

    assert {c["id"] for c in found} == {c["id"] for c in charges if low <= c["created"] < high}


def test_created_bounds_accept_aware_datetimes(stripe_connector, stripe_dataset):
    start = datetime(2026, 2, 1, tzinfo=UTC)
    found = list(stripe_connector.customers(created_gte=start))
    assert {c["id"] for c in found} == {
        c["id"]
        for c in stripe_dataset.collections["customers"]
        if c["created"] >= start.timestamp()
    }


def test_naive_datetime_bound_is_refused(stripe_connector):
    with pytest.raises(ValueError, match="aware"):
        stripe_connector.customers(created_gte=datetime(2026, 2, 1))


def test_page_size_outside_one_to_a_hundred_is_refused(stripe_connector):
    with pytest.raises(ValueError, match="page size"):
        stripe_connector.charges(limit=101)


def test_results_are_plain_json_ready_dicts(stripe_connector):
    invoice = next(stripe_connector.invoices(limit=1))
    assert type(invoice) is dict
    assert type(invoice["lines"]["data"][0]) is dict
    json.dumps(invoice)


def test_invoices_with_payments_name_what_paid_them(stripe_connector):
    paid = [i for i in stripe_connector.invoices(status="paid", with_payments=True) if i["total"]]
    assert paid
    for invoice in paid:
        (payment,) = invoice["payments"]["data"]
        intent = stripe_connector.payment_intent(payment["payment"]["payment_intent"])
        assert intent["amount_received"] == invoice["amount_paid"]


def test_invoice_payments_of_one_invoice(stripe_connector, stripe_dataset):
    invoice = next(i for i in stripe_dataset.collections["invoices"] if i["amount_paid"])
    payments = list(stripe_connector.invoice_payments(invoice=invoice["id"]))
    assert [p["invoice"] for p in payments] == [invoice["id"]]


def test_invoice_lines_are_read_in_invoice_order(stripe_connector, stripe_dataset):
    invoice = max(stripe_dataset.collections["invoices"], key=lambda i: len(i["lines"]["data"]))
    lines = list(stripe_connector.invoice_lines(invoice["id"], limit=1))
    assert [line["id"] for line in lines] == [line["id"] for line in invoice["lines"]["data"]]
    assert stripe_connector.call_counts["GET /v1/invoices/{id}/lines"] == len(lines)


def test_refunds_of_a_charge(stripe_connector, stripe_dataset):
    refund = stripe_dataset.collections["refunds"][0]
    assert [r["id"] for r in stripe_connector.refunds(charge=refund["charge"])] == [refund["id"]]


def test_balance_transactions_of_a_payout_net_to_its_amount(stripe_connector):
    payout = next(stripe_connector.payouts(status="paid"))
    transactions = list(stripe_connector.balance_transactions(payout=payout["id"]))
    assert sum(t["net"] for t in transactions if t["type"] != "payout") == payout["amount"]


def test_events_since_a_cursor_are_the_later_events_oldest_first(stripe_connector, stripe_dataset):
    events = stripe_dataset.collections["events"]
    cursor = events[9]["id"]

    later = list(stripe_connector.events_since(cursor, limit=50))

    assert [e["id"] for e in later] == [e["id"] for e in events[10:]]


def test_events_since_without_cursor_returns_every_event_oldest_first(
    stripe_connector, stripe_dataset
):
    found = list(stripe_connector.events_since(None, types=["invoice.paid"]))
    expected = [
        e["id"] for e in stripe_dataset.collections["events"] if e["type"] == "invoice.paid"
    ]
    assert [e["id"] for e in found] == expected


def test_events_since_an_unknown_cursor_is_not_found(stripe_connector):
    with pytest.raises(NotFoundError):
        list(stripe_connector.events_since("evt_forgotten"))


def test_retrieves_return_the_object(stripe_connector, stripe_dataset):
    charge = stripe_dataset.collections["charges"][0]
    assert stripe_connector.charge(charge["id"]) == charge
    customer = stripe_connector.customer(charge["customer"], with_tax_ids=True)
    assert customer["tax_ids"]["object"] == "list"
    assert stripe_connector.balance()["object"] == "balance"


def test_endpoint_label_folds_ids():
    url = "http://127.0.0.1:9/v1/invoices/in_123/lines?limit=3"
    assert endpoint_label("get", url) == "GET /v1/invoices/{id}/lines"


# --- errors ---------------------------------------------------------------------------------
def test_wrong_key_raises_authentication_error(stripe_sandbox):
    connector = StripeConnector(
        api_key=WRONG_KEY, api_base=stripe_sandbox.base_url, max_network_retries=0
    )
    with pytest.raises(AuthenticationError) as caught:
        list(connector.customers())
    assert caught.value.status == 401
    assert caught.value.system == "stripe"
    assert caught.value.endpoint == "GET /v1/customers"


def test_closed_port_raises_transient_error():
    connector = StripeConnector(
        api_key=STRIPE_TEST_KEY,
        api_base=f"http://127.0.0.1:{closed_port()}",
        max_network_retries=0,
        timeout=2.0,
    )
    with pytest.raises(TransientError) as caught:
        connector.invoice("in_anything")
    assert caught.value.endpoint == "GET /v1/invoices/{id}"


def test_missing_object_raises_not_found_error(stripe_connector):
    with pytest.raises(NotFoundError) as caught:
        stripe_connector.invoice("in_doesnotexist")
    assert caught.value.status == 404
    assert "in_doesnotexist" in str(caught.value)


def test_server_error_raises_transient_error(stripe_sandbox, stripe_connector):
    stripe_sandbox.faults.update(error_rate=1.0)
    with pytest.raises(TransientError) as caught:
        stripe_connector.balance()
    assert caught.value.status == 500


def test_refused_parameter_raises_permanent_error(stripe_connector):
    with pytest.raises(PermanentError) as caught:
        list(stripe_connector.invoices(status="settled"))
    assert caught.value.status == 400
    assert not isinstance(caught.value, NotFoundError | AuthenticationError)
    assert "Invalid status" in str(caught.value)


def test_retries_are_explicit_and_counted(stripe_sandbox):
    stripe_sandbox.faults.update(error_rate=1.0)
    connector = StripeConnector(
        api_key=STRIPE_TEST_KEY, api_base=stripe_sandbox.base_url, max_network_retries=1
    )
    started = time.monotonic()
    with pytest.raises(TransientError):
        connector.payout("po_anything")
    assert connector.call_counts["GET /v1/payouts/{id}"] == 2
    assert time.monotonic() - started < 5


def test_key_never_appears_in_errors_reprs_or_logs(stripe_sandbox, caplog):
    caplog.set_level(logging.DEBUG)
    connector = StripeConnector(
        api_key=WRONG_KEY, api_base=stripe_sandbox.base_url, max_network_retries=0
    )
    with pytest.raises(AuthenticationError) as caught:
        connector.customer("cus_anything")
    logging.getLogger("reconciliation").exception("sync failed", exc_info=caught.value)

    assert WRONG_KEY not in every_text_of(caught.value)
    assert WRONG_KEY not in repr(connector)
    assert WRONG_KEY not in caplog.text
    assert WRONG_KEY[-12:] not in every_text_of(caught.value)


# --- settings -------------------------------------------------------------------------------
def test_from_settings_requires_the_key(settings):
    settings.STRIPE_API_KEY = ""
    with pytest.raises(
        ConfigurationError, match=r"^STRIPE_API_KEY is not set; see \.env\.example$"
    ):
        StripeConnector.from_settings()


def test_from_settings_points_at_the_configured_base(settings, stripe_sandbox, stripe_dataset):
    settings.STRIPE_API_KEY = STRIPE_TEST_KEY
    settings.STRIPE_API_BASE = stripe_sandbox.base_url
    settings.STRIPE_MAX_NETWORK_RETRIES = 0

    connector = StripeConnector.from_settings()

    assert connector.max_network_retries == 0
    assert len(list(connector.customers())) == len(stripe_dataset.collections["customers"])


def test_empty_base_means_real_stripe(settings):
    settings.STRIPE_API_KEY = STRIPE_TEST_KEY
    settings.STRIPE_API_BASE = ""
    assert repr(StripeConnector.from_settings()) == "<StripeConnector https://api.stripe.com>"


# --- webhooks -------------------------------------------------------------------------------
def test_verify_webhook_returns_the_event(stripe_connector, stripe_dataset):
    event = stripe_dataset.collections["events"][-1]
    payload = event_payload(event)
    header = sign_payload(payload, STRIPE_TEST_WEBHOOK_SECRET, int(time.time()))

    verified = stripe_connector.verify_webhook(payload, header, STRIPE_TEST_WEBHOOK_SECRET)

    assert verified == event


@pytest.mark.parametrize(
    ("change", "secret", "age"),
    [
        ("tamper", STRIPE_TEST_WEBHOOK_SECRET, 0),
        ("none", "whsec_wrong", 0),
        ("none", STRIPE_TEST_WEBHOOK_SECRET, 301),
    ],
    ids=["tampered-body", "wrong-secret", "too-old"],
)
def test_bad_webhook_signature_raises_project_error(
    stripe_connector, stripe_dataset, change, secret, age
):
    payload = event_payload(stripe_dataset.collections["events"][0])
    header = sign_payload(payload, STRIPE_TEST_WEBHOOK_SECRET, int(time.time()) - age)
    if change == "tamper":
        payload = payload.replace(b'"object": "event"', b'"object": "evnt"')
    with pytest.raises(InvalidWebhookSignature):
        stripe_connector.verify_webhook(payload, header, secret)
