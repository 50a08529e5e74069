"""Aipress24 organisations and users -> Dolibarr thirdparties, with conflict detection.

Who becomes a thirdparty (docs/aipress24-sync.md):
- an organisation that is billed — it holds a Stripe customer (subscriptions) or a member's
  purchase was paid (`billed`, set by the pull and never unset) — or that is a partner (its
  active Business Wall is of a type in AIPRESS24_PARTNER_WALL_TYPES): `ap24-org-<id>`;
- a user without organisation whose purchase was paid: an individual customer, `ap24-user-<id>`.
  A member of an organisation is billed through it; the others are skipped with the reason.

Identity and the Stripe link: the thirdparty is found by `ref_ext` before anything is created
(creation runs in the numbered lane, noted first, as for Stripe customers). An organisation's
thirdparty is linked to the Stripe customer it bills with (`billing_customer_id`); its other
Stripe customers are kept in the console's own mapping (`SourceAlias`, written by the pull), so
that their payments resolve to the same thirdparty (`stripe_customers`). Dolibarr holds one link
per thirdparty: a link to another customer *of the same organisation* is replaced, a link to
anything else is a `customer_conflict` for a person.

Conflicts: each sync compares, field by field, the current Aipress24 value, the current
Dolibarr value and what each side held after the last sync (`SyncBaseline`). Changed on one
side only: that side wins (an Aipress24 change is written to Dolibarr; a Dolibarr change is
kept, Aipress24 being read-only). Changed on both sides to different values: a
`customer_conflict` mismatch with the three values, and that field is not written until a
person decides; the other fields still follow their side. With no baseline yet (first sync of a
thirdparty found in Dolibarr), Aipress24 — the source of truth for who the customer is — wins,
except that an empty Aipress24 value never blanks a Dolibarr one.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from reconciliation.connectors.dolibarr_types import Thirdparty
from reconciliation.models import MismatchKind, Source, SyncBaseline, SyncRecord
from reconciliation.services.creations import creation_confirm, creation_note
from reconciliation.services.records import record_observe
from reconciliation.sync.aipress24_mapping import (
    THIRDPARTY_FIELDS,
    billing_customer_id,
    is_partner,
    organisation_fields,
    organisation_ref_ext,
    organisation_stripe_customers,
    snapshot_of_row,
    thirdparty_values,
    user_fields,
    user_ref_ext,
)
from reconciliation.sync.base import (
    MismatchSpec,
    NeedsReview,
    Outcome,
    Skipped,
    SyncContext,
    Synced,
    handler,
)
from reconciliation.sync.dependencies import snapshot_of
from reconciliation.sync.known import Wanted, find_thirdparties, wants
from reconciliation.sync.stripe_customers import noted_thirdparty, single_thirdparty_id

DOLIBARR_KIND = "thirdparty"
# What a new thirdparty is created with, from the mapped fields (`client`, `status` aside).
_CREATED_FIELDS = (
    "name",
    "email",
    "address",
    "zip",
    "town",
    "country_code",
    "phone",
    "tva_intra",
    "idprof1",
)

NOT_A_CUSTOMER = (
    "not a customer: no Stripe customer, no paid purchase by a member, not a partner; "
    "it becomes a thirdparty once billed"
)
GONE = "no longer in Aipress24 (hard-deleted there); its thirdparty, if any, is kept"


@wants("aipress24", "organisation")
def _organisation_wants(record: SyncRecord) -> Wanted:
    return Wanted(thirdparties={organisation_ref_ext(record.external_id)})


@wants("aipress24", "user")
def _user_wants(record: SyncRecord) -> Wanted:
    return Wanted(thirdparties={user_ref_ext(record.external_id)})


def current_snapshot(record: SyncRecord, context: SyncContext) -> dict[str, Any] | None:
    """The row as Aipress24 holds it now (None: hard-deleted), read through the reader when the
    context has one and stored on the record; else the pull's snapshot. The pull's `billed` flag
    is carried over: it is the console's knowledge, not a column."""
    reader = context.aipress24
    if reader is None:
        return record.snapshot
    lookup = reader.organisation if record.kind == "organisation" else reader.user
    row = lookup(record.external_id)
    if row is None:
        return None
    extra: dict[str, Any] = {"billed": bool(record.snapshot.get("billed"))}
    if record.kind == "user":
        extra["email_is_placeholder"] = row.email_is_placeholder
    return observe_current(record, context, snapshot_of_row(row, **extra))


