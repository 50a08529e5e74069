"""Pull Aipress24's rows into sync records, incrementally by its streams' cursors.

Streams (each its own `SyncRun` and `Cursor`, named `aipress24_<stream>`):

- `organisations`, `users` (`modified_at`): the customers. A snapshot carries `billed` — the
  organisation holds a Stripe customer, or a purchase by it (a member) or by the user (without
  organisation) was paid — which, once set, stays set (the snapshot keeps the console's
  knowledge). Every Stripe customer of an organisation becomes a `SourceAlias` of its record
  (the one it bills with marked `billing`), so that Stripe customers resolve to its thirdparty.
- `business_walls`, `subscriptions` (`updated_at`): a SIREN or VAT number typed on a Business
  Wall, a new Stripe customer of a subscription, move these and not the organisation's
  `modified_at`: the organisation is read again and observed. Subscriptions are records too —
  for the console to show, never billed from Aipress24 (their invoices come from Stripe).
- `purchases` (`paid_at`): the new sales. Each purchase's customer (its buyer's organisation,
  else the buyer) is read and observed as billed, and its payment intent becomes an alias.

`full=True` reads every stream from the start, and `purchases` by id over every purchase (the
scheduled pass that sees refunds, which move no column, README §9.1). A run reads Aipress24 and
writes local records only, one short transaction per page; a failure keeps what was stored
before it and leaves the cursor where it was.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from django.db import transaction

from reconciliation.connectors.aipress24 import Aipress24Reader
from reconciliation.connectors.aipress24_types import ChangeCursor, Organisation, User
from reconciliation.errors import CircuitOpenError, RemoteError
from reconciliation.models import RunState, Source, SourceAlias, SyncRecord, SyncState, Trigger
from reconciliation.services.records import record_retry_now, records_observe
from reconciliation.services.runs import run_finish, run_start
from reconciliation.sync.aipress24_mapping import (
    billing_customer_id,
    organisation_stripe_customers,
    snapshot_of_row,
)

logger = logging.getLogger(__name__)

PAGE_SIZE = 500
STREAMS = ("organisations", "users", "business_walls", "subscriptions", "purchases")


def job_name(stream: str) -> str:
    return f"aipress24_{stream}"


# --- snapshots ----------------------------------------------------------------------------------


def _billed_before(kind: str, ids: Iterable[str]) -> set[str]:
    """The records of these ids whose snapshot already says billed."""
    rows = SyncRecord.objects.filter(
        source=Source.AIPRESS24, kind=kind, external_id__in=list(ids)
    ).values_list("external_id", "snapshot")
    return {external_id for external_id, snapshot in rows if (snapshot or {}).get("billed")}


def organisation_snapshots(
    organisations: Iterable[Organisation], *, billed: set[str] = frozenset()
) -> list[tuple[str, dict[str, Any]]]:
    organisations = list(organisations)
    before = _billed_before("organisation", [row.id for row in organisations])
    return [
        (
            row.id,
            snapshot_of_row(
                row,
                billed=bool(row.stripe_customer_ids) or row.id in before or row.id in billed,
            ),
        )
        for row in organisations
    ]


def user_snapshots(
    users: Iterable[User], *, billed: set[str] = frozenset()
) -> list[tuple[str, dict[str, Any]]]:
    users = list(users)
    before = _billed_before("user", [row.id for row in users])
    return [
        (
            row.id,
            snapshot_of_row(
                row,
                email_is_placeholder=row.email_is_placeholder,
                billed=row.id in before or row.id in billed,
            ),
        )
        for row in users
    ]


def _store(
    kind: str,
    objects: list[tuple[str, dict[str, Any]]],
    counts: Counter[str],
    *,
    prefix: str = "",
) -> None:
    """Observe a page of one kind. `prefix` counts rows read for another stream's sake (the
    customers of purchases, the organisations of changed Business Walls) apart from the
    stream's own (`customers seen`, not `seen`)."""
    if not objects:
        return
    outcomes = records_observe(source=Source.AIPRESS24, kind=kind, objects=objects)
    counts[f"{prefix}seen"] += len(objects)
    counts.update(f"{prefix}{outcome.value}" for outcome in outcomes)
    if kind == "organisation":
        _alias_stripe_customers(objects)
    elif kind == "purchase":
        _alias_payment_intents(objects)


