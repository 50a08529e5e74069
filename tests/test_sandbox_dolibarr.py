"""Behaviour of the sandbox Dolibarr, over HTTP: faults, races, totals, PDFs, auth, the CLI."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from reconciliation.sandbox.base import Faults, Request, Response, SandboxServer
from reconciliation.sandbox.dolibarr import DolibarrSandbox
from tests.processes import concurrently

DAY = 1795219200  # 2026-11-21T00:00:00Z, the day of the recordings
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def api(
    dolibarr_sandbox: DolibarrSandbox, dolibarr_api_key: str
) -> Callable[..., requests.Response]:
    """`api("GET", "/status")`: one call to the sandbox with the right key."""
    session = requests.Session()
    session.headers["DOLAPIKEY"] = dolibarr_api_key

    def call(method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 10)
        return session.request(method, dolibarr_sandbox.api_url + path, **kwargs)

    yield call
    session.close()


def customer(api: Callable[..., requests.Response], **fields: Any) -> int:
    payload = {"name": "Marie Curie", "email": "marie@example.test", "client": 1, **fields}
    response = api("POST", "/thirdparties", json=payload)
    assert response.status_code == 200, response.text
    return response.json()


def draft_invoice(
    api: Callable[..., requests.Response], socid: int, *lines: dict[str, Any], **fields: Any
) -> int:
    payload = {
        "socid": socid,
        "date": DAY + 3600,
        "lines": list(lines)
        or [{"desc": "Subscription", "qty": 1, "subprice": "20", "tva_tx": 20}],
        **fields,
    }
    response = api("POST", "/invoices", json=payload)
    assert response.status_code == 200, response.text
    return response.json()


def pay(
    api: Callable[..., requests.Response], invoice_id: int, amount: str, **fields: Any
) -> requests.Response:
    payload = {
        "arrayofamounts": {str(invoice_id): {"amount": amount, "multicurrency_amount": ""}},
        "datepaye": DAY + 7200,
        "paymentid": 6,
        "closepaidinvoices": "yes",
        "accountid": 1,
        **fields,
    }
    return api("POST", "/invoices/paymentsdistributed", json=payload)


def invoice(api: Callable[..., requests.Response], invoice_id: int) -> dict[str, Any]:
    response = api("GET", f"/invoices/{invoice_id}")
    assert response.status_code == 200, response.text
    return response.json()


# -- authentication --------------------------------------------------------------------------------


def test_missing_key_is_refused_with_the_recorded_401(dolibarr_sandbox: DolibarrSandbox) -> None:
    response = requests.get(f"{dolibarr_sandbox.api_url}/status", timeout=5)
    assert response.status_code == 401
    assert response.json()["error"]["message"] == (
        "Unauthorized: Failed to login to API. Neither parameter 'HTTP_DOLAPIKEY' nor "
        "'Authentication: Bearer' found on HTTP header (and no parameter DOLAPIKEY in URL)."
    )


def test_wrong_key_is_refused_with_the_recorded_401(dolibarr_sandbox: DolibarrSandbox) -> None:
    response = requests.get(
        f"{dolibarr_sandbox.api_url}/status", headers={"DOLAPIKEY": "nope"}, timeout=5
    )
    assert response.status_code == 401
    assert response.json()["error"]["message"] == (
        "Unauthorized: Error user not valid (not found with api key or bad status or bad "
        "validity dates) (conf->entity=1)"
    )


def test_bearer_token_is_accepted(dolibarr_sandbox: DolibarrSandbox, dolibarr_api_key: str) -> None:
    response = requests.get(
        f"{dolibarr_sandbox.api_url}/status",
        headers={"Authorization": f"Bearer {dolibarr_api_key}"},
        timeout=5,
    )
    assert response.status_code == 200
    assert response.json()["success"]["dolibarr_version"] == "23.0.0-beta"


# -- fresh state -----------------------------------------------------------------------------------


def test_fresh_sandbox_has_the_stripe_bank_account_and_card_payment_type(api) -> None:
    accounts = api("GET", "/bankaccounts").json()
    assert [(a["id"], a["ref"], a["label"]) for a in accounts] == [("1", "STRIPE", "Stripe EUR")]
    types = api("GET", "/setup/dictionary/payment_types").json()
    assert {"id": "6", "code": "CB"}.items() <= next(t for t in types if t["code"] == "CB").items()
    assert api("GET", "/setup/company").json()["country_code"] == "FR"


def test_reset_forgets_everything_but_the_seed(api, dolibarr_sandbox: DolibarrSandbox) -> None:
    customer(api)
    dolibarr_sandbox.reset()
    assert api("GET", "/thirdparties").status_code == 404
    assert len(api("GET", "/bankaccounts").json()) == 1


# -- fault knobs -----------------------------------------------------------------------------------


def test_latency_knob_delays_every_answer(api, dolibarr_sandbox: DolibarrSandbox) -> None:
    dolibarr_sandbox.faults.update(latency_ms=150)
    started = time.monotonic()
    assert api("GET", "/status").status_code == 200
    assert time.monotonic() - started >= 0.15


class _FakeClock:
    """Stands for the sandbox's `time` module: `sleep` advances `now`, nothing really waits."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def monotonic(self) -> float:
        return self.now


