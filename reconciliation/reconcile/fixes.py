"""What the console does about a mismatch once a person has decided (DESIGN invariant 4): the
automatic fixes the engine applies after an approval, keyed by `Mismatch.proposed_fix`
(`FIXES`), what to do by hand for the others (`MANUAL_FIXES`), and the resolutions a person
makes on the mismatch's page (choose the side that wins, link an existing Dolibarr object,
merge duplicate thirdparties). docs/mismatch-fixes.md describes each.

Every fix and resolution has the same shape: the Dolibarr calls first, outside any
transaction, through an `AuditedDolibarr` whose audit events name the person who decided;
then one short transaction that resolves the mismatch with the outcome as its note. When the
calls fail, or the fix would no longer be right (`FixRefused`), nothing is resolved: the
mismatch stays open (or approved), and `mismatch.fix_failed` records the error with the
person's name, which the mismatch's page shows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone
from django.utils.functional import Promise
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from django_q.tasks import async_task

from reconciliation.audit import audit_record
from reconciliation.connectors.dolibarr import DolibarrClient
from reconciliation.errors import Ap24SyncError, InvalidTransition, NotFoundError
from reconciliation.models import (
    Mismatch,
    MismatchKind,
    MismatchState,
    Source,
    SyncBaseline,
    SyncRecord,
    SyncState,
)
from reconciliation.services.mismatches import (
    mismatch_approve,
    mismatch_ignore,
    mismatch_resolve,
    mismatches_close_for_record,
)
from reconciliation.services.records import record_retry_now
from reconciliation.sync.aipress24_mapping import (
    organisation_ref_ext,
    purchase_ref_ext,
    user_ref_ext,
)
from reconciliation.sync.dependencies import snapshot_of
from reconciliation.sync.remote import AuditedDolibarr

logger = logging.getLogger(__name__)

FIX_TASK = "reconciliation.tasks.mismatch_fix_task"
RETRY_JOB = "sync_retry"


class FixRefused(Ap24SyncError):
    """The fix would not be right any more (Dolibarr changed since it was proposed), or it
    cannot be applied to this mismatch: nothing was changed."""


@dataclass(frozen=True)
class FixContext:
    """What a fix works with: Dolibarr (audited, in the name of `actor`), the person who
    approved it, and `later`: what to do once the mismatch's resolution is committed (queue a
    job, say)."""

    dolibarr: Any
    actor: Any
    later: list[Callable[[], None]] = field(default_factory=list)


@dataclass(frozen=True)
class Fix:
    code: str
    label: Promise
    apply: Callable[[Mismatch, FixContext], str]
    # False: the fix changes only the console's own records (its context has no Dolibarr).
    uses_dolibarr: bool = True


@dataclass(frozen=True)
class ItemResult:
    """One mismatch's outcome in a bulk action: the sentence a person reads."""

    mismatch_id: int
    ok: bool
    message: str


class DecidedDolibarr(AuditedDolibarr):
    """The audited client, whose events name the person who decided the write (the console
    applies it for them, maybe later, in a worker) and say why."""

    def __init__(self, client: Any, *, actor: Any, reason: str) -> None:
        super().__init__(client)
        self._actor = actor
        self._reason = reason

    def _audit(self, **event: Any) -> None:
        if self._actor is not None:
            event.setdefault("actor", self._actor)
        event.setdefault("reason", self._reason)
        super()._audit(**event)


# --- the automatic fixes ------------------------------------------------------------------------


def _record_of(mismatch: Mismatch, params: Mapping[str, Any]) -> SyncRecord:
    record_id = params.get("record_id") or params.get("record") or mismatch.record_id
    found = SyncRecord.objects.filter(pk=record_id).defer("snapshot") if record_id else None
    record = found.first() if found is not None else None
    if record is None:
        raise FixRefused(f"mismatch #{mismatch.pk} names no sync record that still exists")
    return record


def _retry_record(mismatch: Mismatch, context: FixContext) -> str:
    """Make the record due now and queue a sync_retry run. The engine has no way to sync one
    record alone; the run takes every due record, this one included."""
    record = _record_of(mismatch, mismatch.proposed_fix_params)
    _due_now(record.pk, context.actor, f"fix of mismatch #{mismatch.pk}")
    # Queued once the mismatch is resolved: a retry that fails again reopens it.
    context.later.append(lambda: _queue_sync_retry(context.actor))
    return f"Record {record.pk} ({record}) is due again: queued, the next sync_retry run writes it."


