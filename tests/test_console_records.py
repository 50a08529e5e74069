"""The console's sync records (`/console/records/`, `/console/records/<id>/`): the list's
filters and search, its query budget, the record's page (its snapshot beside the live Dolibarr
object, the fallback when Dolibarr does not answer, the links, the audit history) and who may
retry it."""

from datetime import datetime, timedelta

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone

from reconciliation.audit import audit_record
from reconciliation.console.records import stripe_dashboard_url
from reconciliation.models import AuditEvent, Mismatch, SyncRecord, SyncState
from reconciliation.permissions import FINANCE_OPERATOR, FINANCE_VIEWER

pytestmark = pytest.mark.django_db

URL = "/console/records/"
# Session, user, permissions, role, the (source, kind) pairs, the page's rows, and headroom.
PAGE_QUERY_BUDGET = 8


def _member(django_user_model, group: str, username: str):
    user = django_user_model.objects.create_user(username, password="pw", is_staff=True)
    user.groups.add(Group.objects.get(name=group))
    return user


@pytest.fixture
def viewer(django_user_model):
    return _member(django_user_model, FINANCE_VIEWER, "vera")


@pytest.fixture
def operator(django_user_model):
    return _member(django_user_model, FINANCE_OPERATOR, "otto")


@pytest.fixture
def viewer_client(client, viewer):
    client.force_login(viewer)
    return client


@pytest.fixture
def records():
    """A Stripe invoice synced, a Stripe customer failed, an Aipress24 organisation pending."""
    invoice = SyncRecord.objects.create(
        source="stripe",
        kind="invoice",
        external_id="in_1AbcInvoice",
        snapshot={"id": "in_1AbcInvoice", "total": 12000, "email": "ada@example.org"},
        state=SyncState.SYNCED,
        dolibarr_kind="invoice",
        dolibarr_id=45,
        dolibarr_ref="FA2603-0012",
        attempts=1,
    )
    customer = SyncRecord.objects.create(
        source="stripe",
        kind="customer",
        external_id="cus_Ada",
        snapshot={"id": "cus_Ada", "name": "Ada Lovelace", "email": "ada@example.org"},
        state=SyncState.FAILED,
        attempts=8,
        last_error="Dolibarr answered 400: bad country\nsecond line not shown in the list",
    )
    organisation = SyncRecord.objects.create(
        source="aipress24",
        kind="organisation",
        external_id="org-7",
        snapshot={"id": "org-7", "name": "Le Petit Journal", "billing_email": "compta@lpj.fr"},
        state=SyncState.PENDING,
    )
    return invoice, customer, organisation


def _shown(page) -> list[SyncRecord]:
    return [row.record for row in page.context["table"].page.object_list]


# --- Who may see them -----------------------------------------------------------------------


def test_an_anonymous_visitor_is_sent_to_the_admin_login(client, records):
    for url in (URL, f"{URL}{records[0].pk}/"):
        answer = client.get(url)
        assert answer.status_code == 302
        assert answer["Location"].startswith(f"/admin/login/?next={url}")


# --- The list -------------------------------------------------------------------------------


def test_the_list_shows_every_record_newest_change_first(viewer_client, records):
    page = viewer_client.get(URL)
    content = page.content.decode()
    assert page.status_code == 200
    assert _shown(page) == [records[2], records[1], records[0]]
    assert "invoice FA2603-0012 #45" in content
    assert "Dolibarr answered 400: bad country" in content
    assert "second line not shown in the list" not in content


def test_filtering_by_source_keeps_that_source(viewer_client, records):
    page = viewer_client.get(URL, {"source": "aipress24"})
    assert _shown(page) == [records[2]]


def test_filtering_by_state_keeps_that_state(viewer_client, records):
    page = viewer_client.get(URL, {"state": SyncState.FAILED})
    assert _shown(page) == [records[1]]


def test_the_kind_filter_offers_the_kinds_that_have_records(viewer_client, records):
    page = viewer_client.get(URL)
    choices = [value for value, _label in page.context["filter"].form.fields["kind"].choices]
    assert choices == ["", "customer", "invoice", "organisation"]
    assert _shown(viewer_client.get(URL, {"kind": "customer"})) == [records[1]]


