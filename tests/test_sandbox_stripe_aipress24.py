"""The Stripe side of the Aipress24 sample (`sandbox/stripe_aipress24.py`): what the sandbox
Stripe serves, read through the production StripeConnector, agrees with what the Aipress24
reader reads from the SQLite twin of the synthetic data."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from reconciliation.connectors.aipress24 import Aipress24Reader
from reconciliation.connectors.aipress24_types import ProductType, Purchase, PurchaseStatus
from reconciliation.connectors.stripe import StripeConnector
from reconciliation.sandbox.stripe import StripeSandbox
from reconciliation.sandbox.stripe_aipress24 import aipress24_stripe_dataset, vat_cents
from reconciliation.sandbox.stripe_data import StripeDataset, generate, stripe_fee
from tests.contract.test_stripe_shapes import assert_shapes, fetch_all
from tests.fixtures_stripe import STRIPE_TEST_KEY, STRIPE_TEST_WEBHOOK_SECRET

# A different rate per product type, so that each purchase shows which one it was charged.
VAT_RATES = {
    "consultation": Decimal("2.1"),
    "consultation_gift": Decimal("5.5"),
    "justificatif": Decimal("10"),
    "cession": Decimal("20"),
}
ONSO = "Observatoire Numérique du Sud-Ouest"


# --- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reader(_aipress24_sqlite_template: Path) -> Iterator[Aipress24Reader]:
    """The session's SQLite twin, read-only, every row visible (no settle window)."""
    with Aipress24Reader(
        url=f"sqlite:///{_aipress24_sqlite_template}", settle=timedelta(0)
    ) as reader:
        yield reader


@pytest.fixture(scope="module")
def organisations(reader):
    return list(reader.organisations_changed(since=None, page_size=10_000).rows)


@pytest.fixture(scope="module")
def purchases(reader) -> list[Purchase]:
    return list(reader.purchases_all(after=None, page_size=10_000).rows)


@pytest.fixture(scope="module")
def dataset(reader, stripe_dataset) -> StripeDataset:
    return aipress24_stripe_dataset(reader, vat_rates=VAT_RATES, base=stripe_dataset)


@pytest.fixture
def sandbox(dataset) -> Iterator[StripeSandbox]:
    server = StripeSandbox(
        api_key=STRIPE_TEST_KEY, webhook_secret=STRIPE_TEST_WEBHOOK_SECRET, data=dataset
    )
    with server:
        yield server


@pytest.fixture
def stripe(sandbox) -> StripeConnector:
    return StripeConnector(
        api_key=STRIPE_TEST_KEY, api_base=sandbox.base_url, max_network_retries=0, timeout=5.0
    )


def with_status(purchases, *statuses: PurchaseStatus) -> list[Purchase]:
    return [p for p in purchases if p.status in statuses]


def first(purchases, status: PurchaseStatus, product: ProductType) -> Purchase:
    return next(p for p in purchases if p.status == status and p.product_type == product)


def as_json(dataset: StripeDataset) -> str:
    return json.dumps(
        [dataset.collections, dataset.balance, dataset.payout_transactions, str(dataset.end)],
        sort_keys=True,
    )


# --- customers ------------------------------------------------------------------------------
def test_every_organisation_stripe_customer_is_served_with_its_billing_email_and_vat(
    stripe, organisations
):
    holders = [o for o in organisations if o.stripe_customer_ids]
    assert len([c for o in holders for c in o.stripe_customer_ids]) == 6
    for organisation in holders:
        for customer_id in organisation.stripe_customer_ids:
            customer = stripe.customer(customer_id, with_tax_ids=True)

            assert customer["name"] == organisation.name
            assert customer["email"] == organisation.billing_email
            assert customer["address"]["country"] == organisation.billing_country
            assert customer["metadata"] == {}  # created by Checkout: no Aipress24 ids
            assert [(t["type"], t["value"]) for t in customer["tax_ids"]["data"]] == [
                ("eu_vat", organisation.billing_vat_number)
            ]


def test_second_customer_of_an_organisation_has_its_name_and_email(stripe, organisations):
    onso = next(o for o in organisations if o.name == ONSO)
    own, other = (stripe.customer(i) for i in onso.stripe_customer_ids)

    assert (other["id"], other["name"], other["email"]) == (
        onso.subscription_stripe_customer_ids[-1],
        own["name"],
        own["email"],
    )


# --- purchases ------------------------------------------------------------------------------
def test_gift_and_cession_are_charged_net_plus_vat_at_their_product_types_rate(stripe, purchases):
    gift = first(purchases, PurchaseStatus.PAID, ProductType.CONSULTATION_GIFT)  # 600 net
    cession = first(purchases, PurchaseStatus.PAID, ProductType.CESSION)  # 12000 net

    gift_intent = stripe.payment_intent(gift.stripe_payment_intent_id)
    cession_intent = stripe.payment_intent(cession.stripe_payment_intent_id)

    assert (gift_intent["status"], gift_intent["amount"], gift_intent["amount_received"]) == (
        "succeeded",
        600 + 33,  # 5.5 %
        633,
    )
    assert (cession_intent["status"], cession_intent["amount"]) == ("succeeded", 12000 + 2400)
    assert cession_intent["amount_received"] == 14400


