"""Contract: every object the sandbox Stripe serves has the keys and JSON types of Stripe's own
example of its resource (`contracts/stripe/fixtures3.json`), recursively.

The examples are one object each, so they cannot show every state a real object takes. Where a
real object differs from its example, the difference is listed below, path by path, and nowhere
else (the same list is explained in docs/sandbox.md, "Stripe: shapes"):

- `NULLABLE`-style entries: the example has a value where a real object may hold null (a failed
  charge has no balance transaction; a one-off invoice has no parent);
- entries giving a type where the example has null (a real customer has a name);
- entries giving the element of a list the example leaves empty (`total_discount_amounts`), taken
  from the SDK's classes for that field;
- extra keys the example lacks but the API sends (`invoice_payment.payment.payment_intent`, the
  details of `payment_intent.last_payment_error`).

`metadata` is a map of strings wherever it appears. Integers are accepted where the example has a
float (JSON numbers); a float where the example has an integer is listed explicitly.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fixtures_stripe import STRIPE_TEST_KEY

FIXTURES_PATH = (
    Path(__file__).resolve().parents[2] / "reconciliation/sandbox/contracts/stripe/fixtures3.json"
)
FIXTURES = json.loads(FIXTURES_PATH.read_text())["resources"]


# --- the shape language ---------------------------------------------------------------------
@dataclass(frozen=True)
class Nullable:
    spec: Any


@dataclass(frozen=True)
class ListOf:
    item: Any  # None: the example list is empty and no element is documented


@dataclass(frozen=True)
class Ref:
    resource: str


NULL, MAP, ANY_RESOURCE = "null", "map", "any resource"
STRING, INTEGER, NUMBER, BOOLEAN = "string", "integer", "number", "boolean"
OPTIONAL_STRING = Nullable(STRING)
OPTIONAL_INTEGER = Nullable(INTEGER)


def json_type(value: Any) -> str:
    if value is None:
        return NULL
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, int):
        return INTEGER
    if isinstance(value, float):
        return NUMBER
    if isinstance(value, str):
        return STRING
    if isinstance(value, list):
        return "array"
    return "object"


def spec_of(example: Any, key: str = "") -> Any:
    """The shape of a fixture example."""
    if key == "metadata" and example in ({}, None):
        return MAP
    if isinstance(example, dict):
        return {k: spec_of(v, k) for k, v in example.items()}
    if isinstance(example, list):
        return ListOf(spec_of(example[0]) if example else None)
    return json_type(example)


# --- where real objects differ from the examples --------------------------------------------
ADDRESS = {
    f"{k}": OPTIONAL_STRING for k in ("city", "country", "line1", "line2", "postal_code", "state")
}
TAX = {  # stripe.InvoiceLineItem.Tax / Invoice.TotalTax
    "amount": INTEGER,
    "tax_behavior": STRING,
    "tax_rate_details": Nullable({"tax_rate": STRING}),
    "taxability_reason": STRING,
    "taxable_amount": OPTIONAL_INTEGER,
    "type": STRING,
}
DISCOUNT_AMOUNT = {"amount": INTEGER, "discount": STRING}  # InvoiceLineItem.DiscountAmount
PRETAX_CREDIT = {  # InvoiceLineItem.PretaxCreditAmount / Invoice.TotalPretaxCreditAmount
    "amount": INTEGER,
    "credit_balance_transaction": OPTIONAL_STRING,
    "discount": OPTIONAL_STRING,
    "type": STRING,
}


def _prefixed(prefix: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}.{key}": spec for key, spec in fields.items()}


ALLOWANCES: dict[str, dict[str, Any]] = {
    "customer": {
        **_prefixed("address", ADDRESS),
        "description": OPTIONAL_STRING,
        "discount": Nullable(Ref("discount")),
        "email": OPTIONAL_STRING,
        "invoice_settings.default_payment_method": OPTIONAL_STRING,
        "name": OPTIONAL_STRING,
        "phone": OPTIONAL_STRING,
        "preferred_locales": ListOf(STRING),
        "shipping": Nullable({}),
    },
    "invoice": {
        "account_name": OPTIONAL_STRING,
        **_prefixed("customer_address", ADDRESS),
        "customer_email": OPTIONAL_STRING,
        "customer_name": OPTIONAL_STRING,
        "customer_phone": OPTIONAL_STRING,
        "customer_shipping": Nullable({}),
        "customer_tax_ids": ListOf({"type": STRING, "value": OPTIONAL_STRING}),
        "discounts": ListOf(STRING),
        "due_date": OPTIONAL_INTEGER,
        "ending_balance": OPTIONAL_INTEGER,
        "from_invoice": "nullable",
        "hosted_invoice_url": OPTIONAL_STRING,
        "invoice_pdf": OPTIONAL_STRING,
        "last_finalization_error": "nullable",
        "lines.data[]": Ref("line_item"),
        "next_payment_attempt": OPTIONAL_INTEGER,
        "number": OPTIONAL_STRING,
        "parent.quote_details": "nullable",
        "parent.subscription_details": "nullable",
        "parent.subscription_details.metadata": Nullable(MAP),
        "parent": "nullable",
        "payment_settings.payment_method_options": "nullable",
        "rendering.pdf.page_size": OPTIONAL_STRING,
        "shipping_cost": "nullable",
        "shipping_details": Nullable({}),
        **_prefixed(
            "status_transitions",
            dict.fromkeys(
                ("finalized_at", "marked_uncollectible_at", "paid_at", "voided_at"),
                OPTIONAL_INTEGER,
            ),
        ),
        "total_discount_amounts": ListOf(DISCOUNT_AMOUNT),
        "total_pretax_credit_amounts": Nullable(ListOf(PRETAX_CREDIT)),
        "total_taxes": Nullable(ListOf(TAX)),
    },
    "line_item": {
        "discount_amounts": ListOf(DISCOUNT_AMOUNT),
        "discounts": ListOf(STRING),
        "parent.invoice_item_details.proration_details.credited_items": "nullable",
        "parent.invoice_item_details": "nullable",
        "parent.subscription_item_details.proration_details.credited_items": "nullable",
        "parent.subscription_item_details": "nullable",
        "pretax_credit_amounts": Nullable(ListOf(PRETAX_CREDIT)),
        "pricing.unit_amount_decimal": OPTIONAL_STRING,
        "subscription": OPTIONAL_STRING,
        "taxes": Nullable(ListOf(TAX)),
    },
    "charge": {
        "balance_transaction": "nullable",
        **_prefixed("billing_details.address", ADDRESS),
        "billing_details.email": OPTIONAL_STRING,
        "calculated_statement_descriptor": OPTIONAL_STRING,
        "customer": OPTIONAL_STRING,
        "failure_code": OPTIONAL_STRING,
        "failure_message": OPTIONAL_STRING,
        **_prefixed(
            "outcome",
            dict.fromkeys(
                (
                    "advice_code",
                    "network_decline_code",
                    "network_status",
                    "reason",
                    "seller_message",
                ),
                OPTIONAL_STRING,
            ),
        ),
        "payment_intent": OPTIONAL_STRING,
        "payment_method_details.card.amount_authorized": OPTIONAL_INTEGER,
        "payment_method_details.card.authorization_code": OPTIONAL_STRING,
        "payment_method_details.card.installments": "nullable",
        "payment_method_details.card.regulated_status": OPTIONAL_STRING,
        "payment_method_details.card.three_d_secure": "nullable",
        "payment_method_details.card.wallet": "nullable",
        "receipt_email": OPTIONAL_STRING,
        "refunds.data": ListOf(Ref("refund")),
        "shipping": Nullable({}),
        "source": "nullable",
        "transfer_data": "nullable",
    },
    "payment_intent": {
        "canceled_at": OPTIONAL_INTEGER,
        "customer": OPTIONAL_STRING,
        "description": OPTIONAL_STRING,
        # stripe.PaymentIntent.LastPaymentError: the example shows `type` only.
        "last_payment_error": Nullable(
            {
                "type": STRING,
                "code": STRING,
                "decline_code": STRING,
                "message": STRING,
                "charge": STRING,
            }
        ),
        "latest_charge": OPTIONAL_STRING,
        "next_action": "nullable",
        "payment_method": OPTIONAL_STRING,
        "payment_method_configuration_details": "nullable",
        "processing": "nullable",
        "receipt_email": OPTIONAL_STRING,
        "setup_future_usage": OPTIONAL_STRING,
        "shipping": Nullable({}),
        "transfer_data": "nullable",
    },
    "refund": {
        "balance_transaction": OPTIONAL_STRING,
        "customer": OPTIONAL_STRING,
        "payment_intent": OPTIONAL_STRING,
        "payment_method": OPTIONAL_STRING,
        "reason": OPTIONAL_STRING,
    },
    "balance_transaction": {
        # stripe.BalanceTransaction.FeeDetail
        "fee_details": ListOf(
            {
                "amount": INTEGER,
                "application": OPTIONAL_STRING,
                "currency": STRING,
                "description": OPTIONAL_STRING,
                "type": STRING,
            }
        ),
    },
    "payout": {"trace_id.value": OPTIONAL_STRING},
    "event": {
        "api_version": OPTIONAL_STRING,
        "data.object": ANY_RESOURCE,
        "request.id": OPTIONAL_STRING,
        "request.idempotency_key": OPTIONAL_STRING,
    },
    "invoice_payment": {
        "amount_paid": OPTIONAL_INTEGER,
        # stripe.InvoicePayment.Payment: the example shows `type` only; the API names the payment.
        "payment": {"type": STRING, "payment_intent": STRING},
        "status_transitions.paid_at": OPTIONAL_INTEGER,
    },
    "tax_rate": {
        "effective_percentage": Nullable(NUMBER),
        "flat_amount": "nullable",
        "jurisdiction_level": OPTIONAL_STRING,
        "percentage": NUMBER,  # a float (5.5); the example's 19 happens to be whole
        "rate_type": OPTIONAL_STRING,
    },
    "coupon": {
        "amount_off": OPTIONAL_INTEGER,
        "currency": OPTIONAL_STRING,
        "duration_in_months": OPTIONAL_INTEGER,
        "percent_off": Nullable(NUMBER),
        "redeem_by": OPTIONAL_INTEGER,
    },
    "discount": {
        "customer": OPTIONAL_STRING,
        "end": OPTIONAL_INTEGER,
        "invoice": OPTIONAL_STRING,
        "source.coupon": STRING,
        "subscription": OPTIONAL_STRING,
    },
    "tax_id": {},
    "balance": {},
}


def _set(spec: dict[str, Any], path: str, change: Any) -> None:
    """Apply one allowance; a path the example does not have is an error, so that allowances
    cannot outlive the fixture they describe (extra keys are whole-object replacements)."""
    *parents, last = path.split(".")
    node: Any = spec
    for part in parents:
        node = _descend(node, part, path)
    node = _unwrap(node)
    if last.endswith("[]"):
        key = last[:-2]
        if key not in node or not isinstance(node[key], ListOf):
            raise KeyError(f"{path}: not a list in the example")
        node[key] = ListOf(change)
        return
    if last not in node:
        raise KeyError(f"{path}: not in the example")
    node[last] = Nullable(node[last]) if change == "nullable" else change


def _descend(node: Any, part: str, path: str) -> Any:
    node = _unwrap(node)
    if part.endswith("[]"):
        return _unwrap(node[part[:-2]]).item
    if not isinstance(node, dict) or part not in node:
        raise KeyError(f"{path}: {part} not in the example")
    return node[part]


def _unwrap(node: Any) -> Any:
    return node.spec if isinstance(node, Nullable) else node


def resource_spec(resource: str) -> dict[str, Any]:
    spec = spec_of(copy.deepcopy(FIXTURES[resource]))
    # Deepest paths first, so that wrapping a parent in Nullable comes after its children.
    for path, change in sorted(ALLOWANCES[resource].items(), key=lambda kv: -kv[0].count(".")):
        _set(spec, path, change)
    return spec


SPECS = {resource: resource_spec(resource) for resource in ALLOWANCES}


def shape_differences(actual: Any, spec: Any, path: str = "") -> list[str]:
    """Every place where `actual` does not have the keys or JSON types `spec` describes."""
    where = path or "(root)"
    if isinstance(spec, Nullable):
        if actual is None:
            return []
        spec = spec.spec
    if isinstance(spec, Ref):
        spec = SPECS[spec.resource]
    if spec == ANY_RESOURCE:
        kind = actual.get("object") if isinstance(actual, dict) else None
        if kind not in SPECS:
            return [f"{where}: not an object of a known resource ({kind!r})"]
        spec = SPECS[kind]
    if spec == MAP:
        ok = isinstance(actual, dict) and all(isinstance(v, str) for v in actual.values())
        return [] if ok else [f"{where}: expected a map of strings"]
    if isinstance(spec, dict):
        if not isinstance(actual, dict):
            return [f"{where}: expected an object, got {json_type(actual)}"]
        problems = [f"{where}: missing key {key!r}" for key in spec if key not in actual]
        problems += [f"{where}: unexpected key {key!r}" for key in actual if key not in spec]
        for key in spec.keys() & actual.keys():
            problems += shape_differences(actual[key], spec[key], f"{path}.{key}".lstrip("."))
        return problems
    if isinstance(spec, ListOf):
        if not isinstance(actual, list):
            return [f"{where}: expected an array, got {json_type(actual)}"]
        if spec.item is None:
            return [f"{where}: the example's list is empty; no element shape is documented"] * bool(
                actual
            )
        return [p for item in actual for p in shape_differences(item, spec.item, f"{path}[]")]
    kind = json_type(actual)
    if kind == spec or (spec == NUMBER and kind == INTEGER):
        return []
    return [f"{where}: expected {spec}, got {kind}"]


# --- fetching from the sandbox --------------------------------------------------------------
LISTED = {
    "customers": "customer",
    "invoices": "invoice",
    "invoice_payments": "invoice_payment",
    "charges": "charge",
    "payment_intents": "payment_intent",
    "refunds": "refund",
    "balance_transactions": "balance_transaction",
    "payouts": "payout",
    "events": "event",
    "tax_rates": "tax_rate",
    "coupons": "coupon",
}


def fetch_all(base_url: str, path: str, **params: Any) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    query = {"limit": 100, **params}
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {STRIPE_TEST_KEY}"
        while True:
            answer = session.get(f"{base_url}{path}", params=query, timeout=5)
            assert answer.status_code == 200, answer.text
            page = answer.json()
            objects += page["data"]
            if not page["has_more"]:
                return objects
            query["starting_after"] = page["data"][-1]["id"]


def assert_shapes(objects: list[dict[str, Any]], resource: str) -> None:
    assert objects, f"the sandbox served no {resource}"
    problems = {}
    for obj in objects:
        found = shape_differences(obj, SPECS[resource])
        if found:
            problems[obj.get("id", "?")] = found
    assert not problems, json.dumps(dict(list(problems.items())[:3]), indent=1)


# --- tests ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("path", "resource"), sorted(LISTED.items()))
def test_every_listed_object_has_its_fixture_shape(stripe_sandbox, path, resource):
    assert_shapes(fetch_all(stripe_sandbox.base_url, f"/v1/{path}"), resource)


def test_retrieved_object_has_the_same_shape_as_listed(stripe_sandbox, stripe_dataset):
    invoice_id = stripe_dataset.collections["invoices"][0]["id"]
    answer = requests.get(
        f"{stripe_sandbox.base_url}/v1/invoices/{invoice_id}",
        headers={"Authorization": f"Bearer {STRIPE_TEST_KEY}"},
        timeout=5,
    )
    assert shape_differences(answer.json(), SPECS["invoice"]) == []


def test_invoice_lines_endpoint_serves_line_items(stripe_sandbox, stripe_dataset):
    invoice = max(stripe_dataset.collections["invoices"], key=lambda i: len(i["lines"]["data"]))
    lines = fetch_all(stripe_sandbox.base_url, f"/v1/invoices/{invoice['id']}/lines")
    assert_shapes(lines, "line_item")


def test_balance_has_its_fixture_shape(stripe_sandbox):
    answer = requests.get(
        f"{stripe_sandbox.base_url}/v1/balance",
        headers={"Authorization": f"Bearer {STRIPE_TEST_KEY}"},
        timeout=5,
    )
    assert shape_differences(answer.json(), SPECS["balance"]) == []


def test_expanded_payments_are_invoice_payments(stripe_sandbox):
    invoices = fetch_all(stripe_sandbox.base_url, "/v1/invoices", **{"expand[]": "data.payments"})
    payments = [p for invoice in invoices for p in invoice.pop("payments")["data"]]
    assert_shapes(payments, "invoice_payment")


def test_expanded_tax_ids_are_tax_ids(stripe_sandbox):
    customers = fetch_all(stripe_sandbox.base_url, "/v1/customers", **{"expand[]": "data.tax_ids"})
    assert_shapes([t for c in customers for t in c["tax_ids"]["data"]], "tax_id")


def test_expanded_discounts_are_discounts(stripe_sandbox):
    invoices = fetch_all(stripe_sandbox.base_url, "/v1/invoices", **{"expand[]": "data.discounts"})
    assert_shapes([d for invoice in invoices for d in invoice["discounts"]], "discount")


def test_a_wrong_object_fails_the_comparison(stripe_dataset):
    invoice = copy.deepcopy(stripe_dataset.collections["invoices"][0])
    invoice["total"] = "58.80"  # a string where Stripe sends integer minor units
    del invoice["amount_remaining"]
    invoice["invoice"] = "in_surplus"
    invoice["lines"]["data"][0]["taxes"] = None
    invoice["lines"]["data"][0]["amount"] = None

    problems = shape_differences(invoice, SPECS["invoice"])

    assert "total: expected integer, got string" in problems
    assert "(root): missing key 'amount_remaining'" in problems
    assert "(root): unexpected key 'invoice'" in problems
    assert "lines.data[].amount: expected integer, got null" in problems
    assert len(problems) == 4  # taxes may be null: allowed, and so not reported


def test_an_event_carrying_a_wrong_object_fails(stripe_dataset):
    event = copy.deepcopy(stripe_dataset.collections["events"][0])
    event["data"]["object"]["object"] = "plan"

    assert shape_differences(event, SPECS["event"]) == [
        "data.object: not an object of a known resource ('plan')"
    ]


def test_allowances_only_name_paths_the_fixture_has():
    with pytest.raises(KeyError, match="not in the example"):
        _set(spec_of(FIXTURES["refund"]), "no_such_field", OPTIONAL_STRING)