def _merge_thirdparties(mismatch: Mismatch, context: FixContext) -> str:
    params = mismatch.proposed_fix_params
    keep = _int(params.get("keep"), "keep")
    others = [_int(value, "merge") for value in params.get("merge") or ()]
    return _merge_into(context.dolibarr, keep, others)


def _replace_stripe_link(mismatch: Mismatch, context: FixContext) -> str:
    """Replace the thirdparty's one Stripe link, only if it still points where it did when
    the fix was proposed: another change since means the person decided on facts that no
    longer hold."""
    params = mismatch.proposed_fix_params
    thirdparty_id = _int(params.get("thirdparty_id"), "thirdparty_id")
    customer_id = str(params.get("customer_id") or "")
    current_id = str(params.get("current_customer_id") or "")
    if not customer_id:
        raise FixRefused("the proposed fix names no Stripe customer to link")
    dolibarr = context.dolibarr
    link = dolibarr.stripe_link(thirdparty_id=thirdparty_id)
    linked = link.customer_id if link is not None else None
    if linked == customer_id:
        return f"Thirdparty {thirdparty_id} was already linked to Stripe customer {customer_id}."
    if linked != current_id:
        raise FixRefused(
            f"thirdparty {thirdparty_id} is now linked to "
            f"{linked or 'no Stripe customer'}, not to {current_id} as when this fix was "
            f"proposed: nothing was changed; look at the thirdparty again before deciding"
        )
    dolibarr.link_stripe_customer(
        thirdparty_id=thirdparty_id,
        customer_id=customer_id,
        live=_is_live(customer_id),
        replace=True,
    )
    return (
        f"Thirdparty {thirdparty_id} is now linked to Stripe customer {customer_id} "
        f"(it was linked to {current_id})."
    )


FIXES: dict[str, Fix] = {
    fix.code: fix
    for fix in (
        Fix("retry_record", _("Retry the record now"), _retry_record, uses_dolibarr=False),
        # What the engine proposes for a `sync_failed` mismatch: the same fix.
        Fix("retry", _("Retry the record now"), _retry_record, uses_dolibarr=False),
        Fix(
            "merge_thirdparties",
            _("Merge the duplicate thirdparties into the first one"),
            _merge_thirdparties,
        ),
        Fix(
            "replace_stripe_link",
            _("Link the thirdparty to the proposed Stripe customer instead"),
            _replace_stripe_link,
        ),
    )
}

# What a person does in Dolibarr (or in the settings) for a fix the console cannot apply.
MANUAL_FIXES: dict[str, Promise] = {
    "correct_draft_lines": _(
        "Correct the draft invoice's lines in Dolibarr so that its total equals the source's "
        "to the cent, then retry the record: it validates the draft once the totals agree."
    ),
    "credit_note_difference": _(
        "The invoice is validated and cannot change: make a credit note in Dolibarr for the "
        "difference, then resolve this mismatch by hand."
    ),
    "credit_note": _(
        "The invoice is validated: cancel it in Dolibarr with a credit note, then resolve "
        "this mismatch by hand."
    ),
    "delete_draft": _(
        "Delete the draft in Dolibarr (a draft has no number and can be deleted), then retry "
        "the record."
    ),
    "enter_manually": _(
        "The console does not write this currency: enter the document in Dolibarr by hand (or "
        "enable multicurrency and configure its bank account), then resolve or retry."
    ),
    "enter_credit_note_manually": _(
        "No credit-note lines reproduce the refund to the cent: enter the credit note and its "
        "refund payment in Dolibarr by hand, then resolve this mismatch by hand."
    ),
    "record_payment": _(
        "Record the missing payment on the Dolibarr invoice (or check where it was paid), then "
        "retry the record."
    ),
    "remove_duplicate_invoice": _(
        "Keep the first invoice; delete the other drafts in Dolibarr (or cancel validated ones "
        "with a credit note), then retry the record."
    ),
    "remove_duplicate_credit_note": _(
        "Keep the first credit note; delete or cancel the others in Dolibarr, then retry the "
        "record."
    ),
    "remove_duplicate_payment": _(
        "Keep the first payment; delete the others in Dolibarr, then retry the record."
    ),
    "remove_duplicate_order": _(
        "Keep the first order; delete the others in Dolibarr, then retry the record."
    ),
    "delete_bank_lines": _(
        "Keep the first bank line; delete the others from the Stripe bank account in "
        "Dolibarr, then retry the record."
    ),
    "reverse_payout_transfer": _(
        "The payout did not arrive: reverse its transfer in Dolibarr (a transfer back to the "
        "Stripe account), then resolve this mismatch by hand."
    ),
    "configure_payout_bank_account": _(
        "Set the Dolibarr bank account that receives Stripe payouts in the settings, then "
        "retry the record."
    ),
    "credit_note_if_dispute_lost": _(
        "Wait for the dispute's end: if it is lost, make a credit note and its refund payment "
        "in Dolibarr; if it is won, ignore this mismatch, saying so."
    ),
    "link_payment_to_invoice": _(
        "The payment is in Dolibarr but not linked to its invoice: link it to the invoice in "
        "Dolibarr (or delete it and retry the record, which pays the invoice again)."
    ),
    "credit_note_for_duplicate_billing": _(
        "The same payment is billed by two documents: keep the one that should bill it, cancel "
        "the other with a credit note in Dolibarr, then resolve this mismatch by hand."
    ),
    "check_refund_in_stripe": _(
        "Check in Stripe whether the purchase was really refunded: if it was, retry the record "
        "once the refund shows; if not, correct it in Aipress24."
    ),
}

