"""Typed rows of what the Aipress24 reader returns, and the cursors of its streams.

Every fact these types absorb comes from ../shared/aipress24/README.md (section numbers below):

* ids are strings end to end: organisation, post and purchase ids are 64-bit snowflakes larger
  than 2^53 (§2.1, §9.6), user ids small sequence integers, Business Wall and subscription ids
  UUIDs. The reader casts them to text in SQL, so no id is ever a number in Python or JSON;
* timestamps are aware datetimes in UTC. Most columns are `timestamptz`; the naive ones
  (`bw_subscription.past_due_since` in production, `stripe_price.synced_at`) hold UTC (§8, §9.9);
* the `wire_*` enums store upper-case member names (`PAID`, `CONSULTATION_GIFT`), the `bw_*`
  statuses lower-case strings (§7, §9.8): both are read into the lower-case values below, the
  application's own (`.value`, also what Stripe metadata carries, §4). An unknown value is refused
  (`UnexpectedValue`) rather than guessed;
* money stays as stored (§5, §9.4): purchases in integer cents excluding VAT plus an upper-case
  currency; subscription prices as the Decimal euros of their DECIMAL(10,2) columns (0 in
  practice, and never what the customer pays); nothing is ever a float;
* text columns that are NOT NULL with `''` defaults (the Addressable columns, `billing_*` of
  subscriptions, the payer fields) read `''` as None, like NULL: "not given" has one spelling.
  Codes are kept as stored: `country_code` ISO-3 (`FRA`), `billing_country` ISO-2 (`FR`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Generic, TypeVar

from reconciliation.errors import PermanentError
from reconciliation.money import Money

SYSTEM = "aipress24"

RowT = TypeVar("RowT")
CursorT = TypeVar("CursorT")

# `_reject_profile` replaces a rejected user's address with `fake_<hex>@example.com` (§2.2).
_PLACEHOLDER_EMAIL = re.compile(r"^fake_[0-9a-f]+@example\.com$")


class UnexpectedValue(PermanentError):
    """A stored value the reader does not know how to read (a new enum member, a malformed
    timestamp): the stream stops on it rather than guessing, naming the table, column and row."""


# --- enums (the application's lower-case values) ------------------------------------------------


class BusinessWallType(StrEnum):
    """`bw_business_wall.bw_type` (src/app/enums.py BWType, §2.3)."""

    MEDIA = "media"
    NEWS_AGENCY = "news_agency"
    MICRO = "micro"
    CORPORATE_MEDIA = "corporate_media"
    UNION = "union"
    ACADEMICS = "academics"
    PR = "pr"
    LEADERS_EXPERTS = "leaders_experts"
    TRANSFORMERS = "transformers"

    @property
    def is_paid(self) -> bool:
        """The last three types are paid, the first six free (bw_activation/config.py, §2.3)."""
        return self in _PAID_BW_TYPES


_PAID_BW_TYPES = frozenset(
    {BusinessWallType.PR, BusinessWallType.LEADERS_EXPERTS, BusinessWallType.TRANSFORMERS}
)


class BusinessWallStatus(StrEnum):
    DRAFT = "draft"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    CANCELLED = "cancelled"


class SubscriptionStatus(StrEnum):
    """`bw_subscription.status`. `expired` is defined but never written by the code (§2.4), and
    the column lags behind Stripe after a portal cancellation (§9.3): Stripe is the truth."""

    PENDING = "pending"
    ACTIVE = "active"
    PAST_DUE = "past_due"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class PurchaseStatus(StrEnum):
    """`wire_article_purchase.status`, stored `PENDING`/`PAID`/`FAILED`/`REFUNDED` (§2.6).
    `FAILED` is never written by the code; a partial refund marks the whole purchase REFUNDED."""

    PENDING = "pending"
    PAID = "paid"
    FAILED = "failed"
    REFUNDED = "refunded"


class ProductType(StrEnum):
    """`wire_article_purchase.product_type`, stored as upper-case names (§2.6)."""

    CONSULTATION = "consultation"
    CONSULTATION_GIFT = "consultation_gift"
    JUSTIFICATIF = "justificatif"
    CESSION = "cession"


# --- cursors ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChangeCursor:
    """Where an incremental stream stopped: the (timestamp, id) of the last row returned.

    The next read returns rows strictly after it in (timestamp, id) order, so rows sharing a
    timestamp are neither lost nor repeated across pages. `encode()` is the text kept in the
    console's Cursor table (`<ISO timestamp in UTC>|<id>`)."""

    at: datetime
    id: str

    def __post_init__(self) -> None:
        if self.at.tzinfo is None or self.at.utcoffset() is None:
            raise ValueError(f"a cursor's timestamp must be timezone-aware: {self.at!r}")
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"a cursor's id must be a non-empty string: {self.id!r}")
        object.__setattr__(self, "at", self.at.astimezone(UTC))

    def encode(self) -> str:
        return f"{self.at.isoformat(timespec='microseconds')}|{self.id}"

    @classmethod
    def decode(cls, text: str) -> ChangeCursor:
        at, separator, row_id = text.partition("|")
        if not separator:
            raise ValueError(f"not an Aipress24 stream cursor: {text!r}")
        return cls(at=datetime.fromisoformat(at), id=row_id)