def test_numbering_window_is_spent_out_of_the_latency(
    api, dolibarr_sandbox: DolibarrSandbox, monkeypatch
) -> None:
    # The latency is the server's whole time per request: a validation's numbering window is
    # part of it, so the request takes 50 ms in all, not 50 + 30.
    clock = _FakeClock()
    monkeypatch.setattr("reconciliation.sandbox.base.time", clock)
    socid = customer(api)
    draft = draft_invoice(api, socid)
    dolibarr_sandbox.numbering_window_ms = 30
    dolibarr_sandbox.faults.update(latency_ms=50)
    before = clock.now
    assert api("POST", f"/invoices/{draft}/validate").status_code == 200
    assert clock.now - before == pytest.approx(0.050)
    assert pytest.approx(0.030) in clock.slept


def test_the_sandboxs_own_work_is_spent_out_of_the_latency(monkeypatch) -> None:
    # 3 ms of handler work (stood for by the fake clock) inside a 20 ms latency: 20 ms in all.
    clock = _FakeClock()
    monkeypatch.setattr("reconciliation.sandbox.base.time", clock)

    def work(request: Request) -> Response:
        clock.now += 0.003
        return Response.json({"ok": True})

    server = SandboxServer(faults=Faults(latency_ms=20))
    server.router.add("GET", "/work", work)
    with server:
        before = clock.now
        assert requests.get(f"{server.base_url}/work", timeout=10).json() == {"ok": True}
    assert clock.now - before == pytest.approx(0.020)


def test_error_knob_answers_500_and_does_nothing(api, dolibarr_sandbox: DolibarrSandbox) -> None:
    dolibarr_sandbox.faults.update(error_rate=1.0)
    response = api("POST", "/thirdparties", json={"name": "Lost"})
    assert response.status_code == 500
    assert set(response.json()) == {"error", "debug"}
    dolibarr_sandbox.faults.update(error_rate=0.0)
    assert api("GET", "/thirdparties").status_code == 404


def test_drop_knob_closes_the_connection_without_answer(api, dolibarr_sandbox) -> None:
    dolibarr_sandbox.faults.update(drop_rate=1.0)
    with pytest.raises(requests.ConnectionError):
        api("GET", "/status")


def test_timeout_knob_hangs_past_the_client_timeout(api, dolibarr_sandbox) -> None:
    dolibarr_sandbox.faults.update(timeout_rate=1.0, timeout_seconds=0.5)
    with pytest.raises(requests.ReadTimeout):
        api("GET", "/status", timeout=0.1)


