"""The fixes and resolutions of `reconciliation.reconcile.fixes`, against the sandbox Dolibarr
over HTTP: what each writes in Dolibarr, what it does to the mismatch and its record, and what
it leaves in the audit trail. The console's pages that call them are in
tests/test_console_mismatches.py."""

from __future__ import annotations

from decimal import Decimal

import pytest
import requests
from django.contrib.auth.models import Group

from reconciliation.connectors.dolibarr_types import NewLine
from reconciliation.errors import NotFoundError
from reconciliation.models import (
    AuditEvent,
    Mismatch,
    MismatchKind,
    MismatchState,
    SyncState,
)
from reconciliation.permissions import FINANCE_OPERATOR
from reconciliation.reconcile import fixes
from reconciliation.services.mismatches import mismatch_approve, mismatch_detected
from reconciliation.services.records import record_observe

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(django_user_model):
    user = django_user_model.objects.create_user("otto", password="pw", is_staff=True)
    user.groups.add(Group.objects.get(name=FINANCE_OPERATOR))
    return user


@pytest.fixture
def queued(monkeypatch):
    """What the fixes hand to django-q2 (the fix task, the sync_retry run), instead of it."""
    from reconciliation.console import services

    calls = []

    def record(func, *args, **kwargs):
        calls.append((func, args, kwargs))

    monkeypatch.setattr(fixes, "async_task", record)
    monkeypatch.setattr(services, "async_task", record)
    return calls


def _thirdparty(client, name: str, ref_ext: str) -> int:
    return client.create_thirdparty(name=name, ref_ext=ref_ext, client=1, code_client="-1")


def _invoice(client, thirdparty_id: int, ref_ext: str) -> int:
    line = NewLine(qty=Decimal(1), subprice=Decimal(10), tva_tx=Decimal(20), description="x")
    return client.create_invoice(thirdparty_id=thirdparty_id, lines=[line], ref_ext=ref_ext)


def _customer_record(customer_id: str = "cus_dup"):
    record, _ = record_observe(
        source="stripe",
        kind="customer",
        external_id=customer_id,
        snapshot={"id": customer_id, "name": "Atelier", "metadata": {}},
    )
    return record


def _duplicates(record, ids: list[int]) -> Mismatch:
    return mismatch_detected(
        kind=MismatchKind.DUPLICATE_IN_DOLIBARR,
        fingerprint_parts=("test", "duplicates", record.external_id),
        summary="two thirdparties carry ref_ext cus_dup",
        record=record,
        dolibarr_snapshot={"thirdparty_ids": ids},
        proposed_fix="merge_thirdparties",
        proposed_fix_params={"keep": ids[0], "merge": ids[1:]},
    )


# --- the sandbox's merge ------------------------------------------------------------------------


def test_the_sandbox_merge_moves_the_merged_thirdpartys_invoices_to_the_kept_one(
    dolibarr_client,
):
    keep = _thirdparty(dolibarr_client, "Atelier", "cus_dup")
    other = _thirdparty(dolibarr_client, "Atelier (2)", "cus_dup")
    invoice = _invoice(dolibarr_client, other, "in_merge_1")

    answer = dolibarr_client.merge_thirdparties(keep_id=keep, merge_id=other)

    assert answer.id == keep
    assert dolibarr_client.get_invoice(invoice_id=invoice).thirdparty_id == keep


def test_the_sandbox_merge_deletes_the_merged_thirdparty(dolibarr_client):
    keep = _thirdparty(dolibarr_client, "Atelier", "cus_dup")
    other = _thirdparty(dolibarr_client, "Atelier (2)", "cus_dup")
    _invoice(dolibarr_client, other, "in_merge_1")

    dolibarr_client.merge_thirdparties(keep_id=keep, merge_id=other)

    with pytest.raises(NotFoundError):
        dolibarr_client.get_thirdparty(thirdparty_id=other)
    assert [found.id for found in dolibarr_client.find_thirdparties(ref_ext="cus_dup")] == [keep]


def test_the_sandbox_merge_moves_the_stripe_link_to_the_kept_thirdparty(dolibarr_client):
    keep = _thirdparty(dolibarr_client, "Atelier", "cus_dup")
    other = _thirdparty(dolibarr_client, "Atelier (2)", "cus_dup")
    dolibarr_client.link_stripe_customer(thirdparty_id=other, customer_id="cus_dup", live=False)

    dolibarr_client.merge_thirdparties(keep_id=keep, merge_id=other)

    assert dolibarr_client.stripe_link(thirdparty_id=keep).customer_id == "cus_dup"