def test_filtering_by_updated_day_keeps_the_records_changed_that_day(viewer_client, records):
    SyncRecord.objects.filter(pk=records[0].pk).update(
        updated_at=timezone.make_aware(datetime(2026, 3, 10, 23, 30))
    )
    page = viewer_client.get(URL, {"date_from": "2026-03-10", "date_to": "2026-03-10"})
    assert _shown(page) == [records[0]]


def test_searching_the_start_of_an_external_id_finds_the_record(viewer_client, records):
    assert _shown(viewer_client.get(URL, {"q": "in_1Abc"})) == [records[0]]
    assert _shown(viewer_client.get(URL, {"q": "cus_Ada"})) == [records[1]]
    assert _shown(viewer_client.get(URL, {"q": "1Abc"})) == []


def test_searching_a_dolibarr_ref_finds_the_record(viewer_client, records):
    assert _shown(viewer_client.get(URL, {"q": "FA2603-0012"})) == [records[0]]
    assert _shown(viewer_client.get(URL, {"q": "FA2603"})) == [records[0]]


def test_searching_a_customer_email_finds_the_customer_records_only(viewer_client, records):
    # The invoice's snapshot names the same e-mail, but only customer records are searched.
    assert _shown(viewer_client.get(URL, {"q": "ada@example.org"})) == [records[1]]
    assert _shown(viewer_client.get(URL, {"q": "COMPTA@lpj"})) == [records[2]]


def test_searching_the_start_of_a_customer_name_finds_it_case_aside(viewer_client, records):
    assert _shown(viewer_client.get(URL, {"q": "le petit"})) == [records[2]]
    assert _shown(viewer_client.get(URL, {"q": "ADA LOVE"})) == [records[1]]
    assert _shown(viewer_client.get(URL, {"q": "journal"})) == []


def test_searching_an_aipress24_users_last_name_finds_the_user(viewer_client):
    user = SyncRecord.objects.create(
        source="aipress24",
        kind="user",
        external_id="u-3",
        snapshot={"first_name": "Émile", "last_name": "Zola", "email": "emile@example.fr"},
    )
    assert _shown(viewer_client.get(URL, {"q": "zola"})) == [user]
    assert _shown(viewer_client.get(URL, {"q": "emile@"})) == [user]


@pytest.mark.parametrize(("records_made", "rows_shown"), [(5, 5), (60, 50)])
def test_the_list_costs_the_same_queries_whatever_its_size(
    client, viewer, django_assert_max_num_queries, records_made, rows_shown
):
    SyncRecord.objects.bulk_create(
        SyncRecord(
            source="stripe" if n % 3 == 0 else "aipress24",
            kind=("customer", "organisation", "user")[n % 3],
            external_id=f"x_{n}",
            snapshot={"name": f"name {n}"},
            state=SyncState.SYNCED,
            dolibarr_kind="invoice",
            dolibarr_id=n,
        )
        for n in range(records_made)
    )
    client.force_login(viewer)
    with django_assert_max_num_queries(PAGE_QUERY_BUDGET) as captured:
        page = client.get(URL, {"q": "name"})
    assert len(_shown(page)) == rows_shown
    with django_assert_max_num_queries(PAGE_QUERY_BUDGET) as captured:
        page = client.get(URL)
    assert len(_shown(page)) == rows_shown
    assert not [q["sql"] for q in captured.captured_queries if "COUNT(" in q["sql"].upper()]


# --- The record's page ----------------------------------------------------------------------


