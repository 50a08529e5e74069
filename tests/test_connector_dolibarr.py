"""The Dolibarr client against the sandbox Dolibarr over real HTTP, plus the few raw HTTP
failures the sandbox cannot produce (through `responses`)."""

from __future__ import annotations

import logging
import random
import socket
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
import requests
import responses

from reconciliation.connectors.dolibarr import DolibarrClient
from reconciliation.connectors.dolibarr_types import (
    InvoiceStatus,
    NewLine,
    NewShipmentLine,
    OrderStatus,
    ProductType,
    ShipmentStatus,
)
from reconciliation.connectors.sqlfilters import equals, like
from reconciliation.errors import (
    AuthenticationError,
    ConfigurationError,
    NotFoundError,
    PermanentError,
    TransientError,
    UnsafeFilterValue,
)

OFFLINE_URL = "http://dolibarr.invalid/api/index.php"
OFFLINE_KEY = "offline-test-key-0123456789abcdef"
STRIPE_ACCOUNT_ID = 1  # seeded by the sandbox, as created in exchange 13
TODAY = datetime(2026, 11, 21, 11, 28, 50, tzinfo=UTC)


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def service_line(subprice: str, *, qty: str = "1", tva: str = "20", **extra) -> NewLine:
    return NewLine(
        qty=Decimal(qty),
        subprice=Decimal(subprice),
        tva_tx=Decimal(tva),
        description=extra.pop("description", "AP24 subscription"),
        **extra,
    )


@pytest.fixture
def customer_id(dolibarr_client) -> int:
    return dolibarr_client.create_thirdparty(
        name="Marie Curie", ref_ext=unique("ap24-user"), email="marie@example.test"
    )


@pytest.fixture
def validated_invoice_id(dolibarr_client, customer_id) -> int:
    """A validated 24.00 invoice (20.00 + 20 % VAT), as in exchanges 100+."""
    invoice_id = dolibarr_client.create_invoice(
        thirdparty_id=customer_id, lines=[service_line("20.00")], ref_ext=unique("in")
    )
    dolibarr_client.validate_invoice(invoice_id=invoice_id)
    return invoice_id


def pay(client: DolibarrClient, invoice_id: int, amount: str, ref_ext: str | None = None) -> int:
    return client.create_payment(
        amounts={invoice_id: Decimal(amount)},
        date=TODAY,
        payment_type_id=client.payment_type_id(code="CB"),
        bank_account_id=STRIPE_ACCOUNT_ID,
        ref_ext=ref_ext or unique("ch"),
    )


def seed_failing_first(rate: float) -> int:
    """A seed for the sandbox's fault dice whose first roll hits a fault of probability `rate`
    and whose second does not: exactly one failure, then a normal answer."""
    for seed in range(10_000):
        dice = random.Random(seed)
        if dice.random() < rate <= dice.random():
            return seed
    raise AssertionError("no seed found")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- health and authentication ------------------------------------------------------------


def test_status_reports_version_and_utc_clock(dolibarr_client):
    status = dolibarr_client.status()
    assert status.version == "23.0.0-beta"
    assert status.server_time.tzinfo is UTC


def test_wrong_key_raises_authentication_error_without_the_key(dolibarr_sandbox):
    wrong_key = "wrong-key-that-must-not-leak-42"
    client = DolibarrClient(base_url=dolibarr_sandbox.api_url, api_key=wrong_key, backoff_base=0)
    with pytest.raises(AuthenticationError) as caught:
        client.status()
    assert caught.value.status == 401
    assert "refused the API key" in str(caught.value)
    assert "DOLIBARR_API_KEY" in str(caught.value)
    assert wrong_key not in str(caught.value)
    assert wrong_key not in repr(caught.value)


def test_wrong_key_is_not_retried(dolibarr_sandbox):
    client = DolibarrClient(base_url=dolibarr_sandbox.api_url, api_key="nope-key", backoff_base=0)
    with pytest.raises(AuthenticationError):
        client.status()
    assert client.call_counts["GET /status"] == 1


def test_api_key_never_appears_in_repr_errors_or_logs(
    dolibarr_client, dolibarr_sandbox, dolibarr_api_key, caplog
):
    caplog.set_level(logging.DEBUG)
    failures = []
    for action in (
        lambda: dolibarr_client.get_invoice(invoice_id=999_999),  # 404
        lambda: dolibarr_client.create_thirdparty(name="", ref_ext=unique("x")),  # 400
        lambda: dolibarr_sandbox.faults.update(error_rate=1.0) or dolibarr_client.status(),  # 500s
    ):
        with pytest.raises((PermanentError, TransientError)) as caught:
            action()
        failures.append(caught.value)
    texts = [repr(dolibarr_client), caplog.text] + [f"{e} {e!r}" for e in failures]
    assert "retry 3 of 3" in caplog.text  # failures and retries were logged...
    assert all(dolibarr_api_key not in text for text in texts)  # ...without the key


def test_unreachable_dolibarr_raises_transient_error_naming_where():
    url = f"http://127.0.0.1:{closed_port()}/api/index.php"
    client = DolibarrClient(base_url=url, api_key=OFFLINE_KEY, backoff_base=0)
    with pytest.raises(TransientError) as caught:
        client.status()
    assert str(caught.value) == (
        f"Dolibarr is unreachable at {url}: connection refused (GET /status)"
    )
    assert caught.value.outcome_unknown is False


def test_unreachable_dolibarr_is_retried_for_reads():
    url = f"http://127.0.0.1:{closed_port()}/api/index.php"
    client = DolibarrClient(base_url=url, api_key=OFFLINE_KEY, backoff_base=0, max_retries=2)
    with pytest.raises(TransientError):
        client.status()
    assert client.call_counts["GET /status"] == 3