def _alias_stripe_customers(objects: list[tuple[str, dict[str, Any]]]) -> None:
    """Each Stripe customer of these organisations -> the organisation's record. A customer
    moved to another organisation follows it (the latest row read wins)."""
    wanted = {
        customer: (external_id, customer == billing_customer_id(snapshot))
        for external_id, snapshot in objects
        for customer in organisation_stripe_customers(snapshot)
    }
    _aliases("customer", wanted, "organisation")


def _alias_payment_intents(objects: list[tuple[str, dict[str, Any]]]) -> None:
    wanted = {
        snapshot["stripe_payment_intent_id"]: (external_id, False)
        for external_id, snapshot in objects
        if snapshot.get("stripe_payment_intent_id")
    }
    _aliases("payment_intent", wanted, "purchase")


def _aliases(kind: str, wanted: dict[str, tuple[str, bool]], record_kind: str) -> None:
    if not wanted:
        return
    records = dict(
        SyncRecord.objects.filter(
            source=Source.AIPRESS24,
            kind=record_kind,
            external_id__in={external_id for external_id, _ in wanted.values()},
        ).values_list("external_id", "pk")
    )
    remapped: list[str] = []
    with transaction.atomic():
        existing = {
            alias.external_id: alias
            for alias in SourceAlias.objects.select_for_update().filter(
                system=Source.STRIPE, kind=kind, external_id__in=list(wanted)
            )
        }
        for stripe_id, (external_id, billing) in wanted.items():
            record_id = records.get(external_id)
            if record_id is None:
                continue
            role = SourceAlias.Role.BILLING if billing else SourceAlias.Role.OTHER
            if kind != "customer":
                role = ""
            alias = existing.get(stripe_id)
            if alias is None:
                SourceAlias.objects.create(
                    system=Source.STRIPE,
                    kind=kind,
                    external_id=stripe_id,
                    record_id=record_id,
                    role=role,
                )
                remapped.append(stripe_id)
            elif (alias.record_id, alias.role) != (record_id, role):
                if alias.record_id != record_id:
                    remapped.append(stripe_id)
                alias.record_id, alias.role = record_id, role
                alias.save(update_fields=["record", "role", "updated_at"])
    if kind == "customer" and remapped:
        _resolve_again(remapped)


def _resolve_again(customer_ids: list[str]) -> None:
    """Stripe customer records settled before the console mapped them to an organisation (the
    Stripe sync ran first): due again, so that they resolve to the organisation's thirdparty."""
    settled = SyncRecord.objects.filter(
        source=Source.STRIPE, kind="customer", external_id__in=customer_ids
    ).exclude(state__in=[SyncState.PENDING, SyncState.IN_PROGRESS])
    for record_id, customer_id in settled.values_list("pk", "external_id"):
        record_retry_now(
            record_id=record_id,
            actor_label="aipress24 pull",
            reason=f"Stripe customer {customer_id} is now mapped to an Aipress24 organisation",
        )


# --- streams ------------------------------------------------------------------------------------


def _run_stream(
    *,
    stream: str,
    trigger: str,
    full: bool,
    read: Callable[[Any], tuple[Any, Any, bool]],
    decode: Callable[[str], Any],
    encode: Callable[[Any], str],
) -> dict[str, int]:
    """One stream's run: pages from the cursor (or the start) to the end, each stored as read."""
    run = run_start(job=job_name(stream), trigger=trigger)
    cursor = decode(run.cursor_before) if run.cursor_before and not full else None
    counts: Counter[str] = Counter()
    try:
        while True:
            cursor, page_counts, more = read(cursor)
            counts.update(page_counts)
            if not more:
                break
    except RemoteError as exc:
        deferred = isinstance(exc, CircuitOpenError)
        logger.warning("%s %s: %s", job_name(stream), "deferred" if deferred else "failed", exc)
        run_finish(
            run=run,
            state=RunState.DEFERRED if deferred else RunState.FAILED,
            counts=dict(counts),
            error=str(exc),
        )
        raise
    run_finish(
        run=run,
        counts=dict(counts),
        cursor_after=encode(cursor) if cursor is not None else run.cursor_before,
    )
    return dict(counts)