def test_lost_response_applies_the_write(api, dolibarr_sandbox: DolibarrSandbox) -> None:
    dolibarr_sandbox.faults.update(lost_response_rate=1.0)
    with pytest.raises(requests.ConnectionError):
        api("POST", "/thirdparties", json={"name": "Ghost", "ref_ext": "ap24-user-7"})
    dolibarr_sandbox.faults.update(lost_response_rate=0.0)
    found = api("GET", "/thirdparties", params={"sqlfilters": "(t.ref_ext:=:'ap24-user-7')"})
    assert [row["name"] for row in found.json()] == ["Ghost"]


def test_fault_knobs_can_be_set_over_http(dolibarr_sandbox: DolibarrSandbox) -> None:
    response = requests.post(
        f"{dolibarr_sandbox.base_url}/_sandbox/faults", json={"latency_ms": 5}, timeout=5
    )
    assert response.json()["latency_ms"] == 5
    assert dolibarr_sandbox.faults.latency_ms == 5


# -- recorded quirks -------------------------------------------------------------------------------


def test_thirdparty_search_without_hit_is_404_but_invoice_search_is_empty_list(api) -> None:
    thirdparties = api("GET", "/thirdparties", params={"sqlfilters": "(t.ref_ext:=:'x')"})
    invoices = api("GET", "/invoices", params={"sqlfilters": "(t.ref_ext:=:'x')"})
    assert thirdparties.status_code == 404
    assert thirdparties.json()["error"]["message"] == "Not Found: No third parties found"
    assert (invoices.status_code, invoices.json()) == (200, [])


def test_unquoted_filter_value_is_taken_as_a_column(api) -> None:
    response = api("GET", "/thirdparties", params={"sqlfilters": "(t.ref_ext:=:ap24-user-42)"})
    assert response.status_code == 503
    assert "Unknown column 'ap24user42' in 'WHERE'" in response.json()["error"]["message"]


def test_plain_sql_filter_is_a_bad_syntax_400(api) -> None:
    response = api("GET", "/thirdparties", params={"sqlfilters": "t.email='a@b.test'"})
    assert response.status_code == 400
    assert "Bad syntax of the search string: (t.email='a@b.test')" in response.text


def test_like_filter_treats_underscore_as_a_wildcard(api) -> None:
    socid = customer(api)
    draft_invoice(api, socid, ref_ext="inXREC1")
    response = api("GET", "/invoices", params={"sqlfilters": "(t.ref_ext:like:'in_REC1%')"})
    assert [row["ref_ext"] for row in response.json()] == ["inXREC1"]


def test_apostrophe_in_path_is_refused_with_an_html_403(api) -> None:
    response = api("GET", "/thirdparties/email/o'brien@example.test")
    assert response.status_code == 403
    assert response.headers["Content-Type"].startswith("text/html")
    assert "SQL or Script injection protection" in response.text


def test_email_shared_by_two_thirdparties_gives_an_all_null_object(api) -> None:
    customer(api, email="twin@example.test")
    customer(api, email="twin@example.test")
    response = api("GET", "/thirdparties/email/twin@example.test")
    assert response.status_code == 200
    assert response.json()["id"] is None


def test_automatic_customer_code_and_phone_normalisation(api) -> None:
    socid = customer(api, code_client="-1", phone="+33 1 23 45 67 89", country_code="FR")
    row = api("GET", f"/thirdparties/{socid}").json()
    assert re.fullmatch(r"CU\d{4}-00001", row["code_client"])
    assert (row["phone"], row["country_id"]) == ("+33123456789", "1")


def test_unknown_country_code_is_a_404_and_creates_nothing(api) -> None:
    response = api("POST", "/thirdparties", json={"name": "X", "country_code": "XX"})
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "Not Found: Country code not found in database: "
    assert api("GET", "/thirdparties").status_code == 404


def test_second_stripe_link_replaces_the_first(api) -> None:
    socid = customer(api)
    api(
        "POST",
        f"/thirdparties/{socid}/accounts/stripe",
        json={"key_account": "cus_A", "site_account": "pk"},
    )
    api("POST", f"/thirdparties/{socid}/accounts/stripe", json={"key_account": "cus_B"})
    rows = api("GET", f"/thirdparties/{socid}/accounts").json()
    assert [row["key_account"] for row in rows] == ["cus_B"]
    assert api("GET", "/thirdparties/accounts/stripe/cus_A").status_code == 404