def test_missing_url_setting_is_one_line(settings):
    settings.DOLIBARR_URL = ""
    settings.DOLIBARR_API_KEY = "x" * 32
    with pytest.raises(ConfigurationError) as caught:
        DolibarrClient.from_settings()
    assert str(caught.value) == "DOLIBARR_URL is not set; see .env.example"


def test_client_from_settings_talks_to_the_configured_dolibarr(
    settings, dolibarr_sandbox, dolibarr_api_key
):
    settings.DOLIBARR_URL = dolibarr_sandbox.api_url
    settings.DOLIBARR_API_KEY = dolibarr_api_key
    assert DolibarrClient.from_settings().status().version == "23.0.0-beta"


# -- thirdparties -------------------------------------------------------------------------


def test_created_thirdparty_is_found_by_ref_ext(dolibarr_client):
    ref_ext = unique("ap24-org")
    created = dolibarr_client.create_thirdparty(
        name="Média Zoé", ref_ext=ref_ext, email="zoe@example.test", country_code="FR"
    )
    found = dolibarr_client.find_thirdparties(ref_ext=ref_ext)
    assert [(t.id, t.name, t.ref_ext, t.country_code) for t in found] == [
        (created, "Média Zoé", ref_ext, "FR")
    ]


def test_thirdparty_search_without_hit_returns_empty_list(dolibarr_client):
    # The sandbox, like Dolibarr, answers 404 "No third parties found" (exchange 21).
    assert dolibarr_client.find_thirdparties(ref_ext=unique("nobody")) == []


def test_created_thirdparty_gets_an_automatic_customer_code(dolibarr_client, customer_id):
    thirdparty = dolibarr_client.get_thirdparty(thirdparty_id=customer_id)
    assert thirdparty.code_client.startswith("CU")
    assert thirdparty.date_creation.tzinfo is UTC


def test_thirdparty_is_found_by_email(dolibarr_client):
    email = f"{unique('billing')}@example.test"
    created = dolibarr_client.create_thirdparty(name="Billing", ref_ext=unique("o"), email=email)
    assert [t.id for t in dolibarr_client.find_thirdparties_by_email(email=email)] == [created]


def test_duplicate_ref_ext_lists_both_thirdparties_oldest_first(dolibarr_client):
    ref_ext = unique("ap24-user")
    first = dolibarr_client.create_thirdparty(name="Twin", ref_ext=ref_ext)
    second = dolibarr_client.create_thirdparty(name="Twin", ref_ext=ref_ext)
    assert [t.id for t in dolibarr_client.find_thirdparties(ref_ext=ref_ext)] == [first, second]


def test_update_thirdparty_changes_only_sent_fields(dolibarr_client, customer_id):
    updated = dolibarr_client.update_thirdparty(
        thirdparty_id=customer_id, changes={"email": "new@example.test"}
    )
    assert (updated.email, updated.name) == ("new@example.test", "Marie Curie")


def test_missing_thirdparty_raises_not_found(dolibarr_client):
    with pytest.raises(NotFoundError, match="404 Not Found: Thirdparty not found"):
        dolibarr_client.get_thirdparty(thirdparty_id=999_999)


def test_invalid_thirdparty_raises_permanent_error_with_dolibarr_message(dolibarr_client):
    with pytest.raises(PermanentError, match="400 Bad Request: name field missing") as caught:
        dolibarr_client.create_thirdparty(name="", ref_ext=unique("x"))
    assert caught.value.status == 400


def test_stripe_link_is_read_back(dolibarr_client, customer_id):
    customer = unique("cus")
    result = dolibarr_client.link_stripe_customer(
        thirdparty_id=customer_id, customer_id=customer, live=False
    )
    link = dolibarr_client.stripe_link(thirdparty_id=customer_id)
    assert result.changed
    assert (link.customer_id, link.thirdparty_id, link.site) == (customer, customer_id, "stripe")


def test_thirdparty_is_found_by_stripe_customer(dolibarr_client, customer_id):
    customer = unique("cus")
    dolibarr_client.link_stripe_customer(
        thirdparty_id=customer_id, customer_id=customer, live=False
    )
    found = dolibarr_client.find_thirdparty_by_stripe_customer(customer_id=customer)
    assert found.id == customer_id


def test_unknown_stripe_customer_finds_no_thirdparty(dolibarr_client):
    assert dolibarr_client.find_thirdparty_by_stripe_customer(customer_id=unique("cus")) is None


def test_thirdparty_without_stripe_link_has_none(dolibarr_client, customer_id):
    assert dolibarr_client.stripe_link(thirdparty_id=customer_id) is None


def test_linking_the_same_stripe_customer_again_does_nothing(dolibarr_client, customer_id):
    customer = unique("cus")
    dolibarr_client.link_stripe_customer(
        thirdparty_id=customer_id, customer_id=customer, live=False
    )
    dolibarr_client.reset_call_counts()
    again = dolibarr_client.link_stripe_customer(
        thirdparty_id=customer_id, customer_id=customer, live=False
    )
    assert not again.changed
    assert dolibarr_client.call_counts["POST /thirdparties/{id}/accounts/{site}"] == 0


def test_linking_a_second_stripe_customer_is_refused(dolibarr_client, customer_id):
    # A second POST would silently replace the first link (exchanges 105-107).
    first = unique("cus")
    dolibarr_client.link_stripe_customer(thirdparty_id=customer_id, customer_id=first, live=False)
    with pytest.raises(PermanentError, match="would replace that link"):
        dolibarr_client.link_stripe_customer(
            thirdparty_id=customer_id, customer_id=unique("cus"), live=False
        )
    assert dolibarr_client.stripe_link(thirdparty_id=customer_id).customer_id == first


