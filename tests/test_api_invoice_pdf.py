"""Aipress24's invoice PDF API (`GET /api/v1/invoices/<ref>/pdf`, docs/invoice-pdfs.md), its
per-customer tokens and the `api_token` command, through the Django test client against the
sandbox Dolibarr over HTTP; and `DolibarrClient.find_invoice_by_ref`, which the API relies on."""

from __future__ import annotations

import hashlib
import io
import json
import re
import uuid
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.urls import reverse

from reconciliation.connectors.dolibarr_types import Invoice, NewLine
from reconciliation.invoice_pdfs import IssuedToken, api_token_create, api_token_revoke
from reconciliation.models import ActorType, ApiClientToken, AuditEvent, InvoicePdf
from reconciliation.resilience import breaker_for

pytestmark = pytest.mark.django_db

NOT_FOUND = {"error": "no invoice with this reference for this client"}


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def url(ref: str) -> str:
    return reverse("api-invoice-pdf", args=[ref])


def bearer(token: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


@pytest.fixture(autouse=True)
def fresh_breaker():
    breaker_for("dolibarr").forget()
    yield
    breaker_for("dolibarr").forget()


@pytest.fixture
def dolibarr(settings, dolibarr_sandbox, dolibarr_api_key):
    """The API's Dolibarr is the sandbox; an unreachable one fails at once (no retries)."""
    settings.DOLIBARR_URL = dolibarr_sandbox.api_url
    settings.DOLIBARR_API_KEY = dolibarr_api_key
    settings.DOLIBARR_MAX_RETRIES = 0
    return dolibarr_sandbox


class Customer:
    """A thirdparty in the sandbox Dolibarr with one validated and one draft invoice."""

    def __init__(self, client, name: str) -> None:
        self.ref_ext = unique("ap24-org")
        self.id = client.create_thirdparty(name=name, ref_ext=self.ref_ext)
        self.invoice = self._invoice(client, validate=True)
        self.draft = self._invoice(client, validate=False)

    def _invoice(self, client, *, validate: bool) -> Invoice:
        invoice_id = client.create_invoice(
            thirdparty_id=self.id,
            lines=[
                NewLine(
                    qty=Decimal(1),
                    subprice=Decimal("20.00"),
                    tva_tx=Decimal(20),
                    description="AP24 plan",
                )
            ],
            ref_ext=unique("in"),
        )
        if validate:
            client.validate_invoice(invoice_id=invoice_id)
        return client.get_invoice(invoice_id=invoice_id)

    def token(self) -> IssuedToken:
        return api_token_create(
            name=f"Aipress24 for {self.ref_ext}",
            thirdparty_id=self.id,
            thirdparty_ref_ext=self.ref_ext,
        )


@pytest.fixture
def alice(dolibarr, dolibarr_client) -> Customer:
    return Customer(dolibarr_client, "Alice Presse")


@pytest.fixture
def bob(dolibarr, dolibarr_client) -> Customer:
    return Customer(dolibarr_client, "Bob Médias")


@pytest.fixture
def alice_token(alice) -> IssuedToken:
    return alice.token()


def api_token(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("api_token", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


# --- serving a customer's own invoice --------------------------------------------------------


def test_a_valid_token_gets_its_own_customers_invoice_pdf(client, alice, alice_token):
    answer = client.get(url(alice.invoice.ref), **bearer(alice_token.token))
    assert answer.status_code == 200
    assert answer.content.startswith(b"%PDF-")
    assert answer["Content-Type"] == "application/pdf"
    assert answer["Content-Disposition"] == f'attachment; filename="{alice.invoice.ref}.pdf"'
    assert answer["X-Ap24sync-Cached"] == "no"


def test_a_served_pdf_notes_when_the_token_was_last_used(client, alice, alice_token):
    assert alice_token.row.last_used_at is None
    client.get(url(alice.invoice.ref), **bearer(alice_token.token))
    alice_token.row.refresh_from_db()
    assert alice_token.row.last_used_at is not None


def test_a_served_pdf_is_audited_under_the_tokens_prefix(client, alice, alice_token):
    client.get(url(alice.invoice.ref), **bearer(alice_token.token))
    event = AuditEvent.objects.get(action="invoice_pdf.served_to_api")
    prefix = alice_token.row.token_prefix
    assert (event.actor_type, event.actor_label) == (ActorType.CLIENT, f"api token {prefix}")
    assert (event.target_type, event.target_id) == ("dolibarr_invoice", str(alice.invoice.id))
    assert event.after["invoice_ref"] == alice.invoice.ref
    assert event.after["cached"] is False
    assert alice_token.token not in json.dumps([event.before, event.after, event.actor_label])


def test_with_dolibarr_down_the_customers_last_copy_is_served_marked_cached(
    client, dolibarr, alice, alice_token
):
    downloaded = client.get(url(alice.invoice.ref), **bearer(alice_token.token)).content
    dolibarr.stop()
    answer = client.get(url(alice.invoice.ref), **bearer(alice_token.token))
    assert answer.status_code == 200
    assert answer.content == downloaded
    assert answer["X-Ap24sync-Cached"] == "yes"
    assert "X-Ap24sync-Fetched-At" in answer


def test_with_dolibarr_down_and_no_copy_the_answer_is_503(client, dolibarr, alice, alice_token):
    dolibarr.stop()
    answer = client.get(url(alice.invoice.ref), **bearer(alice_token.token))
    assert answer.status_code == 503
    assert answer.json() == {
        "error": f"Dolibarr is unreachable and no copy of {alice.invoice.ref} was downloaded "
        "before; try again later"
    }


# --- never another customer's -----------------------------------------------------------------


def test_another_customers_invoice_is_not_found_with_the_same_body_as_a_missing_one(
    client, alice, bob, alice_token
):
    others = client.get(url(bob.invoice.ref), **bearer(alice_token.token))
    missing = client.get(url("FA9999-9999"), **bearer(alice_token.token))
    assert (others.status_code, others.json()) == (404, NOT_FOUND)
    assert (missing.status_code, missing.json()) == (404, NOT_FOUND)
    assert others.content == missing.content


def test_another_customers_cached_copy_is_not_served_while_dolibarr_is_down(
    client, dolibarr, alice, bob, alice_token
):
    bob_token = bob.token()
    client.get(url(bob.invoice.ref), **bearer(bob_token.token))
    assert InvoicePdf.objects.filter(invoice_ref=bob.invoice.ref).exists()
    dolibarr.stop()
    others = client.get(url(bob.invoice.ref), **bearer(alice_token.token))
    assert others.status_code == 503
    assert not others.content.startswith(b"%PDF-")


def test_a_draft_invoice_is_not_found(client, alice, alice_token):
    assert alice.draft.ref.startswith("(PROV")
    answer = client.get(url(alice.draft.ref), **bearer(alice_token.token))
    assert (answer.status_code, answer.json()) == (404, NOT_FOUND)


def test_a_malformed_ref_is_not_found_without_asking_dolibarr(client, dolibarr, alice, alice_token):
    calls_before = dolibarr.request_count
    answer = client.get(url("FA2612-0001'or'1"), **bearer(alice_token.token))
    assert (answer.status_code, answer.json()) == (404, NOT_FOUND)
    assert dolibarr.request_count == calls_before


# --- tokens -----------------------------------------------------------------------------------


def test_a_request_without_a_token_is_unauthorized(client, alice):
    answer = client.get(url(alice.invoice.ref))
    assert answer.status_code == 401
    assert answer.json() == {"error": "missing bearer token: send Authorization: Bearer <token>"}
    assert answer["WWW-Authenticate"].startswith("Bearer")


def test_a_request_with_another_scheme_is_unauthorized(client, alice, alice_token):
    answer = client.get(url(alice.invoice.ref), HTTP_AUTHORIZATION=f"Basic {alice_token.token}")
    assert answer.status_code == 401


def test_an_unknown_token_is_unauthorized(client, alice, alice_token):
    answer = client.get(url(alice.invoice.ref), **bearer("0" * 64))
    assert answer.status_code == 401
    assert answer.json() == {"error": "invalid or revoked token"}
    assert 'error="invalid_token"' in answer["WWW-Authenticate"]


def test_a_revoked_token_is_unauthorized(client, alice, alice_token):
    api_token_revoke(prefix=alice_token.row.token_prefix)
    answer = client.get(url(alice.invoice.ref), **bearer(alice_token.token))
    assert answer.status_code == 401
    assert answer.json() == {"error": "invalid or revoked token"}


def test_the_token_is_checked_before_dolibarr_is_asked(client, dolibarr, alice):
    calls_before = dolibarr.request_count
    assert client.get(url(alice.invoice.ref), **bearer("f" * 64)).status_code == 401
    assert dolibarr.request_count == calls_before


def test_the_token_is_stored_only_hashed(alice_token):
    row = ApiClientToken.objects.get()
    assert row.token_hash == hashlib.sha256(alice_token.token.encode()).hexdigest()
    assert row.token_prefix == alice_token.token[:8]
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            cursor.execute(f'SELECT * FROM "{table}"')  # noqa: S608 - names from introspection
            for values in cursor.fetchall():
                assert alice_token.token not in repr(values), f"plaintext token in {table}"


def test_a_post_is_refused_with_a_json_405(client, alice, alice_token):
    answer = client.post(url(alice.invoice.ref), **bearer(alice_token.token))
    assert answer.status_code == 405
    assert answer.json()["error"].startswith("method POST not allowed")


# --- the api_token command ------------------------------------------------------------------


def test_the_command_prints_the_token_once_and_creates_its_row(alice):
    out, err = api_token("create", "--thirdparty-ref-ext", alice.ref_ext, "--name", "Org 42")
    token = out.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", token)
    assert token not in err
    row = ApiClientToken.objects.get()
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert (row.name, row.thirdparty_id, row.thirdparty_ref_ext) == (
        "Org 42",
        alice.id,
        alice.ref_ext,
    )
    assert row.revoked_at is None


def test_the_created_token_opens_its_customers_invoices(client, alice):
    out, _ = api_token("create", "--thirdparty-ref-ext", alice.ref_ext, "--name", "Org 42")
    answer = client.get(url(alice.invoice.ref), **bearer(out.strip()))
    assert answer.status_code == 200


def test_creating_a_token_is_audited_without_the_token(alice):
    out, _ = api_token("create", "--thirdparty-ref-ext", alice.ref_ext, "--name", "Org 42")
    event = AuditEvent.objects.get(action="api_token.created")
    assert event.after["token_prefix"] == out.strip()[:8]
    assert event.after["thirdparty_id"] == alice.id
    assert "via manage.py api_token create" in event.actor_label
    recorded = json.dumps([event.before, event.after, event.target_label, event.actor_label])
    assert out.strip() not in recorded


def test_the_command_refuses_a_ref_ext_dolibarr_does_not_know(dolibarr):
    with pytest.raises(CommandError, match="Dolibarr has no thirdparty with ref_ext 'ap24-org-0'"):
        api_token("create", "--thirdparty-ref-ext", "ap24-org-0", "--name", "Nobody")
    assert not ApiClientToken.objects.exists()


def test_revoking_with_the_command_refuses_the_token_from_then_on(client, alice, alice_token):
    prefix = alice_token.row.token_prefix
    out, _ = api_token("revoke", prefix)
    assert f"API token {prefix}" in out
    assert ApiClientToken.objects.get().revoked_at is not None
    answer = client.get(url(alice.invoice.ref), **bearer(alice_token.token))
    assert answer.status_code == 401


def test_revoking_is_audited(alice_token):
    api_token("revoke", alice_token.row.token_prefix)
    event = AuditEvent.objects.get(action="api_token.revoked")
    assert event.before["revoked_at"] is None
    assert event.after["revoked_at"] is not None
    assert event.after["token_prefix"] == alice_token.row.token_prefix


def test_revoking_an_unknown_prefix_is_a_one_line_error(db):
    with pytest.raises(CommandError, match="no API token has the prefix 'deadbeef'"):
        api_token("revoke", "deadbeef")


def test_revoking_twice_says_it_was_already_revoked(alice_token):
    api_token("revoke", alice_token.row.token_prefix)
    with pytest.raises(CommandError, match="was already revoked"):
        api_token("revoke", alice_token.row.token_prefix)


def test_the_list_shows_prefixes_and_never_a_token(alice, alice_token):
    out, _ = api_token("list")
    assert alice_token.row.token_prefix in out
    assert alice.ref_ext in out
    assert alice_token.token not in out


# --- DolibarrClient.find_invoice_by_ref -------------------------------------------------------


def test_find_invoice_by_ref_finds_the_numbered_invoice(dolibarr_client, alice):
    found = dolibarr_client.find_invoice_by_ref(ref=alice.invoice.ref)
    assert (found.id, found.thirdparty_id) == (alice.invoice.id, alice.id)


def test_find_invoice_by_ref_without_hit_is_none(dolibarr_client, dolibarr):
    assert dolibarr_client.find_invoice_by_ref(ref="FA9999-9999") is None


def test_find_invoice_by_ref_matches_the_exact_case_only(dolibarr_client, alice):
    # The table's collation ignores case: Dolibarr answers the row, the client drops it.
    assert dolibarr_client.find_invoice_by_ref(ref=alice.invoice.ref.lower()) is None