# -- invoices and totals ---------------------------------------------------------------------------


def test_line_and_document_totals_are_rounded_per_line_to_the_cent(api) -> None:
    """VAT 20 / 5.5 / 2.1 with a discount: each line rounded half-up, then summed."""
    socid = customer(api)
    invoice_id = draft_invoice(
        api,
        socid,
        {"desc": "A", "qty": 2, "subprice": "12.50", "tva_tx": 20, "remise_percent": 10},
        {"desc": "B", "qty": 1, "subprice": "7.99", "tva_tx": "5.5"},
        {"desc": "C", "qty": 3, "subprice": "9.78333333", "tva_tx": "2.1"},
    )
    row = invoice(api, invoice_id)
    assert [(line["total_ht"], line["total_tva"]) for line in row["lines"]] == [
        ("22.50000000", "4.50000000"),
        ("7.99000000", "0.44000000"),
        ("29.35000000", "0.62000000"),
    ]
    assert (row["total_ht"], row["total_tva"], row["total_ttc"]) == (
        "59.84000000",
        "5.56000000",
        "65.40000000",
    )


def test_two_decimal_net_price_is_a_cent_off_the_gross_price(api) -> None:
    """README: 3 x 9.99 incl. 2.1 % VAT is 29.97 with 9.78333333 net, 29.96 with 9.78."""
    socid = customer(api)
    exact = draft_invoice(api, socid, {"qty": 3, "subprice": "9.78333333", "tva_tx": "2.1"})
    rounded = draft_invoice(api, socid, {"qty": 3, "subprice": "9.78", "tva_tx": "2.1"})
    assert invoice(api, exact)["total_ttc"] == "29.97000000"
    assert invoice(api, rounded)["total_ttc"] == "29.96000000"


def test_ids_are_bare_integers_and_numbers_are_strings(api) -> None:
    socid = customer(api)
    invoice_id = draft_invoice(api, socid)
    row = invoice(api, invoice_id)
    assert isinstance(invoice_id, int)
    assert (row["id"], row["ref"], row["statut"]) == (str(invoice_id), f"(PROV{invoice_id})", "0")
    assert (row["total_ttc"], row["lines"][0]["tva_tx"]) == ("24.00000000", "20.0000")


def test_validation_numbers_the_invoice_and_revalidation_is_304(api) -> None:
    invoice_id = draft_invoice(api, customer(api))
    first = api("POST", f"/invoices/{invoice_id}/validate", json={"notrigger": 0})
    again = api("POST", f"/invoices/{invoice_id}/validate", json={"notrigger": 0})
    assert first.json()["ref"] == "FA2611-0001"
    assert (again.status_code, again.text) == (304, "")


def test_validating_an_invoice_without_lines_is_a_500(api) -> None:
    response = api("POST", "/invoices", json={"socid": customer(api)})
    invoice_id = response.json()
    answer = api("POST", f"/invoices/{invoice_id}/validate")
    assert answer.status_code == 500
    assert answer.json()["error"]["message"] == (
        "Internal Server Error: Error when validating Invoice: "
        f"Object (PROV{invoice_id}) must have lines to be validated."
    )


def test_settodraft_keeps_the_definitive_number(api) -> None:
    invoice_id = draft_invoice(api, customer(api))
    api("POST", f"/invoices/{invoice_id}/validate")
    api("POST", f"/invoices/{invoice_id}/settodraft")
    revalidated = api("POST", f"/invoices/{invoice_id}/validate").json()
    assert revalidated["ref"] == "FA2611-0001"
    another = draft_invoice(api, 1)
    assert api("POST", f"/invoices/{another}/validate").json()["ref"] == "FA2611-0002"