def _changes_reader(
    reader: Aipress24Reader, stream: str, page_size: int
) -> Callable[[Any], tuple[Any, Counter[str], bool]]:
    def read(cursor: ChangeCursor | None) -> tuple[Any, Counter[str], bool]:
        counts: Counter[str] = Counter()
        if stream == "organisations":
            page = reader.organisations_changed(since=cursor, page_size=page_size)
            _store("organisation", organisation_snapshots(page.rows), counts)
        elif stream == "users":
            page = reader.users_changed(since=cursor, page_size=page_size)
            _store("user", user_snapshots(page.rows), counts)
        elif stream in ("business_walls", "subscriptions"):
            fetch = (
                reader.business_walls_changed
                if stream == "business_walls"
                else reader.subscriptions_changed
            )
            page = fetch(since=cursor, page_size=page_size)
            if stream == "business_walls":
                counts["seen"] += len(page.rows)  # no records of their own: their organisations
            else:
                _store(
                    "subscription", [(row.id, snapshot_of_row(row)) for row in page.rows], counts
                )
            _refresh_organisations(reader, {row.organisation_id for row in page.rows}, counts)
        else:
            page = reader.purchases_paid(since=cursor, page_size=page_size)
            _store_purchases(reader, page.rows, counts)
        return (page.next_cursor or cursor), counts, page.has_more

    return read


def _refresh_organisations(
    reader: Aipress24Reader,
    ids: Iterable[str | None],
    counts: Counter[str],
    *,
    billed: set[str] = frozenset(),
) -> None:
    rows = [row for row in (reader.organisation(i) for i in sorted(filter(None, ids))) if row]
    _store("organisation", organisation_snapshots(rows, billed=billed), counts, prefix="customers ")


def _store_purchases(reader: Aipress24Reader, purchases: Iterable[Any], counts: Counter[str]):
    purchases = list(purchases)
    _store("purchase", [(row.id, snapshot_of_row(row)) for row in purchases], counts)
    paid = [row for row in purchases if row.paid_at is not None]
    organisations = {row.buyer_organisation_id for row in paid if row.buyer_organisation_id}
    individuals = {row.buyer_id for row in paid if not row.buyer_organisation_id}
    # Only customers not yet known as billed are read again.
    organisations -= _billed_before("organisation", organisations)
    individuals -= _billed_before("user", individuals)
    _refresh_organisations(reader, organisations, counts, billed=organisations)
    users = [row for row in (reader.user(i) for i in sorted(individuals)) if row]
    _store("user", user_snapshots(users, billed=individuals), counts, prefix="customers ")


def aipress24_stream_pull(
    *,
    reader: Aipress24Reader,
    stream: str,
    trigger: str = Trigger.SCHEDULE,
    full: bool = False,
    page_size: int = PAGE_SIZE,
) -> dict[str, int]:
    """One run of one stream; returns its counts (`seen`, `new`, `changed`, `unchanged`)."""
    if stream not in STREAMS:
        raise ValueError(f"unknown Aipress24 stream {stream!r}; one of {', '.join(STREAMS)}")
    if stream == "purchases" and full:

        def read_all(after: str | None) -> tuple[Any, Counter[str], bool]:
            counts: Counter[str] = Counter()
            page = reader.purchases_all(after=after, page_size=page_size)
            _store_purchases(reader, page.rows, counts)
            return page.next_cursor, counts, page.has_more

        # The full pass walks ids, not the `paid_at` cursor, which it leaves where it was.
        return _run_stream(
            stream=stream,
            trigger=trigger,
            full=True,
            read=read_all,
            decode=lambda text: None,
            encode=lambda cursor: "",
        )
    return _run_stream(
        stream=stream,
        trigger=trigger,
        full=full,
        read=_changes_reader(reader, stream, page_size),
        decode=ChangeCursor.decode,
        encode=lambda cursor: cursor.encode(),
    )


def aipress24_pull_all(
    *,
    reader: Aipress24Reader,
    trigger: str = Trigger.SCHEDULE,
    full: bool = False,
    on_pulled: Callable[[str, dict[str, int]], Any] | None = None,
) -> dict[str, dict[str, int]]:
    """Every stream once, customers first; counts per stream."""
    pulled = {}
    for stream in STREAMS:
        pulled[stream] = aipress24_stream_pull(
            reader=reader, stream=stream, trigger=trigger, full=full
        )
        if on_pulled is not None:
            on_pulled(stream, pulled[stream])
    return pulled