def test_paid_and_refunded_purchases_have_a_succeeded_intent_naming_them_and_no_customer(
    stripe, purchases, reader
):
    for purchase in with_status(purchases, PurchaseStatus.PAID, PurchaseStatus.REFUNDED):
        intent = stripe.payment_intent(purchase.stripe_payment_intent_id)
        rate = VAT_RATES[purchase.product_type.value]

        assert intent["status"] == "succeeded"
        assert intent["amount"] == purchase.amount_cents + vat_cents(purchase.amount_cents, rate)
        assert intent["currency"] == "eur"
        assert intent["customer"] is None
        assert intent["receipt_email"] == reader.user(purchase.buyer_id).email
        assert intent["created"] == int(purchase.paid_at.timestamp())
        assert intent["metadata"] == {
            "purchase_id": purchase.id,
            "post_id": purchase.post_id,
            "product_type": purchase.product_type.value,
        }


def test_each_paid_charge_is_captured_with_a_stripe_fee(stripe, purchases, reader):
    for purchase in with_status(purchases, PurchaseStatus.PAID, PurchaseStatus.REFUNDED):
        intent = stripe.payment_intent(purchase.stripe_payment_intent_id)
        (charge,) = stripe.charges(payment_intent=intent["id"])
        txn = stripe.balance_transaction(charge["balance_transaction"])

        assert charge["id"] == intent["latest_charge"]
        assert (charge["status"], charge["paid"], charge["captured"]) == ("succeeded", True, True)
        assert charge["customer"] is None
        assert charge["billing_details"]["email"] == reader.user(purchase.buyer_id).email
        assert txn["amount"] == charge["amount"] == intent["amount"]
        assert txn["fee"] == stripe_fee(charge["amount"], "eur", "eea")
        assert txn["net"] == charge["amount"] - txn["fee"]


def test_refunded_purchases_have_one_full_refund_of_their_payment_intent(stripe, purchases):
    refunded = with_status(purchases, PurchaseStatus.REFUNDED)
    assert len(refunded) == 2
    for purchase in refunded:
        intent = stripe.payment_intent(purchase.stripe_payment_intent_id)
        (refund,) = stripe.refunds(payment_intent=intent["id"])

        assert (refund["status"], refund["amount"]) == ("succeeded", intent["amount"])
        assert refund["charge"] == intent["latest_charge"]
        assert stripe.charge(refund["charge"])["refunded"] is True
        assert refund["created"] > purchase.paid_at.timestamp()


def test_paid_purchases_have_no_refund(stripe, purchases):
    for purchase in with_status(purchases, PurchaseStatus.PAID):
        assert list(stripe.refunds(payment_intent=purchase.stripe_payment_intent_id)) == []


def test_failed_purchase_collected_nothing(stripe, purchases):
    (failed,) = with_status(purchases, PurchaseStatus.FAILED)
    intent = stripe.payment_intent(failed.stripe_payment_intent_id)
    (charge,) = stripe.charges(payment_intent=intent["id"])

    assert intent["status"] == "requires_payment_method"
    assert intent["amount_received"] == 0
    assert intent["last_payment_error"]["code"] == "card_declined"
    assert (charge["status"], charge["paid"], charge["amount_captured"]) == ("failed", False, 0)
    assert charge["balance_transaction"] is None
    assert list(stripe.refunds(payment_intent=intent["id"])) == []


def test_pending_purchases_have_nothing_in_stripe(stripe, purchases):
    pending = {p.id for p in with_status(purchases, PurchaseStatus.PENDING)}
    assert len(pending) == 3
    named = {c["metadata"].get("purchase_id") for c in stripe.charges()}
    named |= {i["metadata"].get("purchase_id") for i in stripe.payment_intents()}

    assert named.isdisjoint(pending)
    assert len(named - {None}) == len(purchases) - len(pending)  # every other one is there


def test_events_announce_customers_payments_and_refunds(stripe, purchases, organisations):
    events: dict[str, set[str]] = {}
    for event in stripe.events():
        events.setdefault(event["type"], set()).add(event["data"]["object"]["id"])
    paid = with_status(purchases, PurchaseStatus.PAID, PurchaseStatus.REFUNDED)
    intents = {p.stripe_payment_intent_id for p in paid}
    refunded = {
        stripe.payment_intent(p.stripe_payment_intent_id)["latest_charge"]
        for p in with_status(purchases, PurchaseStatus.REFUNDED)
    }

    assert {c for o in organisations for c in o.stripe_customer_ids} <= events["customer.created"]
    assert intents <= events["payment_intent.succeeded"]
    assert {stripe.payment_intent(i)["latest_charge"] for i in intents} <= events[
        "charge.succeeded"
    ]
    assert refunded <= events["charge.refunded"]