@dataclass(frozen=True)
class Page(Generic[RowT, CursorT]):
    """One page of a stream. `next_cursor` is what to pass as `since` (or `after`) to read on:
    the position of the last row returned, or the cursor given when nothing was returned.
    `has_more` is True when rows beyond this page were already there when it was read."""

    rows: tuple[RowT, ...]
    next_cursor: CursorT
    has_more: bool


# --- rows ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Organisation:
    """A `crp_organisation` row: the customer for Business Wall subscriptions (§2.1, §3).

    `stripe_customer_id` is the organisation's own column (bound at the first checkout, never
    overwritten); `subscription_stripe_customer_ids` are those of its subscriptions, which can
    differ (§3). `siren` and `business_wall_vat_number` were typed by users on a Business Wall;
    `billing_vat_number` and the `billing_*` address are Stripe's, mirrored (§2.1)."""

    id: str
    name: str
    slug: str
    address: str | None
    city: str | None
    zip_code: str | None
    country: str | None  # free text, "France"
    country_code: str | None  # ISO-3 as stored, "FRA"
    billing_email: str | None
    billing_vat_number: str | None
    billing_address_line1: str | None
    billing_address_line2: str | None
    billing_postal_code: str | None
    billing_city: str | None
    billing_country: str | None  # ISO-2 as Stripe sends it, "FR"
    stripe_customer_id: str | None
    subscription_stripe_customer_ids: tuple[str, ...]
    business_wall_id: str | None  # `bw_id`: the active Business Wall (no FK)
    business_wall_type: str | None  # `bw_active`, the active BW's type (None for NULL or "")
    siren: str | None
    identity_business_wall_id: str | None  # the Business Wall siren and VAT number come from
    business_wall_vat_number: str | None
    active: bool  # the column as stored: admin switch, soft delete or Stripe status (§2.1)
    created_at: datetime
    modified_at: datetime | None
    deleted_at: datetime | None
    changed_at: datetime  # the cursor key: modified_at, or created_at while it is NULL

    @property
    def customer_active(self) -> bool:
        """False once soft-deleted: the customer is to be marked inactive, not forgotten."""
        return self.deleted_at is None

    @property
    def stripe_customer_ids(self) -> tuple[str, ...]:
        """Every Stripe customer this organisation pays with, its own column's first."""
        ids = [self.stripe_customer_id] if self.stripe_customer_id else []
        ids += [i for i in self.subscription_stripe_customer_ids if i not in ids]
        return tuple(ids)


