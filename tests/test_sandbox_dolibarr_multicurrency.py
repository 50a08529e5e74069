"""The sandbox Dolibarr with its Multicurrency module on, over HTTP: the module's currencies,
invoices and credit notes in another currency, their lines, and payments in the invoice's
currency. Read from Dolibarr's PHP source, not recorded (docs/sandbox.md "Multicurrency")."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests

from reconciliation.sandbox.dolibarr import DolibarrSandbox
from tests.processes import concurrently

DAY = 1795219200  # 2026-11-21T00:00:00Z, the day of the recordings
PROJECT_ROOT = Path(__file__).resolve().parent.parent
RATES = {"GBP": Decimal("0.85"), "USD": Decimal("1.08"), "JPY": Decimal("162")}

Api = Callable[..., requests.Response]


@pytest.fixture
def multicurrency_sandbox(dolibarr_api_key: str) -> Iterator[DolibarrSandbox]:
    """A fresh sandbox with the module on: EUR (the company currency, rate 1), GBP, USD, JPY."""
    sandbox = DolibarrSandbox(api_key=dolibarr_api_key, multicurrency=RATES)
    sandbox.start()
    try:
        yield sandbox
    finally:
        sandbox.stop()


def _caller(sandbox: DolibarrSandbox, key: str) -> tuple[Api, requests.Session]:
    session = requests.Session()
    session.headers["DOLAPIKEY"] = key

    def call(method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 10)
        return session.request(method, sandbox.api_url + path, **kwargs)

    return call, session


@pytest.fixture
def api(multicurrency_sandbox: DolibarrSandbox, dolibarr_api_key: str) -> Iterator[Api]:
    call, session = _caller(multicurrency_sandbox, dolibarr_api_key)
    yield call
    session.close()


@pytest.fixture
def api_module_off(dolibarr_sandbox: DolibarrSandbox, dolibarr_api_key: str) -> Iterator[Api]:
    call, session = _caller(dolibarr_sandbox, dolibarr_api_key)
    yield call
    session.close()


def customer(api: Api) -> int:
    response = api("POST", "/thirdparties", json={"name": "Brightwater Media Ltd", "client": 1})
    assert response.status_code == 200, response.text
    return response.json()


def line(price: str, *, tva_tx: str = "20", qty: int = 1) -> dict[str, Any]:
    """A line priced in the document's currency, as the connector sends it (no `subprice`)."""
    return {"desc": "Business Wall", "qty": qty, "multicurrency_subprice": price, "tva_tx": tva_tx}


def create_invoice(api: Api, *lines: dict[str, Any], **fields: Any) -> int:
    payload = {"socid": customer(api), "date": DAY + 3600, "lines": list(lines), **fields}
    response = api("POST", "/invoices", json=payload)
    assert response.status_code == 200, response.text
    return response.json()


def validated_invoice(api: Api, *lines: dict[str, Any], **fields: Any) -> int:
    invoice_id = create_invoice(api, *lines, **fields)
    assert api("POST", f"/invoices/{invoice_id}/validate").status_code == 200
    return invoice_id


