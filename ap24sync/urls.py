from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from reconciliation import health

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    # Before the admin's own URLs, whose catch-all view would answer first.
    path("admin/status/", admin.site.admin_view(health.status_page), name="status"),
    path("admin/", admin.site.urls),
    path("console/", include("reconciliation.console.urls")),
    path("i18n/", include("django.conf.urls.i18n")),
    path("", include("reconciliation.urls")),
    path("", include("reconciliation.invoice_pdf_urls")),
]