MANUAL_FALLBACK = _(
    "The console cannot apply this fix: do what it says in Dolibarr, then resolve this "
    "mismatch by hand or retry its record."
)


def fix_label(code: str) -> str:
    fix = FIXES.get(code)
    return str(fix.label) if fix is not None else code


def manual_instructions(code: str) -> str:
    """What to do by hand for a fix the console does not apply ("" when it does, or none)."""
    if not code or code in FIXES:
        return ""
    return str(MANUAL_FIXES.get(code, MANUAL_FALLBACK))


def is_automatic(mismatch: Mismatch) -> bool:
    return mismatch.proposed_fix in FIXES


# --- approving: the fix is applied by a task ------------------------------------------------------


def _queue_fix(mismatch_id: int, actor) -> None:
    transaction.on_commit(
        partial(async_task, FIX_TASK, mismatch_id, actor.pk if actor is not None else None)
    )


def fix_approve(*, mismatch: Mismatch, actor) -> Mismatch:
    """Approve the proposed fix; once that is committed, `mismatch_fix_task` applies it."""
    if not is_automatic(mismatch):
        raise FixRefused(
            f"mismatch #{mismatch.pk} has no automatic fix"
            + (f" ({mismatch.proposed_fix} is done by hand)" if mismatch.proposed_fix else "")
        )
    with transaction.atomic():
        approved = mismatch_approve(mismatch=mismatch, actor=actor)
        _queue_fix(approved.pk, actor)
    return approved


def fix_apply_again(*, mismatch: Mismatch, actor) -> Mismatch:
    """Queue an approved fix again (its last attempt failed, or its task was lost)."""
    with transaction.atomic():
        locked = Mismatch.objects.select_for_update().get(pk=mismatch.pk)
        if locked.state != MismatchState.APPROVED or not is_automatic(locked):
            raise InvalidTransition(
                f"cannot apply the fix of a mismatch that is {locked.state} again"
            )
        audit_record(
            action="mismatch.fix_requested",
            actor=actor,
            target=locked,
            after={"fix": locked.proposed_fix, "params": locked.proposed_fix_params},
        )
        _queue_fix(locked.pk, actor)
    return locked


