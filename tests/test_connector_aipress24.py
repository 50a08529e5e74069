"""The Aipress24 reader, against the recorded schema and synthetic data (../shared/aipress24/,
copied into reconciliation/sandbox/aipress24/), on PostgreSQL and on its SQLite equivalent.

Tests taking `aipress24_db` or `aipress24_reader` run once per backend; the others need one."""

from __future__ import annotations

import threading
import traceback
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from reconciliation.connectors.aipress24 import Aipress24Reader, grant_statements
from reconciliation.connectors.aipress24_types import (
    BusinessWall,
    BusinessWallStatus,
    BusinessWallType,
    ChangeCursor,
    Organisation,
    ProductType,
    Purchase,
    PurchaseStatus,
    Subscription,
    SubscriptionStatus,
    UnexpectedValue,
    User,
)
from reconciliation.errors import ConfigurationError, TransientError
from reconciliation.money import Money
from reconciliation.sandbox.aipress24 import SAMPLE_DATA_SQL
from tests.fixtures_aipress24 import (
    Aipress24Database,
    postgres_admin,
    postgres_url,
)
from tests.processes import isolated_env, run_manage

ROOT = Path(__file__).resolve().parent.parent

# Rows of the synthetic data (sample-data.sql), by the names its comments give them.
ETANG_BLEU = "7372904941486084097"  # O1
RIVAGE = "7379523049881604098"  # O2
TRANSITIONS = "7397213365862404099"  # O3
HOFFMANN = "7415071034572804100"  # O4, German
ONSO = "7401183274598404101"  # O5, two Stripe customers
KERLANN = "7465723546828804102"  # O6, no Stripe customer, a draft Business Wall
GAZETTE = "7378698869145604103"  # O7, soft-deleted
ORGANISATION_IDS = {ETANG_BLEU, RIVAGE, TRANSITIONS, HOFFMANN, ONSO, KERLANN, GAZETTE}
USER_IDS = {str(n) for n in range(101, 111)} | {"112"}  # 111 is a clone
CLONE_USER = "111"
REJECTED_USER = "112"
GIFT_PURCHASE = "7467867675033604305"
PENDING_PURCHASE = "7468786227609604307"
PAID_PURCHASES = {
    "7434872763187204297", "7435303098777604298", "7441408327680004299", "7449550730035204300",
    "7435625221324804301", "7467575751475204302", "7442533240012804303", "7450196233420804304",
    GIFT_PURCHASE, "7441891511500804306",
}  # fmt: skip
REFUNDED_PURCHASES = {"7468202380492804310", "7442268998860804311"}
UNPAID_PURCHASES = {PENDING_PURCHASE, "7456251130675204308", "7474083633561604312"}
FAILED_PURCHASE = "7451932675276804309"
BUSINESS_WALL_IDS = {
    "1d48bd29-3fce-4df7-b909-a2f0a6de8eca", "7caf3405-5bbf-48d8-8e1f-9d4e14c36cbf",
    "048da16a-f861-4d0a-b4b3-ec4464a1a8b3", "fc7ba8a1-db2f-407d-8724-6bb46b08563d",
    "6bf44bba-52cd-41a4-bfcb-4ecda3e011ca", "357da3c0-5bb9-420f-b85a-034bf06dfac2",
}  # fmt: skip
SUBSCRIPTION_IDS = {
    "cb23b4de-db04-4d70-a4c0-851983f47eaf", "cf284908-e9a5-410b-bd21-d3003fd0c562",
    "b31d03e7-d98d-4356-ae99-a716568a4582", "42d90997-3dc5-4d75-8c9e-a6a6b6d6e8f0",
    "ca07dbb6-916c-4818-9daa-51c64ba3fd86", "375fb389-cbd1-40c3-a0e9-1e918b7aefc0",
}  # fmt: skip
PAST_DUE_SUBSCRIPTION = "b31d03e7-d98d-4356-ae99-a716568a4582"
PASSWORD = "Sup3r-s3cret-pw"

CHANGE_STREAMS = (
    "organisations_changed",
    "users_changed",
    "business_walls_changed",
    "subscriptions_changed",
    "purchases_paid",
)
# Each stream's table, the column its cursor follows, and a row of it.
STREAM_ROWS = {
    "organisations_changed": ("crp_organisation", "modified_at", KERLANN),
    "users_changed": ("aut_user", "modified_at", "108"),
    "business_walls_changed": (
        "bw_business_wall", "updated_at", "357da3c0-5bb9-420f-b85a-034bf06dfac2"
    ),
    "subscriptions_changed": ("bw_subscription", "updated_at", PAST_DUE_SUBSCRIPTION),
}  # fmt: skip


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def read_all(read, **options: Any) -> tuple[list[Any], Any]:
    """Every row of a stream page by page, and the cursor after the last page."""
    rows: list[Any] = []
    cursor = options.pop("since", None)
    while True:
        page = read(since=cursor, **options)
        rows.extend(page.rows)
        cursor = page.next_cursor
        if not page.has_more:
            return rows, cursor


