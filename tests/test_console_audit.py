"""The console's audit trail (`/console/audit/`) and its CSV export: who may read it, what
the filters select, the page's query budget, and the export's format."""

import csv
import io
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from reconciliation.audit import audit_event, audit_record, audit_records
from reconciliation.models import ActorType, AuditEvent, SyncRecord, SyncState
from reconciliation.permissions import FINANCE_VIEWER

pytestmark = pytest.mark.django_db

URL = "/console/audit/"
EXPORT = "/console/audit/export.csv"
# Session, user, permissions, role, the two filters' choices, the page's rows, and headroom.
PAGE_QUERY_BUDGET = 9
HEADER = ["time", "actor", "action", "target type", "target id", "reason", "before", "after"]


@pytest.fixture
def viewer(django_user_model):
    user = django_user_model.objects.create_user("vera", password="pw", is_staff=True)
    user.groups.add(Group.objects.get(name=FINANCE_VIEWER))
    return user


@pytest.fixture
def viewer_client(client, viewer):
    client.force_login(viewer)
    return client


@pytest.fixture
def record():
    return SyncRecord.objects.create(
        source="stripe", kind="invoice", external_id="in_42", state=SyncState.FAILED
    )


@pytest.fixture
def events(viewer, record):
    """Three events on three days at noon (Paris): a person's retry, the system's sync, a
    client's push."""
    noon = timezone.make_aware(datetime(2026, 3, 10, 12, 0))
    made = [
        audit_event(
            action="record.retry_requested",
            actor=viewer,
            target=record,
            before={"state": "failed"},
            after={"state": "pending"},
            reason="Retry from the console",
        ),
        audit_event(action="record.synced", target=record, after={"dolibarr_id": 7}),
        audit_event(
            action="event.received",
            actor_type=ActorType.CLIENT,
            actor_label="aipress24",
            target=("inboundevent", "evt_1"),
        ),
    ]
    for days, event in enumerate(made):
        event.occurred_at = noon + timedelta(days=days)
        event.save()
    return made


def _rows(page) -> list[str]:
    """The actions shown on the page, in order."""
    return [row.record.action for row in page.context["table"].page.object_list]


def _csv(answer) -> list[list[str]]:
    body = b"".join(answer.streaming_content).decode("utf-8")
    return list(csv.reader(io.StringIO(body.removeprefix("\ufeff"))))


# --- Access ---------------------------------------------------------------------------------


def test_an_anonymous_visitor_is_sent_to_the_admin_login(client):
    answer = client.get(URL)
    assert answer.status_code == 302
    assert answer["Location"].startswith("/admin/login/?next=/console/audit/")


def test_a_user_without_the_view_permission_is_forbidden(client, django_user_model):
    client.force_login(django_user_model.objects.create_user("nobody", is_staff=True))
    assert client.get(URL).status_code == 403


def test_a_viewer_sees_the_audit_trail_with_its_events_newest_first(viewer_client, events):
    page = viewer_client.get(URL)
    assert page.status_code == 200
    assert _rows(page) == ["event.received", "record.synced", "record.retry_requested"]
    assert "Retry from the console" in page.content.decode()


def test_the_target_links_to_its_admin_change_page(viewer_client, events, record):
    page = viewer_client.get(URL).content.decode()
    assert f"/admin/reconciliation/syncrecord/{record.pk}/change/" in page


def test_the_page_shows_a_short_before_after_summary(viewer_client, events):
    assert "state: failed → pending" in viewer_client.get(URL).content.decode()


def test_a_post_to_the_audit_trail_is_refused(viewer_client, events):
    assert viewer_client.post(URL, {"action": "record.synced"}).status_code == 405
    assert AuditEvent.objects.count() == 3


def test_a_post_to_the_export_is_refused(viewer_client, events):
    assert viewer_client.post(EXPORT).status_code == 405


# --- Filters --------------------------------------------------------------------------------


def test_filtering_by_action_keeps_that_action(viewer_client, events):
    page = viewer_client.get(URL, {"action": "record.synced"})
    assert _rows(page) == ["record.synced"]


def test_the_action_choices_are_the_recorded_actions(viewer_client, events):
    field = viewer_client.get(URL).context["filter"].form.fields["action"]
    assert [value for value, _label in field.choices if value] == [
        "event.received",
        "record.retry_requested",
        "record.synced",
    ]


def test_filtering_by_actor_matches_part_of_the_name(viewer_client, events):
    page = viewer_client.get(URL, {"actor": "ER"})
    assert _rows(page) == ["record.retry_requested"]


def test_filtering_by_actor_finds_the_system_by_its_label(viewer_client, events):
    page = viewer_client.get(URL, {"actor": "ap24sync"})
    assert _rows(page) == ["record.synced"]


def test_filtering_by_object_keeps_that_objects_events(viewer_client, events, record):
    page = viewer_client.get(URL, {"target_type": "syncrecord", "target_id": str(record.pk)})
    assert _rows(page) == ["record.synced", "record.retry_requested"]


def test_filtering_by_dates_keeps_the_days_between_them_included(viewer_client, events):
    page = viewer_client.get(URL, {"date_from": "2026-03-11", "date_to": "2026-03-11"})
    assert _rows(page) == ["record.synced"]


def test_filtering_from_a_date_keeps_that_day_and_later(viewer_client, events):
    page = viewer_client.get(URL, {"date_from": "2026-03-11"})
    assert _rows(page) == ["event.received", "record.synced"]