def test_replacing_the_stripe_customer_on_request_moves_the_link(dolibarr_client, customer_id):
    first, second = unique("cus"), unique("cus")
    dolibarr_client.link_stripe_customer(thirdparty_id=customer_id, customer_id=first, live=False)
    dolibarr_client.link_stripe_customer(
        thirdparty_id=customer_id, customer_id=second, live=False, replace=True
    )
    assert dolibarr_client.find_thirdparty_by_stripe_customer(customer_id=first) is None
    assert dolibarr_client.find_thirdparty_by_stripe_customer(customer_id=second).id == customer_id


# -- products and orders ------------------------------------------------------------------


def test_created_product_is_found_by_ref(dolibarr_client):
    ref = unique("AP24-SUB").upper()
    created = dolibarr_client.create_product(
        ref=ref, label="Monthly", type=ProductType.SERVICE, price=Decimal(25), tva_tx=Decimal(20)
    )
    [product] = dolibarr_client.find_products(ref=ref)
    assert (product.id, product.price, product.price_ttc) == (
        created,
        Decimal("25"),
        Decimal("30"),
    )


def test_duplicate_product_error_keeps_dolibarr_extra_message(dolibarr_client):
    ref = unique("AP24-SUB").upper()
    product = {"label": "x", "type": ProductType.SERVICE, "price": Decimal(1), "tva_tx": Decimal(0)}
    dolibarr_client.create_product(ref=ref, **product)
    with pytest.raises(TransientError) as caught:
        dolibarr_client.create_product(ref=ref, **product)
    assert str(caught.value) == (
        "Dolibarr POST /products -> 500 Internal Server Error: Error creating product "
        "(ErrorProductAlreadyExists)"
    )
    assert dolibarr_client.call_counts["POST /products"] == 2


def test_order_lifecycle_validate_invoice_and_close(dolibarr_client, customer_id):
    ref_ext = unique("ap24-purchase")
    order_id = dolibarr_client.create_order(
        thirdparty_id=customer_id,
        date=TODAY,
        lines=[service_line("40.00", qty="2", remise_percent=Decimal(10))],
        ref_ext=ref_ext,
    )
    validated = dolibarr_client.validate_order(order_id=order_id)
    invoiced = dolibarr_client.set_order_invoiced(order_id=order_id)
    closed = dolibarr_client.close_order(order_id=order_id)
    [found] = dolibarr_client.find_orders(ref_ext=ref_ext)
    assert validated.value.ref.startswith("CO")
    assert invoiced.value.billed
    assert closed.changed
    assert (found.id, found.status, found.total_ttc) == (
        order_id,
        OrderStatus.CLOSED,
        Decimal("86.40"),
    )


def test_order_date_comes_back_as_midnight_utc(dolibarr_client, customer_id):
    order_id = dolibarr_client.create_order(
        thirdparty_id=customer_id, date=TODAY, lines=[service_line("5")], ref_ext=unique("p")
    )
    assert dolibarr_client.get_order(order_id=order_id).date == datetime(2026, 11, 21, tzinfo=UTC)


def test_validating_an_order_again_reports_nothing_done(dolibarr_client, customer_id):
    order_id = dolibarr_client.create_order(
        thirdparty_id=customer_id, date=TODAY, lines=[service_line("5")], ref_ext=unique("p")
    )
    dolibarr_client.validate_order(order_id=order_id)
    again = dolibarr_client.validate_order(order_id=order_id)
    assert (again.changed, again.value) == (False, None)


def test_invoice_from_order_takes_ref_ext_by_update(dolibarr_client, customer_id):
    order_id = dolibarr_client.create_order(
        thirdparty_id=customer_id, date=TODAY, lines=[service_line("25")], ref_ext=unique("p")
    )
    dolibarr_client.validate_order(order_id=order_id)
    draft = dolibarr_client.create_invoice_from_order(order_id=order_id)
    ref_ext = unique("ap24-purchase")
    dolibarr_client.update_invoice(invoice_id=draft.id, changes={"ref_ext": ref_ext})
    [found] = dolibarr_client.find_invoices(ref_ext=ref_ext)
    assert (draft.ref_ext, found.id, found.total_ttc) == (None, draft.id, Decimal("30"))


# -- invoices -----------------------------------------------------------------------------


def test_invoice_totals_are_decimals_to_the_cent(dolibarr_client, customer_id):
    invoice_id = dolibarr_client.create_invoice(
        thirdparty_id=customer_id,
        ref_ext=unique("in"),
        lines=[
            service_line("40.00", qty="2", remise_percent=Decimal(10)),  # 72.00 + 14.40
            # A tax-inclusive 9.99 at 2.1 % sent with 8 decimals: 3 x = 29.97 (README).
            service_line("9.78333333", qty="3", tva="2.1"),
        ],
    )
    invoice = dolibarr_client.get_invoice(invoice_id=invoice_id)
    assert (invoice.total_ht, invoice.total_tva, invoice.total_ttc) == (
        Decimal("101.35"),
        Decimal("15.02"),
        Decimal("116.37"),
    )
    assert all(isinstance(line.total_ttc, Decimal) for line in invoice.lines)
    assert [line.total_ttc for line in invoice.lines] == [Decimal("86.40"), Decimal("29.97")]


def test_invoice_line_period_comes_back_as_aware_datetimes(dolibarr_client, customer_id):
    start, end = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
    invoice_id = dolibarr_client.create_invoice(
        thirdparty_id=customer_id,
        ref_ext=unique("in"),
        lines=[service_line("10", date_start=start, date_end=end)],
    )
    [line] = dolibarr_client.get_invoice(invoice_id=invoice_id).lines
    assert (line.date_start, line.date_end) == (start, end)


