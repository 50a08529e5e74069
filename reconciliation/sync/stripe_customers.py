"""Stripe customers -> Dolibarr thirdparties, linked to their Stripe customer.

Identity (DESIGN §3): a customer that belongs to an Aipress24 organisation or user
(`metadata.ap24_org_id` / `ap24_user_id`) is the thirdparty `ap24-org-<id>` / `ap24-user-<id>`,
the same one the Aipress24 sync writes; a Stripe-only customer is the thirdparty `cus_…`.
Either way the thirdparty is also linked to the Stripe customer through
`/thirdparties/{id}/accounts/stripe`, the link Dolibarr's own Stripe module reads.

A thirdparty created with an automatic code (`code_client "-1"`) takes a number, and parallel
creations fail on the code's unique key (README, "Concurrency"): creation runs in the numbered
lane. On a first attempt the batched look-up made right after the claim (`sync.known`) says
whether the thirdparty exists. Another record may create the same one in the meantime (an
organisation's identity is shared by all its Stripe customers, and by the Aipress24 sync): so,
inside the lane, the creation is noted before it is sent (`services/creations.py`), and a
holder that finds a note adopts the noted thirdparty, or asks Dolibarr when the noted call's
outcome is unknown. A new customer thus costs two calls: the creation and the Stripe link. On a
later attempt (an earlier call may have been applied unseen) Dolibarr is asked inside the lane.
"""

from __future__ import annotations

import re
from typing import Any

from reconciliation.connectors.dolibarr_types import Thirdparty
from reconciliation.errors import NotFoundError, TransientError
from reconciliation.models import MismatchKind, Source, SourceAlias, SyncRecord
from reconciliation.services.creations import creation_confirm, creation_forget, creation_note
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

DOLIBARR_KIND = "thirdparty"

# Aipress24 ids go into a sqlfilters value and a ref_ext: anything else is not an id.
_AP24_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# Stripe tax id types that are VAT numbers (Dolibarr's `tva_intra`).
_VAT_TYPES = ("eu_vat", "gb_vat", "ch_vat", "no_vat")


def thirdparty_ref_ext(customer: dict[str, Any]) -> str:
    """The identity of the customer's thirdparty: the Aipress24 organisation or user named in
    its metadata, else the one the console maps it to (`SourceAlias`: every Stripe customer of
    an Aipress24 organisation, written by the Aipress24 pull), else the customer itself."""
    metadata = customer.get("metadata") or {}
    for key, prefix in (("ap24_org_id", "ap24-org"), ("ap24_user_id", "ap24-user")):
        value = str(metadata.get(key) or "")
        if value and _AP24_ID.match(value):
            return f"{prefix}-{value}"
    mapped = _mapped_identity(customer["id"])
    return mapped[0] if mapped else customer["id"]


def _mapped_identity(customer_id: str) -> tuple[str, str] | None:
    """(`ap24-org-<id>` or `ap24-user-<id>`, the alias role) when the console maps this Stripe
    customer to an Aipress24 record."""
    alias = (
        SourceAlias.objects.filter(system=Source.STRIPE, kind="customer", external_id=customer_id)
        .values_list("record__kind", "record__external_id", "role")
        .first()
    )
    if alias is None:
        return None
    kind, external_id, role = alias
    prefix = "ap24-org" if kind == "organisation" else "ap24-user"
    return f"{prefix}-{external_id}", role


@wants("stripe", "customer")
def _customer_wants(record: SyncRecord) -> Wanted:
    return Wanted(thirdparties={thirdparty_ref_ext(record.snapshot)})


def _vat_number(customer: dict[str, Any], context: SyncContext) -> str | None:
    """The first VAT number among the customer's tax ids: from the snapshot when they were
    expanded, else read from Stripe (the customers list does not include them)."""
    tax_ids = customer.get("tax_ids")
    if tax_ids is None and context.stripe is not None:
        tax_ids = context.stripe.customer(customer["id"], with_tax_ids=True).get("tax_ids")
    items = tax_ids.get("data") if isinstance(tax_ids, dict) else tax_ids
    for item in items or ():
        if isinstance(item, dict) and item.get("type") in _VAT_TYPES and item.get("value"):
            return str(item["value"])
    return None


