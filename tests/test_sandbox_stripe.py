"""The sandbox Stripe over HTTP: ordering, pagination, filters, expansion, Stripe's errors, webhook
signing and delivery, and the standalone command."""

from __future__ import annotations

import math
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import stripe

from reconciliation.sandbox.base import Request, Response, SandboxServer
from reconciliation.sandbox.stripe import masked_key
from reconciliation.sandbox.webhooks import SIGNATURE_HEADER, event_payload, sign_payload
from tests.fixtures_stripe import STRIPE_TEST_KEY, STRIPE_TEST_WEBHOOK_SECRET

AUTH = {"Authorization": f"Bearer {STRIPE_TEST_KEY}"}
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def get(sandbox, path, params=None, headers=AUTH):
    return requests.get(f"{sandbox.base_url}{path}", params=params, headers=headers, timeout=5)


def page_through(sandbox, path, limit, **params):
    """Every page of a list, following `starting_after`; returns (ids, number of pages)."""
    ids, pages, query = [], 0, {"limit": limit, **params}
    while True:
        body = get(sandbox, path, query).json()
        pages += 1
        ids += [obj["id"] for obj in body["data"]]
        if not body["has_more"]:
            return ids, pages
        query["starting_after"] = body["data"][-1]["id"]


# --- lists ----------------------------------------------------------------------------------
def test_list_object_has_stripe_envelope(stripe_sandbox):
    body = get(stripe_sandbox, "/v1/customers").json()
    assert set(body) == {"object", "data", "has_more", "url"}
    assert body["object"] == "list"
    assert body["url"] == "/v1/customers"


def test_lists_are_newest_first(stripe_sandbox):
    created = [
        c["created"] for c in get(stripe_sandbox, "/v1/charges", {"limit": 100}).json()["data"]
    ]
    assert created == sorted(created, reverse=True)


def test_limit_defaults_to_ten(stripe_sandbox):
    body = get(stripe_sandbox, "/v1/events").json()
    assert len(body["data"]) == 10
    assert body["has_more"] is True


def test_starting_after_pages_cover_every_object_exactly_once(stripe_sandbox, stripe_dataset):
    ids, pages = page_through(stripe_sandbox, "/v1/invoices", limit=4)
    expected = {i["id"] for i in stripe_dataset.collections["invoices"]}
    assert len(ids) == len(set(ids)) == len(expected)
    assert set(ids) == expected
    assert pages == math.ceil(len(expected) / 4)


def test_ending_before_returns_the_newer_neighbours(stripe_sandbox):
    newest_first = [
        c["id"] for c in get(stripe_sandbox, "/v1/charges", {"limit": 100}).json()["data"]
    ]
    body = get(
        stripe_sandbox, "/v1/charges", {"limit": 3, "ending_before": newest_first[10]}
    ).json()
    assert [c["id"] for c in body["data"]] == newest_first[7:10]
    assert body["has_more"] is True


def test_starting_after_and_ending_before_together_are_refused(stripe_sandbox, stripe_dataset):
    some_id = stripe_dataset.collections["charges"][0]["id"]
    answer = get(
        stripe_sandbox, "/v1/charges", {"starting_after": some_id, "ending_before": some_id}
    )
    assert answer.status_code == 400


def test_unknown_cursor_is_resource_missing(stripe_sandbox):
    answer = get(stripe_sandbox, "/v1/invoices", {"starting_after": "in_unknown"})
    assert answer.status_code == 404
    assert answer.json()["error"]["param"] == "starting_after"