# --- Query budget ---------------------------------------------------------------------------


@pytest.mark.parametrize(("events_made", "rows_shown"), [(5, 5), (60, 50)])
def test_the_page_costs_the_same_queries_whatever_its_size(
    viewer_client, viewer, record, django_assert_max_num_queries, events_made, rows_shown
):
    audit_records(
        audit_event(action=f"record.action_{n % 3}", actor=viewer, target=record)
        for n in range(events_made)
    )
    with django_assert_max_num_queries(PAGE_QUERY_BUDGET) as captured:
        page = viewer_client.get(URL)
    assert len(page.context["table"].page.object_list) == rows_shown
    assert not [q["sql"] for q in captured.captured_queries if "COUNT(" in q["sql"].upper()]


def test_the_next_page_is_offered_without_counting_the_rows(viewer_client, viewer, record):
    audit_records(audit_event(action="record.synced", target=record) for _n in range(12))
    page = viewer_client.get(URL, {"per_page": 5, "page": 2})
    assert len(page.context["table"].page.object_list) == 5
    assert 'rel="next"' in page.content.decode()


# --- CSV export -----------------------------------------------------------------------------


def test_the_export_is_a_utf8_csv_attachment_with_a_bom(viewer_client, events):
    answer = viewer_client.get(EXPORT)
    assert answer.status_code == 200
    assert answer["Content-Type"] == "text/csv; charset=utf-8"
    assert answer["Content-Disposition"].startswith('attachment; filename="ap24sync-audit-')
    assert answer["Content-Disposition"].endswith('.csv"')
    assert b"".join(answer.streaming_content).startswith("\ufeff".encode())


def test_the_export_has_the_header_then_one_row_per_filtered_event(viewer_client, events):
    rows = _csv(viewer_client.get(EXPORT, {"target_type": "syncrecord"}))
    assert rows[0] == HEADER
    assert [row[2] for row in rows[1:]] == ["record.synced", "record.retry_requested"]


def test_the_export_row_holds_the_event_as_recorded(viewer_client, events, record):
    rows = _csv(viewer_client.get(EXPORT, {"action": "record.retry_requested"}))
    assert rows[1] == [
        "2026-03-10T11:00:00Z",  # noon in Paris, in UTC
        "vera",
        "record.retry_requested",
        "syncrecord",
        str(record.pk),
        "Retry from the console",
        '{"state": "failed"}',
        '{"state": "pending"}',
    ]


def test_the_export_never_holds_a_configured_secret(viewer_client, viewer, settings):
    settings.STRIPE_API_KEY = "sk_test_console_secret_123"
    audit_record(action="record.synced", actor=viewer, after={"key": "sk_test_console_secret_123"})
    body = b"".join(viewer_client.get(EXPORT).streaming_content).decode()
    assert "sk_test_console_secret_123" not in body
    assert "[redacted]" in body


def test_a_cell_a_spreadsheet_would_run_as_a_formula_is_quoted(viewer_client, viewer):
    audit_record(action="mismatch.ignored", actor=viewer, reason="=HYPERLINK(1)")
    rows = _csv(viewer_client.get(EXPORT))
    assert rows[1][5] == "'=HYPERLINK(1)"


def test_an_export_with_invalid_filters_is_refused(viewer_client, events):
    answer = viewer_client.get(EXPORT, {"date_from": "yesterday"})
    assert answer.status_code == 400
    assert "date_from" in answer.content.decode()


def test_an_anonymous_export_is_sent_to_the_admin_login(client, events):
    answer = client.get(EXPORT)
    assert answer.status_code == 302
    assert answer["Location"].startswith("/admin/login/")


# --- Languages ------------------------------------------------------------------------------


def test_the_page_is_in_french_when_the_browser_asks_for_it(viewer_client, events):
    page = viewer_client.get(URL, HTTP_ACCEPT_LANGUAGE="fr")
    content = page.content.decode()
    assert '<html lang="fr">' in content
    assert "Journal d\u2019audit" in content
    assert "Exporter en CSV" in content


def test_the_page_is_in_english_by_default(viewer_client, events):
    assert "<h1>Audit trail</h1>" in viewer_client.get(URL).content.decode()


def test_the_language_a_user_chooses_is_kept_over_the_browsers(viewer_client, events):
    viewer_client.post("/i18n/setlang/", {"language": "fr", "next": URL})
    content = viewer_client.get(URL, HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert '<html lang="fr">' in content


def test_the_french_catalogue_translates_every_message():
    catalogue = Path(__file__).parent.parent / "reconciliation/locale/fr/LC_MESSAGES/django.po"
    entries = catalogue.read_text(encoding="utf-8").split("\n\n")[1:]
    untranslated = [entry for entry in entries if '\nmsgstr ""' in entry and entry.endswith('""')]
    assert untranslated == []
    assert "#, fuzzy" not in "\n\n".join(entries)


# --- Links ----------------------------------------------------------------------------------


def test_a_jobs_audit_event_links_to_that_jobs_runs(viewer_client, viewer):
    audit_record(action="job.run_requested", actor=viewer, target=("job", "sync_retry"))
    assert "/console/runs/?job=sync_retry" in viewer_client.get(URL).content.decode()


def test_the_admin_index_links_to_the_console(viewer_client):
    assert 'href="/console/audit/"' in viewer_client.get("/admin/").content.decode()