def fix_apply(*, mismatch_id: int, actor_id: int | None, client: Any = None) -> dict[str, Any]:
    """What `mismatch_fix_task` does: apply the approved fix and resolve the mismatch with the
    outcome, or record why it failed. Never raises for what the fix hit: the outcome says."""
    actor = get_user_model().objects.filter(pk=actor_id).first() if actor_id else None
    mismatch = Mismatch.objects.filter(pk=mismatch_id).first()
    if mismatch is None:
        return {"mismatch": mismatch_id, "applied": False, "outcome": "no such mismatch"}
    if mismatch.state != MismatchState.APPROVED:
        # Resolved or ignored meanwhile (by a person, or because the record synced).
        outcome = f"not applied: the mismatch is {mismatch.state}"
        return {"mismatch": mismatch.pk, "applied": False, "outcome": outcome}
    fix = FIXES.get(mismatch.proposed_fix)
    if fix is None:
        return _failed(mismatch, actor, f"{mismatch.proposed_fix!r} is not an automatic fix")

    later: list[Callable[[], None]] = []

    def apply(dolibarr: Any) -> str:
        return fix.apply(mismatch, FixContext(dolibarr=dolibarr, actor=actor, later=later))

    def then() -> None:
        for callback in later:
            transaction.on_commit(callback)

    reason = f"fix {fix.code} of mismatch #{mismatch.pk}"
    return _settle(
        mismatch,
        actor,
        (lambda: _with_dolibarr(apply, actor, reason, client))
        if fix.uses_dolibarr
        else (lambda: apply(None)),
        fix=fix.code,
        then=then,
    )


def _with_dolibarr(work: Callable[[Any], str], actor, reason: str, client: Any) -> str:
    if client is not None:
        return work(DecidedDolibarr(client, actor=actor, reason=reason))
    with DolibarrClient.from_settings() as owned:
        return work(DecidedDolibarr(owned, actor=actor, reason=reason))


