"""Invoice PDF downloads (docs/invoice-pdfs.md): the console's, for finance staff, and the API's,
for Aipress24 with a per-customer token. Both call `reconciliation.invoice_pdfs`, so both serve
the last downloaded copy, marked cached, while Dolibarr is down.

`GET /console/invoices/<dolibarr invoice id>/pdf` (login and `view_syncrecord`; only invoices and
credit notes the console synced):

| situation | answer |
| --- | --- |
| not logged in | 302 to the admin login |
| logged in without `reconciliation.view_syncrecord` | 403 |
| no synced record maps to that Dolibarr invoice, or Dolibarr has no such invoice | 404 |
| the invoice is a draft in Dolibarr | 409 |
| Dolibarr answered with an error or with bytes that are not a PDF | 502 |
| Dolibarr unreachable (or its breaker open) and no copy kept; no Dolibarr configured | 503 |
| otherwise | 200, the PDF as an attachment, `X-Ap24sync-Cached: yes|no` |

`GET /api/v1/invoices/<invoice ref>/pdf` with `Authorization: Bearer <token>`; every error is
JSON `{"error": "..."}`:

| situation | answer |
| --- | --- |
| no `Authorization: Bearer` header | 401, `WWW-Authenticate: Bearer` |
| a token that is unknown or revoked | 401, `WWW-Authenticate: Bearer error="invalid_token"` |
| no such invoice, another customer's, a draft, a malformed ref | 404, always the same body |
| Dolibarr answered with an error or with bytes that are not a PDF | 502 |
| Dolibarr unreachable and no copy kept of this customer's invoice; no Dolibarr configured | 503 |
| a method other than GET / HEAD | 405 |
| otherwise | 200, the PDF as an attachment, `X-Ap24sync-Cached: yes|no` |

Both write their audit event only once a PDF is sent. Neither runs in a transaction: the
network calls come first, then short writes (the copy, `last_used_at`, the audit event).
"""

from __future__ import annotations

import logging
from datetime import UTC

from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.utils.html import format_html
from django.utils.http import content_disposition_header
from django.views.decorators.debug import sensitive_variables
from django.views.decorators.http import require_safe

from reconciliation.audit import audit_record
from reconciliation.errors import ConfigurationError
from reconciliation.invoice_pdfs import (
    INVOICE_REF,
    InvoiceIsDraft,
    InvoiceNotFound,
    InvoicePdfRefused,
    InvoicePdfUnavailable,
    PdfResult,
    api_token_authenticate,
    customer_invoice_pdf,
    invoice_pdf,
)
from reconciliation.models import ActorType, SyncRecord
from reconciliation.permissions import permission_required_403

logger = logging.getLogger(__name__)

# The Dolibarr kinds of the records whose PDF the console hands out.
INVOICE_KINDS = ("invoice", "credit_note")
CACHED_HEADER = "X-Ap24sync-Cached"
FETCHED_AT_HEADER = "X-Ap24sync-Fetched-At"
# How long a client should wait before asking again when Dolibarr is down (seconds): about the
# circuit breaker's cool-down.
RETRY_AFTER_SECONDS = 60

API_NOT_FOUND = "no invoice with this reference for this client"
API_MISSING_CREDENTIALS = "missing bearer token: send Authorization: Bearer <token>"
API_REFUSED_CREDENTIALS = "invalid or revoked token"


def _pdf_response(result: PdfResult) -> HttpResponse:
    response = HttpResponse(result.content, content_type=result.content_type)
    response["Content-Disposition"] = content_disposition_header(
        as_attachment=True, filename=result.filename
    )
    response["Content-Length"] = str(len(result.content))
    # An invoice is personal data: no shared cache, no copy on disk.
    response["Cache-Control"] = "private, no-store"
    response[CACHED_HEADER] = "yes" if result.cached else "no"
    if result.cached:
        response[FETCHED_AT_HEADER] = (
            result.fetched_at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        )
    return response


def _pdf_facts(result: PdfResult) -> dict:
    return {
        "dolibarr_invoice_id": result.invoice_id,
        "invoice_ref": result.invoice_ref,
        "cached": result.cached,
        "fetched_at": result.fetched_at,
        "size": len(result.content),
        "sha256": result.sha256,
    }


# --- console ----------------------------------------------------------------------------------


