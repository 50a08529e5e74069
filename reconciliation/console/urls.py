"""The console's pages (docs/console.md), under /console/."""

from __future__ import annotations

from django.urls import path
from django.views.generic import RedirectView

from reconciliation.console import views

app_name = "console"

urlpatterns = [
    # No dashboard yet: the console opens on the audit trail.
    path("", RedirectView.as_view(pattern_name="console:audit", permanent=False), name="home"),
    path("audit/", views.audit_list, name="audit"),
    path("audit/export.csv", views.audit_export, name="audit-export"),
    path("runs/", views.run_list, name="runs"),
    path("runs/run/", views.run_now, name="run-now"),
]
