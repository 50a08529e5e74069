"""Invoice PDF downloads in the console (`/console/invoices/<id>/pdf`, docs/invoice-pdfs.md),
through the Django test client, against the sandbox Dolibarr over HTTP: what is served, when
Dolibarr generates it, the cached copy while Dolibarr is down, who may download, the audit."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse
from django.utils import timezone

from reconciliation.connectors.dolibarr_types import Invoice, NewLine
from reconciliation.models import (
    ActorType,
    AuditEvent,
    BreakerState,
    CircuitBreaker,
    InvoicePdf,
    SyncRecord,
    SyncState,
)
from reconciliation.permissions import FINANCE_VIEWER
from reconciliation.resilience import breaker_for

pytestmark = pytest.mark.django_db


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def line(subprice: str = "20.00") -> NewLine:
    return NewLine(
        qty=Decimal(1), subprice=Decimal(subprice), tva_tx=Decimal(20), description="AP24 plan"
    )


def stored_path(ref: str) -> str:
    """Where the sandbox Dolibarr keeps an invoice's PDF (documents/facture/<ref>/<ref>.pdf)."""
    return f"facture/{ref}/{ref}.pdf"


def url(invoice_id: int) -> str:
    return reverse("invoice-pdf", args=[invoice_id])


@pytest.fixture(autouse=True)
def fresh_breaker():
    """The process's Dolibarr breaker remembers "closed" for a second; each test starts from
    the database's state (rolled back after every test)."""
    breaker_for("dolibarr").forget()
    yield
    breaker_for("dolibarr").forget()


@pytest.fixture
def dolibarr(settings, dolibarr_sandbox, dolibarr_api_key):
    """The console's Dolibarr is the sandbox; an unreachable one fails at once (no retries)."""
    settings.DOLIBARR_URL = dolibarr_sandbox.api_url
    settings.DOLIBARR_API_KEY = dolibarr_api_key
    settings.DOLIBARR_MAX_RETRIES = 0
    return dolibarr_sandbox


@pytest.fixture
def customer_id(dolibarr_client) -> int:
    return dolibarr_client.create_thirdparty(name="Le Petit Journal", ref_ext=unique("ap24-org"))


@pytest.fixture
def invoice(dolibarr, dolibarr_client, customer_id) -> Invoice:
    """A validated 24.00 invoice; the API's validate generates no PDF (README, "Payments")."""
    invoice_id = dolibarr_client.create_invoice(
        thirdparty_id=customer_id, lines=[line()], ref_ext=unique("in")
    )
    dolibarr_client.validate_invoice(invoice_id=invoice_id)
    return dolibarr_client.get_invoice(invoice_id=invoice_id)


def synced(invoice: Invoice, *, kind: str = "invoice") -> SyncRecord:
    return SyncRecord.objects.create(
        source="stripe",
        kind="invoice" if kind == "invoice" else "refund",
        external_id=unique("in" if kind == "invoice" else "re"),
        state=SyncState.SYNCED,
        dolibarr_kind=kind,
        dolibarr_id=invoice.id,
        dolibarr_ref=invoice.ref or "",
        synced_at=timezone.now(),
    )


@pytest.fixture
def record(invoice) -> SyncRecord:
    return synced(invoice)


@pytest.fixture
def viewer(django_user_model):
    user = django_user_model.objects.create_user("vera", password="pw", is_staff=True)
    user.groups.add(Group.objects.get(name=FINANCE_VIEWER))
    return user


@pytest.fixture
def viewer_client(client, viewer):
    client.force_login(viewer)
    return client


# --- what is served -------------------------------------------------------------------------


def test_a_synced_validated_invoice_downloads_as_the_pdf_dolibarr_stored(
    viewer_client, dolibarr_client, invoice, record
):
    stored = dolibarr_client.build_invoice_pdf(invoice_ref=invoice.ref).content
    answer = viewer_client.get(url(invoice.id))
    assert answer.status_code == 200
    assert answer.content == stored
    assert answer.content.startswith(b"%PDF-")
    assert answer["Content-Type"] == "application/pdf"
    assert answer["Content-Disposition"] == f'attachment; filename="{invoice.ref}.pdf"'