def test_validate_gives_a_definitive_number(dolibarr_client, customer_id):
    invoice_id = dolibarr_client.create_invoice(
        thirdparty_id=customer_id, lines=[service_line("20.00")], ref_ext=unique("in")
    )
    draft = dolibarr_client.get_invoice(invoice_id=invoice_id)
    result = dolibarr_client.validate_invoice(invoice_id=invoice_id)
    assert draft.ref.startswith("(PROV")
    assert result.changed
    assert result.value.ref.startswith("FA")
    assert result.value.status == InvoiceStatus.VALIDATED


def test_validating_again_reports_nothing_done(dolibarr_client, validated_invoice_id):
    again = dolibarr_client.validate_invoice(invoice_id=validated_invoice_id)
    assert (again.changed, again.value) == (False, None)


def test_find_invoices_returns_every_duplicate(dolibarr_client, customer_id):
    ref_ext = unique("in")
    ids = [
        dolibarr_client.create_invoice(
            thirdparty_id=customer_id, lines=[service_line("1")], ref_ext=ref_ext
        )
        for _ in range(2)
    ]
    assert [invoice.id for invoice in dolibarr_client.find_invoices(ref_ext=ref_ext)] == ids


def test_find_invoices_without_hit_returns_empty_list(dolibarr_client):
    assert dolibarr_client.find_invoices(ref_ext=unique("in")) == []


def test_missing_invoice_raises_not_found(dolibarr_client):
    with pytest.raises(NotFoundError) as caught:
        dolibarr_client.get_invoice(invoice_id=999_999)
    assert str(caught.value) == "Dolibarr GET /invoices/{id} -> 404 Not Found: Invoice not found"


def test_invoice_without_lines_is_refused_before_any_call(dolibarr_client, customer_id):
    dolibarr_client.reset_call_counts()
    with pytest.raises(ValueError, match="at least one line"):
        dolibarr_client.create_invoice(thirdparty_id=customer_id, lines=[], ref_ext=unique("i"))
    assert dolibarr_client.call_counts.total() == 0


def test_line_without_quantity_cannot_be_built():
    # Dolibarr would store it at qty 0 and total 0.00 without error (exchanges 157, 159).
    with pytest.raises(TypeError):
        NewLine(subprice=Decimal(20), tva_tx=Decimal(20), description="x")  # type: ignore[call-arg]


def test_float_price_is_refused():
    with pytest.raises(TypeError, match="float"):
        NewLine(qty=Decimal(1), subprice=19.99, tva_tx=Decimal(20), description="x")


def test_credit_note_total_is_negative(dolibarr_client, customer_id, validated_invoice_id):
    credit_note_id = dolibarr_client.create_credit_note(
        thirdparty_id=customer_id,
        source_invoice_id=validated_invoice_id,
        lines=[service_line("20.00")],
        ref_ext=unique("re"),
    )
    result = dolibarr_client.validate_invoice(invoice_id=credit_note_id)
    credit_note = dolibarr_client.get_invoice(invoice_id=credit_note_id)
    assert result.value.ref.startswith("AV")
    assert credit_note.is_credit_note
    assert credit_note.source_invoice_id == validated_invoice_id
    assert credit_note.total_ttc == Decimal("-24.00")


def test_refund_payment_on_credit_note_closes_it(dolibarr_client, customer_id):
    invoice_id = dolibarr_client.create_invoice(
        thirdparty_id=customer_id, lines=[service_line("25.00")], ref_ext=unique("in")
    )
    dolibarr_client.validate_invoice(invoice_id=invoice_id)
    pay(dolibarr_client, invoice_id, "30.00")
    credit_note_id = dolibarr_client.create_credit_note(
        thirdparty_id=customer_id,
        source_invoice_id=invoice_id,
        lines=[service_line("25.00")],
        ref_ext=unique("re"),
    )
    dolibarr_client.validate_invoice(invoice_id=credit_note_id)
    pay(dolibarr_client, credit_note_id, "30.00")  # positive, stored negative (72-74)
    credit_note = dolibarr_client.get_invoice(invoice_id=credit_note_id)
    [refund] = dolibarr_client.invoice_payments(invoice_id=credit_note_id)
    assert (credit_note.status, credit_note.paid, refund.amount) == (
        InvoiceStatus.CLOSED,
        True,
        Decimal("-30"),
    )


def test_zero_total_invoice_is_closed_as_paid(dolibarr_client, customer_id):
    invoice_id = dolibarr_client.create_invoice(
        thirdparty_id=customer_id, lines=[service_line("0")], ref_ext=unique("in")
    )
    dolibarr_client.validate_invoice(invoice_id=invoice_id)
    result = dolibarr_client.close_zero_total_invoice(invoice_id=invoice_id)
    assert (result.changed, result.value.status, result.value.paid) == (True, 2, True)


def test_closing_a_zero_total_invoice_again_reports_nothing_done(dolibarr_client, customer_id):
    invoice_id = dolibarr_client.create_invoice(
        thirdparty_id=customer_id, lines=[service_line("0")], ref_ext=unique("in")
    )
    dolibarr_client.validate_invoice(invoice_id=invoice_id)
    dolibarr_client.close_zero_total_invoice(invoice_id=invoice_id)
    assert not dolibarr_client.close_zero_total_invoice(invoice_id=invoice_id).changed