def thirdparty_fields(customer: dict[str, Any]) -> dict[str, str | None]:
    address = customer.get("address") or {}
    street = "\n".join(part for part in (address.get("line1"), address.get("line2")) if part)
    return {
        "name": customer.get("name") or customer.get("email") or customer["id"],
        "email": customer.get("email") or None,
        "address": street or None,
        "zip": address.get("postal_code") or None,
        "town": address.get("city") or None,
        "country_code": address.get("country") or None,
    }


@handler("stripe", "customer")
def stripe_customer_sync(record: SyncRecord, context: SyncContext) -> Outcome:
    customer = record.snapshot
    if customer.get("deleted"):
        return Skipped("deleted in Stripe: its thirdparty, if any, is kept")
    customer_id = customer["id"]
    ref_ext = thirdparty_ref_ext(customer)
    shared = ref_ext != customer_id
    dolibarr = context.dolibarr

    # On a first attempt the batched look-up is trusted; on a later one Dolibarr is asked again.
    candidates = find_thirdparties(context, record, ref_ext) if record.attempts <= 1 else None
    created_id: int | None = None
    if not candidates:
        # Everything that may call Stripe happens before the lane: the lane holds up every
        # worker's validations and payments while it is held.
        fields = {
            **thirdparty_fields(customer),
            "phone": customer.get("phone") or None,
            "tva_intra": _vat_number(customer, context),
        }
        noted_id: int | None = None
        with context.lane.hold():
            # A dry run writes nothing, not even a note: it asks Dolibarr.
            earlier = (
                None if context.dry_run else creation_note(kind=DOLIBARR_KIND, ref_ext=ref_ext)
            )
            if earlier is not None and earlier.remote_id:
                noted_id = earlier.remote_id
            else:
                if earlier is not None or candidates is None:
                    # An earlier create's outcome is unknown, or this is a retry: ask.
                    candidates = dolibarr.find_thirdparties(ref_ext=ref_ext)
                if not candidates:
                    created_id = dolibarr.create_thirdparty(
                        **fields,
                        ref_ext=ref_ext,
                        note_private=f"Stripe customer {customer_id}",
                        client=1,
                        code_client="-1",
                    )
        # Confirmed after the lane: until then, a holder for the same identity asks Dolibarr.
        found_id = created_id if created_id is not None else single_thirdparty_id(candidates)
        if found_id is not None and not context.dry_run:
            creation_confirm(kind=DOLIBARR_KIND, ref_ext=ref_ext, remote_id=found_id)
        if noted_id is not None:
            candidates = [noted_thirdparty(context, ref_ext, noted_id)]
    if created_id is None and len(candidates) > 1:
        ids = [thirdparty.id for thirdparty in candidates]
        return NeedsReview(
            reason=f"{len(ids)} thirdparties carry ref_ext {ref_ext}",
            mismatch=MismatchSpec(
                kind=MismatchKind.DUPLICATE_IN_DOLIBARR,
                fingerprint_parts=("stripe", "customer", customer_id),
                summary=f"{len(ids)} Dolibarr thirdparties carry ref_ext {ref_ext} "
                f"(ids {', '.join(map(str, ids))})",
                source_snapshot=customer,
                dolibarr_snapshot={"thirdparty_ids": ids},
                proposed_fix="merge_thirdparties",
                proposed_fix_params={"keep": ids[0], "merge": ids[1:]},
            ),
        )

    if created_id is not None:
        thirdparty_id = created_id
        link = None
    else:
        thirdparty = candidates[0]
        thirdparty_id = thirdparty.id
        _update_thirdparty(thirdparty, customer, context, last_write_wins=not shared)
        if shared and _mapped_identity(customer_id) is not None:
            # An Aipress24 organisation's customer: the organisation's record owns the
            # thirdparty's one Stripe link (the customer it bills with, `aipress24_customers`);
            # this one maps to the same thirdparty through the console's own mapping.
            return Synced(DOLIBARR_KIND, thirdparty_id)
        link = dolibarr.stripe_link(thirdparty_id=thirdparty_id)
    if link is not None and link.customer_id != customer_id:
        if shared and _same_identity(link.customer_id, ref_ext):
            # Another Stripe customer of the same organisation or user holds the thirdparty's
            # one Stripe link: this one is mapped to the same thirdparty by its own record, so
            # its invoices and payments land there too; the link is left as it is.
            return Synced(DOLIBARR_KIND, thirdparty_id)
        return NeedsReview(
            reason=f"thirdparty {thirdparty_id} is linked to Stripe customer {link.customer_id}",
            mismatch=MismatchSpec(
                kind=MismatchKind.CUSTOMER_CONFLICT,
                fingerprint_parts=("stripe", "customer", customer_id, "link"),
                summary=f"Thirdparty {thirdparty_id} ({ref_ext}) is already linked to Stripe "
                f"customer {link.customer_id}; {customer_id} belongs to it too, and a thirdparty "
                "holds one Stripe link",
                source_snapshot=customer,
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
    if link is None:
        dolibarr.link_stripe_customer(
            thirdparty_id=thirdparty_id,
            customer_id=customer_id,
            live=bool(customer.get("livemode")),
            known_unlinked=True,
        )
    return Synced(DOLIBARR_KIND, thirdparty_id)


def _same_identity(customer_id: str, ref_ext: str) -> bool:
    """Whether `customer_id` is a Stripe customer this console knows as the identity `ref_ext`
    (one Aipress24 organisation with two Stripe customers, say)."""
    snapshot = snapshot_of(source=Source.STRIPE, kind="customer", external_id=customer_id)
    return snapshot is not None and thirdparty_ref_ext(snapshot) == ref_ext


def single_thirdparty_id(candidates: list[Thirdparty] | None) -> int | None:
    return candidates[0].id if candidates and len(candidates) == 1 else None


def noted_thirdparty(context: SyncContext, ref_ext: str, thirdparty_id: int) -> Thirdparty:
    """The thirdparty another record created for this identity after this one looked."""
    try:
        return context.dolibarr.get_thirdparty(thirdparty_id=thirdparty_id)
    except NotFoundError as exc:
        # Deleted in Dolibarr since: forget the note; the next attempt asks Dolibarr.
        creation_forget(kind=DOLIBARR_KIND, ref_ext=ref_ext)
        raise TransientError(
            f"thirdparty {thirdparty_id} ({ref_ext}) was created by this console but is no "
            "longer in Dolibarr; it will be looked up again",
            system="dolibarr",
        ) from exc


def _update_thirdparty(
    thirdparty: Thirdparty, customer: dict[str, Any], context: SyncContext, *, last_write_wins
) -> None:
    """Bring an adopted thirdparty up to date. A Stripe-only thirdparty (ours) takes Stripe's
    values (last write wins); an Aipress24 one belongs to the Aipress24 sync, so Stripe only
    fills what is empty there."""
    wanted = thirdparty_fields(customer)
    current = {
        "name": thirdparty.name,
        "email": thirdparty.email,
        "address": thirdparty.address,
        "zip": thirdparty.zip,
        "town": thirdparty.town,
        "country_code": thirdparty.country_code,
    }
    changes = {
        key: value
        for key, value in wanted.items()
        if value and value != current[key] and (last_write_wins or not current[key])
    }
    if not thirdparty.tva_intra or last_write_wins:
        vat = _vat_number(customer, context)
        if vat and vat != thirdparty.tva_intra:
            changes["tva_intra"] = vat
    if changes:
        context.dolibarr.update_thirdparty(thirdparty_id=thirdparty.id, changes=changes)
