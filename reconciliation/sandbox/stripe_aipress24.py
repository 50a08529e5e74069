"""The Stripe side of the Aipress24 sample: the customers, payments and refunds that Stripe would
hold for the rows an `Aipress24Reader` reads, with the very ids those rows store, so that the
sandbox Stripe and the Aipress24 database (the SQLite twin of the synthetic data in the tests and
the demo) tell one story the sync can match.

What Aipress24's checkouts leave in Stripe (README §3, §4, §9.1):

* an organisation's Business Wall checkout creates a Stripe **customer** (its
  `stripe_customer_id`, and one per subscription whose checkout created another): Checkout
  creates them, so their `metadata` is empty; name, e-mail, address and VAT number are what
  Aipress24 mirrors in its `billing_*` columns;
* an article purchase is a Checkout payment given only `customer_email`: a **payment intent**
  and its **charge** naming no customer, for the net amount plus VAT at the rate of the product
  type, with the purchase's ids in `metadata`; a refunded purchase was refunded in full; a failed
  one has a declined charge and collected nothing; a pending one left nothing in Stripe.

Everything else (tax rates, coupons, unrelated customers, invoices, payouts) comes from `base`,
kept beside, or is an empty account's set-up. The ids Stripe draws (charges, balance
transactions, refunds, events) come from a random stream seeded per Aipress24 row, so the same
inputs give the same objects and a new row changes no other row's objects.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from reconciliation.connectors.aipress24 import Aipress24Reader
from reconciliation.connectors.aipress24_types import (
    Organisation,
    ProductType,
    Purchase,
    PurchaseStatus,
    User,
)
from reconciliation.sandbox.stripe_data import (
    DAY,
    DEFAULT_START,
    LOCALE_BY_COUNTRY,
    StripeDataset,
    _midnight,
    _Story,
    _ts,
)

DEFAULT_SEED = 24
PAGE_SIZE = 500
REFUND_AFTER = 2 * DAY  # a refunded purchase is refunded two days after payment…
LATE_REFUND_AFTER = 3600  # …or an hour after it, when two days would be after `end`
DECLINED_AFTER = 60  # a failed purchase's card is declined a minute after its checkout began

# Where a card's fee is the European one (Stripe: cards issued in the EEA).
EEA_COUNTRIES = frozenset(
    {
        "AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU", "IE",
        "IS", "IT", "LI", "LT", "LU", "LV", "MT", "NL", "NO", "PL", "PT", "RO", "SE", "SI", "SK",
    }
)  # fmt: skip
# `aut_user.country_code` is ISO-3 (README §2.2); Stripe's card and address countries ISO-2.
ISO2_BY_ISO3 = {
    "AUT": "AT", "BEL": "BE", "BGR": "BG", "CHE": "CH", "CYP": "CY", "CZE": "CZ", "DEU": "DE",
    "DNK": "DK", "ESP": "ES", "EST": "EE", "FIN": "FI", "FRA": "FR", "GBR": "GB", "GRC": "GR",
    "HRV": "HR", "HUN": "HU", "IRL": "IE", "ISL": "IS", "ITA": "IT", "JPN": "JP", "LIE": "LI",
    "LTU": "LT", "LUX": "LU", "LVA": "LV", "MCO": "MC", "MLT": "MT", "NLD": "NL", "NOR": "NO",
    "POL": "PL", "PRT": "PT", "ROU": "RO", "SVK": "SK", "SVN": "SI", "SWE": "SE", "USA": "US",
}  # fmt: skip
DEFAULT_COUNTRY = "FR"
PRODUCT_LABELS = {
    ProductType.CONSULTATION: "Consultation",
    ProductType.CONSULTATION_GIFT: "Consultation offerte",
    ProductType.JUSTIFICATIF: "Justificatif de publication",
    ProductType.CESSION: "Cession de droits",
}


def vat_cents(net_cents: int, rate: Decimal) -> int:
    """The VAT on `net_cents` at `rate` percent, rounded half up to the cent, in exact
    arithmetic: 250 cents at 2.1 % is 5, 300 is 6, 900 is 19. A float rate is refused
    (TypeError): 2.1 is not exactly 2.1 in binary, and money is never computed with it."""
    if isinstance(net_cents, bool) or not isinstance(net_cents, int):
        raise TypeError(f"net_cents must be an integer number of cents, not {net_cents!r}")
    if isinstance(rate, bool) or not isinstance(rate, Decimal | int):
        raise TypeError(f"a VAT rate must be a Decimal (percent), not {type(rate).__name__}")
    rate = Decimal(rate)
    if not rate.is_finite() or rate < 0:
        raise ValueError(f"a VAT rate must be a finite percentage >= 0, not {rate}")
    if net_cents < 0:
        raise ValueError(f"net_cents must not be negative, not {net_cents}")
    return int((Decimal(net_cents) * rate / 100).to_integral_value(rounding=ROUND_HALF_UP))


def aipress24_stripe_dataset(
    reader: Aipress24Reader,
    *,
    vat_rates: Mapping[str, Decimal],
    base: StripeDataset | None = None,
    seed: int = DEFAULT_SEED,
) -> StripeDataset:
    """The Stripe account that goes with what `reader` reads: `base`'s objects (copied, never
    changed; None = an empty account, its tax rates and coupons only) plus, with Aipress24's
    own ids, a customer for every Stripe customer id an organisation holds and the payment
    intent, charge, fee, refund and events of every purchase that reached Stripe.

    `vat_rates` maps a product type's value ("consultation", "cession", …) to its VAT rate in
    percent, a Decimal: a purchase's amount is its `amount_cents` (net) plus `vat_cents` of it.
    Give the reader `settle=timedelta(0)` so that its streams return every row.

    `end` ("now") is after every object: the later of `base.end` and a day after the last
    Aipress24 moment; base's balance transactions and payouts are brought up to it, and the
    balance is recomputed over every balance transaction. The same inputs give the same objects,
    ids included."""
    rows = _read(reader)
    missing = sorted({p.product_type.value for p in rows.paying} - set(vat_rates))
    if missing:
        raise ValueError(f"no VAT rate for the product type(s) {', '.join(missing)}")

    moments = [_ts(o.created_at) for o, _ in rows.customers] + [
        _payment_moment(p) for p in rows.paying
    ]
    start, end = _period(base, moments)
    story = _story_beside(base, seed=seed, start=start, end=end)
    story.ids.reserve(customer_id for _, customer_id in rows.customers)
    story.ids.reserve(p.stripe_payment_intent_id for p in rows.paying)

    for organisation, customer_id in rows.customers:
        if customer_id in story.order:
            raise ValueError(f"{customer_id} of organisation {organisation.id} exists already")
        story.rng.seed(f"ap24-stripe:{seed}:customer:{customer_id}")
        _organisation_customer(story, organisation, customer_id, rows.email_of(organisation))
    for purchase in rows.paying:
        if purchase.stripe_payment_intent_id in story.order:
            raise ValueError(f"{purchase.stripe_payment_intent_id} exists already")
        story.rng.seed(f"ap24-stripe:{seed}:purchase:{purchase.id}")
        _purchase_payment(story, purchase, rows, vat_rates[purchase.product_type.value])
    for payout in story.collections["payouts"]:
        _arrive_if_due(story, payout, seed)
    story.settle_statuses()

    collections = {
        name: sorted(objects, key=lambda obj: story.order[obj["id"]])
        for name, objects in story.collections.items()
    }
    return StripeDataset(
        seed=seed,
        start=datetime.fromtimestamp(start, tz=UTC),
        end=datetime.fromtimestamp(end, tz=UTC),
        collections=collections,
        balance=story.balance(),
        payout_transactions=copy.deepcopy(base.payout_transactions) if base else {},
        order=story.order,
    )


# --- reading Aipress24 ----------------------------------------------------------------------
@dataclass
class _Rows:
    customers: list[tuple[Organisation, str]]  # (organisation, Stripe customer id), by id
    paying: list[Purchase]  # purchases that reached Stripe, by id
    organisations: dict[str, Organisation]
    members: dict[str, list[User]]  # organisation id -> its users, oldest first
    buyers: dict[str, User | None]

    def email_of(self, organisation: Organisation) -> str | None:
        """The billing e-mail, else the first member's (a real address, not a placeholder)."""
        if organisation.billing_email:
            return organisation.billing_email
        for user in self.members.get(organisation.id, []):
            if user.email and not user.email_is_placeholder and user.customer_active:
                return user.email
        return None