def _settle(
    mismatch: Mismatch,
    actor,
    work: Callable[[], str],
    *,
    fix: str,
    then: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run `work` (the network part), then resolve with its outcome in one transaction (and
    `then`, inside it); on failure record `mismatch.fix_failed`."""
    try:
        outcome = work()
    except Ap24SyncError as exc:
        return _failed(mismatch, actor, str(exc), fix=fix)
    except Exception as exc:  # a bug must not leave an approved fix without a word
        logger.exception("fix %s of mismatch %s failed", fix, mismatch.pk)
        return _failed(mismatch, actor, f"internal error: {type(exc).__name__}: {exc}", fix=fix)
    try:
        with transaction.atomic():
            audit_record(
                action="mismatch.fix_applied",
                actor=actor,
                target=mismatch,
                after={"fix": fix, "params": mismatch.proposed_fix_params, "outcome": outcome},
                reason=outcome,
            )
            mismatch_resolve(mismatch=mismatch, actor=actor, note=outcome)
            if then is not None:
                then()
    except InvalidTransition as exc:
        # Decided elsewhere while Dolibarr was being written (the trail holds the writes).
        return _failed(mismatch, actor, f"{outcome} But the mismatch was not resolved: {exc}")
    return {"mismatch": mismatch.pk, "applied": True, "outcome": outcome}


def _failed(mismatch: Mismatch, actor, error: str, *, fix: str = "") -> dict[str, Any]:
    audit_record(
        action="mismatch.fix_failed",
        actor=actor,
        target=mismatch,
        after={"fix": fix or mismatch.proposed_fix, "state": mismatch.state, "error": error},
        reason=error,
    )
    return {"mismatch": mismatch.pk, "applied": False, "outcome": error}


# --- the human resolutions ----------------------------------------------------------------------

SIDES = ("aipress24", "dolibarr")


def conflict_fields(mismatch: Mismatch) -> dict[str, dict[str, Any]]:
    """A `customer_conflict` mismatch's fields (`{field: {last_synced, aipress24, dolibarr}}`),
    or {} when it is not a conflict between field values (a Stripe link conflict)."""
    if mismatch.kind != MismatchKind.CUSTOMER_CONFLICT:
        return {}
    fields = mismatch.proposed_fix_params.get("fields")
    return dict(fields) if isinstance(fields, Mapping) else {}


def resolve_choose_side(
    *, mismatch: Mismatch, side: str | Mapping[str, str], actor, client: Any = None
) -> dict[str, Any]:
    """Settle a customer conflict: for each field, the side that wins (`side` for all, or a
    side per field). Aipress24 wins: its value is written to Dolibarr, and both sides'
    baselines become it. Dolibarr wins: nothing is written; the baseline of the source side
    becomes the Aipress24 value and that of the Dolibarr side the Dolibarr value, so that the
    next sync sees neither side changed. Then the record is due, syncs and settles."""
    fields = conflict_fields(mismatch)
    if not fields:
        raise FixRefused(f"mismatch #{mismatch.pk} is not a conflict between field values")
    _require_decidable(mismatch)
    chosen = {name: side if isinstance(side, str) else side.get(name, "") for name in fields}
    unknown = sorted(name for name, value in chosen.items() if value not in SIDES)
    if unknown:
        raise FixRefused(f"choose Aipress24 or Dolibarr for: {', '.join(unknown)}")
    record = mismatch.record
    if record is None:
        raise FixRefused(f"mismatch #{mismatch.pk} has no sync record, hence no baseline")
    thirdparty_id = _int(mismatch.proposed_fix_params.get("thirdparty_id"), "thirdparty_id")
    written = {name: fields[name]["aipress24"] for name, won in chosen.items() if won == SIDES[0]}

    def work() -> str:
        if written:
            _with_dolibarr(
                lambda dolibarr: dolibarr.update_thirdparty(
                    thirdparty_id=thirdparty_id, changes=written
                ),
                actor,
                f"conflict of mismatch #{mismatch.pk}: Aipress24 wins",
                client,
            )
        return "; ".join(
            f"{name}: {'Aipress24' if won == SIDES[0] else 'Dolibarr'} wins ({fields[name][won]!r})"
            for name, won in sorted(chosen.items())
        ) + (f" — written to thirdparty {thirdparty_id}" if written else " — nothing written")

    def then() -> None:
        _baseline_agree(record, fields, chosen, actor, mismatch)
        _due_now(record.pk, actor, f"conflict of mismatch #{mismatch.pk} decided", strict=False)

    return _settle(mismatch, actor, work, fix="choose_side", then=then)


def _baseline_agree(record, fields, chosen, actor, mismatch) -> None:
    baseline, _created = SyncBaseline.objects.select_for_update().get_or_create(record=record)
    before = {
        "source_values": {name: baseline.source_values.get(name) for name in fields},
        "dolibarr_values": {name: baseline.dolibarr_values.get(name) for name in fields},
    }
    for name, won in chosen.items():
        source_value = fields[name]["aipress24"]
        dolibarr_value = source_value if won == SIDES[0] else fields[name]["dolibarr"]
        baseline.source_values[name] = source_value
        baseline.dolibarr_values[name] = dolibarr_value
    baseline.save()
    audit_record(
        action="mismatch.side_chosen",
        actor=actor,
        target=mismatch,
        before=before,
        after={
            "sides": chosen,
            "source_values": {name: baseline.source_values[name] for name in fields},
            "dolibarr_values": {name: baseline.dolibarr_values[name] for name in fields},
        },
    )


# The Dolibarr object each kind of record stands for, where the record says nothing yet.
DOLIBARR_KINDS = {
    (Source.STRIPE, "customer"): "thirdparty",
    (Source.AIPRESS24, "organisation"): "thirdparty",
    (Source.AIPRESS24, "user"): "thirdparty",
    (Source.STRIPE, "invoice"): "invoice",
    (Source.AIPRESS24, "purchase"): "invoice",
    (Source.STRIPE, "refund"): "credit_note",
    (Source.STRIPE, "charge"): "payment",
    (Source.STRIPE, "payment_intent"): "payment",
    (Source.STRIPE, "balance_transaction"): "bank_line",
    (Source.STRIPE, "payout"): "bank_line",
}
# Kinds whose object can be read by id (to check it exists) through the connector.
LINKABLE_KINDS = ("thirdparty", "invoice", "credit_note", "bank_line")


def link_kind(record: SyncRecord | None) -> str:
    """The Dolibarr kind a record is linked to by hand ("" when the console cannot tell)."""
    if record is None:
        return ""
    return record.dolibarr_kind or DOLIBARR_KINDS.get((record.source, record.kind), "")


def expected_ref_ext(record: SyncRecord) -> str:
    """The `ref_ext` the record's handler looks its Dolibarr object up by ("" for none the
    console can set)."""
    source, kind, external_id = record.source, record.kind, record.external_id
    if (source, kind) == (Source.AIPRESS24, "organisation"):
        return organisation_ref_ext(external_id)
    if (source, kind) == (Source.AIPRESS24, "user"):
        return user_ref_ext(external_id)
    if (source, kind) == (Source.AIPRESS24, "purchase"):
        return purchase_ref_ext(external_id)
    if (source, kind) == (Source.STRIPE, "customer"):
        from reconciliation.sync.stripe_customers import thirdparty_ref_ext

        snapshot = SyncRecord.objects.filter(pk=record.pk).values_list("snapshot", flat=True)
        return thirdparty_ref_ext({"id": external_id, **(snapshot.first() or {})})
    if (source, kind) in ((Source.STRIPE, "invoice"), (Source.STRIPE, "refund")):
        return external_id
    return ""


def resolve_link_existing(
    *, mismatch: Mismatch, dolibarr_id: int, actor, client: Any = None
) -> dict[str, Any]:
    """The record stands for an object already in Dolibarr: it is marked synced to it. The
    object must exist; a thirdparty or invoice must carry the record's `ref_ext` (it is set
    when the object has none, and the link is refused when it has another), since the
    record's handler finds its object by `ref_ext`, not by id, at its next sync."""
    _require_decidable(mismatch)
    record = mismatch.record
    kind = link_kind(record)
    if record is None:
        raise FixRefused(f"mismatch #{mismatch.pk} has no sync record to link")
    if kind not in LINKABLE_KINDS:
        raise FixRefused(
            f"a {kind or 'record of this kind'} cannot be linked by hand (the console can read "
            f"{', '.join(LINKABLE_KINDS)} by id); resolve it in Dolibarr, then retry the record"
        )
    if record.state == SyncState.IN_PROGRESS:
        raise InvalidTransition(
            f"record {record.pk} ({record}) is being worked on; link it once that attempt ends"
        )
    ref_ext = expected_ref_ext(record)
    found: dict[str, str] = {}

    def check(dolibarr: Any) -> str:
        found["ref"] = _check_linkable(dolibarr, kind, dolibarr_id, ref_ext)
        return f"Linked by hand to Dolibarr {kind} {dolibarr_id}" + (
            f" ({found['ref']})" if found["ref"] else ""
        )

    def then() -> None:
        record_link_existing(
            record_id=record.pk,
            dolibarr_kind=kind,
            dolibarr_id=dolibarr_id,
            dolibarr_ref=found["ref"],
            actor=actor,
            reason=f"mismatch #{mismatch.pk}",
        )

    return _settle(
        mismatch,
        actor,
        lambda: _with_dolibarr(check, actor, f"link of mismatch #{mismatch.pk}", client),
        fix="link_existing",
        then=then,
    )


