"""Invoice PDF downloads (docs/invoice-pdfs.md): the console's page and Aipress24's API.

Included at the root of the site (`ap24sync/urls.py`), hence the full paths; the names carry no
namespace: `reverse("invoice-pdf", args=[dolibarr_invoice_id])`,
`reverse("api-invoice-pdf", args=[invoice_ref])`.
"""

from __future__ import annotations

from django.urls import path

from reconciliation import invoice_pdf_views

urlpatterns = [
    path(
        "console/invoices/<int:dolibarr_invoice_id>/pdf",
        invoice_pdf_views.invoice_pdf_download,
        name="invoice-pdf",
    ),
    path(
        "api/v1/invoices/<str:invoice_ref>/pdf",
        invoice_pdf_views.api_invoice_pdf,
        name="api-invoice-pdf",
    ),
]