def test_credit_note_is_stored_negative_with_an_av_number(api) -> None:
    socid = customer(api)
    source = draft_invoice(api, socid)
    credit = draft_invoice(
        api,
        socid,
        {"desc": "Refund", "qty": 1, "subprice": "22.50", "tva_tx": 20},
        type=2,
        fk_facture_source=source,
    )
    validated = api("POST", f"/invoices/{credit}/validate").json()
    assert (validated["ref"], validated["total_ttc"]) == ("AV2611-0001", "-27.00000000")
    assert validated["lines"][0]["subprice"] == "-22.50000000"


def test_refund_through_paymentsdistributed_closes_the_credit_note(api) -> None:
    socid = customer(api)
    credit = draft_invoice(api, socid, {"qty": 1, "subprice": "25", "tva_tx": 20}, type=2)
    api("POST", f"/invoices/{credit}/validate")
    assert pay(api, credit, "30.00").status_code == 200
    row = invoice(api, credit)
    assert (row["statut"], row["paye"], row["remaintopay"], row["totalpaid"]) == (
        "2",
        "1",
        "0",
        -30,
    )


def test_refund_through_the_payments_route_records_the_wrong_sign(api) -> None:
    socid = customer(api)
    credit = draft_invoice(api, socid, {"qty": 1, "subprice": "22.50", "tva_tx": 20}, type=2)
    api("POST", f"/invoices/{credit}/validate")
    payload = {"datepaye": DAY, "paymentid": 6, "closepaidinvoices": "yes", "accountid": 1}
    assert api("POST", f"/invoices/{credit}/payments", json=payload).status_code == 200
    row = invoice(api, credit)
    assert (row["statut"], row["paye"], row["remaintopay"], row["totalpaid"]) == (
        "1",
        "0",
        "-54",
        27,
    )


def test_partial_payment_keeps_the_invoice_open_and_overpayment_is_refused(api) -> None:
    invoice_id = draft_invoice(api, customer(api))
    api("POST", f"/invoices/{invoice_id}/validate")
    assert pay(api, invoice_id, "10.00", ref_ext="ch_1").status_code == 200
    refused = pay(api, invoice_id, "50.00")
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == (
        f"Bad Request: Payment amount on invoice ID {invoice_id} (50) is higher than remain "
        "to pay (14)"
    )
    row = invoice(api, invoice_id)
    assert (row["statut"], row["paye"], row["remaintopay"]) == ("1", "0", "14")
    assert pay(api, invoice_id, "50.00", accepthigherpayment=True).status_code == 200


def test_paying_a_draft_closes_it_without_a_number(api) -> None:
    invoice_id = draft_invoice(api, customer(api))
    assert pay(api, invoice_id, "remain").status_code == 200
    row = invoice(api, invoice_id)
    assert (row["ref"], row["statut"], row["paye"], row["date_validation"]) == (
        f"(PROV{invoice_id})",
        "2",
        "1",
        "",
    )


def test_payment_writes_a_bank_line_linked_to_customer_and_payment(api) -> None:
    socid = customer(api)
    invoice_id = draft_invoice(api, socid)
    api("POST", f"/invoices/{invoice_id}/validate")
    payment_id = pay(api, invoice_id, "remain", num_payment="ch_9", ref_ext="ch_9").json()
    lines = api("GET", "/bankaccounts/1/lines", params={"sqlfilters": "(num_chq:=:'ch_9')"}).json()
    assert [(line["label"], line["amount"]) for line in lines] == [
        ("(CustomerInvoicePayment)", "24.00000000")
    ]
    links = api("GET", f"/bankaccounts/1/lines/{lines[0]['id']}/links").json()
    assert [(link["type"], link["url_id"]) for link in links] == [
        ("company", str(socid)),
        ("payment", str(payment_id)),
    ]
    payments = api("GET", "/paiements", params={"sqlfilters": "(t.ref_ext:=:'ch_9')"}).json()
    assert [p["id"] for p in payments] == [str(payment_id)]