def by_id(rows: list[Any]) -> dict[str, Any]:
    return {row.id: row for row in rows}


# --- every stream returns the sample data's rows with the right fields ------------------------


def test_organisations_stream_returns_every_organisation_with_its_billing_fields(
    aipress24_reader: Aipress24Reader,
) -> None:
    rows, _ = read_all(aipress24_reader.organisations_changed)

    assert {row.id for row in rows} == ORGANISATION_IDS
    assert by_id(rows)[ETANG_BLEU] == Organisation(
        id=ETANG_BLEU,
        name="Éditions de l'Étang Bleu",
        slug="editions-de-l-etang-bleu",
        address="12 quai Saint-Antoine",
        city="Lyon",
        zip_code="69002",
        country="France",
        country_code="FRA",
        billing_email="facturation@etang-bleu.fr",
        billing_vat_number="FR75512345679",
        billing_address_line1="12 quai Saint-Antoine",
        billing_address_line2="Bâtiment B, 3e étage",
        billing_postal_code="69002",
        billing_city="Lyon",
        billing_country="FR",
        stripe_customer_id="cus_EM2jWOmMvdWJNy",
        subscription_stripe_customer_ids=("cus_EM2jWOmMvdWJNy",),
        business_wall_id="1d48bd29-3fce-4df7-b909-a2f0a6de8eca",
        business_wall_type="media",
        siren="512345679",
        identity_business_wall_id="1d48bd29-3fce-4df7-b909-a2f0a6de8eca",
        business_wall_vat_number="FR75512345679",
        active=True,
        created_at=utc(2025, 9, 14, 8, 12),
        modified_at=utc(2026, 6, 18, 9, 41),
        deleted_at=None,
        changed_at=utc(2026, 6, 18, 9, 41),
    )


def test_an_organisation_without_billing_details_has_none_for_them(
    aipress24_reader: Aipress24Reader,
) -> None:
    kerlann = aipress24_reader.organisation(KERLANN)

    assert kerlann is not None
    assert (kerlann.billing_email, kerlann.billing_vat_number, kerlann.billing_country) == (
        None,
        None,
        None,
    )
    assert kerlann.stripe_customer_ids == ()


def test_an_organisation_with_two_stripe_customers_lists_both(
    aipress24_reader: Aipress24Reader,
) -> None:
    onso = aipress24_reader.organisation(ONSO)

    assert onso is not None
    assert onso.stripe_customer_id == "cus_aJWNQnagx6ompl"
    assert onso.subscription_stripe_customer_ids == ("cus_o3sjf7a1hn1v4E",)
    assert onso.stripe_customer_ids == ("cus_aJWNQnagx6ompl", "cus_o3sjf7a1hn1v4E")


def test_siren_comes_from_the_active_business_wall(aipress24_reader: Aipress24Reader) -> None:
    rivage = aipress24_reader.organisation(RIVAGE)

    assert rivage is not None
    assert (rivage.siren, rivage.business_wall_vat_number) == ("823456017", "FR96823456017")
    assert rivage.identity_business_wall_id == rivage.business_wall_id


def test_without_an_active_business_wall_siren_comes_from_the_one_where_it_was_typed(
    aipress24_reader: Aipress24Reader,
) -> None:
    kerlann = aipress24_reader.organisation(KERLANN)
    hoffmann = aipress24_reader.organisation(HOFFMANN)

    assert kerlann is not None
    assert hoffmann is not None
    assert (kerlann.business_wall_id, kerlann.siren) == (None, "911223345")
    assert (hoffmann.siren, hoffmann.business_wall_vat_number) == (None, "DE679786204")


def test_country_codes_are_kept_as_stored(aipress24_reader: Aipress24Reader) -> None:
    hoffmann = aipress24_reader.organisation(HOFFMANN)

    assert hoffmann is not None
    assert (hoffmann.country_code, hoffmann.billing_country) == ("DEU", "DE")


def test_a_soft_deleted_organisation_is_returned_flagged_inactive(
    aipress24_reader: Aipress24Reader,
) -> None:
    rows, _ = read_all(aipress24_reader.organisations_changed)
    gazette = by_id(rows)[GAZETTE]

    assert gazette.deleted_at == utc(2026, 3, 3, 10, 10)
    assert gazette.customer_active is False
    assert by_id(rows)[ONSO].customer_active is True  # `active` false, but not deleted