def test_non_zero_invoice_is_never_marked_paid_without_payment(
    dolibarr_client, validated_invoice_id
):
    with pytest.raises(PermanentError, match="only a zero-total invoice"):
        dolibarr_client.close_zero_total_invoice(invoice_id=validated_invoice_id)
    invoice = dolibarr_client.get_invoice(invoice_id=validated_invoice_id)
    assert (invoice.status, invoice.paid) == (InvoiceStatus.VALIDATED, False)
    assert dolibarr_client.call_counts["POST /invoices/{id}/settopaid"] == 0


def test_uncollectible_invoice_is_closed_unpaid(dolibarr_client, validated_invoice_id):
    result = dolibarr_client.close_invoice_unpaid(
        invoice_id=validated_invoice_id, close_code="abandon", close_note="uncollectible"
    )
    invoice = dolibarr_client.get_invoice(invoice_id=validated_invoice_id)
    assert result.changed
    assert (invoice.status, invoice.paid, invoice.close_code) == (2, False, "abandon")
    assert invoice.remain_to_pay == Decimal("24")


def test_list_invoices_pages_with_totals(dolibarr_client, customer_id):
    prefix = unique("inpage")
    for _ in range(3):
        dolibarr_client.create_invoice(
            thirdparty_id=customer_id, lines=[service_line("1")], ref_ext=f"{prefix}-x"
        )
    page = dolibarr_client.list_invoices(
        filters=like("t.ref_ext", f"{prefix}%"), properties=["ref", "total_ttc"], limit=2
    )
    assert (len(page.items), page.total, page.page_count, page.is_last) == (2, 3, 2, False)
    assert page.items[0].total_ttc == Decimal("1.20")
    assert page.items[0].lines == ()


def test_iter_invoices_reads_every_page(dolibarr_client, customer_id):
    prefix = unique("initer")
    ids = [
        dolibarr_client.create_invoice(
            thirdparty_id=customer_id, lines=[service_line("1")], ref_ext=f"{prefix}-{n}"
        )
        for n in range(5)
    ]
    dolibarr_client.reset_call_counts()
    found = dolibarr_client.iter_invoices(
        filters=like("t.ref_ext", f"{prefix}%"), properties=["ref"], page_size=2
    )
    assert [invoice.id for invoice in found] == ids
    assert dolibarr_client.call_counts["GET /invoices"] == 3


def test_list_invoices_filters_by_status_and_thirdparty(dolibarr_client, customer_id):
    draft = dolibarr_client.create_invoice(
        thirdparty_id=customer_id, lines=[service_line("1")], ref_ext=unique("in")
    )
    validated = dolibarr_client.create_invoice(
        thirdparty_id=customer_id, lines=[service_line("1")], ref_ext=unique("in")
    )
    dolibarr_client.validate_invoice(invoice_id=validated)
    page = dolibarr_client.list_invoices(status="draft", thirdparty_ids=[customer_id])
    assert [invoice.id for invoice in page.items] == [draft]


# -- payments -----------------------------------------------------------------------------


def test_card_payment_type_id_is_read_from_the_dictionary(dolibarr_client):
    assert dolibarr_client.payment_type_id(code="CB") == 6


def test_payment_type_dictionary_is_read_once(dolibarr_client):
    dolibarr_client.payment_type_id(code="CB")
    dolibarr_client.payment_type_id(code="VIR")
    assert dolibarr_client.call_counts["GET /setup/dictionary/payment_types"] == 1


def test_unknown_payment_type_raises_not_found(dolibarr_client):
    with pytest.raises(NotFoundError, match="'XYZ'"):
        dolibarr_client.payment_type_id(code="XYZ")


def test_partial_payment_leaves_remain_to_pay(dolibarr_client, validated_invoice_id):
    pay(dolibarr_client, validated_invoice_id, "10.00")
    invoice = dolibarr_client.get_invoice(invoice_id=validated_invoice_id)
    assert (invoice.status, invoice.paid) == (InvoiceStatus.VALIDATED, False)
    assert (invoice.total_paid, invoice.remain_to_pay) == (Decimal("10"), Decimal("14"))


def test_full_payment_closes_the_invoice(dolibarr_client, validated_invoice_id):
    pay(dolibarr_client, validated_invoice_id, "24.00")
    invoice = dolibarr_client.get_invoice(invoice_id=validated_invoice_id)
    assert (invoice.status, invoice.paid, invoice.remain_to_pay) == (2, True, Decimal(0))


def test_over_payment_raises_permanent_error_with_dolibarr_message(
    dolibarr_client, validated_invoice_id
):
    pay(dolibarr_client, validated_invoice_id, "10.00")
    with pytest.raises(PermanentError) as caught:
        pay(dolibarr_client, validated_invoice_id, "50.00")
    assert caught.value.status == 400
    assert "is higher than remain to pay (14)" in str(caught.value)


def test_payment_is_found_by_ref_ext(dolibarr_client, validated_invoice_id):
    ref_ext = unique("ch")
    payment_id = pay(dolibarr_client, validated_invoice_id, "24.00", ref_ext=ref_ext)
    [payment] = dolibarr_client.find_payments(ref_ext=ref_ext)
    assert (payment.id, payment.amount, payment.type_code) == (payment_id, Decimal(24), "CB")
    assert payment.date == TODAY


def test_invoice_payments_have_exact_amounts_and_utc_dates(dolibarr_client, validated_invoice_id):
    ref_ext = unique("ch")
    pay(dolibarr_client, validated_invoice_id, "10.01", ref_ext=ref_ext)
    [payment] = dolibarr_client.invoice_payments(invoice_id=validated_invoice_id)
    assert (payment.amount, payment.ref_ext, payment.type_code) == (Decimal("10.01"), ref_ext, "CB")
    assert payment.date == TODAY  # sent as a timestamp, read back as "2026-11-21 11:28:50"