def test_the_page_shows_the_snapshot_beside_the_live_dolibarr_object(
    viewer_client, settings, dolibarr_sandbox, dolibarr_api_key, dolibarr_client
):
    settings.DOLIBARR_URL = dolibarr_sandbox.api_url
    settings.DOLIBARR_API_KEY = dolibarr_api_key
    thirdparty_id = dolibarr_client.create_thirdparty(
        name="Ada Lovelace (Dolibarr)", ref_ext="cus_Ada", email="ada@example.org"
    )
    record = SyncRecord.objects.create(
        source="stripe",
        kind="customer",
        external_id="cus_Ada",
        snapshot={"name": "Ada Lovelace", "email": "ada@example.org", "balance": 0},
        state=SyncState.SYNCED,
        dolibarr_kind="thirdparty",
        dolibarr_id=thirdparty_id,
    )
    page = viewer_client.get(f"{URL}{record.pk}/")
    content = page.content.decode()
    source_side = content.split('id="source-side"')[1].split('id="dolibarr-side"')[0]
    dolibarr_side = content.split('id="dolibarr-side"')[1].split("</section>")[0]
    assert page.status_code == 200
    assert "&quot;name&quot;: &quot;Ada Lovelace&quot;" in source_side
    assert "<mark>" in source_side  # "balance" is money
    assert "Ada Lovelace (Dolibarr)" in dolibarr_side
    assert "&quot;ref_ext&quot;: &quot;cus_Ada&quot;" in dolibarr_side
    assert "unreachable" not in dolibarr_side


def test_when_dolibarr_is_down_the_page_says_so_and_shows_what_the_record_knows(
    viewer_client, settings, dolibarr_sandbox, dolibarr_api_key, dolibarr_client
):
    settings.DOLIBARR_URL = dolibarr_sandbox.api_url
    settings.DOLIBARR_API_KEY = dolibarr_api_key
    thirdparty_id = dolibarr_client.create_thirdparty(name="Gone", ref_ext="cus_Gone")
    record = SyncRecord.objects.create(
        source="stripe",
        kind="customer",
        external_id="cus_Gone",
        snapshot={"name": "Gone"},
        state=SyncState.SYNCED,
        dolibarr_kind="thirdparty",
        dolibarr_id=thirdparty_id,
        dolibarr_ref="CU2603-00001",
    )
    dolibarr_sandbox.stop()
    page = viewer_client.get(f"{URL}{record.pk}/")
    content = page.content.decode()
    assert page.status_code == 200
    assert "Dolibarr unreachable:" in content
    assert "CU2603-00001" in content
    assert f'<dd class="code">{thirdparty_id}</dd>' in content


def test_when_dolibarr_is_not_configured_the_page_says_which_setting_is_missing(
    viewer_client, settings, records
):
    settings.DOLIBARR_URL = ""
    page = viewer_client.get(f"{URL}{records[0].pk}/")
    assert page.status_code == 200
    assert "Dolibarr unreachable:" in page.content.decode()
    assert "DOLIBARR_URL is not set" in page.content.decode()


def test_the_links_open_the_object_in_dolibarr_and_in_stripes_test_dashboard(
    viewer_client, settings, records
):
    settings.DOLIBARR_URL = ""
    settings.DOLIBARR_UI_URL = "https://erp.example.org/"
    settings.STRIPE_API_KEY = "sk_test_0123456789"
    content = viewer_client.get(f"{URL}{records[0].pk}/").content.decode()
    assert 'href="https://erp.example.org/compta/facture/card.php?facid=45"' in content
    assert 'href="https://dashboard.stripe.com/test/invoices/in_1AbcInvoice"' in content


def test_a_live_key_links_to_stripes_live_dashboard_by_the_ids_prefix(settings):
    # Built at run time, so that no secret scanner takes the fake key for a live one.
    settings.STRIPE_API_KEY = "rk_" + "live_0123456789"
    assert stripe_dashboard_url("cus_1") == "https://dashboard.stripe.com/customers/cus_1"
    assert stripe_dashboard_url("pi_1") == "https://dashboard.stripe.com/payments/pi_1"
    assert stripe_dashboard_url("re_1") == "https://dashboard.stripe.com/refunds/re_1"
    assert stripe_dashboard_url("txn_1") == ""


