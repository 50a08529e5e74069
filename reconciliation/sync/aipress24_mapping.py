"""What an Aipress24 row becomes in Dolibarr: the thirdparty fields of an organisation or a user,
the thirdparty identities, the billing Stripe customer of an organisation, and the order lines of
a purchase. Pure functions over the records' snapshots (`snapshot_of_row`), so that the handlers,
the pull and the tests agree on one mapping (docs/aipress24-sync.md has the table).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any

import pycountry
from django.conf import settings

from reconciliation.connectors.dolibarr_types import NewLine
from reconciliation.errors import ConfigurationError
from reconciliation.money import minor_to_decimal

# The thirdparty fields the Aipress24 sync owns, compared three ways (`aipress24_customers`).
THIRDPARTY_FIELDS = (
    "name",
    "email",
    "address",
    "zip",
    "town",
    "country_code",
    "phone",
    "tva_intra",
    "idprof1",
    "client",
    "status",
)
# Dolibarr's `client` flag: 1 customer, 2 prospect, 3 both (docs/aipress24-sync.md, partners).
CLIENT_CUSTOMER, CLIENT_PROSPECT, CLIENT_BOTH = 1, 2, 3

# Row fields left out of a snapshot: cursor keys that move without any change a customer would
# see (`aut_user.modified_at` moves at every login, README §6), so that they do not make the
# record pending again for nothing.
_NOISE = frozenset({"modified_at", "changed_at"})

# The products the purchases are sold as, one service per product type.
PRODUCT_LABELS = {
    "consultation": "Consultation d'article",
    "consultation_gift": "Consultation d'article offerte",
    "justificatif": "Justificatif de publication (PDF)",
    "cession": "Cession de droits de reproduction",
}


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    return value


def snapshot_of_row(row: Any, **extra: Any) -> dict[str, Any]:
    """A reader row as the JSON a SyncRecord keeps (ids stay strings, datetimes ISO text,
    Decimals text), without the cursor noise, plus `extra` (the pull's `billed` flag)."""
    snapshot = {
        field.name: _plain(getattr(row, field.name))
        for field in dataclasses.fields(row)
        if field.name not in _NOISE
    }
    snapshot.update(extra)
    return snapshot


def organisation_ref_ext(organisation_id: str) -> str:
    return f"ap24-org-{organisation_id}"


def user_ref_ext(user_id: str) -> str:
    return f"ap24-user-{user_id}"


def purchase_ref_ext(purchase_id: str) -> str:
    return f"ap24-purchase-{purchase_id}"


def iso2(code: str | None) -> str | None:
    """An ISO-2 country code from what Aipress24 stores (ISO-3 `FRA`, or already `FR`); None
    for an empty or unknown code (never guessed)."""
    if not code:
        return None
    code = code.strip().upper()
    if len(code) == 2:
        return code if pycountry.countries.get(alpha_2=code) else None
    country = pycountry.countries.get(alpha_3=code)
    return country.alpha_2 if country else None


def _clean(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def vat_number(value: str | None) -> str | None:
    """`FR 75 512345679` -> `FR75512345679`: VAT numbers are typed by users (README §2.3)."""
    text = _clean(value)
    return re.sub(r"[\s.\-]", "", text).upper() if text else None


def siren(value: str | None) -> str | None:
    """Nine digits (spaces and dots typed by users removed), else None: Dolibarr's `idprof1`
    is the SIREN, and a wrong one is worse than none. The typed value stays in the snapshot."""
    text = re.sub(r"[\s.]", "", value or "")
    return text if re.fullmatch(r"\d{9}", text) else None


def is_partner(snapshot: Mapping[str, Any]) -> bool:
    wall_type = snapshot.get("business_wall_type")
    return bool(wall_type) and wall_type in settings.AIPRESS24_PARTNER_WALL_TYPES


def billing_customer_id(snapshot: Mapping[str, Any]) -> str | None:
    """The Stripe customer an organisation bills with, the one its thirdparty is linked to:
    the customer of its most recent subscription checkout (Stripe invoices that subscription to
    it), else the organisation's own `stripe_customer_id` (README §3: the two can differ)."""
    subscribed = snapshot.get("subscription_stripe_customer_ids") or []
    if subscribed:
        return subscribed[-1]
    return snapshot.get("stripe_customer_id") or None


def organisation_stripe_customers(snapshot: Mapping[str, Any]) -> list[str]:
    ids = [
        snapshot.get("stripe_customer_id"),
        *(snapshot.get("subscription_stripe_customer_ids") or []),
    ]
    return list(dict.fromkeys(customer for customer in ids if customer))


def organisation_fields(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """The thirdparty of an organisation. Address: Stripe's billing mirror when it holds one
    (what the customer typed at checkout, `billing_*`), else the organisation's own address;
    the two are never mixed field by field."""
    billing = any(
        snapshot.get(key)
        for key in ("billing_address_line1", "billing_city", "billing_postal_code")
    )
    if billing:
        lines = (snapshot.get("billing_address_line1"), snapshot.get("billing_address_line2"))
        address = "\n".join(line.strip() for line in lines if line and line.strip())
        zip_code, town = snapshot.get("billing_postal_code"), snapshot.get("billing_city")
        country = iso2(snapshot.get("billing_country")) or iso2(snapshot.get("country_code"))
    else:
        address = snapshot.get("address")
        zip_code, town = snapshot.get("zip_code"), snapshot.get("city")
        country = iso2(snapshot.get("country_code"))
    billed = bool(snapshot.get("billed"))
    partner = is_partner(snapshot)
    client = (
        CLIENT_BOTH
        if billed and partner
        else (CLIENT_PROSPECT if partner and not billed else CLIENT_CUSTOMER)
    )
    return {
        "name": _clean(snapshot.get("name")),
        "email": _clean(snapshot.get("billing_email")),
        "address": _clean(address),
        "zip": _clean(zip_code),
        "town": _clean(town),
        "country_code": country,
        "phone": None,
        "tva_intra": vat_number(snapshot.get("billing_vat_number"))
        or vat_number(snapshot.get("business_wall_vat_number")),
        "idprof1": siren(snapshot.get("siren")),
        "client": client,
        "status": 0 if snapshot.get("deleted_at") else 1,
    }


def user_fields(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """The thirdparty of an individual customer (a buyer without organisation)."""
    name = " ".join(
        part.strip() for part in (snapshot.get("first_name"), snapshot.get("last_name")) if part
    )
    email = None if snapshot.get("email_is_placeholder") else _clean(snapshot.get("email"))
    return {
        "name": _clean(name) or email or user_ref_ext(snapshot["id"]),
        "email": email,
        "address": _clean(snapshot.get("address")),
        "zip": _clean(snapshot.get("zip_code")),
        "town": _clean(snapshot.get("city")),
        "country_code": iso2(snapshot.get("country_code")),
        "phone": _clean(snapshot.get("tel_mobile")),
        "tva_intra": None,
        "idprof1": None,
        "client": CLIENT_CUSTOMER,
        "status": 0 if snapshot.get("deleted_at") else 1,
    }


def thirdparty_values(thirdparty: Any) -> dict[str, Any]:
    """The same fields as Dolibarr holds them now, normalised like the source side ("" is
    None) so that equal means equal."""
    values = {name: getattr(thirdparty, name, None) for name in THIRDPARTY_FIELDS}
    for name, value in values.items():
        if isinstance(value, str):
            values[name] = _clean(value)
    if values.get("country_code"):
        values["country_code"] = values["country_code"].upper()
    return values


# --- purchases ------------------------------------------------------------------------------


def vat_rate(product_type: str) -> Decimal:
    """The configured VAT rate (percent) of a product type (`AIPRESS24_VAT_RATES`)."""
    rates = settings.AIPRESS24_VAT_RATES
    raw = rates.get(product_type)
    if raw in (None, ""):
        raise ConfigurationError(
            f"AIPRESS24_VAT_RATES has no rate for product type {product_type!r} "
            f"(it names {', '.join(sorted(rates)) or 'none'})"
        )
    try:
        rate = Decimal(str(raw).strip().replace(",", "."))
    except ArithmeticError as exc:
        raise ConfigurationError(
            f"AIPRESS24_VAT_RATES: {raw!r} for {product_type!r} is not a percentage"
        ) from exc
    if not Decimal(0) <= rate < Decimal(100):
        raise ConfigurationError(f"AIPRESS24_VAT_RATES: {rate} % for {product_type!r}")
    return rate


def product_ref(product_type: str) -> str:
    return f"AP24-{product_type.upper().replace('_', '-')}"


def purchase_lines(snapshot: Mapping[str, Any], *, product_id: int | None) -> tuple[NewLine, ...]:
    """One line: the product of the purchase's type at the net amount Aipress24 stored
    (`amount_cents`, excluding VAT). A gift is billed per beneficiary when the amount divides
    exactly (Stripe's quantity is the number of gift rows), else as one line for all."""
    product_type = snapshot["product_type"]
    net_cents = int(snapshot["amount_cents"])
    currency = snapshot.get("currency") or "EUR"
    quantity = int(snapshot.get("gift_count") or 0) if product_type == "consultation_gift" else 1
    if quantity < 1 or net_cents % quantity:
        quantity = 1
    title = snapshot.get("post_title")
    label = PRODUCT_LABELS.get(product_type, product_type)
    description = f"{label} : « {title} »" if title else label
    if product_type == "consultation_gift" and snapshot.get("gift_count"):
        description += f" ({snapshot['gift_count']} bénéficiaires)"
    return (
        NewLine(
            qty=Decimal(quantity),
            subprice=minor_to_decimal(net_cents // quantity, currency),
            tva_tx=vat_rate(product_type),
            description=description,
            product_id=product_id,
        ),
    )