def test_a_fresh_download_is_not_marked_cached(viewer_client, invoice, record):
    answer = viewer_client.get(url(invoice.id))
    assert answer["X-Ap24sync-Cached"] == "no"
    assert "X-Ap24sync-Fetched-At" not in answer


def test_the_pdf_is_never_kept_by_a_shared_cache(viewer_client, invoice, record):
    answer = viewer_client.get(url(invoice.id))
    assert answer["Cache-Control"] == "private, no-store"


def test_a_pdf_missing_in_dolibarr_is_generated_then_served(
    viewer_client, dolibarr, invoice, record
):
    assert stored_path(invoice.ref) not in dolibarr.store.files
    answer = viewer_client.get(url(invoice.id))
    assert answer.status_code == 200
    assert answer.content == dolibarr.store.files[stored_path(invoice.ref)].content
    assert answer.content.startswith(b"%PDF-")


def test_a_synced_credit_note_downloads_under_its_own_number(
    viewer_client, dolibarr_client, customer_id, invoice
):
    credit_note_id = dolibarr_client.create_credit_note(
        thirdparty_id=customer_id,
        source_invoice_id=invoice.id,
        lines=[line("5.00")],
        ref_ext=unique("re"),
    )
    dolibarr_client.validate_invoice(invoice_id=credit_note_id)
    credit_note = dolibarr_client.get_invoice(invoice_id=credit_note_id)
    synced(credit_note, kind="credit_note")
    answer = viewer_client.get(url(credit_note_id))
    assert answer.status_code == 200
    assert answer["Content-Disposition"] == f'attachment; filename="{credit_note.ref}.pdf"'
    assert credit_note.ref.startswith("AV")


def test_a_draft_invoice_is_refused_because_it_has_no_number(
    viewer_client, dolibarr, dolibarr_client, customer_id
):
    draft_id = dolibarr_client.create_invoice(
        thirdparty_id=customer_id, lines=[line()], ref_ext=unique("in")
    )
    synced(dolibarr_client.get_invoice(invoice_id=draft_id))
    answer = viewer_client.get(url(draft_id))
    assert answer.status_code == 409
    assert b"is a draft in Dolibarr: it has no definitive number yet" in answer.content
    assert not InvoicePdf.objects.exists()


def test_a_file_that_is_not_a_pdf_is_refused_and_not_kept(
    viewer_client, dolibarr_client, invoice, record
):
    dolibarr_client.upload_document(
        modulepart="invoice",
        ref=invoice.ref,
        filename=f"{invoice.ref}.pdf",
        content=b"<html>not a pdf</html>",
    )
    answer = viewer_client.get(url(invoice.id))
    assert answer.status_code == 502
    assert b"is not a PDF" in answer.content
    assert not InvoicePdf.objects.exists()


# --- the cached copy ------------------------------------------------------------------------


def test_every_successful_download_replaces_the_kept_copy(viewer_client, invoice, record):
    viewer_client.get(url(invoice.id))
    first = InvoicePdf.objects.get()
    viewer_client.get(url(invoice.id))
    second = InvoicePdf.objects.get()
    assert second.pk == first.pk
    assert second.fetched_at > first.fetched_at
    assert (second.invoice_ref, second.filename) == (invoice.ref, f"{invoice.ref}.pdf")
    assert second.size == len(bytes(second.content))


def test_with_dolibarr_down_the_last_downloaded_copy_is_served_marked_cached(
    viewer_client, dolibarr, invoice, record
):
    downloaded = viewer_client.get(url(invoice.id)).content
    fetched_at = InvoicePdf.objects.get().fetched_at
    dolibarr.stop()
    answer = viewer_client.get(url(invoice.id))
    assert answer.status_code == 200
    assert answer.content == downloaded
    assert answer["X-Ap24sync-Cached"] == "yes"
    assert answer["X-Ap24sync-Fetched-At"] == fetched_at.isoformat(timespec="seconds").replace(
        "+00:00", "Z"
    )
    assert answer["Content-Disposition"] == f'attachment; filename="{invoice.ref}.pdf"'


