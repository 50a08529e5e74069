from decimal import Decimal

import pytest

from reconciliation.errors import InvalidTransition
from reconciliation.models import AuditEvent, Mismatch, MismatchState
from reconciliation.services.mismatches import (
    mismatch_approve,
    mismatch_detected,
    mismatch_ignore,
    mismatch_resolve,
    mismatches_close_gone,
)

pytestmark = pytest.mark.django_db


def _detect(ref="in_1", fix="create_payment", diff="24.00"):
    return mismatch_detected(
        kind="status_differs",
        fingerprint_parts=(ref,),
        summary=f"{ref} paid in Stripe, unpaid in Dolibarr",
        amount_difference=Decimal(diff),
        currency="EUR",
        proposed_fix=fix,
        proposed_fix_params={"invoice": ref},
    )


@pytest.fixture
def operator(django_user_model):
    return django_user_model.objects.create_user("olga")


def test_detecting_the_same_difference_twice_updates_one_mismatch():
    first = _detect(diff="24.00")
    second = _detect(diff="12.00")
    assert Mismatch.objects.count() == 1
    assert first.pk == second.pk
    assert Mismatch.objects.get().amount_difference == Decimal("12.00")


def test_a_mismatch_that_no_longer_holds_is_closed_with_an_audit_event():
    gone = _detect(ref="in_gone")
    kept = _detect(ref="in_kept")
    closed = mismatches_close_gone(kind="status_differs", still_present={kept.fingerprint})
    assert closed == 1
    assert Mismatch.objects.get(pk=gone.pk).state == MismatchState.RESOLVED
    assert Mismatch.objects.get(pk=kept.pk).state == MismatchState.OPEN
    assert AuditEvent.objects.filter(
        action="mismatch.closed_automatically", target_id=str(gone.pk)
    ).exists()


def test_a_resolved_mismatch_seen_again_is_reopened():
    mismatch = _detect()
    mismatches_close_gone(kind="status_differs", still_present=set())
    mismatch = _detect()
    assert mismatch.state == MismatchState.OPEN
    assert AuditEvent.objects.filter(action="mismatch.reopened").count() == 1


def test_an_ignored_mismatch_stays_ignored_when_detected_again(operator):
    mismatch_ignore(mismatch=_detect(), actor=operator, reason="known Stripe test charge")
    assert _detect().state == MismatchState.IGNORED


def test_ignoring_needs_a_reason(operator):
    mismatch = _detect()
    with pytest.raises(InvalidTransition, match="reason"):
        mismatch_ignore(mismatch=mismatch, actor=operator, reason="  ")
    assert Mismatch.objects.get(pk=mismatch.pk).state == MismatchState.OPEN


def test_approving_records_who_decided(operator):
    mismatch = mismatch_approve(mismatch=_detect(), actor=operator)
    event = AuditEvent.objects.get(action="mismatch.approved")
    assert (mismatch.state, mismatch.decided_by) == (MismatchState.APPROVED, operator)
    assert event.actor == operator


def test_a_mismatch_without_a_proposed_fix_cannot_be_approved(operator):
    with pytest.raises(InvalidTransition, match="no proposed fix"):
        mismatch_approve(mismatch=_detect(fix=""), actor=operator)


def test_resolving_by_hand_keeps_the_note(operator):
    mismatch = mismatch_resolve(mismatch=_detect(), actor=operator, note="paid by bank transfer")
    assert (mismatch.state, mismatch.note) == (MismatchState.RESOLVED, "paid by bank transfer")


def test_open_queryset_includes_approved_but_not_closed(operator):
    open_one = _detect(ref="a")
    approved = mismatch_approve(mismatch=_detect(ref="b"), actor=operator)
    mismatch_resolve(mismatch=_detect(ref="c"), actor=operator)
    assert set(Mismatch.objects.open()) == {open_one, approved}
