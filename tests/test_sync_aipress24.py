"""Aipress24 -> Dolibarr end to end: the synthetic dataset (schema.sql + sample-data.sql, on
PostgreSQL and on its SQLite equivalent) read by the reader, its Stripe side served by the
sandbox Stripe, written into the sandbox Dolibarr over HTTP by the engine."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.test import Client
from django_q.conf import Conf

from reconciliation.connectors.stripe import StripeConnector
from reconciliation.errors import TransientError
from reconciliation.models import (
    AuditEvent,
    Mismatch,
    MismatchKind,
    SourceAlias,
    SyncRecord,
    SyncState,
)
from reconciliation.sandbox.stripe import StripeSandbox
from reconciliation.sandbox.stripe_aipress24 import aipress24_stripe_dataset, vat_cents
from reconciliation.sync.aipress24_pull import aipress24_pull_all
from reconciliation.sync.engine import build_context, sync_due
from reconciliation.sync.lane import LocalLane
from reconciliation.sync.stripe_pull import stripe_stream_pull
from reconciliation.webhooks import push_signature
from tests.fixtures_stripe import STRIPE_TEST_KEY
from tests.sync_support import sync_until_settled

pytestmark = pytest.mark.django_db

VAT_RATES = {
    "consultation": Decimal("2.1"),
    "consultation_gift": Decimal("2.1"),
    "justificatif": Decimal("20"),
    "cession": Decimal("20"),
}
ETANG_BLEU = "7372904941486084097"
RIVAGE = "7379523049881604098"
ONSO = "7401183274598404101"
GAZETTE = "7378698869145604103"  # soft-deleted, never billed
KERLANN = "7465723546828804102"  # only a pending purchase and a draft Business Wall
PAYING_ORGANISATIONS = {
    ETANG_BLEU,
    RIVAGE,
    "7397213365862404099",  # Transitions Durables
    ONSO,
    "7415071034572804100",  # Hoffmann & Partner
}
INDIVIDUAL = "110"  # Marc O'Neill, no organisation
CLONE = "111"
REFUNDED = ("7442268998860804311", "7468202380492804310")
FAILED = "7451932675276804309"
PENDING = ("7456251130675204308", "7468786227609604307", "7474083633561604312")


class World:
    """The three remotes of one test and the context that writes between them."""

    def __init__(self, database, dolibarr_client, dolibarr_sandbox, stripe_sandbox, stripe):
        self.database = database
        self.reader = database.reader(settle=timedelta(0))
        self.dolibarr = dolibarr_client
        self.dolibarr_sandbox = dolibarr_sandbox
        self.stripe_sandbox = stripe_sandbox
        self.stripe = stripe

    def context(self):
        return build_context(
            client=self.dolibarr,
            stripe=self.stripe,
            lane=LocalLane(self.dolibarr_sandbox.api_url, timeout=30),
            aipress24=self.reader,
        )

    def sync(self, *, with_stripe_customers: bool = False, full: bool = False) -> None:
        aipress24_pull_all(reader=self.reader, full=full)
        if with_stripe_customers:
            stripe_stream_pull(connector=self.stripe, stream="customers")
        sync_until_settled(self.context())

    def thirdparties(self, ref_ext: str):
        return self.dolibarr.find_thirdparties(ref_ext=ref_ext)

    def thirdparty(self, ref_ext: str):
        (found,) = self.thirdparties(ref_ext)
        return found

    def record(self, kind: str, external_id: str) -> SyncRecord:
        return SyncRecord.objects.get(source="aipress24", kind=kind, external_id=external_id)


@pytest.fixture
def world(settings, aipress24_db, dolibarr_client, dolibarr_sandbox):
    """On PostgreSQL (schema.sql + sample-data.sql loaded) and on the SQLite equivalent."""
    yield from _world(settings, aipress24_db, dolibarr_client, dolibarr_sandbox)


def _world(settings, database, dolibarr_client, dolibarr_sandbox):
    settings.AIPRESS24_VAT_RATES = {key: str(value) for key, value in VAT_RATES.items()}
    reader = database.reader(settle=timedelta(0))
    dataset = aipress24_stripe_dataset(reader, vat_rates=VAT_RATES)
    reader.close()
    sandbox = StripeSandbox(api_key=STRIPE_TEST_KEY, data=dataset)
    with sandbox:
        stripe = StripeConnector(
            api_key=STRIPE_TEST_KEY,
            api_base=sandbox.base_url,
            max_network_retries=0,
            timeout=5.0,
        )
        world = World(database, dolibarr_client, dolibarr_sandbox, sandbox, stripe)
        try:
            yield world
        finally:
            world.reader.close()


def _paid_purchases(world: World) -> list[dict]:
    rows = world.database.execute(
        "SELECT CAST(id AS TEXT), stripe_payment_intent_id, amount_cents, product_type "
        "FROM wire_article_purchase WHERE paid_at IS NOT NULL"
    )
    return [
        {"id": row[0], "intent": row[1], "net": int(row[2]), "type": str(row[3]).lower()}
        for row in rows
    ]


# --- customers and partners ---------------------------------------------------------------------


def test_each_paying_organisation_and_individual_buyer_exists_once_as_a_thirdparty(world):
    world.sync()

    for organisation in PAYING_ORGANISATIONS:
        assert len(world.thirdparties(f"ap24-org-{organisation}")) == 1
    assert len(world.thirdparties(f"ap24-user-{INDIVIDUAL}")) == 1


def test_an_organisation_thirdparty_carries_its_billing_identity(world):
    world.sync()

    rivage = world.thirdparty(f"ap24-org-{RIVAGE}")
    assert rivage.name == "Agence Rivage Conseil"
    assert rivage.email == "compta@rivage-conseil.fr"
    assert rivage.tva_intra == "FR96823456017"
    assert rivage.idprof1 == "823456017"
    assert rivage.country_code == "FR"
    assert rivage.client == 1


def test_a_partner_organisation_is_flagged_customer_and_prospect(world):
    world.sync()

    # Étang Bleu's active Business Wall is a (free) media one: a partner that also pays.
    assert world.thirdparty(f"ap24-org-{ETANG_BLEU}").client == 3


def test_a_buyer_without_organisation_becomes_an_individual_customer(world):
    world.sync()

    marc = world.thirdparty(f"ap24-user-{INDIVIDUAL}")
    assert marc.name == "Marc O'Neill"
    assert marc.email == "marc.oneill@example.org"
    assert marc.tva_intra in (None, "")


def test_members_clones_and_customers_never_billed_create_no_thirdparty(world):
    world.sync()

    for user in ("101", "104", CLONE, "112"):
        assert world.thirdparties(f"ap24-user-{user}") == []
    for organisation in (GAZETTE, KERLANN):
        assert world.thirdparties(f"ap24-org-{organisation}") == []
    assert not SyncRecord.objects.filter(kind="user", external_id=CLONE).exists()
    assert world.record("organisation", KERLANN).state == SyncState.SKIPPED


def test_an_organisation_is_linked_to_the_stripe_customer_it_bills_with(world):
    world.sync()

    onso = world.thirdparty(f"ap24-org-{ONSO}")
    # ONSO's own column says cus_aJWNQnagx6ompl; its subscription's checkout made another one.
    assert world.dolibarr.stripe_link(thirdparty_id=onso.id).customer_id == "cus_o3sjf7a1hn1v4E"


def test_every_stripe_customer_of_an_organisation_resolves_to_its_one_thirdparty(world):
    world.sync(with_stripe_customers=True)

    onso = world.thirdparty(f"ap24-org-{ONSO}")
    for customer in ("cus_aJWNQnagx6ompl", "cus_o3sjf7a1hn1v4E"):
        record = SyncRecord.objects.get(source="stripe", kind="customer", external_id=customer)
        assert (record.state, record.dolibarr_id) == (SyncState.SYNCED, onso.id)
    assert SourceAlias.objects.get(external_id="cus_o3sjf7a1hn1v4E").role == "billing"
    assert SourceAlias.objects.get(external_id="cus_aJWNQnagx6ompl").role == "other"
    assert len(world.thirdparties(f"ap24-org-{ONSO}")) == 1


# --- purchases ----------------------------------------------------------------------------------


def test_each_paid_purchase_has_exactly_one_order_invoice_and_payment(world):
    world.sync()

    purchases = _paid_purchases(world)
    assert len(purchases) == 12
    for purchase in purchases:
        ref_ext = f"ap24-purchase-{purchase['id']}"
        (order,) = world.dolibarr.find_orders(ref_ext=ref_ext)
        (invoice,) = world.dolibarr.find_invoices(ref_ext=ref_ext)
        (payment,) = world.dolibarr.find_payments(ref_ext=purchase["intent"])
        assert order.billed
        assert not invoice.is_draft
        assert payment.id


def test_a_purchase_invoice_totals_what_stripe_collected_to_the_cent(world):
    world.sync()

    for purchase in _paid_purchases(world):
        (invoice,) = world.dolibarr.find_invoices(ref_ext=f"ap24-purchase-{purchase['id']}")
        collected = purchase["net"] + vat_cents(purchase["net"], VAT_RATES[purchase["type"]])
        assert invoice.total_ttc == Decimal(collected) / 100
        assert invoice.total_ht == Decimal(purchase["net"]) / 100


def test_a_refunded_purchase_gets_its_credit_note_from_the_stripe_refund(world):
    world.sync()

    for purchase_id in REFUNDED:
        (invoice,) = world.dolibarr.find_invoices(ref_ext=f"ap24-purchase-{purchase_id}")
        intent = world.database.execute(
            "SELECT stripe_payment_intent_id FROM wire_article_purchase WHERE id = :id",
            {"id": int(purchase_id)},
        )[0][0]
        (refund,) = world.stripe.refunds(payment_intent=intent)
        (credit,) = world.dolibarr.find_invoices(ref_ext=refund["id"])
        assert credit.source_invoice_id == invoice.id
        assert credit.total_ttc == -invoice.total_ttc
        assert not credit.is_draft
        assert len(world.dolibarr.find_payments(ref_ext=refund["id"])) == 1


def test_unpaid_and_failed_purchases_create_nothing(world):
    world.sync(full=True)

    for purchase_id in (*PENDING, FAILED):
        ref_ext = f"ap24-purchase-{purchase_id}"
        assert world.dolibarr.find_orders(ref_ext=ref_ext) == []
        assert world.dolibarr.find_invoices(ref_ext=ref_ext) == []
    assert world.record("purchase", FAILED).state == SyncState.SKIPPED


def test_a_second_sync_writes_nothing_more(world):
    world.sync(with_stripe_customers=True)
    writes = AuditEvent.objects.filter(action__startswith="dolibarr.").count()
    SyncRecord.objects.filter(source="aipress24").update(state=SyncState.PENDING, attempts=0)

    world.sync(with_stripe_customers=True)

    for purchase in _paid_purchases(world):
        ref_ext = f"ap24-purchase-{purchase['id']}"
        assert len(world.dolibarr.find_orders(ref_ext=ref_ext)) == 1
        assert len(world.dolibarr.find_invoices(ref_ext=ref_ext)) == 1
        assert len(world.dolibarr.find_payments(ref_ext=purchase["intent"])) == 1
    for organisation in PAYING_ORGANISATIONS:
        assert len(world.thirdparties(f"ap24-org-{organisation}")) == 1
    assert AuditEvent.objects.filter(action__startswith="dolibarr.").count() == writes


def test_an_invoice_that_does_not_match_stripe_stays_a_draft_with_a_mismatch(world, settings):
    settings.AIPRESS24_VAT_RATES = {**settings.AIPRESS24_VAT_RATES, "cession": "5.5"}
    world.sync()

    cession = "7442533240012804303"
    (invoice,) = world.dolibarr.find_invoices(ref_ext=f"ap24-purchase-{cession}")
    assert invoice.is_draft
    mismatch = Mismatch.objects.get(record__external_id=cession)
    assert mismatch.kind == MismatchKind.TOTAL_DIFFERS
    assert world.record("purchase", cession).state == SyncState.NEEDS_REVIEW


# --- conflicts ----------------------------------------------------------------------------------


def _edit_aipress24(world: World, column: str, value: str, organisation: str = RIVAGE) -> None:
    world.database.execute(
        f"UPDATE crp_organisation SET {column} = :value, modified_at = :now WHERE id = :id",  # noqa: S608
        {"value": value, "now": _later(), "id": int(organisation)},
    )


def _later():
    from django.utils import timezone

    return timezone.now() - timedelta(seconds=1)


def test_a_field_changed_in_aipress24_only_is_written_to_dolibarr(world):
    world.sync()
    _edit_aipress24(world, "billing_city", "Marseille")

    world.sync()

    assert world.thirdparty(f"ap24-org-{RIVAGE}").town == "Marseille"


def test_a_field_changed_in_dolibarr_only_is_kept(world):
    world.sync()
    thirdparty = world.thirdparty(f"ap24-org-{RIVAGE}")
    world.dolibarr.update_thirdparty(thirdparty_id=thirdparty.id, changes={"town": "Toulon"})
    _edit_aipress24(world, "billing_email", "factures@rivage-conseil.fr")

    world.sync()

    after = world.thirdparty(f"ap24-org-{RIVAGE}")
    assert (after.town, after.email) == ("Toulon", "factures@rivage-conseil.fr")
    assert not Mismatch.objects.filter(kind=MismatchKind.CUSTOMER_CONFLICT).exists()


def test_the_same_field_changed_on_both_sides_is_one_conflict_and_overwrites_nothing(world):
    world.sync()
    thirdparty = world.thirdparty(f"ap24-org-{RIVAGE}")
    world.dolibarr.update_thirdparty(thirdparty_id=thirdparty.id, changes={"town": "Toulon"})
    _edit_aipress24(world, "billing_city", "Marseille")

    world.sync()

    assert world.thirdparty(f"ap24-org-{RIVAGE}").town == "Toulon"
    (conflict,) = Mismatch.objects.filter(kind=MismatchKind.CUSTOMER_CONFLICT)
    fields = conflict.proposed_fix_params["fields"]
    assert fields["town"] == {
        "last_synced": "Paris",
        "aipress24": "Marseille",
        "dolibarr": "Toulon",
    }
    assert world.record("organisation", RIVAGE).state == SyncState.NEEDS_REVIEW


def test_syncing_a_conflict_again_does_not_duplicate_its_mismatch(world):
    world.sync()
    thirdparty = world.thirdparty(f"ap24-org-{RIVAGE}")
    world.dolibarr.update_thirdparty(thirdparty_id=thirdparty.id, changes={"town": "Toulon"})
    _edit_aipress24(world, "billing_city", "Marseille")
    world.sync()
    SyncRecord.objects.filter(kind="organisation", external_id=RIVAGE).update(
        state=SyncState.PENDING, attempts=0
    )

    world.sync()

    assert Mismatch.objects.filter(kind=MismatchKind.CUSTOMER_CONFLICT).count() == 1
    assert world.thirdparty(f"ap24-org-{RIVAGE}").town == "Toulon"


# --- resilience ---------------------------------------------------------------------------------


class LoseAnswerOnce:
    """The client whose first `method` call is applied by Dolibarr but answered by a timeout."""

    def __init__(self, client, method: str) -> None:
        self._client = client
        self.method = method
        self.lost = False

    def __getattr__(self, name: str):
        attribute = getattr(self._client, name)
        if name != self.method or self.lost:
            return attribute

        def applied_then_lost(**kwargs):
            attribute(**kwargs)
            self.lost = True
            raise TransientError(
                "read timeout", system="dolibarr", endpoint=name, outcome_unknown=True
            )

        return applied_then_lost


def test_an_invoice_whose_creation_answer_was_lost_is_found_through_its_order(world):
    lossy = LoseAnswerOnce(world.dolibarr, "create_invoice_from_order")
    aipress24_pull_all(reader=world.reader)
    context = build_context(
        client=lossy,
        stripe=world.stripe,
        lane=LocalLane(world.dolibarr_sandbox.api_url, timeout=30),
        aipress24=world.reader,
    )

    sync_until_settled(context)

    assert lossy.lost
    for purchase in _paid_purchases(world):
        ref_ext = f"ap24-purchase-{purchase['id']}"
        (order,) = world.dolibarr.find_orders(ref_ext=ref_ext)
        (invoice,) = world.dolibarr.find_invoices(ref_ext=ref_ext)
        linked = world.dolibarr.get_order(order_id=order.id).raw["linkedObjectsIds"]["facture"]
        assert list(linked.values()) == [str(invoice.id)]


def test_a_stripe_customer_synced_before_its_organisation_was_mapped_resolves_to_it(world):
    stripe_stream_pull(connector=world.stripe, stream="customers")
    sync_until_settled(world.context())
    early = SyncRecord.objects.get(source="stripe", external_id="cus_aJWNQnagx6ompl")
    assert early.dolibarr_id == world.thirdparty("cus_aJWNQnagx6ompl").id

    world.sync()

    onso = world.thirdparty(f"ap24-org-{ONSO}")
    early.refresh_from_db()
    assert (early.state, early.dolibarr_id) == (SyncState.SYNCED, onso.id)


def test_a_customer_in_conflict_still_has_its_purchases_billed(world):
    world.sync()
    thirdparty = world.thirdparty(f"ap24-org-{RIVAGE}")
    world.dolibarr.update_thirdparty(thirdparty_id=thirdparty.id, changes={"town": "Toulon"})
    _edit_aipress24(world, "billing_city", "Marseille")
    aipress24_pull_all(reader=world.reader)
    sync_until_settled(world.context())
    world.database.execute(
        "UPDATE wire_article_purchase SET paid_at = :now, status = 'PAID', amount_cents = 300, "
        "stripe_payment_intent_id = 'pi_3DunBxJVndYmbqk3zO0FvMwy' WHERE id = :id",
        {"now": _later(), "id": int(PENDING[0])},
    )
    # Sold to Nadia (ONSO) in the sample; now bought by a member of Rivage.
    world.database.execute(
        "UPDATE wire_article_purchase SET owner_id = 104 WHERE id = :id", {"id": int(PENDING[0])}
    )

    world.sync()

    assert world.record("organisation", RIVAGE).state == SyncState.NEEDS_REVIEW
    (order,) = world.dolibarr.find_orders(ref_ext=f"ap24-purchase-{PENDING[0]}")
    assert order.thirdparty_id == thirdparty.id


def test_a_pushed_refund_without_a_stripe_refund_goes_to_review(
    world, settings, monkeypatch, django_capture_on_commit_callbacks
):
    world.sync()
    paid = "7449550730035204300"  # Marc's consultation, paid, never refunded in Stripe
    world.database.execute(
        "UPDATE wire_article_purchase SET status = 'REFUNDED' WHERE id = :id", {"id": int(paid)}
    )
    settings.AIPRESS24_PUSH_SECRET = "push-secret"
    monkeypatch.setattr(Conf, "SYNC", True)
    body = json.dumps(
        {
            "id": "evt-refund-1",
            "type": "purchase.paid",
            "object_id": paid,
            "occurred_at": "2026-07-02T09:30:00Z",
        }
    ).encode()
    monkeypatch.setattr("reconciliation.webhooks._unix_now", lambda: 1782984605)
    signature = push_signature(body=body, secrets=["push-secret"], timestamp=1782984605)

    with django_capture_on_commit_callbacks(execute=True):
        answer = Client().post(
            "/webhooks/aipress24",
            data=body,
            content_type="application/json",
            HTTP_X_AIPRESS24_SIGNATURE=signature,
        )
    assert answer.status_code == 202
    sync_until_settled(world.context())

    record = world.record("purchase", paid)
    assert record.state == SyncState.NEEDS_REVIEW
    assert record.snapshot["status"] == "refunded"
    assert Mismatch.objects.get(record=record).kind == MismatchKind.REFUND_MISSING


def test_a_dry_run_plans_the_whole_purchase_chain_and_writes_nothing(world):
    aipress24_pull_all(reader=world.reader)
    context = build_context(
        client=world.dolibarr,
        stripe=world.stripe,
        lane=LocalLane(world.dolibarr_sandbox.api_url, timeout=30),
        aipress24=world.reader,
        dry_run=True,
    )

    sync_due(context=context)

    planned = [write.line() for write in context.dolibarr.plan]
    cession = "7442533240012804303"
    assert f"create order ap24-purchase-{cession} [purchase {cession}]" in planned
    assert any(line.startswith("validate invoice") for line in planned)
    assert any(line.startswith("create payment pi_3utWXvrYDjQ8xAnuxFEF0csw") for line in planned)
    assert sum(line.startswith("create product") for line in planned) == 4  # one per type
    assert world.dolibarr.find_orders(ref_ext=f"ap24-purchase-{cession}") == []
    assert world.thirdparties(f"ap24-org-{RIVAGE}") == []