def test_users_stream_returns_every_user_with_their_organisation(
    aipress24_reader: Aipress24Reader,
) -> None:
    rows, _ = read_all(aipress24_reader.users_changed)

    assert {row.id for row in rows} == USER_IDS
    assert by_id(rows)["106"] == User(
        id="106",
        email="k.hoffmann@hoffmann-partner.de",
        first_name="Klaus",
        last_name="Hoffmann",
        tel_mobile=None,
        organisation_id=HOFFMANN,
        address=None,
        city="Berlin",
        zip_code="10117",
        country="Allemagne",
        country_code="DEU",
        validation_status="Nouveau profil validé",
        validated_at=utc(2026, 1, 9, 12, 40),
        active=True,
        created_at=utc(2026, 1, 8, 16, 40),
        modified_at=utc(2026, 5, 5, 8, 0),
        deleted_at=None,
        changed_at=utc(2026, 5, 5, 8, 0),
    )


def test_users_stream_skips_clone_rows(aipress24_reader: Aipress24Reader) -> None:
    rows, _ = read_all(aipress24_reader.users_changed)

    assert CLONE_USER not in by_id(rows)
    assert aipress24_reader.user(CLONE_USER) is None


def test_a_user_without_organisation_has_none(aipress24_reader: Aipress24Reader) -> None:
    marc = aipress24_reader.user("110")

    assert marc is not None
    assert marc.organisation_id is None


def test_a_soft_deleted_user_is_returned_flagged_inactive(
    aipress24_reader: Aipress24Reader,
) -> None:
    rejected = aipress24_reader.user(REJECTED_USER)

    assert rejected is not None
    assert rejected.customer_active is False
    assert rejected.email_is_placeholder is True


def test_business_walls_stream_returns_company_ids_and_payer(
    aipress24_reader: Aipress24Reader,
) -> None:
    rows, _ = read_all(aipress24_reader.business_walls_changed)

    assert {row.id for row in rows} == BUSINESS_WALL_IDS
    assert by_id(rows)["7caf3405-5bbf-48d8-8e1f-9d4e14c36cbf"] == BusinessWall(
        id="7caf3405-5bbf-48d8-8e1f-9d4e14c36cbf",
        organisation_id=RIVAGE,
        owner_id="103",
        payer_id="103",
        bw_type=BusinessWallType.PR,
        status=BusinessWallStatus.ACTIVE,
        is_free=False,
        name="Rivage Conseil",
        name_official="Agence Rivage Conseil",
        name_entity=None,
        name_group=None,
        siren="823456017",
        vat_number="FR96823456017",
        postal_address="48 rue de Paradis",
        postal_code="75010",
        city="Paris",
        country_code="FRA",
        country_zip_city="FRA / 75010 Paris",
        tel_standard="+33 1 40 00 00 02",
        site_url=None,
        payer_is_owner=False,
        payer_first_name="Lucie",
        payer_last_name="Fontaine",
        payer_service="Service comptabilité",
        payer_email="compta@rivage-conseil.fr",
        payer_phone="+33 1 40 00 00 09",
        payer_address="48 rue de Paradis, 75010 Paris",
        activated_at=None,
        created_at=utc(2026, 1, 19, 10, 0),
        updated_at=utc(2026, 6, 2, 15, 12),
    )


def test_subscriptions_stream_returns_stripe_ids_and_prices_as_stored(
    aipress24_reader: Aipress24Reader,
) -> None:
    rows, _ = read_all(aipress24_reader.subscriptions_changed)

    assert {row.id for row in rows} == SUBSCRIPTION_IDS
    assert by_id(rows)[PAST_DUE_SUBSCRIPTION] == Subscription(
        id=PAST_DUE_SUBSCRIPTION,
        business_wall_id="048da16a-f861-4d0a-b4b3-ec4464a1a8b3",
        organisation_id=TRANSITIONS,
        status=SubscriptionStatus.PAST_DUE,
        pricing_field="employee_count",
        pricing_tier="51-200",
        monthly_price=Decimal("199.00"),
        annual_price=Decimal("1990.00"),
        billing_cycle="annual",
        stripe_customer_id="cus_csTENR0n6ZFtbu",
        stripe_subscription_id="sub_1Z3RyF06zizmZdJoJB5N1OWH",
        stripe_checkout_session_id=(
            "cs_test_a1bqPh8PsVwIECiFR713vy8LRsrEaGiPWt0rKpR7cL2caJYniJrtifOA34"
        ),
        cgv_accepted_at=utc(2025, 12, 15, 8, 35),
        cgv_version="v1",
        started_at=utc(2025, 12, 15, 8, 41),
        expires_at=None,
        cancelled_at=None,
        past_due_since=utc(2026, 6, 24, 6, 3),
        billing_first_name="Amélie",
        billing_last_name="Rousseau",
        billing_company="Transitions Durables SA",
        billing_address="5 boulevard de la Prairie-au-Duc",
        billing_city="Nantes",
        billing_zip_code="44200",
        billing_country="France",
        created_at=utc(2025, 12, 15, 8, 30),
        updated_at=utc(2026, 6, 27, 6, 3),
    )


def test_subscription_prices_are_exact_decimals(aipress24_reader: Aipress24Reader) -> None:
    rows, _ = read_all(aipress24_reader.subscriptions_changed)
    expired = by_id(rows)["ca07dbb6-916c-4818-9daa-51c64ba3fd86"]

    assert expired.monthly_price == Decimal("59.90")
    assert isinstance(expired.monthly_price, Decimal)
    assert str(expired.monthly_price) == "59.90"