@dataclass(frozen=True, slots=True)
class User:
    """An `aut_user` row that is not a clone: the buyer of article purchases (§2.2). The
    password, `fs_uniquifier` and login IP addresses are never selected."""

    id: str
    email: str | None
    first_name: str
    last_name: str
    tel_mobile: str | None
    organisation_id: str | None  # None: a user without organisation (an individual customer)
    address: str | None
    city: str | None
    zip_code: str | None
    country: str | None
    country_code: str | None  # ISO-3 as stored
    validation_status: str | None
    validated_at: datetime | None
    active: bool  # the column as stored
    created_at: datetime
    modified_at: datetime | None  # bumped on every login (§6): a noisy cursor
    deleted_at: datetime | None
    changed_at: datetime  # the cursor key: modified_at, or created_at while it is NULL

    @property
    def customer_active(self) -> bool:
        return self.deleted_at is None

    @property
    def email_is_placeholder(self) -> bool:
        """The `fake_<hex>@example.com` a rejected profile gets (§2.2): not a billing address."""
        return bool(self.email and _PLACEHOLDER_EMAIL.match(self.email))


@dataclass(frozen=True, slots=True)
class BusinessWall:
    """A `bw_business_wall` row: what a subscription pays for, and where users typed the SIREN
    and VAT number (§2.3). The payer fields are free text; `payer_id` is always the owner."""

    id: str
    organisation_id: str | None
    owner_id: str
    payer_id: str
    bw_type: BusinessWallType
    status: BusinessWallStatus
    is_free: bool
    name: str | None
    name_official: str | None
    name_entity: str | None
    name_group: str | None
    siren: str | None
    vat_number: str | None  # `tva`
    postal_address: str | None
    postal_code: str | None  # `code_postal`
    city: str | None  # `ville`
    country_code: str | None  # `pays_zip_ville`, ISO-3 as stored
    country_zip_city: str | None  # `pays_zip_ville_detail`, "FRA / 75001 Paris"
    tel_standard: str | None
    site_url: str | None
    payer_is_owner: bool
    payer_first_name: str | None
    payer_last_name: str | None
    payer_service: str | None
    payer_email: str | None
    payer_phone: str | None
    payer_address: str | None
    activated_at: datetime | None  # not set by the live checkout webhook (§2.3)
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Subscription:
    """A `bw_subscription` row (§2.4). It does not hold what the customer pays: amounts and
    invoices come from Stripe through `stripe_subscription_id` and `stripe_customer_id` (§9.2)."""

    id: str
    business_wall_id: str
    organisation_id: str | None  # through its Business Wall
    status: SubscriptionStatus
    pricing_field: str
    pricing_tier: str
    monthly_price: Decimal  # euros as stored, DECIMAL(10,2); 0 in practice
    annual_price: Decimal
    billing_cycle: str  # always `monthly` in practice
    stripe_customer_id: str | None
    stripe_subscription_id: str | None
    stripe_checkout_session_id: str | None
    cgv_accepted_at: datetime | None
    cgv_version: str | None
    started_at: datetime | None
    expires_at: datetime | None
    cancelled_at: datetime | None
    past_due_since: datetime | None
    billing_first_name: str | None  # the billing_* columns are never written (§2.4)
    billing_last_name: str | None
    billing_company: str | None
    billing_address: str | None
    billing_city: str | None
    billing_zip_code: str | None
    billing_country: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Purchase:
    """A `wire_article_purchase` row with its buyer's **current** organisation and the post
    sold (§2.6, §3). No Stripe customer exists for purchases; `paid_at` is set once, on PENDING
    to PAID, and a refund changes only `status` (§6, §9.1)."""

    id: str
    status: PurchaseStatus
    product_type: ProductType
    amount_cents: int | None  # excluding VAT (Stripe amount_subtotal); None until paid
    currency: str  # upper case, "EUR"
    buyer_id: str  # `owner_id`
    buyer_organisation_id: str | None  # the buyer's organisation now, not at purchase time
    post_id: str
    post_title: str | None
    seller_organisation_id: str | None  # the post's `publisher_id`
    gift_count: int  # beneficiary rows; the quantity Stripe billed for a CONSULTATION_GIFT
    stripe_checkout_session_id: str | None
    stripe_payment_intent_id: str | None
    created_at: datetime  # the `timestamp` column: when checkout started
    paid_at: datetime | None

    @property
    def amount_excluding_tax(self) -> Money | None:
        if self.amount_cents is None:
            return None
        return Money.from_minor(self.amount_cents, self.currency)