def _check_linkable(dolibarr: Any, kind: str, dolibarr_id: int, ref_ext: str) -> str:
    """Read the object (NotFoundError when it is not there), make sure it carries `ref_ext`;
    returns its ref."""
    try:
        if kind == "thirdparty":
            thirdparty = dolibarr.get_thirdparty(thirdparty_id=dolibarr_id)
            current, ref = thirdparty.ref_ext, thirdparty.code_client or ""
        elif kind in ("invoice", "credit_note"):
            invoice = dolibarr.get_invoice(
                invoice_id=dolibarr_id, properties=("ref", "ref_ext", "type")
            )
            current, ref = invoice.ref_ext, invoice.ref or ""
        else:
            dolibarr.get_bank_line(line_id=dolibarr_id)
            return ""
    except NotFoundError as exc:
        raise FixRefused(f"there is no Dolibarr {kind} {dolibarr_id}") from exc
    if ref_ext and current and current != ref_ext:
        raise FixRefused(
            f"Dolibarr {kind} {dolibarr_id} carries ref_ext {current!r}, not {ref_ext!r}: "
            "it stands for another object; nothing was linked"
        )
    if ref_ext and not current:
        if kind == "thirdparty":
            dolibarr.update_thirdparty(thirdparty_id=dolibarr_id, changes={"ref_ext": ref_ext})
        else:
            dolibarr.update_invoice(invoice_id=dolibarr_id, changes={"ref_ext": ref_ext})
    return ref