def observe_current(
    record: SyncRecord, context: SyncContext, snapshot: dict[str, Any]
) -> dict[str, Any]:
    """Keep on the record the row as the handler read it (a source change, audited), unless
    it is what the record holds already or this is a dry run; returns it."""
    if snapshot != record.snapshot and not context.dry_run:
        record_observe(
            source=record.source,
            kind=record.kind,
            external_id=record.external_id,
            snapshot=snapshot,
        )
    return snapshot


@handler("aipress24", "organisation")
def aipress24_organisation_sync(record: SyncRecord, context: SyncContext) -> Outcome:
    snapshot = current_snapshot(record, context)
    if snapshot is None:
        return Skipped(GONE)
    if not snapshot.get("billed") and not is_partner(snapshot):
        return Skipped(NOT_A_CUSTOMER)
    return _sync_thirdparty(
        record,
        context,
        snapshot=snapshot,
        ref_ext=organisation_ref_ext(record.external_id),
        wanted=organisation_fields(snapshot),
        note=f"Aipress24 organisation {record.external_id} ({snapshot.get('slug')})",
        stripe_customer=billing_customer_id(snapshot),
        own_customers=organisation_stripe_customers(snapshot),
    )


@handler("aipress24", "user")
def aipress24_user_sync(record: SyncRecord, context: SyncContext) -> Outcome:
    snapshot = current_snapshot(record, context)
    if snapshot is None:
        return Skipped(GONE)
    if snapshot.get("organisation_id"):
        return Skipped(
            f"member of organisation {snapshot['organisation_id']}: billed through its "
            "thirdparty, not as an individual"
        )
    if not snapshot.get("billed"):
        return Skipped("no paid purchase: an individual becomes a thirdparty once billed")
    return _sync_thirdparty(
        record,
        context,
        snapshot=snapshot,
        ref_ext=user_ref_ext(record.external_id),
        wanted=user_fields(snapshot),
        note=f"Aipress24 user {record.external_id} (individual customer)",
        stripe_customer=None,
        own_customers=[],
    )


# --- the thirdparty -----------------------------------------------------------------------------


def _sync_thirdparty(
    record: SyncRecord,
    context: SyncContext,
    *,
    snapshot: dict[str, Any],
    ref_ext: str,
    wanted: dict[str, Any],
    note: str,
    stripe_customer: str | None,
    own_customers: list[str],
) -> Outcome:
    found = _find_or_create(
        record, context, ref_ext=ref_ext, wanted=wanted, note=note, create=wanted["status"] != 0
    )
    if found is None:
        return Skipped("soft-deleted in Aipress24 before it was ever a thirdparty: none created")
    if isinstance(found, NeedsReview):
        return found
    thirdparty_id, existing = found
    created = existing is None
    if created:
        agreed_source, agreed_dolibarr, conflicts = dict(wanted), dict(wanted), {}
    else:
        baseline = SyncBaseline.objects.filter(record_id=record.pk).first()
        changes, agreed_source, agreed_dolibarr, conflicts = three_way(
            wanted=wanted,
            current=thirdparty_values(existing),
            baseline=(baseline.source_values, baseline.dolibarr_values) if baseline else None,
        )
        if changes:
            context.dolibarr.update_thirdparty(thirdparty_id=thirdparty_id, changes=changes)
    if not context.dry_run:
        SyncBaseline.objects.update_or_create(
            record_id=record.pk,
            defaults={"source_values": agreed_source, "dolibarr_values": agreed_dolibarr},
        )
    if stripe_customer:
        linked = _link_stripe(
            record,
            context,
            thirdparty_id=thirdparty_id,
            ref_ext=ref_ext,
            customer_id=stripe_customer,
            own_customers=own_customers,
            known_unlinked=created,
            live=_is_live(stripe_customer),
        )
        if linked is not None:
            return linked
    if conflicts:
        return _conflict(record, thirdparty_id, ref_ext, snapshot, conflicts)
    return Synced(DOLIBARR_KIND, thirdparty_id, (existing.code_client if existing else "") or "")