def invoice(api: Api, invoice_id: int, **params: str) -> dict[str, Any]:
    response = api("GET", f"/invoices/{invoice_id}", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def bank_account(api: Api, currency: str) -> int:
    payload = {
        "ref": f"STRIPE-{currency}",
        "label": f"Stripe {currency}",
        "type": 1,
        "currency_code": currency,
        "country_id": 1,
    }
    response = api("POST", "/bankaccounts", json=payload)
    assert response.status_code == 200, response.text
    return response.json()


def pay(
    api: Api,
    invoice_id: int,
    *,
    amount: str = "",
    multicurrency_amount: str = "",
    accountid: int = 1,
    **fields: Any,
) -> requests.Response:
    payload = {
        "arrayofamounts": {
            str(invoice_id): {"amount": amount, "multicurrency_amount": multicurrency_amount}
        },
        "datepaye": DAY + 7200,
        "paymentid": 6,
        "closepaidinvoices": "yes",
        "accountid": accountid,
        **fields,
    }
    return api("POST", "/invoices/paymentsdistributed", json=payload)


def payment_bank_line(api: Api, account_id: int, num_payment: str) -> dict[str, Any]:
    params = {"sqlfilters": f"(num_chq:=:'{num_payment}')"}
    [found] = api("GET", f"/bankaccounts/{account_id}/lines", params=params).json()
    return found


MONEY_FIELDS = (
    "fk_multicurrency",
    "multicurrency_code",
    "multicurrency_tx",
    "multicurrency_total_ht",
    "multicurrency_total_tva",
    "multicurrency_total_ttc",
    "total_ht",
    "total_tva",
    "total_ttc",
)


def money(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row[name] for name in MONEY_FIELDS)


# -- the module's currencies ------------------------------------------------------------------


def test_bycode_gives_the_currency_with_its_latest_rate(api, multicurrency_sandbox) -> None:
    response = api("GET", "/multicurrencies/bycode/GBP")
    assert response.status_code == 200
    body = response.json()
    # Ids and the rate come from the database as strings; the rate is a DOUBLE column.
    assert body == {
        "id": "2",
        "code": "GBP",
        "name": "GB Pounds (£)",
        "rate": {"id": "2", "rate": "0.85", "date_sync": body["rate"]["date_sync"]},
    }
    assert isinstance(body["rate"]["date_sync"], int)


def test_bycode_of_a_currency_the_module_does_not_have_is_a_404(api) -> None:
    response = api("GET", "/multicurrencies/bycode/CHF")
    assert response.status_code == 404
    assert response.json()["error"] == {"code": 404, "message": "Not Found: Currency not found"}


def test_bycode_finds_the_code_whatever_its_case(api) -> None:
    # `code = 'gbp'` under the table's case-insensitive collation.
    assert api("GET", "/multicurrencies/bycode/gbp").json()["code"] == "GBP"


def test_bycode_does_not_exist_while_the_module_is_off(api_module_off) -> None:
    response = api_module_off("GET", "/multicurrencies/bycode/GBP")
    unknown_route = api_module_off("GET", "/nosuchmodule/bycode/GBP")
    assert response.status_code == unknown_route.status_code == 404
    assert response.json() == unknown_route.json()
    assert response.json()["error"]["message"] == "Not Found"


def test_the_company_currency_is_in_the_module_at_rate_1(api) -> None:
    rows = api("GET", "/multicurrencies").json()
    assert [(row["id"], row["code"], row["rate"]["rate"]) for row in rows] == [
        ("1", "EUR", "1"),
        ("2", "GBP", "0.85"),
        ("3", "USD", "1.08"),
        ("4", "JPY", "162"),
    ]


def test_reset_keeps_the_modules_currencies(api, multicurrency_sandbox) -> None:
    multicurrency_sandbox.reset()
    assert api("GET", "/multicurrencies/bycode/JPY").status_code == 200


def test_a_rate_other_than_1_for_the_company_currency_is_refused(dolibarr_api_key) -> None:
    with pytest.raises(ValueError, match="always has rate 1"):
        DolibarrSandbox(api_key=dolibarr_api_key, multicurrency={"EUR": Decimal("1.1")})


# -- invoices in another currency ------------------------------------------------------------


def test_an_invoice_in_pounds_takes_the_rate_of_the_table(api) -> None:
    invoice_id = create_invoice(api, line("17.00"), multicurrency_code="GBP")
    row = invoice(api, invoice_id)
    assert (row["fk_multicurrency"], row["multicurrency_code"], row["multicurrency_tx"]) == (
        "2",
        "GBP",
        "0.85000000",
    )


def test_an_explicit_rate_is_kept(api) -> None:
    invoice_id = create_invoice(
        api, line("16.00", tva_tx="0"), multicurrency_code="GBP", multicurrency_tx="0.80"
    )
    row = invoice(api, invoice_id)
    # 16.00 GBP at 0.80 GBP per EUR is 20.00 EUR.
    assert (row["multicurrency_tx"], row["multicurrency_total_ttc"], row["total_ttc"]) == (
        "0.80000000",
        "16.00000000",
        "20.00000000",
    )


def test_an_unknown_currency_silently_gives_the_company_currency_at_rate_1(api) -> None:
    response = api(
        "POST",
        "/invoices",
        json={"socid": customer(api), "multicurrency_code": "CHF", "lines": [line("10.00")]},
    )
    assert response.status_code == 200
    row = invoice(api, response.json())
    # No error: the 10.00 CHF line became a 10.00 EUR line.
    assert money(row) == (
        "0",
        "EUR",
        "1.00000000",
        "10.00000000",
        "2.00000000",
        "12.00000000",
        "10.00000000",
        "2.00000000",
        "12.00000000",
    )


def test_line_company_totals_come_from_the_pound_price_divided_by_the_rate(api) -> None:
    invoice_id = create_invoice(api, *[line("19.99")] * 3, multicurrency_code="GBP")
    row = invoice(api, invoice_id)
    # Company side, per line: pu = 19.99 / 0.85 = 23.5176470588..., stored at 5 decimals;
    # net 23.52, VAT 23.52 x 20 % = 4.704 -> 4.70, gross 28.22. Pound side: 19.99, 3.998 -> 4.00,
    # 23.99. Each line is rounded, so 3 x 23.52 = 70.56 where 59.97 / 0.85 = 70.5529 -> 70.55.
    assert [
        (
            item["subprice"],
            item["total_ht"],
            item["total_tva"],
            item["total_ttc"],
            item["multicurrency_subprice"],
            item["multicurrency_total_ht"],
            item["multicurrency_total_tva"],
            item["multicurrency_total_ttc"],
        )
        for item in row["lines"]
    ] == [
        (
            "23.51765000",
            "23.52000000",
            "4.70000000",
            "28.22000000",
            "19.99000000",
            "19.99000000",
            "4.00000000",
            "23.99000000",
        )
    ] * 3
    assert money(row)[3:] == (
        "59.97000000",
        "12.00000000",
        "71.97000000",
        "70.56000000",
        "14.10000000",
        "84.66000000",
    )


def test_a_yen_invoice_is_converted_and_rounded_to_two_decimals_on_both_sides(api) -> None:
    invoice_id = create_invoice(api, line("2400", tva_tx="0"), multicurrency_code="JPY")
    row = invoice(api, invoice_id)
    # 2400 / 162 = 14.814814...: subprice 14.81481, total 14.81 EUR; the yen side keeps
    # Dolibarr's 2 decimals too (MAIN_MAX_DECIMALS_TOTAL), although yen has none.
    assert (row["lines"][0]["subprice"], row["multicurrency_tx"]) == ("14.81481000", "162.00000000")
    assert (row["total_ttc"], row["multicurrency_total_ttc"]) == ("14.81000000", "2400.00000000")


def test_the_invoice_list_and_properties_show_the_document_currency(api) -> None:
    create_invoice(api, line("17.00"), multicurrency_code="GBP", ref_ext="in_GBP1")
    response = api(
        "GET",
        "/invoices",
        params={
            "sqlfilters": "(t.multicurrency_code:=:'GBP')",
            "properties": "ref_ext,multicurrency_code,multicurrency_total_ttc,total_ttc",
        },
    )
    assert response.json() == [
        {
            "ref_ext": "in_GBP1",
            "multicurrency_code": "GBP",
            "multicurrency_total_ttc": "20.40000000",
            "total_ttc": "24.00000000",
        }
    ]


# -- payments in the invoice's currency ------------------------------------------------------


def test_a_pound_payment_closes_the_invoice_when_its_conversion_matches_the_total(api) -> None:
    # 17.00 GBP + 20 % = 20.40 GBP; 17.00 / 0.85 = 20.00 EUR + 20 % = 24.00 EUR;
    # 20.40 / 0.85 = 24.00000 EUR paid: the company remain is 0.
    invoice_id = validated_invoice(api, line("17.00"), multicurrency_code="GBP")
    assert pay(api, invoice_id, multicurrency_amount="20.40").status_code == 200
    row = invoice(api, invoice_id)
    assert (row["statut"], row["paye"], row["totalpaid"], row["remaintopay"]) == ("2", "1", 24, "0")


def test_a_pound_payment_a_cent_short_after_conversion_leaves_the_invoice_unpaid(api) -> None:
    # Three lines of 1.00 GBP, no VAT: each is 1.00 / 0.85 = 1.17647 -> 1.18 EUR, 3.54 EUR in
    # all, for 3.00 GBP. Paying the 3.00 GBP converts to 3.00 / 0.85 = 3.52941 -> 3.53 EUR:
    # 0.01 EUR remains, so Dolibarr does not close it, although it is paid in full in pounds.
    invoice_id = validated_invoice(api, *[line("1.00", tva_tx="0")] * 3, multicurrency_code="GBP")
    assert pay(api, invoice_id, multicurrency_amount="remain").status_code == 200
    row = invoice(api, invoice_id)
    assert (row["statut"], row["paye"], row["totalpaid"], row["remaintopay"]) == (
        "1",
        "0",
        3.53,
        "0.01",
    )
    assert (row["multicurrency_total_ttc"], row["total_ttc"]) == ("3.00000000", "3.54000000")


def test_paying_the_pound_remain_again_is_empty_although_a_euro_cent_remains(api) -> None:
    invoice_id = validated_invoice(api, *[line("1.00", tva_tx="0")] * 3, multicurrency_code="GBP")
    pay(api, invoice_id, multicurrency_amount="remain")
    again = pay(api, invoice_id, multicurrency_amount="remain")
    assert again.status_code == 400
    assert again.json()["error"]["message"] == "Bad Request: Payment error : TotalAmountEmpty"


def test_a_payment_in_both_currencies_is_refused(api) -> None:
    invoice_id = validated_invoice(api, line("17.00"), multicurrency_code="GBP")
    response = pay(api, invoice_id, amount="24.00", multicurrency_amount="20.40")
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        f"Bad Request: Payment in both currency {invoice_id} ( amount: 24.00, "
        "multicurrency_amount: 20.40)"
    )
    assert api("GET", f"/invoices/{invoice_id}/payments").json() == []