def record_link_existing(
    *,
    record_id: int,
    dolibarr_kind: str,
    dolibarr_id: int,
    actor,
    dolibarr_ref: str = "",
    reason: str = "",
) -> SyncRecord:
    """Mark a record synced to an existing Dolibarr object, through the record's own
    transitions (back to pending if settled, claimed, synced), audited with the person, and
    close the record's other open mismatches: what they reported is settled."""
    with transaction.atomic():
        record = SyncRecord.objects.select_for_update().defer("snapshot").get(pk=record_id)
        if record.state == SyncState.IN_PROGRESS:
            raise InvalidTransition(
                f"record {record.pk} ({record}) is being worked on; link it once that attempt ends"
            )
        before = _record_state(record)
        now = timezone.now()
        if record.state != SyncState.PENDING:
            record.mark_pending_for_retry()
        record.claim(now=now)
        record.mark_synced(
            dolibarr_kind=dolibarr_kind, dolibarr_id=dolibarr_id, dolibarr_ref=dolibarr_ref, now=now
        )
        record.save()
        audit_record(
            action="record.linked_by_hand",
            actor=actor,
            target=record,
            before=before,
            after=_record_state(record),
            reason=reason,
        )
        mismatches_close_for_record(
            record_id=record.pk,
            note=f"{record} linked by hand to Dolibarr {dolibarr_kind} {dolibarr_id}",
        )
    return record


def _record_state(record: SyncRecord) -> dict[str, Any]:
    return {
        "state": record.state,
        "dolibarr_kind": record.dolibarr_kind,
        "dolibarr_id": record.dolibarr_id,
        "dolibarr_ref": record.dolibarr_ref,
    }


def duplicate_thirdparties(mismatch: Mismatch) -> list[int]:
    """The ids of a duplicate-thirdparties mismatch, the proposed one to keep first."""
    params = mismatch.proposed_fix_params
    if mismatch.proposed_fix == "merge_thirdparties" and "keep" in params:
        ids = [params["keep"], *(params.get("merge") or ())]
    else:
        ids = list((mismatch.dolibarr_snapshot or {}).get("thirdparty_ids") or ())
    try:
        return list(dict.fromkeys(int(value) for value in ids))
    except (TypeError, ValueError):
        return []


def resolve_merge(*, mismatch: Mismatch, keep_id: int, actor, client: Any = None) -> dict[str, Any]:
    """Merge the other duplicate thirdparties into the one the person keeps, then make the
    record due: its next sync finds one thirdparty and settles."""
    _require_decidable(mismatch)
    ids = duplicate_thirdparties(mismatch)
    if len(ids) < 2:
        raise FixRefused(f"mismatch #{mismatch.pk} names no duplicate thirdparties")
    if keep_id not in ids:
        raise FixRefused(
            f"thirdparty {keep_id} is not one of the duplicates ({', '.join(map(str, ids))})"
        )
    others = [value for value in ids if value != keep_id]
    record_id = mismatch.record_id

    def then() -> None:
        if record_id is not None:
            reason = f"duplicates of mismatch #{mismatch.pk} merged"
            _due_now(record_id, actor, reason, strict=False)

    return _settle(
        mismatch,
        actor,
        lambda: _with_dolibarr(
            lambda dolibarr: _merge_into(dolibarr, keep_id, others),
            actor,
            f"merge of mismatch #{mismatch.pk}",
            client,
        ),
        fix="merge",
        then=then,
    )


def _merge_into(dolibarr: Any, keep: int, others: Iterable[int]) -> str:
    """Merge each of `others` into `keep`. One already gone (merged by an earlier attempt
    whose answer was lost, or deleted by hand) is passed over and said."""
    try:
        dolibarr.get_thirdparty(thirdparty_id=keep)
    except NotFoundError as exc:
        raise FixRefused(f"thirdparty {keep}, the one to keep, is not in Dolibarr") from exc
    merged, gone = [], []
    for other in others:
        if other == keep:
            continue
        try:
            dolibarr.get_thirdparty(thirdparty_id=other)
        except NotFoundError:
            gone.append(other)
            continue
        try:
            dolibarr.merge_thirdparties(keep_id=keep, merge_id=other)
        except Ap24SyncError as exc:
            done = f" after merging {', '.join(map(str, merged))}" if merged else ""
            raise FixRefused(f"merging thirdparty {other} into {keep} failed{done}: {exc}") from exc
        merged.append(other)
    outcome = (
        f"Thirdparties {', '.join(map(str, merged))} merged into {keep}"
        if merged
        else f"Nothing to merge into thirdparty {keep}"
    )
    if gone:
        outcome += f" ({', '.join(map(str, gone))} no longer in Dolibarr)"
    return outcome + "."