def test_created_gte_keeps_only_later_objects(stripe_sandbox, stripe_dataset):
    invoices = stripe_dataset.collections["invoices"]
    middle = invoices[len(invoices) // 2]["created"]
    ids, _ = page_through(stripe_sandbox, "/v1/invoices", limit=100, **{"created[gte]": middle})
    assert set(ids) == {i["id"] for i in invoices if i["created"] >= middle}


def test_created_window_and_exact_created(stripe_sandbox, stripe_dataset):
    invoices = stripe_dataset.collections["invoices"]
    low, high = invoices[3]["created"], invoices[9]["created"]
    window = {"created[gt]": low, "created[lte]": high, "limit": 100}
    ids = [i["id"] for i in get(stripe_sandbox, "/v1/invoices", window).json()["data"]]
    assert set(ids) == {i["id"] for i in invoices if low < i["created"] <= high}
    exact = get(stripe_sandbox, "/v1/invoices", {"created": low}).json()["data"]
    assert [i["id"] for i in exact] == [i["id"] for i in invoices if i["created"] == low]


def test_limit_above_one_hundred_is_refused(stripe_sandbox):
    answer = get(stripe_sandbox, "/v1/customers", {"limit": 101})
    assert answer.status_code == 400
    assert answer.json()["error"]["message"] == "This value must be less than or equal to 100."


def test_unknown_parameter_is_refused_by_name(stripe_sandbox):
    answer = get(stripe_sandbox, "/v1/invoices", {"customr": "cus_x"})
    assert answer.status_code == 400
    assert answer.json()["error"] == {
        "message": "Received unknown parameter: customr",
        "param": "customr",
        "type": "invalid_request_error",
    }


def test_customer_filter_on_invoices(stripe_sandbox, stripe_dataset):
    customer = stripe_dataset.collections["invoices"][0]["customer"]
    body = get(stripe_sandbox, "/v1/invoices", {"customer": customer, "limit": 100}).json()
    assert body["data"]
    assert {i["customer"] for i in body["data"]} == {customer}


def test_invoice_payments_filtered_by_invoice_name_the_payment_intent(
    stripe_sandbox, stripe_dataset
):
    invoice = next(i for i in stripe_dataset.collections["invoices"] if i["amount_paid"] > 0)
    (payment,) = get(stripe_sandbox, "/v1/invoice_payments", {"invoice": invoice["id"]}).json()[
        "data"
    ]
    intent = get(
        stripe_sandbox, f"/v1/payment_intents/{payment['payment']['payment_intent']}"
    ).json()
    assert intent["amount_received"] == invoice["amount_paid"]


def test_refunds_filtered_by_charge(stripe_sandbox, stripe_dataset):
    refund = stripe_dataset.collections["refunds"][0]
    body = get(stripe_sandbox, "/v1/refunds", {"charge": refund["charge"]}).json()
    assert [r["id"] for r in body["data"]] == [refund["id"]]


def test_balance_transactions_of_a_payout_sum_to_its_amount(stripe_sandbox, stripe_dataset):
    payout = stripe_dataset.collections["payouts"][-1]
    body = get(
        stripe_sandbox, "/v1/balance_transactions", {"payout": payout["id"], "limit": 100}
    ).json()
    paid_out = [t for t in body["data"] if t["type"] != "payout"]
    assert sum(t["net"] for t in paid_out) == payout["amount"]
    assert sum(t["net"] for t in body["data"]) == 0


def test_balance_transactions_filtered_by_type(stripe_sandbox):
    body = get(stripe_sandbox, "/v1/balance_transactions", {"type": "refund", "limit": 100}).json()
    assert body["data"]
    assert {t["type"] for t in body["data"]} == {"refund"}


def test_events_filtered_by_types_with_a_wildcard(stripe_sandbox):
    params = [("types[]", "invoice.*"), ("types[]", "payout.paid"), ("limit", "100")]
    body = get(stripe_sandbox, "/v1/events", params).json()
    kinds = {e["type"] for e in body["data"]}
    assert "payout.paid" in kinds
    assert all(k.startswith("invoice.") or k == "payout.paid" for k in kinds)


def test_balance_lists_each_currency(stripe_sandbox):
    body = get(stripe_sandbox, "/v1/balance").json()
    assert body["object"] == "balance"
    assert {entry["currency"] for entry in body["available"]} >= {"eur", "jpy"}


# --- expansion ------------------------------------------------------------------------------
def test_expand_data_customer_embeds_each_customer(stripe_sandbox):
    body = get(stripe_sandbox, "/v1/invoices", {"expand[]": "data.customer"}).json()
    assert all(i["customer"]["object"] == "customer" for i in body["data"])


def test_expand_with_the_sdk_indexed_spelling(stripe_sandbox, stripe_dataset):
    charge = next(c for c in stripe_dataset.collections["charges"] if c["balance_transaction"])
    params = {"expand[0]": "balance_transaction", "expand[1]": "payment_intent"}
    body = get(stripe_sandbox, f"/v1/charges/{charge['id']}", params).json()
    assert body["balance_transaction"]["fee"] > 0
    assert body["payment_intent"]["latest_charge"] == charge["id"]


def test_expand_payments_on_an_invoice(stripe_sandbox, stripe_dataset):
    invoice = next(i for i in stripe_dataset.collections["invoices"] if i["amount_paid"] > 0)
    body = get(stripe_sandbox, f"/v1/invoices/{invoice['id']}", {"expand[]": "payments"}).json()
    (payment,) = body["payments"]["data"]
    assert payment["payment"]["payment_intent"].startswith("pi_")
    assert "payments" not in get(stripe_sandbox, f"/v1/invoices/{invoice['id']}").json()


def test_nested_expansion_through_a_list(stripe_sandbox):
    params = {"expand[]": "data.latest_charge.balance_transaction", "limit": 3}
    body = get(stripe_sandbox, "/v1/payment_intents", params).json()
    txn = body["data"][0]["latest_charge"]["balance_transaction"]
    assert txn is None or txn["object"] == "balance_transaction"


def test_expanding_a_field_that_is_not_expandable_is_refused(stripe_sandbox):
    answer = get(stripe_sandbox, "/v1/invoices", {"expand[]": "data.total"})
    assert answer.status_code == 400
    assert answer.json()["error"]["message"] == "This property cannot be expanded (data.total)."


def test_invoices_embed_their_lines(stripe_sandbox, stripe_dataset):
    invoice = stripe_dataset.collections["invoices"][0]
    lines = get(stripe_sandbox, f"/v1/invoices/{invoice['id']}").json()["lines"]
    assert lines["object"] == "list"
    assert lines["url"] == f"/v1/invoices/{invoice['id']}/lines"
    assert lines["data"][0]["object"] == "line_item"


# --- errors ---------------------------------------------------------------------------------
def test_unknown_object_is_404_resource_missing(stripe_sandbox):
    answer = get(stripe_sandbox, "/v1/customers/cus_doesnotexist")
    assert answer.status_code == 404
    assert answer.json() == {
        "error": {
            "code": "resource_missing",
            "doc_url": "https://stripe.com/docs/error-codes/resource-missing",
            "message": "No such customer: 'cus_doesnotexist'",
            "param": "id",
            "type": "invalid_request_error",
        }
    }


def test_unknown_url_is_404_unrecognized(stripe_sandbox):
    answer = get(stripe_sandbox, "/v1/nothing")
    assert answer.status_code == 404
    assert answer.json()["error"]["message"].startswith(
        "Unrecognized request URL (GET: /v1/nothing)."
    )


def test_missing_key_is_401_in_stripe_words(stripe_sandbox):
    answer = get(stripe_sandbox, "/v1/customers", headers={})
    assert answer.status_code == 401
    assert answer.json()["error"]["message"].startswith("You did not provide an API key.")
    assert answer.json()["error"]["type"] == "invalid_request_error"


def test_wrong_key_is_401_showing_only_its_last_four_characters(stripe_sandbox):
    wrong = "sk_test_wrongwrongwrong4321"
    answer = get(stripe_sandbox, "/v1/customers", headers={"Authorization": f"Bearer {wrong}"})
    assert answer.status_code == 401
    message = answer.json()["error"]["message"]
    assert message == f"Invalid API Key provided: sk_test_{'*' * (len(wrong) - 12)}4321"
    assert "wrong" not in message


def test_key_as_basic_auth_user_is_accepted(stripe_sandbox):
    answer = requests.get(
        f"{stripe_sandbox.base_url}/v1/customers", auth=(STRIPE_TEST_KEY, ""), timeout=5
    )
    assert answer.status_code == 200


def test_masked_key_keeps_the_first_eight_and_last_four():
    assert masked_key("sk_test_abcdefgh1234") == "sk_test_********1234"


def test_injected_server_error_has_stripe_shape(stripe_sandbox):
    stripe_sandbox.faults.update(error_rate=1.0)
    answer = get(stripe_sandbox, "/v1/customers")
    assert answer.status_code == 500
    assert answer.json()["error"]["type"] == "api_error"


def test_answers_carry_request_id_and_api_version(stripe_sandbox):
    answer = get(stripe_sandbox, "/v1/customers")
    assert answer.headers["Request-Id"].startswith("req_")
    assert answer.headers["Stripe-Version"] == stripe.api_version


# --- webhooks -------------------------------------------------------------------------------
@pytest.fixture
def signed_event(stripe_dataset):
    event = stripe_dataset.collections["events"][0]
    payload = event_payload(event)
    return payload, sign_payload(payload, STRIPE_TEST_WEBHOOK_SECRET, int(time.time()))


def test_signature_is_verified_by_stripe_construct_event(signed_event, stripe_dataset):
    payload, header = signed_event
    event = stripe.Webhook.construct_event(
        payload, header, STRIPE_TEST_WEBHOOK_SECRET, tolerance=300
    )
    assert event.id == stripe_dataset.collections["events"][0]["id"]


def test_tampered_body_fails_verification(signed_event):
    payload, header = signed_event
    tampered = payload.replace(b'"livemode": false', b'"livemode": true')
    assert tampered != payload
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(tampered, header, STRIPE_TEST_WEBHOOK_SECRET, tolerance=300)


def test_wrong_secret_fails_verification(signed_event):
    payload, header = signed_event
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload, header, "whsec_someoneelse", tolerance=300)