def test_a_thirdparty_merged_into_itself_is_refused_by_the_sandbox(
    dolibarr_client, dolibarr_sandbox, dolibarr_api_key
):
    keep = _thirdparty(dolibarr_client, "Atelier", "cus_dup")

    response = requests.put(
        f"{dolibarr_sandbox.api_url}/thirdparties/{keep}/merge/{keep}",
        headers={"DOLAPIKEY": dolibarr_api_key},
        timeout=5,
    )

    assert response.status_code == 400
    assert (
        response.json()["error"]["message"] == "Bad Request: Try to merge a thirdparty into itself"
    )


# --- the automatic fixes ------------------------------------------------------------------------


def test_the_merge_fix_merges_the_duplicates_and_resolves_the_mismatch_with_the_outcome(
    dolibarr_client, operator
):
    ids = [_thirdparty(dolibarr_client, f"Atelier {n}", "cus_dup") for n in range(3)]
    mismatch = _duplicates(_customer_record(), ids)
    mismatch_approve(mismatch=mismatch, actor=operator)

    result = fixes.fix_apply(mismatch_id=mismatch.pk, actor_id=operator.pk, client=dolibarr_client)

    assert result["applied"]
    assert [found.id for found in dolibarr_client.find_thirdparties(ref_ext="cus_dup")] == ids[:1]
    mismatch.refresh_from_db()
    assert mismatch.state == MismatchState.RESOLVED
    assert mismatch.note == f"Thirdparties {ids[1]}, {ids[2]} merged into {ids[0]}."


def test_the_merge_fix_audits_each_dolibarr_merge_with_the_operator(dolibarr_client, operator):
    ids = [_thirdparty(dolibarr_client, f"Atelier {n}", "cus_dup") for n in range(2)]
    mismatch = _duplicates(_customer_record(), ids)
    mismatch_approve(mismatch=mismatch, actor=operator)

    fixes.fix_apply(mismatch_id=mismatch.pk, actor_id=operator.pk, client=dolibarr_client)

    (merge,) = AuditEvent.objects.filter(action="dolibarr.thirdparties_merged")
    assert (merge.actor, merge.target_id, merge.after["merge_id"]) == (
        operator,
        str(ids[0]),
        ids[1],
    )


def test_a_merge_fix_applied_twice_passes_over_the_thirdparty_already_merged(
    dolibarr_client, operator
):
    """An earlier attempt whose answer was lost may have merged it already."""
    ids = [_thirdparty(dolibarr_client, f"Atelier {n}", "cus_dup") for n in range(2)]
    mismatch = _duplicates(_customer_record(), ids)
    mismatch_approve(mismatch=mismatch, actor=operator)
    dolibarr_client.merge_thirdparties(keep_id=ids[0], merge_id=ids[1])

    result = fixes.fix_apply(mismatch_id=mismatch.pk, actor_id=operator.pk, client=dolibarr_client)

    assert result["applied"]
    assert result["outcome"] == (
        f"Nothing to merge into thirdparty {ids[0]} ({ids[1]} no longer in Dolibarr)."
    )


def test_the_retry_fix_makes_the_record_due_and_queues_a_sync_retry_run(
    operator, queued, django_capture_on_commit_callbacks
):
    record = _customer_record("cus_failed")
    record.state = SyncState.FAILED
    record.save()
    mismatch = mismatch_detected(
        kind=MismatchKind.SYNC_FAILED,
        fingerprint_parts=("stripe", "customer", "cus_failed"),
        summary="failed",
        record=record,
        proposed_fix="retry",
        proposed_fix_params={"record": record.pk},
    )
    mismatch_approve(mismatch=mismatch, actor=operator)

    with django_capture_on_commit_callbacks(execute=True):
        result = fixes.fix_apply(mismatch_id=mismatch.pk, actor_id=operator.pk)

    record.refresh_from_db()
    assert result["applied"]
    assert record.state == SyncState.PENDING
    assert [(func, args) for func, args, _ in queued] == [
        ("reconciliation.jobs.job_run", ("sync_retry",))
    ]