def three_way(
    *,
    wanted: dict[str, Any],
    current: dict[str, Any],
    baseline: tuple[dict[str, Any], dict[str, Any]] | None,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, dict[str, Any]]]:
    """Field by field: what to write to Dolibarr, the new baseline of each side, and the
    conflicts (`{field: {"last_synced": …, "aipress24": …, "dolibarr": …}}`)."""
    changes: dict[str, Any] = {}
    agreed_source: dict[str, Any] = {}
    agreed_dolibarr: dict[str, Any] = {}
    conflicts: dict[str, dict[str, Any]] = {}
    for name in THIRDPARTY_FIELDS:
        source, dolibarr = wanted.get(name), current.get(name)
        if baseline is None or name not in baseline[0]:
            # First sync of an existing thirdparty: Aipress24 wins, but never blanks a value.
            if source is not None and source != dolibarr:
                changes[name] = source
                dolibarr = source
            agreed_source[name], agreed_dolibarr[name] = source, dolibarr
            continue
        base_source, base_dolibarr = baseline[0].get(name), baseline[1].get(name)
        source_changed, dolibarr_changed = source != base_source, dolibarr != base_dolibarr
        if source_changed and dolibarr_changed and source != dolibarr:
            conflicts[name] = {
                "last_synced": base_source if base_source == base_dolibarr else base_dolibarr,
                "aipress24": source,
                "dolibarr": dolibarr,
            }
            agreed_source[name], agreed_dolibarr[name] = base_source, base_dolibarr
        elif source_changed and not dolibarr_changed:
            changes[name] = source
            agreed_source[name] = agreed_dolibarr[name] = source
        else:
            # Unchanged, changed in Dolibarr only (kept), or changed on both sides alike.
            agreed_source[name], agreed_dolibarr[name] = source, dolibarr
    return changes, agreed_source, agreed_dolibarr, conflicts


def _conflict(
    record: SyncRecord,
    thirdparty_id: int,
    ref_ext: str,
    snapshot: dict[str, Any],
    conflicts: dict[str, dict[str, Any]],
) -> NeedsReview:
    shown = "; ".join(
        f"{name}: last synced {values['last_synced']!r}, Aipress24 {values['aipress24']!r}, "
        f"Dolibarr {values['dolibarr']!r}"
        for name, values in sorted(conflicts.items())
    )
    summary = (
        f"Thirdparty {thirdparty_id} ({ref_ext}) was changed in Dolibarr and its "
        f"{record.kind} in Aipress24 since the last sync — {shown}. Neither side was "
        "overwritten: choose the value that wins"
    )
    return NeedsReview(
        reason=summary,
        mismatch=MismatchSpec(
            kind=MismatchKind.CUSTOMER_CONFLICT,
            fingerprint_parts=("aipress24", record.kind, record.external_id, "fields"),
            summary=summary,
            source_snapshot={
                "aipress24": {name: values["aipress24"] for name, values in conflicts.items()},
                "last_synced": {name: values["last_synced"] for name, values in conflicts.items()},
                "row": snapshot,
            },
            dolibarr_snapshot={
                "thirdparty_id": thirdparty_id,
                "dolibarr": {name: values["dolibarr"] for name, values in conflicts.items()},
            },
            proposed_fix="",
            proposed_fix_params={"thirdparty_id": thirdparty_id, "fields": conflicts},
        ),
        dolibarr_kind=DOLIBARR_KIND,
        dolibarr_id=thirdparty_id,
    )


def _find_or_create(
    record: SyncRecord,
    context: SyncContext,
    *,
    ref_ext: str,
    wanted: dict[str, Any],
    note: str,
    create: bool,
) -> tuple[int, Thirdparty | None] | NeedsReview | None:
    """(id, the thirdparty as Dolibarr holds it) of the one thirdparty carrying `ref_ext`, or
    (id, None) when it was created now (in the numbered lane, noted first) because there was
    none and `create`; a review when several carry it; None when none and not `create`."""
    dolibarr = context.dolibarr
    candidates = find_thirdparties(context, record, ref_ext) if record.attempts <= 1 else None
    created_id: int | None = None
    if not candidates and not create:
        candidates = (
            candidates if candidates is not None else dolibarr.find_thirdparties(ref_ext=ref_ext)
        )
        if not candidates:
            return None
    if not candidates:
        noted_id: int | None = None
        with context.lane.hold():
            earlier = (
                None if context.dry_run else creation_note(kind=DOLIBARR_KIND, ref_ext=ref_ext)
            )
            if earlier is not None and earlier.remote_id:
                noted_id = earlier.remote_id
            else:
                if earlier is not None or candidates is None:
                    candidates = dolibarr.find_thirdparties(ref_ext=ref_ext)
                if not candidates:
                    created_id = dolibarr.create_thirdparty(
                        **{name: wanted.get(name) for name in _CREATED_FIELDS},
                        ref_ext=ref_ext,
                        note_private=note,
                        client=wanted.get("client") or 1,
                        code_client="-1",
                    )
        found_id = created_id if created_id is not None else single_thirdparty_id(candidates)
        if found_id is not None and not context.dry_run:
            creation_confirm(kind=DOLIBARR_KIND, ref_ext=ref_ext, remote_id=found_id)
        if noted_id is not None:
            candidates = [noted_thirdparty(context, ref_ext, noted_id)]
    if created_id is not None:
        return created_id, None
    if len(candidates) > 1:
        ids = [thirdparty.id for thirdparty in candidates]
        return NeedsReview(
            reason=f"{len(ids)} thirdparties carry ref_ext {ref_ext}",
            mismatch=MismatchSpec(
                kind=MismatchKind.DUPLICATE_IN_DOLIBARR,
                fingerprint_parts=("aipress24", record.kind, record.external_id),
                summary=f"{len(ids)} Dolibarr thirdparties carry ref_ext {ref_ext} "
                f"(ids {', '.join(map(str, ids))})",
                source_snapshot=record.snapshot,
                dolibarr_snapshot={"thirdparty_ids": ids},
                proposed_fix="merge_thirdparties",
                proposed_fix_params={"keep": ids[0], "merge": ids[1:]},
            ),
        )
    return candidates[0].id, candidates[0]