def test_a_thirdparty_links_to_its_dolibarr_card(viewer_client, settings):
    settings.DOLIBARR_URL = ""
    settings.DOLIBARR_UI_URL = "https://erp.example.org"
    record = SyncRecord.objects.create(
        source="aipress24",
        kind="organisation",
        external_id="org-1",
        state=SyncState.SYNCED,
        dolibarr_kind="thirdparty",
        dolibarr_id=12,
    )
    content = viewer_client.get(f"{URL}{record.pk}/").content.decode()
    assert 'href="https://erp.example.org/societe/card.php?socid=12"' in content
    assert "Aipress24 has no page to link to" in content


def test_the_audit_history_lists_the_records_own_events_newest_first(viewer_client, records):
    invoice, customer, _organisation = records
    audit_record(action="record.observed", target=invoice)
    audit_record(action="record.synced", target=invoice, after={"dolibarr_id": 45})
    audit_record(action="record.failed", target=customer, reason="not this one")
    page = viewer_client.get(f"{URL}{invoice.pk}/")
    shown = [row.record.action for row in page.context["history"].rows]
    assert shown == ["record.synced", "record.observed"]
    assert "not this one" not in page.content.decode()


def test_the_records_mismatches_are_listed(viewer_client, records):
    Mismatch.objects.create(
        kind="total_differs",
        severity="critical",
        fingerprint="f1",
        record=records[0],
        summary="Dolibarr total 119.99, Stripe 120.00",
    )
    content = viewer_client.get(f"{URL}{records[0].pk}/").content.decode()
    assert "Dolibarr total 119.99, Stripe 120.00" in content


def test_a_record_that_does_not_exist_is_a_404(viewer_client):
    assert viewer_client.get(f"{URL}999999/").status_code == 404


# --- Retry ----------------------------------------------------------------------------------


def test_a_viewer_is_offered_no_retry_button(viewer_client, records):
    content = viewer_client.get(f"{URL}{records[1].pk}/").content.decode()
    assert f"{URL}{records[1].pk}/retry/" not in content


def test_a_viewers_crafted_retry_is_forbidden_and_changes_nothing(viewer_client, records):
    answer = viewer_client.post(f"{URL}{records[1].pk}/retry/", {"reason": "sneaky"})
    records[1].refresh_from_db()
    assert answer.status_code == 403
    assert records[1].state == SyncState.FAILED
    assert not AuditEvent.objects.filter(action="record.retry_requested").exists()


def test_an_operators_retry_makes_the_record_pending_and_audits_the_operator(
    client, operator, records
):
    client.force_login(operator)
    record = records[1]
    page = client.get(f"{URL}{record.pk}/")
    assert f"{URL}{record.pk}/retry/" in page.content.decode()
    answer = client.post(f"{URL}{record.pk}/retry/", {"reason": "country fixed"}, follow=True)
    record.refresh_from_db()
    event = AuditEvent.objects.get(action="record.retry_requested")
    assert answer.redirect_chain == [(f"{URL}{record.pk}/", 302)]
    assert "is pending" in answer.content.decode()
    assert record.state == SyncState.PENDING
    assert record.attempts == 0
    assert (event.actor, event.actor_label, event.reason) == (operator, "otto", "country fixed")
    assert event.target_id == str(record.pk)


def test_a_retry_without_its_csrf_token_is_refused(operator, records):
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    answer = client.post(f"{URL}{records[1].pk}/retry/")
    records[1].refresh_from_db()
    assert answer.status_code == 403
    assert records[1].state == SyncState.FAILED


def test_a_retry_of_a_record_in_progress_says_why_it_waits(client, operator):
    record = SyncRecord.objects.create(
        source="stripe",
        kind="invoice",
        external_id="in_busy",
        state=SyncState.IN_PROGRESS,
        last_attempt_at=timezone.now() - timedelta(seconds=5),
    )
    client.force_login(operator)
    answer = client.post(f"{URL}{record.pk}/retry/", follow=True)
    record.refresh_from_db()
    assert answer.status_code == 200
    assert "is being worked on" in answer.content.decode()
    assert record.state == SyncState.IN_PROGRESS


def test_a_search_with_a_nul_character_is_refused_with_a_message_not_an_error(
    viewer_client, records
):
    page = viewer_client.get(URL, {"q": "in_1\x00"})
    assert page.status_code == 200
    assert "Null characters are not allowed." in page.content.decode()