def test_a_fix_task_for_a_mismatch_resolved_meanwhile_changes_nothing(dolibarr_client, operator):
    ids = [_thirdparty(dolibarr_client, f"Atelier {n}", "cus_dup") for n in range(2)]
    mismatch = _duplicates(_customer_record(), ids)
    mismatch_approve(mismatch=mismatch, actor=operator)
    Mismatch.objects.filter(pk=mismatch.pk).update(state=MismatchState.RESOLVED)

    result = fixes.fix_apply(mismatch_id=mismatch.pk, actor_id=operator.pk, client=dolibarr_client)

    assert not result["applied"]
    assert len(dolibarr_client.find_thirdparties(ref_ext="cus_dup")) == 2


# --- the resolutions ----------------------------------------------------------------------------


def test_resolving_duplicates_by_merge_keeps_the_chosen_thirdparty_and_makes_the_record_due(
    dolibarr_client, operator
):
    ids = [_thirdparty(dolibarr_client, f"Atelier {n}", "cus_dup") for n in range(2)]
    record = _customer_record()
    record.state = SyncState.NEEDS_REVIEW
    record.save()
    mismatch = _duplicates(record, ids)

    fixes.resolve_merge(mismatch=mismatch, keep_id=ids[1], actor=operator, client=dolibarr_client)

    assert [found.id for found in dolibarr_client.find_thirdparties(ref_ext="cus_dup")] == ids[1:]
    record.refresh_from_db()
    assert record.state == SyncState.PENDING


def test_merging_into_a_thirdparty_that_is_not_a_duplicate_is_refused(dolibarr_client, operator):
    ids = [_thirdparty(dolibarr_client, f"Atelier {n}", "cus_dup") for n in range(2)]
    mismatch = _duplicates(_customer_record(), ids)

    with pytest.raises(fixes.FixRefused):
        fixes.resolve_merge(mismatch=mismatch, keep_id=999, actor=operator, client=dolibarr_client)

    assert len(dolibarr_client.find_thirdparties(ref_ext="cus_dup")) == 2


def test_linking_a_thirdparty_without_ref_ext_gives_it_the_records_identity(
    dolibarr_client, operator
):
    """The record's handler finds its thirdparty by ref_ext at its next sync, not by id."""
    thirdparty = dolibarr_client.create_thirdparty(name="Atelier", ref_ext="", code_client="-1")
    record = _customer_record("cus_link")
    mismatch = mismatch_detected(
        kind=MismatchKind.MISSING_IN_DOLIBARR,
        fingerprint_parts=("test", "missing", "cus_link"),
        summary="missing",
        record=record,
    )

    fixes.resolve_link_existing(
        mismatch=mismatch, dolibarr_id=thirdparty, actor=operator, client=dolibarr_client
    )

    assert dolibarr_client.get_thirdparty(thirdparty_id=thirdparty).ref_ext == "cus_link"


def test_linking_a_thirdparty_that_carries_another_identity_is_refused_and_audited(
    dolibarr_client, operator
):
    thirdparty = _thirdparty(dolibarr_client, "Someone else", "ap24-org-42")
    record = _customer_record("cus_link")
    mismatch = mismatch_detected(
        kind=MismatchKind.MISSING_IN_DOLIBARR,
        fingerprint_parts=("test", "missing", "cus_link"),
        summary="missing",
        record=record,
    )

    result = fixes.resolve_link_existing(
        mismatch=mismatch, dolibarr_id=thirdparty, actor=operator, client=dolibarr_client
    )

    record.refresh_from_db()
    mismatch.refresh_from_db()
    assert not result["applied"]
    assert "carries ref_ext 'ap24-org-42'" in result["outcome"]
    assert (record.state, mismatch.state) == (SyncState.PENDING, MismatchState.OPEN)
    assert AuditEvent.objects.get(action="mismatch.fix_failed").actor == operator


def test_choosing_a_side_of_a_mismatch_that_is_not_a_conflict_is_refused(operator):
    record = _customer_record("cus_x")
    mismatch = mismatch_detected(
        kind=MismatchKind.MISSING_IN_DOLIBARR,
        fingerprint_parts=("test", "missing", "cus_x"),
        summary="missing",
        record=record,
    )

    with pytest.raises(fixes.FixRefused):
        fixes.resolve_choose_side(mismatch=mismatch, side="aipress24", actor=operator)


def test_every_automatic_fix_code_has_a_label_and_no_manual_instructions():
    for code, fix in fixes.FIXES.items():
        assert fix.code == code
        assert str(fix.label)
        assert fixes.manual_instructions(code) == ""


def test_a_manual_fix_code_the_console_does_not_know_still_says_what_to_do():
    assert fixes.manual_instructions("something_new") == str(fixes.MANUAL_FALLBACK)