# --- the dataset as a whole -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "resource"),
    [
        ("customers", "customer"),
        ("payment_intents", "payment_intent"),
        ("charges", "charge"),
        ("refunds", "refund"),
        ("balance_transactions", "balance_transaction"),
        ("events", "event"),
    ],
)
def test_every_added_object_has_its_stripe_fixture_shape(sandbox, stripe_dataset, path, resource):
    added = [
        obj
        for obj in fetch_all(sandbox.base_url, f"/v1/{path}")
        if obj["id"] not in stripe_dataset.index
    ]
    assert_shapes(added, resource)


def test_added_tax_ids_have_their_stripe_fixture_shape(sandbox, stripe_dataset):
    customers = fetch_all(sandbox.base_url, "/v1/customers", **{"expand[]": "data.tax_ids"})
    added = [c for c in customers if c["id"] not in stripe_dataset.index]
    assert_shapes([t for c in added for t in c["tax_ids"]["data"]], "tax_id")


def test_base_objects_are_kept_beside_and_base_is_not_changed(reader, stripe_dataset):
    before = as_json(stripe_dataset)

    merged = aipress24_stripe_dataset(reader, vat_rates=VAT_RATES, base=stripe_dataset)

    assert set(stripe_dataset.index) < set(merged.index)
    assert merged.payout_transactions == stripe_dataset.payout_transactions
    assert as_json(stripe_dataset) == before


def test_end_is_after_every_object_and_lists_follow_their_order(dataset):
    end = dataset.end.timestamp()
    for name, objects in dataset.collections.items():
        assert all(o.get("created", o.get("start", 0)) < end for o in objects), name
        assert [dataset.order[o["id"]] for o in objects] == sorted(
            dataset.order[o["id"]] for o in objects
        )


def test_balance_sums_every_balance_transaction_by_status(dataset):
    txns = dataset.collections["balance_transactions"]
    for status in ("available", "pending"):
        for entry in dataset.balance[status]:
            assert entry["amount"] == sum(
                t["net"]
                for t in txns
                if (t["status"], t["currency"]) == (status, entry["currency"])
            )
    assert all(
        t["status"] == ("available" if t["available_on"] <= dataset.end.timestamp() else "pending")
        for t in txns
    )


def test_without_base_the_account_holds_only_its_set_up_and_aipress24(reader, organisations):
    alone = aipress24_stripe_dataset(reader, vat_rates=VAT_RATES)
    customers = {c for o in organisations for c in o.stripe_customer_ids}

    assert {c["id"] for c in alone.collections["customers"]} == customers
    assert alone.counts()["invoices"] == alone.counts()["payouts"] == 0
    assert alone.counts()["tax_rates"] == 4


def test_a_base_payout_in_transit_has_arrived_once_end_is_past_its_arrival(reader):
    base = generate(seed=11, customers=12, start=datetime(2026, 1, 5, tzinfo=UTC), months=4)
    in_transit = [p["id"] for p in base.collections["payouts"] if p["status"] == "in_transit"]
    assert in_transit  # the period ends between a Monday payout and its arrival

    merged = aipress24_stripe_dataset(reader, vat_rates=VAT_RATES, base=base)

    assert {merged.get(i)["status"] for i in in_transit} == {"paid"}
    arrivals = {
        e["data"]["object"]["id"]: e["created"]
        for e in merged.collections["events"]
        if e["type"] == "payout.paid"
    }
    assert {i: merged.get(i)["arrival_date"] for i in in_transit}.items() <= arrivals.items()


def test_same_inputs_give_the_same_ids_and_objects(reader, stripe_dataset, dataset):
    again = aipress24_stripe_dataset(reader, vat_rates=VAT_RATES, base=stripe_dataset)

    assert list(again.index) == list(dataset.index)
    assert as_json(again) == as_json(dataset)


def test_another_seed_draws_other_stripe_ids_but_keeps_aipress24s(reader):
    one = aipress24_stripe_dataset(reader, vat_rates=VAT_RATES, seed=24)
    other = aipress24_stripe_dataset(reader, vat_rates=VAT_RATES, seed=25)

    def ids(dataset, resource):
        return {obj["id"] for obj in dataset.collections[resource]}

    assert ids(one, "customers") == ids(other, "customers")
    assert ids(one, "payment_intents") == ids(other, "payment_intents")
    assert ids(one, "charges").isdisjoint(ids(other, "charges"))


def test_a_product_type_without_vat_rate_is_refused(reader):
    with pytest.raises(ValueError, match="cession"):
        aipress24_stripe_dataset(
            reader, vat_rates={k: v for k, v in VAT_RATES.items() if k != "cession"}
        )


# --- vat_cents ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("net", "rate", "vat"),
    [
        (250, "2.1", 5),  # 5.25
        (300, "2.1", 6),  # 6.3
        (900, "2.1", 19),  # 18.9
        (900, "5.5", 50),  # 49.5: half up
        (50, "1", 1),  # 0.5: half up
        (12000, "20", 2400),
        (0, "20", 0),
    ],
)
def test_vat_cents_rounds_half_up_to_the_cent(net, rate, vat):
    assert vat_cents(net, Decimal(rate)) == vat


def test_vat_cents_refuses_a_float_rate():
    with pytest.raises(TypeError, match="Decimal"):
        vat_cents(300, 2.1)