def _read(reader: Aipress24Reader) -> _Rows:
    organisations = {o.id: o for o in _changes(reader.organisations_changed)}
    members: dict[str, list[User]] = {}
    for user in _changes(reader.users_changed):
        if user.organisation_id:
            members.setdefault(user.organisation_id, []).append(user)
    for users in members.values():
        users.sort(key=lambda u: (u.created_at, int(u.id)))
    customers = [
        (organisation, customer_id)
        for organisation in sorted(organisations.values(), key=lambda o: int(o.id))
        for customer_id in organisation.stripe_customer_ids
    ]
    paying = sorted(
        (p for p in _all_purchases(reader) if _reached_stripe(p)), key=lambda p: int(p.id)
    )
    buyers: dict[str, User | None] = {}
    for purchase in paying:
        if purchase.buyer_id not in buyers:
            buyers[purchase.buyer_id] = reader.user(purchase.buyer_id)
    return _Rows(customers, paying, organisations, members, buyers)


def _changes(stream: Any) -> Iterator[Any]:
    since = None
    while True:
        page = stream(since=since, page_size=PAGE_SIZE)
        yield from page.rows
        if not page.has_more:
            return
        since = page.next_cursor


def _all_purchases(reader: Aipress24Reader) -> Iterator[Purchase]:
    after = None
    while True:
        page = reader.purchases_all(after=after, page_size=PAGE_SIZE)
        yield from page.rows
        if not page.has_more:
            return
        after = page.next_cursor