def test_signature_older_than_tolerance_fails(stripe_dataset):
    payload = event_payload(stripe_dataset.collections["events"][0])
    header = sign_payload(payload, STRIPE_TEST_WEBHOOK_SECRET, int(time.time()) - 301)
    with pytest.raises(stripe.SignatureVerificationError, match="tolerance"):
        stripe.Webhook.construct_event(payload, header, STRIPE_TEST_WEBHOOK_SECRET, tolerance=300)


def test_signature_header_matches_stripes_own_generator():
    payload = b'{"id": "evt_1"}'
    expected = stripe.WebhookSignature.generate_signature_header(
        payload.decode(), STRIPE_TEST_WEBHOOK_SECRET, timestamp=1_700_000_000
    )
    assert sign_payload(payload, STRIPE_TEST_WEBHOOK_SECRET, 1_700_000_000) == expected


@pytest.fixture
def webhook_receiver():
    """A loopback endpoint that records what it receives."""
    received: list[tuple[bytes, str]] = []
    receiver = SandboxServer()
    receiver.poll_interval = 0.05

    def record(request: Request) -> Response:
        received.append((request.body, request.header(SIGNATURE_HEADER.lower())))
        return Response.json({"received": True})

    receiver.router.add("POST", "/hooks/stripe", record)
    with receiver:
        yield f"{receiver.base_url}/hooks/stripe", received


