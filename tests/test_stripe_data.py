"""The seeded Stripe data generator: reproducible, and consistent to the cent."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from datetime import UTC, datetime

import pytest

from reconciliation.sandbox.stripe_data import (
    DEFAULT_START,
    TAX_RATES,
    add_months,
    allocate,
    generate,
    percent_of,
    stripe_fee,
)

ID_PREFIXES = {
    "customers": "cus_",
    "invoices": "in_",
    "invoice_payments": "inpay_",
    "payment_intents": "pi_",
    "charges": "ch_",
    "refunds": "re_",
    "balance_transactions": "txn_",
    "payouts": "po_",
    "events": "evt_",
    "tax_rates": "txr_",
    "tax_ids": "txi_",
    "discounts": "di_",
}
# The only floats Stripe sends in these objects: percentages, never amounts.
FLOAT_KEYS = {"percentage", "effective_percentage", "percent_off"}


def as_json(dataset) -> str:
    return json.dumps(dataset.collections, sort_keys=True)


@pytest.fixture(scope="module")
def larger_dataset():
    """More customers than the fixed personas, so that randomly drawn ones are checked too."""
    return generate(seed=2026, customers=60, months=12)


def rate_by_id(dataset) -> dict[str, int]:
    basis_points = {spec.key: spec.basis_points for spec in TAX_RATES}
    return {
        r["id"]: basis_points[r["metadata"]["ap24_rate"]] for r in dataset.collections["tax_rates"]
    }


def test_same_seed_gives_identical_data(stripe_dataset):
    again = generate(seed=11, customers=12, start=datetime(2026, 1, 1, tzinfo=UTC), months=4)
    assert as_json(again) == as_json(stripe_dataset)
    assert again.balance == stripe_dataset.balance


def test_different_seed_gives_different_data(stripe_dataset):
    other = generate(seed=12, customers=12, start=datetime(2026, 1, 1, tzinfo=UTC), months=4)
    assert as_json(other) != as_json(stripe_dataset)
    ids = {c["id"] for c in stripe_dataset.collections["customers"]}
    assert ids.isdisjoint(c["id"] for c in other.collections["customers"])


def test_default_demo_dataset_starts_at_a_fixed_date_and_ends_in_the_past():
    dataset = generate(customers=2)
    assert dataset.start == DEFAULT_START
    assert dataset.end <= datetime(2026, 11, 1, tzinfo=UTC)


def test_naive_start_is_refused():
    with pytest.raises(ValueError, match="aware"):
        generate(start=datetime(2026, 1, 1))


def test_ids_look_like_stripe_ids_and_are_unique(larger_dataset):
    seen = set()
    for resource, prefix in ID_PREFIXES.items():
        for obj in larger_dataset.collections[resource]:
            assert obj["id"].startswith(prefix)
            assert re.fullmatch(r"[a-z]+_[A-Za-z0-9]+", obj["id"])
            seen.add(obj["id"])
    assert len(seen) == sum(len(larger_dataset.collections[r]) for r in ID_PREFIXES)


def test_amounts_are_integers_everywhere(larger_dataset):
    def walk(node, key=""):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, k)
        elif isinstance(node, list):
            for item in node:
                walk(item, key)
        elif isinstance(node, float):
            assert key in FLOAT_KEYS, f"float under {key!r}"

    walk(larger_dataset.collections)
    walk(larger_dataset.balance)


def test_invoice_total_is_lines_minus_discounts_plus_taxes(larger_dataset):
    for invoice in larger_dataset.collections["invoices"]:
        lines = invoice["lines"]["data"]
        line_sum = sum(line["amount"] for line in lines)
        discounts = sum(d["amount"] for d in invoice["total_discount_amounts"])
        taxes = sum(t["amount"] for line in lines for t in line["taxes"])
        assert invoice["subtotal"] == line_sum
        assert invoice["total_excluding_tax"] == line_sum - discounts
        assert invoice["total"] == line_sum - discounts + taxes
        assert sum(t["amount"] for t in invoice["total_taxes"]) == taxes
        assert invoice["amount_due"] == invoice["total"]
        assert invoice["amount_remaining"] == invoice["amount_due"] - invoice["amount_paid"]


def test_line_discounts_add_up_to_the_invoice_discount(larger_dataset):
    for invoice in larger_dataset.collections["invoices"]:
        for total in invoice["total_discount_amounts"]:
            shares = [
                d["amount"]
                for line in invoice["lines"]["data"]
                for d in line["discount_amounts"]
                if d["discount"] == total["discount"]
            ]
            assert sum(shares) == total["amount"]


def test_line_tax_is_rate_times_discounted_amount_rounded_half_up(larger_dataset):
    rates = rate_by_id(larger_dataset)
    for invoice in larger_dataset.collections["invoices"]:
        for line in invoice["lines"]["data"]:
            discounted = line["amount"] - sum(d["amount"] for d in line["discount_amounts"])
            for tax in line["taxes"]:
                assert tax["taxable_amount"] == discounted
                rate = rates[tax["tax_rate_details"]["tax_rate"]]
                assert tax["amount"] == percent_of(discounted, rate)


def test_all_three_french_vat_rates_appear_on_invoice_lines(stripe_dataset):
    rates = rate_by_id(stripe_dataset)
    used = {
        rates[t["tax_rate_details"]["tax_rate"]]
        for invoice in stripe_dataset.collections["invoices"]
        for line in invoice["lines"]["data"]
        for t in line["taxes"]
    }
    assert {2000, 550, 210} <= used


def test_eu_business_with_vat_number_is_reverse_charged(stripe_dataset):
    customer = next(
        c
        for c in stripe_dataset.collections["customers"]
        if c["name"] == "Müller & Söhne Verlag GmbH"
    )
    invoice = next(
        i for i in stripe_dataset.collections["invoices"] if i["customer"] == customer["id"]
    )
    assert customer["tax_exempt"] == "reverse"
    assert invoice["customer_tax_ids"][0]["value"].startswith("DE")
    assert [t["taxability_reason"] for t in invoice["total_taxes"]] == ["reverse_charge"]
    assert invoice["total"] == invoice["subtotal"]


def test_paid_invoices_are_covered_by_a_paid_invoice_payment(stripe_dataset):
    payments = defaultdict(list)
    for payment in stripe_dataset.collections["invoice_payments"]:
        payments[payment["invoice"]].append(payment)
    intents = {pi["id"]: pi for pi in stripe_dataset.collections["payment_intents"]}
    for invoice in stripe_dataset.collections["invoices"]:
        if invoice["status"] != "paid" or invoice["total"] == 0:
            continue
        (payment,) = payments[invoice["id"]]
        assert payment["status"] == "paid"
        assert payment["amount_paid"] == invoice["amount_paid"] == invoice["total"]
        intent = intents[payment["payment"]["payment_intent"]]
        assert intent["status"] == "succeeded"
        assert intent["amount_received"] == invoice["total"]


def test_zero_total_invoice_is_paid_without_a_payment(stripe_dataset):
    zero = [i for i in stripe_dataset.collections["invoices"] if i["total"] == 0]
    assert zero
    paid_ids = {p["invoice"] for p in stripe_dataset.collections["invoice_payments"]}
    for invoice in zero:
        assert invoice["status"] == "paid"
        assert invoice["id"] not in paid_ids


def test_failed_payment_leaves_the_invoice_open(stripe_dataset):
    failed = [c for c in stripe_dataset.collections["charges"] if c["status"] == "failed"]
    assert failed
    for charge in failed:
        assert charge["failure_code"] == "card_declined"
        assert charge["balance_transaction"] is None
    open_invoices = [i for i in stripe_dataset.collections["invoices"] if i["status"] == "open"]
    assert open_invoices
    for invoice in open_invoices:
        assert invoice["attempted"]
        assert invoice["amount_paid"] == 0
        assert stripe_dataset.get(invoice["customer"])["delinquent"]


def test_failed_then_retried_payment_has_two_charges_on_one_intent(stripe_dataset):
    by_intent = defaultdict(list)
    for charge in stripe_dataset.collections["charges"]:
        by_intent[charge["payment_intent"]].append(charge["status"])
    assert ["failed", "succeeded"] in by_intent.values()


def test_subscription_invoices_carry_their_subscription_and_period(stripe_dataset):
    reasons = defaultdict(int)
    for invoice in stripe_dataset.collections["invoices"]:
        reasons[invoice["billing_reason"]] += 1
        if invoice["billing_reason"].startswith("subscription"):
            subscription = invoice["parent"]["subscription_details"]["subscription"]
            line = invoice["lines"]["data"][0]
            assert subscription.startswith("sub_")
            assert line["parent"]["subscription_item_details"]["subscription"] == subscription
            assert line["period"]["end"] > line["period"]["start"] == invoice["created"]
        else:
            assert invoice["parent"] is None
    assert reasons["subscription_create"]
    assert reasons["subscription_cycle"]
    assert reasons["manual"]


def test_annual_and_monthly_periods_are_a_year_and_a_month(stripe_dataset):
    lengths = set()
    for invoice in stripe_dataset.collections["invoices"]:
        if invoice["parent"]:
            period = invoice["lines"]["data"][0]["period"]
            lengths.add((period["end"] - period["start"]) // 86_400)
    assert lengths & {28, 29, 30, 31}
    assert lengths & {365, 366}


def test_some_payment_intents_have_no_invoice(stripe_dataset):
    invoiced = {
        p["payment"]["payment_intent"] for p in stripe_dataset.collections["invoice_payments"]
    }
    bare = [pi for pi in stripe_dataset.collections["payment_intents"] if pi["id"] not in invoiced]
    assert bare
    assert all(pi["metadata"]["ap24_kind"] == "article_purchase" for pi in bare)


def test_refunds_never_exceed_their_charge(larger_dataset):
    refunded = defaultdict(int)
    for refund in larger_dataset.collections["refunds"]:
        refunded[refund["charge"]] += refund["amount"]
    for charge_id, amount in refunded.items():
        charge = larger_dataset.get(charge_id)
        assert amount == charge["amount_refunded"] <= charge["amount"]
        assert charge["refunded"] == (amount == charge["amount"])


def test_both_partial_and_full_refunds_exist(stripe_dataset):
    kinds = {
        stripe_dataset.get(r["charge"])["amount"] == r["amount"]
        for r in stripe_dataset.collections["refunds"]
    }
    assert kinds == {True, False}


def test_every_successful_charge_has_a_fee_of_its_card_region(stripe_dataset):
    for charge in stripe_dataset.collections["charges"]:
        if charge["status"] != "succeeded":
            continue
        txn = stripe_dataset.get(charge["balance_transaction"])
        assert txn["fee"] == sum(d["amount"] for d in txn["fee_details"])
        assert txn["net"] == txn["amount"] - txn["fee"] == charge["amount"] - txn["fee"]
        if (
            charge["currency"] == "eur"
            and charge["payment_method_details"]["card"]["country"] == "FR"
        ):
            assert txn["fee"] == stripe_fee(charge["amount"], "eur", "eea")


def test_eu_card_fee_is_one_and_a_half_percent_plus_25_cents():
    assert stripe_fee(5880, "eur", "eea") == 88 + 25
    assert stripe_fee(500, "eur", "eea") == 8 + 25  # 7.5 rounds half up
    assert stripe_fee(800, "jpy", "international") == 26 + 40


def test_payout_amount_is_the_net_of_its_balance_transactions(larger_dataset):
    for payout in larger_dataset.collections["payouts"]:
        members = [larger_dataset.get(t) for t in larger_dataset.payout_transactions[payout["id"]]]
        paid_out = [t for t in members if t["type"] != "payout"]
        (own,) = [t for t in members if t["type"] == "payout"]
        assert sum(t["net"] for t in paid_out) == payout["amount"] > 0
        assert own["id"] == payout["balance_transaction"]
        assert own["net"] == -payout["amount"]
        assert all(t["currency"] == payout["currency"] for t in members)
        assert all(t["available_on"] <= payout["created"] for t in paid_out)


def test_no_balance_transaction_is_paid_out_twice(larger_dataset):
    members = [t for ids in larger_dataset.payout_transactions.values() for t in ids]
    assert len(members) == len(set(members))


def _assert_balance_is_the_sum_of_transactions(dataset):
    for status in ("available", "pending"):
        for entry in dataset.balance[status]:
            assert entry["amount"] == sum(
                t["net"]
                for t in dataset.collections["balance_transactions"]
                if t["currency"] == entry["currency"] and t["status"] == status
            )


def test_balance_is_the_sum_of_transactions_by_status(larger_dataset):
    _assert_balance_is_the_sum_of_transactions(larger_dataset)


def test_one_jpy_and_one_other_non_euro_customer_exist(stripe_dataset):
    currencies = {c["currency"] for c in stripe_dataset.collections["customers"]}
    assert "jpy" in currencies
    assert currencies - {"eur", "jpy"}


def test_jpy_amounts_are_whole_yen(stripe_dataset):
    jpy = [i for i in stripe_dataset.collections["invoices"] if i["currency"] == "jpy"]
    assert jpy
    assert all(i["total"] == 800 * i["lines"]["data"][0]["quantity"] for i in jpy)


def test_names_carry_accents_and_apostrophes(stripe_dataset):
    names = [c["name"] for c in stripe_dataset.collections["customers"]]
    assert "Éditions L'Harmattan" in names
    assert any("'" in n for n in names)
    assert any(any(ch in n for ch in "éèçüöäñóí") for n in names)
    countries = {c["address"]["country"] for c in stripe_dataset.collections["customers"]}
    assert {"FR", "DE", "BE", "IT", "ES"} <= countries


def test_some_customers_have_tax_ids(stripe_dataset):
    tax_ids = stripe_dataset.collections["tax_ids"]
    assert {t["type"] for t in tax_ids} >= {"eu_vat", "gb_vat"}
    french = [t["value"] for t in tax_ids if t["country"] == "FR"]
    for value in french:
        siren = int(value[4:])
        assert int(value[2:4]) == (12 + 3 * (siren % 97)) % 97


def test_coupons_appear_as_discounts_on_invoices(stripe_dataset):
    codes = {
        stripe_dataset.get(d)["source"]["coupon"]
        for invoice in stripe_dataset.collections["invoices"]
        for d in invoice["discounts"]
    }
    assert {"BIENVENUE20", "PRESSE-ASSO-15", "INVITATION-PRESSE", "GESTE-10EUR"} <= codes


def test_events_are_in_time_order_and_cover_the_story(stripe_dataset):
    events = stripe_dataset.collections["events"]
    created = [e["created"] for e in events]
    assert created == sorted(created)
    types = {e["type"] for e in events}
    assert {
        "customer.created",
        "invoice.finalized",
        "invoice.paid",
        "invoice.payment_failed",
        "charge.succeeded",
        "charge.failed",
        "charge.refunded",
        "refund.created",
        "payout.paid",
    } <= types


def test_events_carry_snapshots_as_they_were_then(stripe_dataset):
    invoice = next(i for i in stripe_dataset.collections["invoices"] if i["status"] == "paid")
    snapshots = {
        e["type"]: e["data"]["object"]
        for e in stripe_dataset.collections["events"]
        if e["data"]["object"]["id"] == invoice["id"]
    }
    assert snapshots["invoice.finalized"]["status"] == "open"
    assert snapshots["invoice.paid"]["status"] == "paid"


def test_everything_happens_inside_the_period(larger_dataset):
    start, end = larger_dataset.start.timestamp(), larger_dataset.end.timestamp()
    for resource in ("customers", "invoices", "charges", "refunds", "payouts", "events"):
        for obj in larger_dataset.collections[resource]:
            assert start <= obj["created"] < end


def test_invoice_numbers_follow_finalization_order(larger_dataset):
    by_customer = defaultdict(list)
    for invoice in larger_dataset.collections["invoices"]:
        by_customer[invoice["customer"]].append(invoice)
    for invoices in by_customer.values():
        invoices.sort(key=lambda i: i["status_transitions"]["finalized_at"])
        numbers = [int(i["number"].rsplit("-", 1)[1]) for i in invoices]
        assert numbers == list(range(1, len(invoices) + 1))


def test_add_months_clamps_to_the_last_day():
    assert add_months(datetime(2026, 1, 31, tzinfo=UTC), 1) == datetime(2026, 2, 28, tzinfo=UTC)
    assert add_months(datetime(2025, 11, 30, tzinfo=UTC), 3).date().isoformat() == "2026-02-28"


def test_allocate_splits_exactly_in_proportion():
    assert allocate(1000, [490, 2400, 9000, 15000]) == [18, 89, 335, 558]
    assert sum(allocate(7, [1, 1, 1])) == 7


def _paid_invoice_charges(dataset) -> list[dict]:
    status = {invoice["id"]: invoice["status"] for invoice in dataset.collections["invoices"]}
    intents = {
        item["payment"]["payment_intent"]
        for item in dataset.collections["invoice_payments"]
        if item["status"] == "paid" and status[item["invoice"]] == "paid"
    }
    return [
        charge
        for charge in dataset.collections["charges"]
        if charge["status"] == "succeeded" and charge["payment_intent"] in intents
    ]


def test_refund_share_refunds_that_share_of_paid_invoices():
    dataset = generate(seed=7, customers=120, months=3, refund_share=0.10)
    paid = _paid_invoice_charges(dataset)
    refunded = [charge for charge in paid if charge["amount_refunded"]]
    assert len(refunded) == round(0.10 * len(paid))
    assert any(charge["refunded"] for charge in refunded)
    assert any(not charge["refunded"] for charge in refunded)


def test_refund_share_keeps_payouts_and_balance_consistent():
    dataset = generate(seed=7, customers=120, months=3, refund_share=0.10)
    for payout in dataset.collections["payouts"]:
        members = [dataset.get(t) for t in dataset.payout_transactions[payout["id"]]]
        assert sum(t["net"] for t in members if t["type"] != "payout") == payout["amount"]
    _assert_balance_is_the_sum_of_transactions(dataset)


def test_refund_share_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError, match="refund_share"):
        generate(seed=7, customers=12, months=1, refund_share=1.5)
