"""The console in a real browser: headless Chromium (Debian's package) driven by Selenium against
the live server, with the sandbox Dolibarr behind it. Screenshots of the dashboard and of a
mismatch's detail are saved in artifacts/screenshots/ by the run."""

from __future__ import annotations

import importlib
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group
from django_q.conf import Conf
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from reconciliation.connectors.dolibarr_types import NewLine
from reconciliation.models import AuditEvent, Mismatch, MismatchKind, MismatchState, SyncState
from reconciliation.permissions import FINANCE_OPERATOR, FINANCE_VIEWER
from reconciliation.services.mismatches import mismatch_detected
from reconciliation.services.records import record_observe
from tests.fixtures_browser import screenshot

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "correct horse battery staple"


@pytest.fixture
def console(settings, live_server, dolibarr_sandbox, dolibarr_api_key, monkeypatch):
    """The live console, its Dolibarr the sandbox, django-q2 running tasks in the process that
    queues them (the approved fix is applied as soon as the approval commits)."""
    settings.DOLIBARR_URL = dolibarr_sandbox.api_url
    settings.DOLIBARR_API_KEY = dolibarr_api_key
    settings.DOLIBARR_MAX_RETRIES = 0
    monkeypatch.setattr(Conf, "SYNC", True)
    return live_server


def _member(django_user_model, group: str, username: str):
    # A transactional test starts from an emptied database: the groups the data migration made
    # are made again, by the migration's own function.
    if not Group.objects.filter(name=group).exists():
        from django.apps import apps

        importlib.import_module(
            "reconciliation.migrations.0007_finance_groups"
        ).finance_groups_create(apps, None)
    user = django_user_model.objects.create_user(username, password=PASSWORD, is_staff=True)
    user.groups.add(Group.objects.get(name=group))
    return user


def _log_in(browser, console, username: str, page: str) -> None:
    browser.get(f"{console.url}/admin/login/?next={page}")
    browser.find_element(By.NAME, "username").send_keys(username)
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "[type=submit]").click()
    # The login page's own URL names the page in `next`: wait until the browser has left it.
    WebDriverWait(browser, 10).until(lambda driver: "/admin/login/" not in driver.current_url)
    assert driver_path(browser) == page.split("?")[0]


def driver_path(browser) -> str:
    from urllib.parse import urlsplit

    return urlsplit(browser.current_url).path


def _stripe_link_conflict(dolibarr_client) -> tuple[Mismatch, int]:
    """A thirdparty linked to the wrong Stripe customer, and the mismatch proposing the fix."""
    thirdparty = dolibarr_client.create_thirdparty(
        name="Agence Rivage Conseil", ref_ext="ap24-org-7379523049881604098", code_client="-1"
    )
    dolibarr_client.link_stripe_customer(
        thirdparty_id=thirdparty, customer_id="cus_old", live=False
    )
    record, _ = record_observe(
        source="aipress24",
        kind="organisation",
        external_id="7379523049881604098",
        snapshot={"id": "7379523049881604098", "name": "Agence Rivage Conseil"},
    )
    mismatch = mismatch_detected(
        kind=MismatchKind.CUSTOMER_CONFLICT,
        fingerprint_parts=("aipress24", "organisation", "7379523049881604098", "link"),
        summary=f"Thirdparty {thirdparty} is linked to Stripe customer cus_old; the "
        "organisation bills with cus_z0iJshAcT1cKgN",
        record=record,
        source_snapshot={"stripe_customers": ["cus_z0iJshAcT1cKgN"]},
        dolibarr_snapshot={"thirdparty_id": thirdparty, "linked": "cus_old"},
        proposed_fix="replace_stripe_link",
        proposed_fix_params={
            "thirdparty_id": thirdparty,
            "customer_id": "cus_z0iJshAcT1cKgN",
            "current_customer_id": "cus_old",
        },
    )
    return mismatch, thirdparty