# --- retry, ignore, and the bulk actions --------------------------------------------------------


def mismatch_retry_record(*, mismatch: Mismatch, actor, queue: bool = True) -> str:
    """Make the mismatch's record due now (and queue a sync_retry run): its next sync closes
    the mismatch if the difference is gone, or refreshes it."""
    if mismatch.record_id is None:
        raise FixRefused(f"mismatch #{mismatch.pk} has no sync record to retry")
    with transaction.atomic():
        changed = _due_now(mismatch.record_id, actor, f"retry from mismatch #{mismatch.pk}")
        if queue:
            _queue_sync_retry(actor)
    if changed:
        return gettext("#%(id)s: its record is due, sync queued") % {"id": mismatch.pk}
    return gettext("#%(id)s: its record was already due, sync queued") % {"id": mismatch.pk}


def _due_now(record_id: int, actor, reason: str, *, strict: bool = True) -> bool:
    """`record_retry_now`, for a record that a decision leaves to the next sync. A record in
    progress raises InvalidTransition, or (not `strict`) is left to its worker, whose attempt
    reads the decision's outcome."""
    try:
        _record, changed = record_retry_now(record_id=record_id, actor=actor, reason=reason)
    except InvalidTransition:
        if strict:
            raise
        return False
    return changed


def _queue_sync_retry(actor) -> None:
    from reconciliation.console.services import job_run_request

    job_run_request(name=RETRY_JOB, actor=actor)


def _require_decidable(mismatch: Mismatch) -> None:
    if mismatch.state not in (MismatchState.OPEN, MismatchState.APPROVED):
        raise InvalidTransition(f"cannot resolve a mismatch that is {mismatch.state}")


def bulk_approve(*, mismatches: Iterable[Mismatch], actor) -> list[ItemResult]:
    results = []
    for mismatch in mismatches:
        if not is_automatic(mismatch):
            results.append(
                ItemResult(
                    mismatch.pk,
                    False,
                    gettext("#%(id)s: no automatic fix") % {"id": mismatch.pk},
                )
            )
            continue
        try:
            fix_approve(mismatch=mismatch, actor=actor)
        except Ap24SyncError as exc:
            results.append(ItemResult(mismatch.pk, False, f"#{mismatch.pk}: {exc}"))
            continue
        message = gettext("#%(id)s approved, fix queued") % {"id": mismatch.pk}
        results.append(ItemResult(mismatch.pk, True, message))
    return results


def bulk_ignore(*, mismatches: Iterable[Mismatch], actor, reason: str) -> list[ItemResult]:
    results = []
    for mismatch in mismatches:
        try:
            mismatch_ignore(mismatch=mismatch, actor=actor, reason=reason)
        except Ap24SyncError as exc:
            results.append(ItemResult(mismatch.pk, False, f"#{mismatch.pk}: {exc}"))
            continue
        results.append(
            ItemResult(mismatch.pk, True, gettext("#%(id)s ignored") % {"id": mismatch.pk})
        )
    return results


def bulk_retry(*, mismatches: Iterable[Mismatch], actor) -> list[ItemResult]:
    """Each mismatch's record made due; one sync_retry run queued for all of them."""
    results = []
    for mismatch in mismatches:
        try:
            message = mismatch_retry_record(mismatch=mismatch, actor=actor, queue=False)
        except Ap24SyncError as exc:
            results.append(ItemResult(mismatch.pk, False, f"#{mismatch.pk}: {exc}"))
            continue
        results.append(ItemResult(mismatch.pk, True, message))
    if any(result.ok for result in results):
        _queue_sync_retry(actor)
    return results


# --- small helpers ------------------------------------------------------------------------------


def _int(value: Any, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise FixRefused(f"the proposed fix's {name} is not a Dolibarr id: {value!r}") from None
    if number <= 0:
        raise FixRefused(f"the proposed fix's {name} is not a Dolibarr id: {value!r}")
    return number


def _is_live(customer_id: str) -> bool:
    """Whether the Stripe customer is a live one (the link's `status`): from its record, else
    from the key's mode."""
    customer = snapshot_of(source=Source.STRIPE, kind="customer", external_id=customer_id)
    if customer is not None:
        return bool(customer.get("livemode"))
    return settings.STRIPE_API_KEY.startswith(("sk_live_", "rk_live_"))