def test_a_pound_overpayment_is_refused_against_the_pound_remain(api) -> None:
    invoice_id = validated_invoice(api, line("17.00"), multicurrency_code="GBP")
    response = pay(api, invoice_id, multicurrency_amount="25.00")
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        f"Bad Request: Payment amount on invoice ID {invoice_id} (25) is higher than remain "
        "to pay (20.4)"
    )


def test_a_euro_payment_on_a_pound_invoice_is_converted_to_pounds(api) -> None:
    invoice_id = validated_invoice(api, line("17.00"), multicurrency_code="GBP")
    payment_id = pay(api, invoice_id, amount="24.00", ref_ext="ch_EUR").json()
    payment = api("GET", f"/paiements/{payment_id}").json()
    # 24.00 EUR x 0.85 = 20.40 GBP: nothing is left to pay in pounds either.
    assert (payment["amount"], payment["multicurrency_amount"]) == ("24.00000000", "20.40000000")
    assert pay(api, invoice_id, multicurrency_amount="0.01").status_code == 400


def test_the_pound_payment_records_both_amounts(api) -> None:
    invoice_id = validated_invoice(api, *[line("19.99")] * 3, multicurrency_code="GBP")
    payment_id = pay(api, invoice_id, multicurrency_amount="71.97").json()
    payment = api("GET", f"/paiements/{payment_id}").json()
    # llx_paiement.amount keeps the conversion at 5 decimals: 71.97 / 0.85 = 84.670588...;
    # the invoice's own row (its payments list, totalpaid) is rounded to the cent.
    assert (payment["amount"], payment["multicurrency_amount"]) == ("84.67059000", "71.97000000")
    [row] = api("GET", f"/invoices/{invoice_id}/payments").json()
    assert row["amount"] == "84.67000000"