def test_payment_amount_finer_than_a_cent_is_refused(dolibarr_client, validated_invoice_id):
    with pytest.raises(ValueError, match="finer than its minor unit"):
        pay(dolibarr_client, validated_invoice_id, "10.005")


# -- sqlfilters safety ----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["ap24-user-42)", "o'brien", 'say "hi"'])
def test_unsafe_search_value_is_refused_before_any_call(dolibarr_client, value):
    with pytest.raises(UnsafeFilterValue):
        dolibarr_client.find_thirdparties(ref_ext=value)
    assert dolibarr_client.call_counts.total() == 0


def test_unsafe_stripe_customer_id_is_refused_before_any_call(dolibarr_client):
    with pytest.raises(UnsafeFilterValue):
        dolibarr_client.find_thirdparty_by_stripe_customer(customer_id="cus_1'; --")
    assert dolibarr_client.call_counts.total() == 0


def test_search_value_tripping_the_injection_filter_raises_a_clear_error(dolibarr_client):
    # Quoted safely, but Dolibarr's filter refuses SQL-looking pairs in any GET value.
    with pytest.raises(PermanentError, match="injection filter") as caught:
        dolibarr_client.find_thirdparties(ref_ext="select x from y")
    assert caught.value.status == 403
    assert not isinstance(caught.value, AuthenticationError)


# -- call counting --------------------------------------------------------------------------


def test_calls_are_counted_by_method_and_path_template(dolibarr_client, customer_id):
    dolibarr_client.reset_call_counts()
    invoice_id = dolibarr_client.create_invoice(
        thirdparty_id=customer_id, lines=[service_line("20")], ref_ext=unique("in")
    )
    dolibarr_client.validate_invoice(invoice_id=invoice_id)
    dolibarr_client.validate_invoice(invoice_id=invoice_id)
    dolibarr_client.get_invoice(invoice_id=invoice_id)
    assert dolibarr_client.call_counts == {
        "POST /invoices": 1,
        "POST /invoices/{id}/validate": 2,
        "GET /invoices/{id}": 1,
    }


def test_reset_call_counts_starts_from_zero(dolibarr_client):
    dolibarr_client.status()
    dolibarr_client.reset_call_counts()
    assert dolibarr_client.call_counts.total() == 0


# -- retries and unknown outcomes -------------------------------------------------------------


def test_read_is_retried_after_an_injected_server_error(dolibarr_client, dolibarr_sandbox):
    dolibarr_sandbox.faults.update(error_rate=0.5, seed=seed_failing_first(0.5))
    assert dolibarr_client.status().version == "23.0.0-beta"
    assert dolibarr_client.call_counts["GET /status"] == 2


def test_read_is_retried_after_a_dropped_connection(dolibarr_client, dolibarr_sandbox):
    dolibarr_sandbox.faults.update(drop_rate=0.5, seed=seed_failing_first(0.5))
    assert dolibarr_client.status().version == "23.0.0-beta"
    assert dolibarr_client.call_counts["GET /status"] == 2


def test_read_gives_up_after_max_retries(dolibarr_client, dolibarr_sandbox):
    dolibarr_sandbox.faults.update(error_rate=1.0)
    with pytest.raises(TransientError, match="500"):
        dolibarr_client.status()
    assert dolibarr_client.call_counts["GET /status"] == 1 + dolibarr_client.max_retries


def test_validate_is_retried_after_an_injected_server_error(
    dolibarr_client, dolibarr_sandbox, customer_id
):
    invoice_id = dolibarr_client.create_invoice(
        thirdparty_id=customer_id, lines=[service_line("20")], ref_ext=unique("in")
    )
    dolibarr_sandbox.faults.update(error_rate=0.5, seed=seed_failing_first(0.5))
    assert dolibarr_client.validate_invoice(invoice_id=invoice_id).value.ref.startswith("FA")
    assert dolibarr_client.call_counts["POST /invoices/{id}/validate"] == 2


def test_validate_after_a_lost_response_reports_nothing_done_on_retry(
    dolibarr_client, dolibarr_sandbox, customer_id
):
    invoice_id = dolibarr_client.create_invoice(
        thirdparty_id=customer_id, lines=[service_line("20")], ref_ext=unique("in")
    )
    dolibarr_sandbox.faults.update(lost_response_rate=0.5, seed=seed_failing_first(0.5))
    result = dolibarr_client.validate_invoice(invoice_id=invoice_id)
    dolibarr_sandbox.faults.update(lost_response_rate=0)
    assert not result.changed  # the first call did it; the repeat was a harmless 304
    assert dolibarr_client.get_invoice(invoice_id=invoice_id).ref.startswith("FA")


def test_create_after_a_lost_response_is_not_retried(
    dolibarr_client, dolibarr_sandbox, customer_id
):
    ref_ext = unique("in")
    dolibarr_sandbox.faults.update(lost_response_rate=1.0)
    with pytest.raises(TransientError) as caught:
        dolibarr_client.create_invoice(
            thirdparty_id=customer_id, lines=[service_line("20")], ref_ext=ref_ext
        )
    dolibarr_sandbox.faults.update(lost_response_rate=0)
    assert caught.value.outcome_unknown is True
    assert "look the object up by ref_ext" in str(caught.value)
    assert dolibarr_client.call_counts["POST /invoices"] == 1
    assert len(dolibarr_client.find_invoices(ref_ext=ref_ext)) == 1