def _error_page(status: int, title: str, message: str) -> HttpResponse:
    page = format_html(
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{}</title></head>'
        "<body><h1>{}</h1><p>{}</p></body></html>",
        title,
        title,
        message,
    )
    response = HttpResponse(page, status=status)
    if status == 503:
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


@require_safe
@transaction.non_atomic_requests
@permission_required_403("reconciliation.view_syncrecord")
def invoice_pdf_download(request: HttpRequest, dolibarr_invoice_id: int) -> HttpResponse:
    record = (
        SyncRecord.objects.filter(dolibarr_kind__in=INVOICE_KINDS, dolibarr_id=dolibarr_invoice_id)
        .only("pk", "dolibarr_ref")
        .first()
    )
    if record is None:
        raise Http404("no synced invoice has this Dolibarr id")
    try:
        result = invoice_pdf(dolibarr_invoice_id)
    except InvoiceNotFound as exc:
        return _error_page(404, "Invoice not found", str(exc))
    except InvoiceIsDraft as exc:
        return _error_page(409, "The invoice is a draft", str(exc))
    except InvoicePdfRefused as exc:
        logger.warning("Invoice PDF %s refused: %s", dolibarr_invoice_id, exc)
        return _error_page(502, "Dolibarr gave no PDF", str(exc))
    except InvoicePdfUnavailable:
        known = record.dolibarr_ref if INVOICE_REF.fullmatch(record.dolibarr_ref) else ""
        return _error_page(
            503,
            "The PDF cannot be downloaded now",
            f"Dolibarr is unreachable and no copy of {known or f'invoice {dolibarr_invoice_id}'} "
            "was downloaded before; try again once Dolibarr is back",
        )
    except ConfigurationError as exc:
        return _error_page(503, "The PDF cannot be downloaded now", str(exc))
    audit_record(
        action="invoice_pdf.downloaded",
        actor=request.user,
        target=("dolibarr_invoice", str(result.invoice_id)),
        after={**_pdf_facts(result), "sync_record_id": record.pk},
    )
    return _pdf_response(result)


# --- API for Aipress24 ------------------------------------------------------------------------


def _api_error(status: int, message: str) -> JsonResponse:
    response = JsonResponse({"error": message}, status=status)
    response["Cache-Control"] = "no-store"
    if status == 503:
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def _unauthorized(message: str, *, invalid: bool) -> JsonResponse:
    response = _api_error(401, message)
    response["WWW-Authenticate"] = (
        'Bearer realm="ap24sync", error="invalid_token"' if invalid else 'Bearer realm="ap24sync"'
    )
    return response


@sensitive_variables("header", "token")
def _bearer_token(request: HttpRequest) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


@transaction.non_atomic_requests
@sensitive_variables("token")
def api_invoice_pdf(request: HttpRequest, invoice_ref: str) -> HttpResponse:
    if request.method not in ("GET", "HEAD"):
        response = _api_error(405, f"method {request.method} not allowed: use GET")
        response["Allow"] = "GET, HEAD"
        return response
    token = _bearer_token(request)
    if token is None:
        return _unauthorized(API_MISSING_CREDENTIALS, invalid=False)
    client_token = api_token_authenticate(token=token)
    if client_token is None:
        return _unauthorized(API_REFUSED_CREDENTIALS, invalid=True)
    try:
        result = customer_invoice_pdf(
            invoice_ref=invoice_ref, thirdparty_id=client_token.thirdparty_id
        )
    except (InvoiceNotFound, InvoiceIsDraft):
        return _api_error(404, API_NOT_FOUND)
    except InvoicePdfRefused as exc:
        logger.warning("Invoice PDF %s refused to API client: %s", invoice_ref, exc)
        return _api_error(502, "Dolibarr did not give the PDF of this invoice; try again later")
    except InvoicePdfUnavailable:
        return _api_error(
            503,
            f"Dolibarr is unreachable and no copy of {invoice_ref} was downloaded before; "
            "try again later",
        )
    except ConfigurationError as exc:
        logger.error("Invoice PDF API answered 503: %s", exc)
        return _api_error(503, "the invoice service is not configured; try again later")
    audit_record(
        action="invoice_pdf.served_to_api",
        actor_type=ActorType.CLIENT,
        actor_label=f"api token {client_token.token_prefix}",
        target=("dolibarr_invoice", str(result.invoice_id)),
        after={**_pdf_facts(result), "api_token_id": client_token.pk},
    )
    return _pdf_response(result)
