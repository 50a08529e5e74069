"""The console's pages (docs/console.md), under /console/."""

from __future__ import annotations

from django.urls import path

from reconciliation.console import dashboard, mismatches, records, views

app_name = "console"

urlpatterns = [
    path("", dashboard.dashboard, name="home"),
    path("mismatches/", mismatches.mismatch_list, name="mismatches"),
    path("mismatches/bulk/", mismatches.mismatch_bulk, name="mismatches-bulk"),
    path("mismatches/<int:pk>/", mismatches.mismatch_detail, name="mismatch"),
    path("mismatches/<int:pk>/act/", mismatches.mismatch_act, name="mismatch-act"),
    path("audit/", views.audit_list, name="audit"),
    path("audit/export.csv", views.audit_export, name="audit-export"),
    path("runs/", views.run_list, name="runs"),
    path("runs/run/", views.run_now, name="run-now"),
    path("records/", records.record_list, name="records"),
    path("records/<int:pk>/", records.record_detail, name="record"),
    path("records/<int:pk>/retry/", records.record_retry, name="record-retry"),
]