def test_paid_purchases_stream_returns_the_paid_and_refunded_ones_with_buyer_and_organisation(
    aipress24_reader: Aipress24Reader,
) -> None:
    rows, _ = read_all(aipress24_reader.purchases_paid)

    assert {row.id for row in rows} == PAID_PURCHASES | REFUNDED_PURCHASES
    assert by_id(rows)[GIFT_PURCHASE] == Purchase(
        id=GIFT_PURCHASE,
        status=PurchaseStatus.PAID,
        product_type=ProductType.CONSULTATION_GIFT,
        amount_cents=900,
        currency="EUR",
        buyer_id="103",
        buyer_organisation_id=RIVAGE,
        post_id="7466458388889604200",
        post_title="Sur les quais de Saône, l'été des guinguettes",
        seller_organisation_id=ETANG_BLEU,
        gift_count=3,
        stripe_checkout_session_id=(
            "cs_test_a1Ga6Hz1my2ZMShGnVrAbog6HqYrNgIlAYzaQkzTcehbqeYBsqwG12kksf"
        ),
        stripe_payment_intent_id="pi_3KTA68tpGYv2ELMXfiivbfC0",
        created_at=utc(2026, 6, 3, 9, 20),
        paid_at=utc(2026, 6, 3, 9, 21, 15),
    )


def test_a_purchase_amount_is_integer_cents_excluding_vat_with_its_currency(
    aipress24_reader: Aipress24Reader,
) -> None:
    cession = aipress24_reader.purchase("7442533240012804303")

    assert cession is not None
    assert (cession.amount_cents, cession.currency) == (12000, "EUR")
    assert type(cession.amount_cents) is int
    assert cession.amount_excluding_tax == Money(Decimal("120.00"), "EUR")


def test_a_purchase_by_a_user_without_organisation_has_no_organisation(
    aipress24_reader: Aipress24Reader,
) -> None:
    purchase = aipress24_reader.purchase("7449550730035204300")  # bought by user 110

    assert purchase is not None
    assert (purchase.buyer_id, purchase.buyer_organisation_id) == ("110", None)


def test_enums_are_read_as_the_applications_lower_case_values(
    aipress24_reader: Aipress24Reader,
) -> None:
    purchases = by_id(aipress24_reader.purchases_all(page_size=100).rows)

    assert purchases[GIFT_PURCHASE].product_type == "consultation_gift"
    assert purchases[FAILED_PURCHASE].status == "failed"
    assert {purchases[i].status for i in REFUNDED_PURCHASES} == {PurchaseStatus.REFUNDED}


def test_timestamps_are_aware_utc(aipress24_reader: Aipress24Reader) -> None:
    purchase = aipress24_reader.purchase(GIFT_PURCHASE)

    assert purchase is not None
    assert purchase.paid_at is not None
    assert purchase.paid_at.utcoffset() == timedelta(0)
    assert purchase.paid_at == utc(2026, 6, 3, 9, 21, 15)


def test_a_naive_timestamp_column_is_read_as_utc(aipress24_db: Aipress24Database) -> None:
    # In production bw_subscription.past_due_since is TIMESTAMP WITHOUT TIME ZONE, naive UTC
    # (README §8, migration 9c0d1e2f3a4b).
    if aipress24_db.backend == "postgresql":
        aipress24_db.execute(
            "ALTER TABLE bw_subscription ALTER COLUMN past_due_since TYPE timestamp "
            "USING past_due_since AT TIME ZONE 'UTC'"
        )
    else:
        aipress24_db.execute(
            "UPDATE bw_subscription SET past_due_since = '2026-06-24 06:03:00' WHERE id = :id",
            {"id": PAST_DUE_SUBSCRIPTION},
        )
    with aipress24_db.reader() as reader:
        rows, _ = read_all(reader.subscriptions_changed)

    assert by_id(rows)[PAST_DUE_SUBSCRIPTION].past_due_since == utc(2026, 6, 24, 6, 3)


def test_an_unknown_status_stops_the_stream_naming_the_row(aipress24_db: Aipress24Database) -> None:
    aipress24_db.execute(
        "UPDATE bw_subscription SET status = 'trialing' WHERE id = :id",
        {"id": PAST_DUE_SUBSCRIPTION},
    )

    with aipress24_db.reader() as reader, pytest.raises(UnexpectedValue) as raised:
        read_all(reader.subscriptions_changed)

    assert f"bw_subscription {PAST_DUE_SUBSCRIPTION} status" in str(raised.value)
    assert "'trialing'" in str(raised.value)


# --- ids ----------------------------------------------------------------------------------------