def test_with_the_breaker_open_the_copy_is_served_without_calling_dolibarr(
    viewer_client, dolibarr, invoice, record
):
    viewer_client.get(url(invoice.id))
    CircuitBreaker.objects.update_or_create(
        system="dolibarr",
        defaults={
            "state": BreakerState.OPEN,
            "consecutive_failures": 5,
            "opened_at": timezone.now(),
        },
    )
    breaker_for("dolibarr").forget()
    calls_before = dolibarr.request_count
    answer = viewer_client.get(url(invoice.id))
    assert answer["X-Ap24sync-Cached"] == "yes"
    assert dolibarr.request_count == calls_before


def test_with_dolibarr_down_and_no_copy_the_page_says_so_with_503(
    viewer_client, dolibarr, invoice, record
):
    dolibarr.stop()
    answer = viewer_client.get(url(invoice.id))
    assert answer.status_code == 503
    assert answer["Retry-After"] == "60"
    assert (
        f"Dolibarr is unreachable and no copy of {invoice.ref} was downloaded before"
        in answer.content.decode()
    )


# --- which invoices, and who ----------------------------------------------------------------


def test_an_invoice_the_console_did_not_sync_is_not_found(viewer_client, dolibarr, invoice):
    answer = viewer_client.get(url(invoice.id))
    assert answer.status_code == 404
    assert dolibarr.store.files.get(stored_path(invoice.ref)) is None


def test_a_record_of_another_kind_with_that_id_does_not_open_the_invoice(viewer_client, invoice):
    SyncRecord.objects.create(
        source="aipress24",
        kind="organisation",
        external_id="42",
        state=SyncState.SYNCED,
        dolibarr_kind="thirdparty",
        dolibarr_id=invoice.id,
    )
    assert viewer_client.get(url(invoice.id)).status_code == 404


def test_a_viewer_can_download(viewer_client, invoice, record):
    assert viewer_client.get(url(invoice.id)).status_code == 200


def test_an_anonymous_visitor_is_sent_to_the_login_page(client, dolibarr, invoice, record):
    calls_before = dolibarr.request_count
    answer = client.get(url(invoice.id))
    assert answer.status_code == 302
    assert answer["Location"].startswith(reverse("admin:login"))
    assert dolibarr.request_count == calls_before


def test_a_user_without_the_view_permission_is_forbidden(
    client, django_user_model, invoice, record
):
    client.force_login(django_user_model.objects.create_user("nobody", is_staff=True))
    assert client.get(url(invoice.id)).status_code == 403


def test_a_post_is_refused(viewer_client, invoice, record):
    assert viewer_client.post(url(invoice.id)).status_code == 405


# --- the audit trail ------------------------------------------------------------------------


def test_the_download_is_audited_with_the_actor(viewer_client, viewer, invoice, record):
    viewer_client.get(url(invoice.id))
    event = AuditEvent.objects.get(action="invoice_pdf.downloaded")
    assert (event.actor, event.actor_type, event.actor_label) == (viewer, ActorType.USER, "vera")
    assert (event.target_type, event.target_id) == ("dolibarr_invoice", str(invoice.id))
    assert event.after["invoice_ref"] == invoice.ref
    assert event.after["dolibarr_invoice_id"] == invoice.id
    assert event.after["cached"] is False
    assert event.after["sync_record_id"] == record.pk


def test_a_cached_download_is_audited_as_cached(viewer_client, dolibarr, invoice, record):
    viewer_client.get(url(invoice.id))
    dolibarr.stop()
    viewer_client.get(url(invoice.id))
    latest = AuditEvent.objects.filter(action="invoice_pdf.downloaded").first()
    assert latest.after["cached"] is True


def test_a_refused_download_is_not_audited_as_downloaded(viewer_client, dolibarr, invoice, record):
    dolibarr.stop()
    viewer_client.get(url(invoice.id))
    assert not AuditEvent.objects.filter(action="invoice_pdf.downloaded").exists()