def test_payment_after_a_lost_response_is_not_retried(
    dolibarr_client, dolibarr_sandbox, validated_invoice_id
):
    ref_ext = unique("ch")
    dolibarr_client.payment_type_id(code="CB")  # the dictionary read must not be the lost one
    dolibarr_sandbox.faults.update(lost_response_rate=1.0)
    with pytest.raises(TransientError) as caught:
        pay(dolibarr_client, validated_invoice_id, "24.00", ref_ext=ref_ext)
    dolibarr_sandbox.faults.update(lost_response_rate=0)
    assert caught.value.outcome_unknown is True
    assert len(dolibarr_client.find_payments(ref_ext=ref_ext)) == 1


def test_write_timeout_says_the_outcome_is_unknown(dolibarr_sandbox, dolibarr_api_key):
    client = DolibarrClient(
        base_url=dolibarr_sandbox.api_url,
        api_key=dolibarr_api_key,
        backoff_base=0,
        read_timeout=0.2,
    )
    dolibarr_sandbox.faults.update(timeout_rate=1.0, timeout_seconds=0.5)
    with pytest.raises(TransientError) as caught:
        client.create_thirdparty(name="Slow", ref_ext=unique("o"))
    dolibarr_sandbox.faults.update(timeout_rate=0)
    assert caught.value.outcome_unknown is True
    assert str(caught.value).startswith("Dolibarr did not answer POST /thirdparties within 0.2 s")
    assert client.call_counts["POST /thirdparties"] == 1


def test_create_refused_by_a_server_error_is_not_outcome_unknown(
    dolibarr_client, dolibarr_sandbox, customer_id
):
    # Dolibarr's own JSON 500 means the work was rolled back (exchange 07).
    dolibarr_sandbox.faults.update(error_rate=1.0)
    with pytest.raises(TransientError) as caught:
        dolibarr_client.create_invoice(
            thirdparty_id=customer_id, lines=[service_line("20")], ref_ext=unique("in")
        )
    dolibarr_sandbox.faults.update(error_rate=0)
    assert caught.value.outcome_unknown is False
    assert dolibarr_client.call_counts["POST /invoices"] == 1


# -- bank -----------------------------------------------------------------------------------


def test_bank_fee_line_is_found_by_cheque_number(dolibarr_client):
    txn = unique("txn")
    line_id = dolibarr_client.add_bank_line(
        bank_account_id=STRIPE_ACCOUNT_ID,
        date=TODAY,
        type_code="CB",
        label=f"Stripe fee {txn}",
        amount=Decimal("-0.55"),
        cheque_number=txn,
    )
    [line] = dolibarr_client.bank_lines(
        bank_account_id=STRIPE_ACCOUNT_ID, filters=equals("num_chq", txn)
    )
    assert (line.id, line.amount, line.type_code) == (line_id, Decimal("-0.55"), "CB")
    assert line.date_operation == datetime(2026, 11, 21, tzinfo=UTC)


def test_bank_line_filter_with_table_alias_is_refused(dolibarr_client):
    with pytest.raises(ValueError, match="bare column names"):
        dolibarr_client.bank_lines(
            bank_account_id=STRIPE_ACCOUNT_ID, filters=like("t.label", "Stripe fee%")
        )
    assert dolibarr_client.call_counts.total() == 0


def test_payout_transfer_moves_the_balance(dolibarr_client, dolibarr_sandbox, dolibarr_api_key):
    main_id = requests.post(
        f"{dolibarr_sandbox.api_url}/bankaccounts",
        json={
            "ref": unique("MAIN").upper()[:12],
            "label": unique("Banque principale"),
            "type": 1,
            "currency_code": "EUR",
            "country_id": 1,
        },
        headers={"DOLAPIKEY": dolibarr_api_key},
        timeout=5,
    ).json()
    before = dolibarr_client.bank_balance(bank_account_id=STRIPE_ACCOUNT_ID)
    transfer = dolibarr_client.create_transfer(
        from_account_id=STRIPE_ACCOUNT_ID,
        to_account_id=main_id,
        date=TODAY,
        amount=Decimal("150.25"),
        description="Stripe payout po_1",
    )
    after = dolibarr_client.bank_balance(bank_account_id=STRIPE_ACCOUNT_ID)
    line = dolibarr_client.get_bank_line(line_id=transfer.to_line_id)
    assert before - after == Decimal("150.25")
    assert (line.amount, line.label) == (Decimal("150.25"), "Stripe payout po_1")
    assert dolibarr_client.bank_balance(bank_account_id=main_id) == Decimal("150.25")


def test_stripe_bank_account_is_found_by_ref(dolibarr_client):
    account = dolibarr_client.find_bank_account(ref="STRIPE")
    assert (account.id, account.currency_code) == (STRIPE_ACCOUNT_ID, "EUR")


# -- documents and shipments ---------------------------------------------------------------


def test_built_invoice_pdf_is_decoded_bytes(dolibarr_client, validated_invoice_id):
    ref = dolibarr_client.get_invoice(invoice_id=validated_invoice_id).ref
    document = dolibarr_client.build_invoice_pdf(invoice_ref=ref)
    assert document.content.startswith(b"%PDF-")
    assert document.filename == f"{ref}.pdf"
    assert "content" not in document.raw


def test_downloaded_invoice_pdf_is_decoded_bytes(dolibarr_client, validated_invoice_id):
    ref = dolibarr_client.get_invoice(invoice_id=validated_invoice_id).ref
    dolibarr_client.build_invoice_pdf(invoice_ref=ref)
    document = dolibarr_client.download_invoice_pdf(invoice_ref=ref)
    assert document.content.startswith(b"%PDF-")
    assert document.content_type == "application/pdf"


def test_missing_document_raises_not_found(dolibarr_client):
    with pytest.raises(NotFoundError, match="File not found"):
        dolibarr_client.download_invoice_pdf(invoice_ref="FA9999-9999")