def test_snowflake_ids_are_exact_strings(aipress24_reader: Aipress24Reader) -> None:
    literal = "7372904941486084097"  # as written in sample-data.sql
    organisation = aipress24_reader.organisation(literal)
    purchase = aipress24_reader.purchase(GIFT_PURCHASE)

    assert literal in SAMPLE_DATA_SQL.read_text(encoding="utf-8")
    assert organisation is not None
    assert organisation.id == literal
    assert purchase is not None
    assert purchase.seller_organisation_id == literal
    assert int(literal) > 2**53
    assert int(float(literal)) != int(literal)  # what a float (or a JSON number) would make of it


def test_every_id_is_a_string(aipress24_reader: Aipress24Reader) -> None:
    purchase = aipress24_reader.purchase(GIFT_PURCHASE)
    wall = read_all(aipress24_reader.business_walls_changed)[0][0]

    assert purchase is not None
    ids = [purchase.id, purchase.buyer_id, purchase.post_id, purchase.buyer_organisation_id]
    ids += [wall.id, wall.owner_id, wall.organisation_id]
    assert all(isinstance(value, str) for value in ids)


# --- the full pass ------------------------------------------------------------------------------


def test_the_full_pass_returns_every_purchase_whatever_its_status(
    aipress24_reader: Aipress24Reader,
) -> None:
    rows: list[Purchase] = []
    after = None
    while True:
        page = aipress24_reader.purchases_all(after=after, page_size=5)
        rows.extend(page.rows)
        after = page.next_cursor
        if not page.has_more:
            break

    expected = PAID_PURCHASES | REFUNDED_PURCHASES | UNPAID_PURCHASES | {FAILED_PURCHASE}
    assert [row.id for row in rows] == sorted(expected, key=int)


def test_the_full_pass_sees_a_refund_that_the_paid_stream_cannot(
    aipress24_db: Aipress24Database,
) -> None:
    with aipress24_db.reader() as reader:
        _, cursor = read_all(reader.purchases_paid)
        aipress24_db.execute(
            "UPDATE wire_article_purchase SET status = 'REFUNDED' WHERE id = :id",
            {"id": int(GIFT_PURCHASE)},
        )

        assert reader.purchases_paid(since=cursor).rows == ()
        refunded = by_id(reader.purchases_all(page_size=100).rows)[GIFT_PURCHASE]
    assert refunded.status == PurchaseStatus.REFUNDED


# --- cursors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", CHANGE_STREAMS)
def test_a_second_read_from_the_returned_cursor_returns_nothing(
    aipress24_reader: Aipress24Reader, stream: str
) -> None:
    read = getattr(aipress24_reader, stream)
    _, cursor = read_all(read, page_size=3)

    page = read(since=cursor)

    assert page.rows == ()
    assert page.next_cursor == cursor
    assert page.has_more is False


@pytest.mark.parametrize("stream", sorted(STREAM_ROWS))
def test_a_row_modified_after_the_cursor_comes_back(
    aipress24_db: Aipress24Database, stream: str
) -> None:
    table, column, row_id = STREAM_ROWS[stream]
    with aipress24_db.reader() as reader:
        read = getattr(reader, stream)
        _, cursor = read_all(read)
        moment = cursor.at + timedelta(minutes=1)
        aipress24_db.execute(
            f"UPDATE {table} SET {column} = :at WHERE id = :id",  # noqa: S608 - test constants
            {"at": moment, "id": int(row_id) if row_id.isdigit() else row_id},
        )

        page = read(since=cursor)

    assert [row.id for row in page.rows] == [row_id]
    assert page.next_cursor == ChangeCursor(at=moment, id=row_id)


def test_a_purchase_paid_after_the_cursor_comes_back(aipress24_db: Aipress24Database) -> None:
    with aipress24_db.reader() as reader:
        _, cursor = read_all(reader.purchases_paid)
        aipress24_db.execute(
            "UPDATE wire_article_purchase SET status = 'PAID', paid_at = :at, "
            "amount_cents = 300, stripe_payment_intent_id = 'pi_3new' WHERE id = :id",
            {"at": cursor.at + timedelta(seconds=1), "id": int(PENDING_PURCHASE)},
        )

        page = reader.purchases_paid(since=cursor)

    assert [(row.id, row.status, row.amount_cents) for row in page.rows] == [
        (PENDING_PURCHASE, PurchaseStatus.PAID, 300)
    ]


@pytest.mark.parametrize(
    ("stream", "table", "column"),
    [
        ("organisations_changed", "crp_organisation", "modified_at"),
        ("business_walls_changed", "bw_business_wall", "updated_at"),
    ],
)
def test_rows_with_equal_timestamps_are_not_lost_across_pages(
    aipress24_db: Aipress24Database, stream: str, table: str, column: str
) -> None:
    aipress24_db.execute(
        f"UPDATE {table} SET {column} = :at",  # noqa: S608 - test constants
        {"at": utc(2026, 7, 1, 12, 0)},
    )
    with aipress24_db.reader() as reader:
        rows, cursor = read_all(getattr(reader, stream), page_size=2)

    ids = [row.id for row in rows]
    expected = ORGANISATION_IDS if table == "crp_organisation" else BUSINESS_WALL_IDS
    assert sorted(ids) == sorted(expected)
    assert len(ids) == len(set(ids))
    assert cursor.at == utc(2026, 7, 1, 12, 0)