def _reached_stripe(purchase: Purchase) -> bool:
    """Paid and refunded purchases with a payment intent; failed ones whose intent and amount
    are known (a pending one's checkout never got as far)."""
    if not purchase.stripe_payment_intent_id:
        return False
    if purchase.status in (PurchaseStatus.PAID, PurchaseStatus.REFUNDED):
        if purchase.amount_cents is None or purchase.paid_at is None:
            raise ValueError(f"purchase {purchase.id} is {purchase.status} without amount or date")
        return True
    return purchase.status == PurchaseStatus.FAILED and purchase.amount_cents is not None


def _payment_moment(purchase: Purchase) -> int:
    if purchase.status == PurchaseStatus.FAILED:
        return _ts(purchase.created_at) + DECLINED_AFTER
    assert purchase.paid_at is not None
    return _ts(purchase.paid_at)


# --- building -------------------------------------------------------------------------------
def _period(base: StripeDataset | None, moments: list[int]) -> tuple[int, int]:
    """From midnight before the first moment (or base's start) to a day after the last one (or
    base's end): `end` is "now", after every object."""
    if not moments:
        if base is None:  # nothing reached Stripe: an empty account
            return _ts(DEFAULT_START), _ts(DEFAULT_START) + DAY
        return _ts(base.start), _ts(base.end)
    start, end = _midnight(min(moments)), max(moments) + DAY
    if base is not None:
        start, end = min(start, _ts(base.start)), max(end, _ts(base.end))
    return start, end


def _story_beside(base: StripeDataset | None, *, seed: int, start: int, end: int) -> _Story:
    """A story over [start, end) holding a copy of `base` (its order and ids taken), or an
    empty account's set-up."""
    at = {
        "start": datetime.fromtimestamp(start, tz=UTC),
        "end": datetime.fromtimestamp(end, tz=UTC),
    }
    if base is None:
        story = _Story(seed=seed, **at)
        story.set_up_account()
        return story
    first = 1 + max((sequence for _, sequence in base.order.values()), default=-1)
    story = _Story(seed=seed, first_sequence=first, **at)
    story.collections.update(copy.deepcopy(base.collections))
    story.order.update(base.order)
    story.ids.reserve(base.order)
    return story


def _organisation_customer(
    story: _Story, organisation: Organisation, customer_id: str, email: str | None
) -> dict[str, Any]:
    """A customer as Business Wall Checkout creates it: no metadata, the billing details
    Aipress24 mirrors, and the VAT number as an `eu_vat` tax id."""
    created = _ts(organisation.created_at)
    country = organisation.billing_country
    customer = {
        "address": {
            "city": organisation.billing_city,
            "country": country,
            "line1": organisation.billing_address_line1,
            "line2": organisation.billing_address_line2,
            "postal_code": organisation.billing_postal_code,
            "state": None,
        },
        "balance": 0,
        "created": created,
        "currency": "eur",
        "default_source": None,
        "delinquent": False,
        "description": None,
        "discount": None,
        "email": email,
        "id": customer_id,
        "invoice_prefix": story.ids.token(8).upper(),
        "invoice_settings": {
            "custom_fields": None,
            "default_payment_method": None,  # Checkout sets it on the subscription
            "footer": None,
            "rendering_options": {"amount_tax_display": None, "template": None},
        },
        "livemode": False,
        "metadata": {},
        "name": organisation.name,
        "next_invoice_sequence": 1,
        "object": "customer",
        "phone": None,
        "preferred_locales": [LOCALE_BY_COUNTRY[country]] if country in LOCALE_BY_COUNTRY else [],
        "shipping": None,
        "tax_exempt": "none",
        "test_clock": None,
    }
    story.add("customers", customer)
    story.invoice_seq[customer_id] = 0
    story.customer_by_id[customer_id] = customer
    vat_number = organisation.billing_vat_number
    if vat_number:
        prefix = vat_number[:2].upper()
        story.add(
            "tax_ids",
            {
                "country": prefix if prefix.isalpha() else country,
                "created": created,
                "customer": customer_id,
                "id": story.ids.new("txi"),
                "livemode": False,
                "object": "tax_id",
                "owner": {"customer": customer_id, "type": "customer", "customer_account": None},
                "type": "gb_vat" if prefix == "GB" else "eu_vat",
                "value": vat_number,
                "verification": {
                    "status": "verified",
                    "verified_address": None,
                    "verified_name": None,
                },
                "customer_account": None,
            },
        )
    story.emit("customer.created", customer, created)
    return customer