# --- the Stripe link ----------------------------------------------------------------------------


def _is_live(customer_id: str) -> bool:
    """Whether the Stripe customer is a live one (the link's `status`, which Dolibarr's Stripe
    module filters on): from its Stripe record when the console has one, else from the key."""
    customer = snapshot_of(source=Source.STRIPE, kind="customer", external_id=customer_id)
    if customer is not None:
        return bool(customer.get("livemode"))
    return settings.STRIPE_API_KEY.startswith(("sk_live_", "rk_live_"))


def _link_stripe(
    record: SyncRecord,
    context: SyncContext,
    *,
    thirdparty_id: int,
    ref_ext: str,
    customer_id: str,
    own_customers: list[str],
    known_unlinked: bool,
    live: bool,
) -> NeedsReview | None:
    """Link the billing Stripe customer; a link to another of the organisation's own customers
    is replaced (the console maps that one itself), a link to a stranger goes to a person."""
    dolibarr = context.dolibarr
    link = None if known_unlinked else dolibarr.stripe_link(thirdparty_id=thirdparty_id)
    if link is not None and link.customer_id == customer_id:
        return None
    if link is not None and link.customer_id not in own_customers:
        summary = (
            f"Thirdparty {thirdparty_id} ({ref_ext}) is linked to Stripe customer "
            f"{link.customer_id}, which is not one of this organisation's "
            f"({', '.join(own_customers)}); it bills with {customer_id}"
        )
        return NeedsReview(
            reason=summary,
            mismatch=MismatchSpec(
                kind=MismatchKind.CUSTOMER_CONFLICT,
                fingerprint_parts=("aipress24", record.kind, record.external_id, "link"),
                summary=summary,
                source_snapshot={"stripe_customers": own_customers, "billing": customer_id},
                dolibarr_snapshot={"thirdparty_id": thirdparty_id, "linked": link.customer_id},
                proposed_fix="replace_stripe_link",
                proposed_fix_params={
                    "thirdparty_id": thirdparty_id,
                    "customer_id": customer_id,
                    "current_customer_id": link.customer_id,
                },
            ),
            dolibarr_kind=DOLIBARR_KIND,
            dolibarr_id=thirdparty_id,
        )
    dolibarr.link_stripe_customer(
        thirdparty_id=thirdparty_id,
        customer_id=customer_id,
        live=live,
        replace=link is not None,
        known_unlinked=link is None,
    )
    return None


@handler("aipress24", "subscription")
def aipress24_subscription_sync(record: SyncRecord, context: SyncContext) -> Outcome:
    """A Business Wall subscription is billed from its Stripe invoices (the Stripe sync), never
    also from Aipress24, whose row holds no price (README §9.2): nothing is written for it. Its
    Stripe customer and its organisation reach Dolibarr through the organisation's record."""
    snapshot = record.snapshot
    subscription = snapshot.get("stripe_subscription_id")
    where = f"Stripe subscription {subscription}" if subscription else "no Stripe subscription yet"
    return Skipped(
        f"billed from Stripe's invoices ({where}), never from Aipress24; its customer is "
        f"organisation {snapshot.get('organisation_id') or '(none)'}"
    )