def test_rows_younger_than_the_settle_window_wait_for_a_later_read(
    aipress24_db: Aipress24Database,
) -> None:
    now = utc(2026, 7, 1, 12, 0)
    clock = [now]
    aipress24_db.execute(
        "UPDATE crp_organisation SET modified_at = :at WHERE id = :id",
        {"at": now - timedelta(seconds=30), "id": int(KERLANN)},
    )
    with aipress24_db.reader(settle=timedelta(minutes=2), clock=lambda: clock[0]) as reader:
        first, cursor = read_all(reader.organisations_changed)
        clock[0] = now + timedelta(minutes=3)
        later = reader.organisations_changed(since=cursor)

    assert KERLANN not in by_id(first)
    assert [row.id for row in later.rows] == [KERLANN]


def test_an_organisation_whose_modified_at_is_null_is_read_by_its_created_at(
    aipress24_db: Aipress24Database,
) -> None:
    aipress24_db.execute(
        "UPDATE crp_organisation SET modified_at = NULL WHERE id = :id", {"id": int(KERLANN)}
    )
    with aipress24_db.reader() as reader:
        rows, _ = read_all(reader.organisations_changed)

    kerlann = by_id(rows)[KERLANN]
    assert (kerlann.modified_at, kerlann.changed_at) == (None, kerlann.created_at)


def test_a_cursor_survives_the_text_it_is_kept_as() -> None:
    cursor = ChangeCursor(at=utc(2026, 6, 30, 7, 58, 0), id=ETANG_BLEU)

    assert cursor.encode() == f"2026-06-30T07:58:00.000000+00:00|{ETANG_BLEU}"
    assert ChangeCursor.decode(cursor.encode()) == cursor


def test_a_cursor_refuses_a_naive_timestamp() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        ChangeCursor(at=datetime(2026, 6, 30, 7, 58), id="101")


def test_a_page_size_out_of_range_is_refused(aipress24_reader: Aipress24Reader) -> None:
    with pytest.raises(ValueError, match="page_size must be 1 to 10000"):
        aipress24_reader.organisations_changed(page_size=0)


# --- read-only, connections ---------------------------------------------------------------------

WRITES = {
    "INSERT": "INSERT INTO stripe_price (id, product_id, unit_amount_cents, currency, active, "
    "tax_behavior, metadata_json, synced_at) "
    "VALUES ('price_x', 'prod_x', 1, 'eur', true, 'exclusive', '{}', '2026-07-01 00:00:00')",
    "UPDATE": "UPDATE crp_organisation SET name = 'Changed'",
    "DELETE": "DELETE FROM wire_article_purchase",
}
REFUSALS = {
    "postgresql": "cannot execute {verb} in a read-only transaction",
    "sqlite": "attempt to write a readonly database",
}


@pytest.mark.parametrize("verb", sorted(WRITES))
def test_a_write_through_the_readers_connection_fails_at_the_database(
    aipress24_reader: Aipress24Reader, aipress24_db: Aipress24Database, verb: str
) -> None:
    connection = aipress24_reader.raw_connection()

    with pytest.raises(Exception) as raised:  # noqa: PT011 - the driver's own error is the point
        connection.execute(WRITES[verb])

    assert REFUSALS[aipress24_db.backend].format(verb=verb) in str(raised.value)
    counts = aipress24_db.execute(
        "SELECT (SELECT COUNT(*) FROM stripe_price), (SELECT COUNT(*) FROM wire_article_purchase)"
    )
    assert tuple(counts[0]) == (9, 16)


def test_the_reader_reuses_one_connection_for_every_read(
    aipress24_reader: Aipress24Reader,
) -> None:
    for stream in CHANGE_STREAMS:
        read_all(getattr(aipress24_reader, stream), page_size=2)
    aipress24_reader.purchases_all()
    aipress24_reader.organisation(ETANG_BLEU)
    aipress24_reader.user("101")

    assert aipress24_reader.connects == 1


def test_each_thread_reads_through_its_own_connection(aipress24_reader: Aipress24Reader) -> None:
    connections: list[Any] = []

    def work() -> None:
        aipress24_reader.organisations_changed()
        aipress24_reader.users_changed()
        connections.append(aipress24_reader.raw_connection())

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert aipress24_reader.connects == 2
    assert connections[0] is not connections[1]


def test_a_closed_reader_reconnects_on_the_next_read(aipress24_reader: Aipress24Reader) -> None:
    aipress24_reader.organisations_changed()
    aipress24_reader.close()

    assert len(aipress24_reader.organisations_changed().rows) == len(ORGANISATION_IDS)
    assert aipress24_reader.connects == 2