def test_transfer_answers_201_and_moves_both_balances(api) -> None:
    main = api(
        "POST",
        "/bankaccounts",
        json={"ref": "MAIN", "label": "Main", "type": 1, "currency_code": "EUR", "country_id": 1},
    ).json()
    api(
        "POST",
        "/bankaccounts/1/lines",
        json={"date": DAY, "type": "CB", "label": "in", "amount": 200},
    )
    response = api(
        "POST",
        "/bankaccounts/transfer",
        json={
            "bankaccount_from_id": 1,
            "bankaccount_to_id": main,
            "date": DAY,
            "description": "Stripe payout po_1",
            "amount": "150.25",
        },
    )
    assert response.status_code == 201
    assert api("GET", "/bankaccounts/1/balance").json() == 49.75
    assert api("GET", f"/bankaccounts/{main}/balance").json() == 150.25


# -- documents -------------------------------------------------------------------------------------


def assert_valid_pdf(content: bytes) -> None:
    """Header, an xref whose offsets each point at their object, a trailer, %%EOF."""
    assert content.startswith(b"%PDF-")
    tail = re.search(rb"startxref\n(\d+)\n%%EOF\n?$", content)
    assert tail, "no startxref/%%EOF at the end"
    xref_at = int(tail.group(1))
    assert content[xref_at:].startswith(b"xref\n")
    header = re.match(rb"xref\n0 (\d+)\n", content[xref_at:])
    count = int(header.group(1))
    entries = content[xref_at + header.end() :].split(b"\n")[:count]
    for number, entry in enumerate(entries):
        offset, _, kind = entry.split(b" ")[:3]
        if kind == b"n":
            assert content[int(offset) :].startswith(b"%d 0 obj" % number)
    trailer = content[content.index(b"trailer", xref_at) :]
    assert b"/Root 1 0 R" in trailer
    assert b"/Size %d" % count in trailer


def test_builddoc_returns_a_real_pdf_of_the_invoice(api) -> None:
    invoice_id = draft_invoice(api, customer(api))
    ref = api("POST", f"/invoices/{invoice_id}/validate").json()["ref"]
    response = api(
        "PUT",
        "/documents/builddoc",
        json={
            "modulepart": "invoice",
            "original_file": f"{ref}/{ref}.pdf",
            "doctemplate": "sponge",
            "langcode": "fr_FR",
        },
    )
    answer = response.json()
    content = base64.b64decode(answer["content"])
    assert (answer["filename"], answer["content-type"], answer["filesize"]) == (
        f"{ref}.pdf",
        "application/pdf",
        len(content),
    )
    assert_valid_pdf(content)
    assert f"(Invoice {ref}) Tj".encode() in content
    assert b"(Marie Curie) Tj" in content
    assert b"(24.00 EUR) Tj" in content
    downloaded = api(
        "GET",
        "/documents/download",
        params={"modulepart": "facture", "original_file": f"{ref}/{ref}.pdf"},
    ).json()
    assert downloaded["content"] == answer["content"]


def test_download_of_a_missing_file_is_a_404(api) -> None:
    response = api(
        "GET", "/documents/download", params={"modulepart": "facture", "original_file": "X/X.pdf"}
    )
    assert (response.status_code, response.json()["error"]["message"]) == (
        404,
        "Not Found: File not found",
    )


# -- races (README "Concurrency", exchanges 174-192) -----------------------------------------------


@pytest.fixture
def racing(dolibarr_sandbox: DolibarrSandbox) -> DolibarrSandbox:
    """A wide numbering window so that requests released together surely overlap."""
    dolibarr_sandbox.numbering_window_ms = 60
    return dolibarr_sandbox