def test_sandbox_delivers_signed_events_to_the_endpoint(stripe_sandbox, webhook_receiver):
    url, received = webhook_receiver
    answer = requests.post(
        f"{stripe_sandbox.base_url}/_sandbox/webhooks/deliver",
        json={"url": url, "types": ["payout.paid"]},
        timeout=10,
    )
    delivered = answer.json()["delivered"]
    assert delivered
    assert {d["status"] for d in delivered} == {200}
    assert len(received) == len(delivered)
    for body, header in received:
        event = stripe.Webhook.construct_event(
            body, header, STRIPE_TEST_WEBHOOK_SECRET, tolerance=300
        )
        assert event.type == "payout.paid"


def test_delivery_failure_is_recorded_not_raised(stripe_sandbox, stripe_dataset):
    event_id = stripe_dataset.collections["events"][0]["id"]
    results = stripe_sandbox.deliver_events(ids=[event_id], url="http://127.0.0.1:1/hooks")
    assert [(r.event_id, r.status) for r in results] == [(event_id, None)]
    assert results[0].error == "ConnectionError"


# --- command line ---------------------------------------------------------------------------
def _first_line(process: subprocess.Popen, timeout: float = 20.0) -> str:
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, "the sandbox printed nothing"
    return process.stdout.readline().strip()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_command_prints_its_address_serves_and_stops_cleanly(signum):
    command = [
        sys.executable,
        "-m",
        "reconciliation.sandbox.stripe",
        "--port",
        "0",
        "--api-key",
        STRIPE_TEST_KEY,
        "--customers",
        "3",
        "--months",
        "2",
    ]
    # Without PYTHONUNBUFFERED the line only arrives if the command flushes it.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    process = subprocess.Popen(
        command,
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = _first_line(process)
        assert line.startswith("Stripe sandbox listening on http://127.0.0.1:")
        base_url = line.rsplit(" ", 1)[-1]
        answer = requests.get(f"{base_url}/v1/customers", headers=AUTH, timeout=5)
        assert len(answer.json()["data"]) == 3
        process.send_signal(signum)
        assert process.wait(timeout=10) == 0
        assert process.stderr.read() == ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_command_refuses_a_non_loopback_host():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "reconciliation.sandbox.stripe",
            "--host",
            "0.0.0.0",
            "--api-key",
            "k",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "loopback" in result.stderr


def test_dataset_summary_control_endpoint(stripe_sandbox, stripe_dataset):
    body = requests.get(f"{stripe_sandbox.base_url}/_sandbox/dataset", timeout=5).json()
    assert body["counts"] == stripe_dataset.counts()
    assert body["seed"] == stripe_dataset.seed