def test_the_sqlite_equivalent_reads_exactly_like_postgresql(
    aipress24_sqlite: Aipress24Database, aipress24_postgres: Aipress24Database
) -> None:
    def everything(database: Aipress24Database) -> dict[str, list[Any]]:
        with database.reader() as reader:
            rows = {stream: read_all(getattr(reader, stream))[0] for stream in CHANGE_STREAMS}
            rows["purchases_all"] = list(reader.purchases_all(page_size=100).rows)
        return rows

    assert everything(aipress24_sqlite) == everything(aipress24_postgres)


# --- PostgreSQL only: privileges, lost connections, timeouts ----------------------------------


def test_the_grant_statements_are_enough_for_every_stream(
    aipress24_postgres: Aipress24Database,
) -> None:
    role = f"ap24_reader_{aipress24_postgres.name[-12:]}"
    with postgres_admin() as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
    try:
        for statement in grant_statements(role, database=aipress24_postgres.name):
            aipress24_postgres.execute(statement)
        url = postgres_url(aipress24_postgres.name, user=role, password=PASSWORD)
        with Aipress24Reader(url=url) as reader:
            counts = {
                stream: len(read_all(getattr(reader, stream))[0]) for stream in CHANGE_STREAMS
            }
            full_pass = reader.purchases_all(page_size=100).rows
            with pytest.raises(Exception, match="permission denied"):
                reader.raw_connection().execute("SELECT password FROM aut_user")
    finally:
        aipress24_postgres.execute(f"DROP OWNED BY {role}")
        with postgres_admin() as admin:
            admin.execute(f"DROP ROLE {role}")

    assert counts == {
        "organisations_changed": 7,
        "users_changed": 11,
        "business_walls_changed": 6,
        "subscriptions_changed": 6,
        "purchases_paid": 12,
    }
    assert len(full_pass) == 16


def test_the_docs_give_the_grant_statements_the_reader_needs() -> None:
    docs = (ROOT / "docs" / "aipress24.md").read_text(encoding="utf-8")

    missing = [s for s in grant_statements("ap24sync_reader") if f"{s};" not in docs]
    assert not missing


def test_a_role_without_the_grants_is_a_configuration_error(
    aipress24_postgres: Aipress24Database,
) -> None:
    role = f"ap24_nogrant_{aipress24_postgres.name[-12:]}"
    with postgres_admin() as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
    try:
        url = postgres_url(aipress24_postgres.name, user=role)
        with Aipress24Reader(url=url) as reader, pytest.raises(ConfigurationError) as raised:
            reader.organisations_changed()
    finally:
        with postgres_admin() as admin:
            admin.execute(f"DROP ROLE {role}")

    assert "may not read" in str(raised.value)
    assert "docs/aipress24.md" in str(raised.value)


def test_a_lost_connection_is_transient_and_the_next_read_reconnects(
    aipress24_postgres: Aipress24Database,
) -> None:
    with aipress24_postgres.reader() as reader:
        pid = reader.raw_connection().execute("SELECT pg_backend_pid()").fetchone()[0]
        with postgres_admin() as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [pid])

        with pytest.raises(TransientError, match="connection failed or was lost"):
            reader.organisations_changed()
        page = reader.organisations_changed()

    assert len(page.rows) == len(ORGANISATION_IDS)
    assert reader.connects == 2


def test_a_read_that_exceeds_the_statement_timeout_is_transient(
    aipress24_postgres: Aipress24Database,
) -> None:
    import psycopg

    with (
        aipress24_postgres.reader(statement_timeout=0.2) as reader,
        psycopg.connect(postgres_url(aipress24_postgres.name)) as locker,
    ):
        reader.raw_connection()
        locker.execute("LOCK TABLE crp_organisation IN ACCESS EXCLUSIVE MODE")
        try:
            with pytest.raises(TransientError, match="statement timeout"):
                reader.organisations_changed()
        finally:
            locker.rollback()


# --- configuration errors: one line, never the password ---------------------------------------


def _whole_story(error: BaseException) -> str:
    return "".join(traceback.format_exception(error))


def test_an_unreachable_server_is_one_transient_line_without_the_password() -> None:
    reader = Aipress24Reader(url=f"postgres://reader:{PASSWORD}@127.0.0.1:1/aipress24")

    with pytest.raises(TransientError) as raised:
        reader.organisations_changed()

    message = str(raised.value)
    assert message == "Aipress24 database is unreachable at reader@127.0.0.1:1/aipress24: " + (
        "Connection refused"
    )
    assert PASSWORD not in _whole_story(raised.value)
    assert PASSWORD not in repr(reader)