def test_shipment_is_validated_closed_and_carries_a_signature(dolibarr_client, customer_id):
    product_id = dolibarr_client.create_product(
        ref=unique("AP24-PRINT").upper(),
        label="Poster",
        type=ProductType.PRODUCT,
        price=Decimal(40),
        tva_tx=Decimal(20),
    )
    order_id = dolibarr_client.create_order(
        thirdparty_id=customer_id,
        date=TODAY,
        ref_ext=unique("p"),
        lines=[
            NewLine(
                qty=Decimal(2),
                subprice=Decimal(40),
                tva_tx=Decimal(20),
                product_id=product_id,
                product_type=ProductType.PRODUCT,
            )
        ],
    )
    dolibarr_client.validate_order(order_id=order_id)
    [order_line] = dolibarr_client.get_order(order_id=order_id).lines
    ref_ext = unique("ap24-shipment")
    shipment_id = dolibarr_client.create_shipment(
        thirdparty_id=customer_id,
        order_id=order_id,
        lines=[NewShipmentLine(order_line_id=order_line.id, qty=Decimal(2))],
        ref_ext=ref_ext,
        date_delivery=date(2026, 11, 23),
    )
    validated = dolibarr_client.validate_shipment(shipment_id=shipment_id)
    stored = dolibarr_client.upload_document(
        modulepart="expedition",
        ref=validated.value.ref,
        filename="signature.png",
        content=b"\x89PNG signature",
    )
    closed = dolibarr_client.close_shipment(shipment_id=shipment_id)
    [found] = dolibarr_client.find_shipments(ref_ext=ref_ext)
    signature = dolibarr_client.download_document(
        modulepart="expedition", original_file=f"sending/{validated.value.ref}/signature.png"
    )
    assert validated.value.ref.startswith("SH")
    assert (stored, signature.content) == ("signature.png", b"\x89PNG signature")
    assert closed.value.status == ShipmentStatus.CLOSED
    assert (found.id, found.order_id) == (shipment_id, order_id)


# -- raw HTTP failures the sandbox cannot produce (responses) --------------------------------


@pytest.fixture
def offline_client():
    return DolibarrClient(base_url=OFFLINE_URL, api_key=OFFLINE_KEY, backoff_base=0)


@responses.activate
def test_429_is_retried_after_the_delay_dolibarr_asks_for(offline_client, monkeypatch):
    waits = []
    monkeypatch.setattr("reconciliation.connectors.dolibarr.time.sleep", waits.append)
    responses.get(f"{OFFLINE_URL}/status", status=429, headers={"Retry-After": "7"}, body="")
    responses.get(f"{OFFLINE_URL}/status", json={"success": {"dolibarr_version": "23.0.0"}})
    assert offline_client.status().version == "23.0.0"
    assert waits == [7.0]


@responses.activate
def test_429_that_persists_raises_transient_error_with_retry_after(offline_client, monkeypatch):
    monkeypatch.setattr("reconciliation.connectors.dolibarr.time.sleep", lambda _: None)
    responses.get(f"{OFFLINE_URL}/status", status=429, headers={"Retry-After": "3"}, body="")
    with pytest.raises(TransientError) as caught:
        offline_client.status()
    assert (caught.value.status, caught.value.retry_after) == (429, 3.0)


@responses.activate
def test_503_html_page_raises_transient_error_saying_it_is_not_json(offline_client):
    responses.get(
        f"{OFFLINE_URL}/invoices/5",
        status=503,
        body="<html><body>Maintenance</body></html>",
        content_type="text/html",
    )
    with pytest.raises(TransientError) as caught:
        offline_client.get_invoice(invoice_id=5)
    assert str(caught.value) == (
        "Dolibarr GET /invoices/{id} -> 503 Service Unavailable (a non-JSON answer: text/html)"
    )


@responses.activate
def test_write_answered_by_a_proxy_error_page_has_an_unknown_outcome(offline_client):
    responses.post(f"{OFFLINE_URL}/invoices", status=502, body="Bad Gateway")
    with pytest.raises(TransientError) as caught:
        offline_client.create_invoice(thirdparty_id=1, lines=[service_line("1")], ref_ext="in_1")
    assert caught.value.outcome_unknown is True
    assert offline_client.call_counts["POST /invoices"] == 1


@responses.activate
def test_redirect_is_not_followed(offline_client):
    responses.get(
        f"{OFFLINE_URL}/status", status=302, headers={"Location": "https://elsewhere.test/"}
    )
    with pytest.raises(PermanentError, match="redirect, not followed"):
        offline_client.status()
    assert len(responses.calls) == 1


@responses.activate
def test_html_page_answered_with_200_points_at_the_url_setting(offline_client):
    responses.get(f"{OFFLINE_URL}/status", body="<html>login</html>", content_type="text/html")
    with pytest.raises(PermanentError, match="check that DOLIBARR_URL is the API root"):
        offline_client.status()


@responses.activate
def test_api_key_is_sent_in_the_dolapikey_header_only(offline_client):
    responses.get(f"{OFFLINE_URL}/status", json={"success": {"dolibarr_version": "x"}})
    offline_client.status()
    request = responses.calls[0].request
    assert request.headers["DOLAPIKEY"] == OFFLINE_KEY
    assert OFFLINE_KEY not in request.url


@responses.activate
def test_amounts_are_sent_as_exact_numbers_never_floats(offline_client):
    responses.post(f"{OFFLINE_URL}/bankaccounts/1/lines", json=335)
    offline_client.add_bank_line(
        bank_account_id=1, date=TODAY, type_code="CB", label="fee", amount=Decimal("-0.55")
    )
    assert b'"amount": -0.55' in responses.calls[0].request.body