def test_concurrent_validations_collide_and_losers_stay_drafts(api, racing) -> None:
    socid = customer(api)
    drafts = [draft_invoice(api, socid) for _ in range(4)]
    responses = concurrently([lambda i=i: api("POST", f"/invoices/{i}/validate") for i in drafts])
    statuses = sorted(response.status_code for response in responses)
    assert 200 in statuses, statuses
    assert 500 in statuses, statuses
    for invoice_id, response in zip(drafts, responses, strict=True):
        if response.status_code == 500:
            assert re.search(
                r"Duplicate entry 'FA2611-\d{4}-1' for key 'uk_facture_ref'",
                response.json()["error"]["message"],
            )
            row = invoice(api, invoice_id)
            assert (row["statut"], row["ref"]) == ("0", f"(PROV{invoice_id})")


def test_sequential_validations_never_collide(api, racing) -> None:
    socid = customer(api)
    refs = [
        api("POST", f"/invoices/{draft_invoice(api, socid)}/validate").json()["ref"]
        for _ in range(5)
    ]
    assert refs == [f"FA2611-{n:04d}" for n in range(1, 6)]


def test_concurrent_payments_silently_share_a_payment_number(api, racing) -> None:
    socid = customer(api)
    invoices = [draft_invoice(api, socid) for _ in range(4)]
    responses = concurrently(
        [lambda i=i: pay(api, i, "remain", ref_ext=f"ch_R{i}") for i in invoices]
    )
    assert [response.status_code for response in responses] == [200] * 4
    refs = [row["ref"] for row in api("GET", "/paiements").json()]
    assert len(set(refs)) < len(refs), refs


def test_concurrent_identical_payments_overpay_the_invoice(api, racing) -> None:
    invoice_id = draft_invoice(api, customer(api), {"qty": 1, "subprice": "50", "tva_tx": 20})
    api("POST", f"/invoices/{invoice_id}/validate")
    responses = concurrently([lambda: pay(api, invoice_id, "60.00", ref_ext="ch_R6")] * 4)
    accepted = [response for response in responses if response.status_code == 200]
    assert len(accepted) >= 2
    row = invoice(api, invoice_id)
    assert row["totalpaid"] == 60 * len(accepted)
    assert (row["statut"], row["paye"]) == ("2", "1")


def test_concurrent_thirdparties_with_automatic_codes_fail_with_500(api, racing) -> None:
    responses = concurrently(
        [
            lambda n=n: api("POST", "/thirdparties", json={"name": f"C{n}", "code_client": "auto"})
            for n in range(4)
        ]
    )
    failed = [response for response in responses if response.status_code == 500]
    assert failed
    assert all(
        response.json()["error"]["message"] == "Internal Server Error: Error creating thirdparty"
        for response in failed
    )
    codes = [row["code_client"] for row in api("GET", "/thirdparties").json()]
    assert len(codes) == len(set(codes)) == 4 - len(failed)


def test_concurrent_draft_creations_all_succeed(api, racing) -> None:
    socid = customer(api)
    responses = concurrently([lambda: api("POST", "/invoices", json={"socid": socid})] * 4)
    assert sorted(response.json() for response in responses) == [1, 2, 3, 4]


def test_concurrent_order_validations_collide_too(api, racing) -> None:
    socid = customer(api)
    orders = [
        api("POST", "/orders", json={"socid": socid, "date": DAY, "lines": []}).json()
        for _ in range(3)
    ]
    responses = concurrently([lambda o=o: api("POST", f"/orders/{o}/validate") for o in orders])
    failures = [r.json()["error"]["message"] for r in responses if r.status_code == 500]
    assert failures
    assert all("for key 'uk_commande_ref'" in message for message in failures)


# -- standalone ------------------------------------------------------------------------------------


def test_cli_prints_its_url_and_serves_until_terminated() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "reconciliation.sandbox.dolibarr", "--port", "0", "--api-key", "K"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=PROJECT_ROOT,
    )
    try:
        first_line = process.stdout.readline().strip()
        match = re.fullmatch(
            r"Dolibarr sandbox listening on (http://127\.0\.0\.1:\d+/api/index\.php)", first_line
        )
        assert match, first_line
        status = requests.get(f"{match.group(1)}/status", headers={"DOLAPIKEY": "K"}, timeout=5)
        assert status.status_code == 200
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
        process.stdout.close()