def test_a_pound_bank_account_gets_the_pound_amount(api) -> None:
    pounds = bank_account(api, "GBP")
    invoice_id = validated_invoice(api, line("17.00"), multicurrency_code="GBP")
    pay(api, invoice_id, multicurrency_amount="20.40", accountid=pounds, num_payment="ch_GBP")
    assert payment_bank_line(api, pounds, "ch_GBP")["amount"] == "20.40000000"
    assert api("GET", f"/bankaccounts/{pounds}/balance").json() == 20.4


def test_the_euro_bank_account_gets_the_unrounded_converted_amount(api) -> None:
    invoice_id = validated_invoice(api, *[line("19.99")] * 3, multicurrency_code="GBP")
    pay(api, invoice_id, multicurrency_amount="71.97", num_payment="ch_EURBANK")
    # The payment's amount, 71.97 / 0.85 at 5 decimals: a fraction of a cent on the bank line.
    assert payment_bank_line(api, 1, "ch_EURBANK")["amount"] == "84.67059000"


def test_a_dollar_payment_on_a_pound_account_is_not_refused_and_books_dollars(api) -> None:
    # Paiement::create's check of the bank currency compares the company currency with itself
    # on this route: the API sets neither the payment's currencies nor its account before it.
    pounds = bank_account(api, "GBP")
    invoice_id = validated_invoice(api, line("10.80", tva_tx="0"), multicurrency_code="USD")
    response = pay(
        api, invoice_id, multicurrency_amount="10.80", accountid=pounds, num_payment="ch_USD"
    )
    assert response.status_code == 200
    assert payment_bank_line(api, pounds, "ch_USD")["amount"] == "10.80000000"