def test_an_operator_approves_a_proposed_fix_and_sees_it_resolved_and_audited(
    browser, console, django_user_model, dolibarr_client
):
    operator = _member(django_user_model, FINANCE_OPERATOR, "otto")
    mismatch, thirdparty = _stripe_link_conflict(dolibarr_client)

    _log_in(browser, console, "otto", "/console/mismatches/")
    browser.find_element(By.PARTIAL_LINK_TEXT, "is linked to Stripe customer cus_old").click()
    WebDriverWait(browser, 10).until(expected_conditions.url_contains(f"/{mismatch.pk}/"))
    screenshot(browser, "mismatch-detail")
    approve = browser.find_element(
        By.XPATH, "//form[.//input[@name='action' and @value='approve']]//button"
    )
    approve.click()
    WebDriverWait(browser, 10).until(
        expected_conditions.text_to_be_present_in_element((By.TAG_NAME, "main"), "Resolved")
    )

    page = browser.find_element(By.TAG_NAME, "main").text
    assert "mismatch.resolved" in page or "resolved" in page.lower()
    mismatch.refresh_from_db()
    assert mismatch.state == MismatchState.RESOLVED
    link = dolibarr_client.stripe_link(thirdparty_id=thirdparty)
    assert link.customer_id == "cus_z0iJshAcT1cKgN"
    assert AuditEvent.objects.filter(
        action="mismatch.approved", actor=operator, target_id=str(mismatch.pk)
    ).exists()


def test_a_viewer_finds_no_action_buttons(browser, console, django_user_model, dolibarr_client):
    _member(django_user_model, FINANCE_VIEWER, "vera")
    mismatch, _ = _stripe_link_conflict(dolibarr_client)

    _log_in(browser, console, "vera", f"/console/mismatches/{mismatch.pk}/")

    assert mismatch.summary[:40] in browser.find_element(By.TAG_NAME, "main").text
    assert browser.find_elements(By.CSS_SELECTOR, "main form[method=post] button") == []
    browser.get(f"{console.url}/console/mismatches/")
    assert browser.find_elements(By.CSS_SELECTOR, "main form[method=post] button") == []
    assert browser.find_elements(By.CSS_SELECTOR, "main input[type=checkbox]") == []


def test_the_dashboard_shows_what_needs_attention(
    browser, console, django_user_model, dolibarr_client
):
    _member(django_user_model, FINANCE_VIEWER, "vera")
    _stripe_link_conflict(dolibarr_client)

    _log_in(browser, console, "vera", "/console/")
    screenshot(browser, "dashboard")

    main = browser.find_element(By.TAG_NAME, "main").text
    assert "Customer conflict" in main
    assert browser.find_elements(By.CSS_SELECTOR, "main svg")


def test_a_synced_invoice_downloads_as_a_pdf(browser, console, django_user_model, dolibarr_client):
    _member(django_user_model, FINANCE_VIEWER, "vera")
    thirdparty = dolibarr_client.create_thirdparty(
        name="Studio Kerlann", ref_ext="ap24-org-1", code_client="-1"
    )
    invoice_id = dolibarr_client.create_invoice(
        thirdparty_id=thirdparty,
        lines=[
            NewLine(qty=Decimal(1), subprice=Decimal("15"), tva_tx=Decimal("20"), description="x")
        ],
        ref_ext="ap24-purchase-1",
    )
    dolibarr_client.validate_invoice(invoice_id=invoice_id)
    record, _ = record_observe(
        source="aipress24", kind="purchase", external_id="1", snapshot={"id": "1"}
    )
    type(record).objects.filter(pk=record.pk).update(
        state=SyncState.SYNCED, dolibarr_kind="invoice", dolibarr_id=invoice_id
    )

    _log_in(browser, console, "vera", "/console/")
    answer = browser.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        fetch(arguments[0], {credentials: "same-origin"}).then(async (response) => {
            const bytes = new Uint8Array(await response.arrayBuffer());
            done({
                status: response.status,
                type: response.headers.get("Content-Type"),
                disposition: response.headers.get("Content-Disposition"),
                head: String.fromCharCode(...bytes.slice(0, 5)),

                size: bytes.length,
            });
        });
        """,
        f"{console.url}/console/invoices/{invoice_id}/pdf",
    )

    assert answer["status"] == 200
    assert answer["type"] == "application/pdf"
    assert answer["head"] == "%PDF-"
    assert answer["disposition"].startswith("attachment;")
    assert ".pdf" in answer["disposition"]
    assert answer["size"] > 500