def _purchase_payment(story: _Story, purchase: Purchase, rows: _Rows, rate: Decimal) -> None:
    """The payment intent and charge of a purchase's Checkout payment (no customer), its fee,
    and the full refund of a refunded one; a failed one's declined charge."""
    assert purchase.amount_cents is not None
    assert purchase.stripe_payment_intent_id is not None
    buyer = rows.buyers.get(purchase.buyer_id)
    organisation = rows.organisations.get(purchase.buyer_organisation_id or "")
    country = (organisation.billing_country if organisation else None) or ISO2_BY_ISO3.get(
        (buyer.country_code if buyer else None) or "", DEFAULT_COUNTRY
    )
    email = buyer.email if buyer and buyer.email and not buyer.email_is_placeholder else None
    guest_key = f"guest:{purchase.id}"
    payer = {  # who paid, for the card and billing details: never a Stripe customer
        "id": guest_key,
        "currency": purchase.currency.lower(),
        "email": email,
        "name": f"{buyer.first_name} {buyer.last_name}".strip() if buyer else None,
        "address": {
            "city": None,
            "country": country,
            "line1": None,
            "line2": None,
            "postal_code": buyer.zip_code if buyer else None,
            "state": None,
        },
    }
    story.cards[guest_key] = story._card_for(story.ids.new("pm"), country)
    story.charge_region[guest_key] = (
        "eea" if country in EEA_COUNTRIES else "uk" if country == "GB" else "international"
    )
    label = PRODUCT_LABELS[purchase.product_type]
    if purchase.product_type == ProductType.CONSULTATION_GIFT and purchase.gift_count:
        label = f"{label} (× {purchase.gift_count})"  # noqa: RUF001 - a multiplication sign
    description = f"{label} : « {purchase.post_title} »" if purchase.post_title else label
    metadata = {
        "purchase_id": purchase.id,
        "post_id": purchase.post_id,
        "product_type": purchase.product_type.value,
    }
    amount = purchase.amount_cents + vat_cents(purchase.amount_cents, rate)
    paid = purchase.status != PurchaseStatus.FAILED
    at = _payment_moment(purchase) if paid else _ts(purchase.created_at)
    intent = story._payment_intent(
        payer,
        amount,
        at,
        description,
        metadata,
        off_session=False,
        intent_id=purchase.stripe_payment_intent_id,
        guest=True,
    )
    charge_at = at if paid else at + DECLINED_AFTER
    charge = story._charge(payer, intent, charge_at, description, accepted=paid, guest=True)
    if purchase.status == PurchaseStatus.REFUNDED:
        refund_at = at + REFUND_AFTER
        if refund_at >= story.end:
            refund_at = at + LATE_REFUND_AFTER
        story.refund(charge, charge["amount"], refund_at, "requested_by_customer")


def _arrive_if_due(story: _Story, payout: dict[str, Any], seed: int) -> None:
    """A base payout still in transit whose arrival date `end` has now passed has arrived."""
    if payout["status"] != "in_transit" or payout["arrival_date"] >= story.end:
        return
    story.rng.seed(f"ap24-stripe:{seed}:payout:{payout['id']}")
    payout["status"] = "paid"
    payout["trace_id"] = {"status": "supported", "value": f"FR{story.ids.token(12).upper()}"}
    story.emit("payout.paid", payout, payout["arrival_date"])