def test_a_pound_credit_note_is_paid_back_in_pounds(api) -> None:
    pounds = bank_account(api, "GBP")
    credit_note = validated_invoice(api, line("17.00"), multicurrency_code="GBP", type=2)
    response = pay(
        api, credit_note, multicurrency_amount="20.40", accountid=pounds, num_payment="re_GBP"
    )
    assert response.status_code == 200
    row = invoice(api, credit_note)
    assert (row["multicurrency_total_ttc"], row["total_ttc"]) == ("-20.40000000", "-24.00000000")
    assert (row["statut"], row["paye"], row["totalpaid"], row["remaintopay"]) == (
        "2",
        "1",
        -24,
        "0",
    )
    bank_line = payment_bank_line(api, pounds, "re_GBP")
    assert (bank_line["label"], bank_line["amount"]) == (
        "(CustomerInvoicePaymentBack)",
        "-20.40000000",
    )


# -- the module off ----------------------------------------------------------------------------


def test_with_the_module_off_the_currency_in_the_body_is_ignored(api_module_off) -> None:
    euros = create_invoice(api_module_off, {"qty": 1, "subprice": "20", "tva_tx": 20})
    pounds = create_invoice(
        api_module_off, {"qty": 1, "subprice": "20", "tva_tx": 20}, multicurrency_code="GBP"
    )
    expected = (
        "0",
        "EUR",
        "1.00000000",
        "20.00000000",
        "4.00000000",
        "24.00000000",
        "20.00000000",
        "4.00000000",
        "24.00000000",
    )
    assert money(invoice(api_module_off, pounds)) == money(invoice(api_module_off, euros))
    assert money(invoice(api_module_off, pounds)) == expected


def test_with_the_module_off_a_document_currency_amount_pays_nothing(api_module_off) -> None:
    invoice_id = create_invoice(api_module_off, {"qty": 1, "subprice": "20", "tva_tx": 20})
    response = pay(api_module_off, invoice_id, multicurrency_amount="24.00")
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "Bad Request: Payment error : TotalAmountEmpty"


# -- races and faults on these paths ---------------------------------------------------------------


def test_concurrent_identical_pound_payments_overpay_the_invoice(
    api, multicurrency_sandbox
) -> None:
    multicurrency_sandbox.numbering_window_ms = 60
    invoice_id = validated_invoice(api, line("17.00"), multicurrency_code="GBP")
    responses = concurrently(
        [lambda: pay(api, invoice_id, multicurrency_amount="20.40", ref_ext="ch_R")] * 3
    )
    accepted = [response for response in responses if response.status_code == 200]
    assert len(accepted) >= 2
    row = invoice(api, invoice_id)
    assert row["totalpaid"] == 24 * len(accepted)
    assert (row["statut"], row["paye"]) == ("2", "1")


def test_a_lost_answer_to_a_pound_payment_still_records_it(api, multicurrency_sandbox) -> None:
    invoice_id = validated_invoice(api, line("17.00"), multicurrency_code="GBP")
    multicurrency_sandbox.faults.update(lost_response_rate=1.0)
    with pytest.raises(requests.ConnectionError):
        pay(api, invoice_id, multicurrency_amount="20.40", ref_ext="ch_LOST")
    multicurrency_sandbox.faults.update(lost_response_rate=0.0)
    found = api("GET", "/paiements", params={"sqlfilters": "(t.ref_ext:=:'ch_LOST')"}).json()
    assert [(row["amount"], row["multicurrency_amount"]) for row in found] == [
        ("24.00000000", "20.40000000")
    ]


# -- standalone --------------------------------------------------------------------------------


def test_cli_multicurrency_flag_turns_the_module_on() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reconciliation.sandbox.dolibarr",
            "--port",
            "0",
            "--api-key",
            "K",
            "--multicurrency",
            "GBP=0.85,USD=1.08,JPY=162",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=PROJECT_ROOT,
    )
    try:
        first_line = process.stdout.readline().strip()
        match = re.fullmatch(r"Dolibarr sandbox listening on (\S+)", first_line)
        assert match, first_line
        response = requests.get(
            f"{match.group(1)}/multicurrencies/bycode/JPY", headers={"DOLAPIKEY": "K"}, timeout=5
        )
        assert response.json()["rate"]["rate"] == "162"
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
        process.stdout.close()