def test_a_database_that_does_not_exist_is_a_configuration_error_without_the_password(
    aipress24_postgres: Aipress24Database,
) -> None:
    url = postgres_url("ap24_aipress24_does_not_exist", password=PASSWORD)

    with pytest.raises(ConfigurationError) as raised:
        Aipress24Reader(url=url).organisations_changed()

    message = str(raised.value)
    assert "does not exist" in message
    assert message.endswith("check AIPRESS24_DATABASE_URL")
    assert "\n" not in message
    assert PASSWORD not in _whole_story(raised.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"mysql://reader:{PASSWORD}@db/aipress24", "must start with postgres://"),
        (f"reader:{PASSWORD}@db/aipress24", "must start with postgres://"),
        (f"postgres://reader:{PASSWORD}@db:port/aipress24", "is not a valid URL"),
        (f"postgres://reader:{PASSWORD}@db:5432/", "names no database"),
        ("sqlite://", "must name a SQLite file"),
        ("sqlite:///:memory:", "must name a SQLite file"),
    ],
)
def test_a_malformed_url_is_one_line_without_the_password(url: str, expected: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Aipress24Reader(url=url)

    assert expected in str(raised.value)
    assert "\n" not in str(raised.value)
    assert PASSWORD not in _whole_story(raised.value)


def test_a_missing_sqlite_file_is_a_configuration_error(tmp_path: Path) -> None:
    reader = Aipress24Reader(url=f"sqlite:///{tmp_path / 'missing.sqlite3'}")

    with pytest.raises(ConfigurationError, match="which does not exist"):
        reader.organisations_changed()


def test_a_missing_setting_is_one_line_naming_the_variable(settings) -> None:
    settings.AIPRESS24_DATABASE_URL = ""

    with pytest.raises(ConfigurationError) as raised:
        Aipress24Reader.from_settings()

    assert str(raised.value) == "AIPRESS24_DATABASE_URL is not set; see .env.example"


def test_the_reader_from_settings_reads_the_configured_database(
    settings, aipress24_sqlite: Aipress24Database
) -> None:
    settings.AIPRESS24_DATABASE_URL = aipress24_sqlite.url

    with Aipress24Reader.from_settings() as reader:
        assert len(reader.organisations_changed().rows) == len(ORGANISATION_IDS)


def test_logs_redact_the_database_url_and_its_password() -> None:
    url = f"postgres://reader:{PASSWORD}@db.internal:5432/aipress24"
    code = (
        "import logging; from django.conf import settings; "
        "log = logging.getLogger('reconciliation.test'); "
        "log.warning('url %s', settings.AIPRESS24_DATABASE_URL); "
        f"log.warning('password {PASSWORD} alone')"
    )

    result = run_manage(
        isolated_env(AIPRESS24_DATABASE_URL=url), "shell", "--no-imports", "-c", code
    )

    assert "url [redacted]" in result.stderr
    assert "password [redacted] alone" in result.stderr
    assert PASSWORD not in result.stderr


def test_rows_are_immutable(aipress24_reader: Aipress24Reader) -> None:
    organisation = aipress24_reader.organisation(ETANG_BLEU)

    assert organisation is not None
    with pytest.raises(AttributeError):
        organisation.name = "Changed"  # type: ignore[misc]
    assert replace(organisation, name="Changed").name == "Changed"


# --- behind the circuit breaker --------------------------------------------------------------


@pytest.mark.django_db
def test_five_unreachable_reads_open_the_breaker_and_the_sixth_never_connects() -> None:
    from reconciliation.errors import CircuitOpenError
    from reconciliation.resilience import Breaker

    reader = Aipress24Reader(
        url="postgres://reader@127.0.0.1:1/aipress24", breaker=Breaker("aipress24")
    )
    for _ in range(4):
        with pytest.raises(TransientError):
            reader.organisations_changed()
    with pytest.raises(CircuitOpenError):
        reader.organisations_changed()
    tried = reader.connects

    with pytest.raises(CircuitOpenError, match="circuit breaker"):
        reader.organisations_changed()
    assert reader.connects == tried


@pytest.mark.django_db
def test_a_read_that_answers_resets_the_breakers_count(aipress24_db) -> None:
    from reconciliation.models import CircuitBreaker
    from reconciliation.resilience import Breaker

    breaker = Breaker("aipress24")
    down = Aipress24Reader(url="postgres://reader@127.0.0.1:1/aipress24", breaker=breaker)
    for _ in range(3):
        with pytest.raises(TransientError):
            down.organisations_changed()
    with Aipress24Reader(url=aipress24_db.url, breaker=breaker) as reader:
        assert reader.organisations_changed().rows

    assert CircuitBreaker.objects.get(system="aipress24").consecutive_failures == 0


@pytest.mark.django_db
def test_the_reader_from_settings_is_behind_the_aipress24_breaker(settings, aipress24_db) -> None:
    settings.AIPRESS24_DATABASE_URL = aipress24_db.url
    with Aipress24Reader.from_settings() as reader:
        assert reader.breaker is not None
        assert reader.breaker.system == "aipress24"
    with Aipress24Reader.from_settings(guarded=False) as reader:
        assert reader.breaker is None
