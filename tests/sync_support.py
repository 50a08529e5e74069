"""Helpers for the sync tests: a context on the sandboxes, a normalised dump of what Dolibarr
holds (read through the client, over HTTP), and a client wrapper that dies after k writes."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from typing import Any

from django.utils import timezone

from reconciliation.connectors.dolibarr import DolibarrClient
from reconciliation.models import Mismatch, RemoteCreation, SyncRecord, SyncState
from reconciliation.services.records import record_observe
from reconciliation.sync.engine import build_context, sync_due
from reconciliation.sync.lane import LocalLane
from reconciliation.sync.remote import WRITES
from reconciliation.sync.stripe_customers import thirdparty_ref_ext


class Crash(BaseException):
    """The process dies: not an Exception, so nothing in the engine catches it."""


class CrashingClient:
    """The real client, killed right after its k-th write was applied."""

    def __init__(self, client: DolibarrClient, *, after: int) -> None:
        self._client = client
        self.after = after
        self.writes = 0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if name not in WRITES:
            return attribute

        def write(**kwargs: Any) -> Any:
            result = attribute(**kwargs)
            self.writes += 1
            if self.writes == self.after:
                raise Crash(f"killed after write {self.writes} ({name})")
            return result

        return write


def context_for(client: Any, stripe: Any, *, url: str, dry_run: bool = False):
    return build_context(
        client=client, stripe=stripe, lane=LocalLane(url, timeout=30), dry_run=dry_run
    )


def no_delay(attempts: int) -> timedelta:
    return timedelta(0)


def sync_until_settled(context, *, rounds: int = 30, **options: Any) -> int:
    """Run the engine until nothing is due (retry delays made immediate); returns the rounds."""
    options.setdefault("delay_for", no_delay)
    for round_number in range(1, rounds + 1):
        counts = sync_due(context=context, **options)
        if not counts["processed"]:
            return round_number
    raise AssertionError(f"still records due after {rounds} rounds")


def expire_leases() -> None:
    """What the lease does after a worker died: its in-progress records become claimable."""
    SyncRecord.objects.filter(state=SyncState.IN_PROGRESS).update(
        last_attempt_at=timezone.now() - timedelta(days=1)
    )


def observed_snapshots() -> list[tuple[str, str, str, dict]]:
    return list(
        SyncRecord.objects.order_by("id").values_list("source", "kind", "external_id", "snapshot")
    )


def restart_from(snapshots: list[tuple[str, str, str, dict]]) -> None:
    """Forget every record, mismatch and creation note (for a Dolibarr sandbox reset to
    empty), then observe the same source objects again."""
    Mismatch.objects.all().delete()
    SyncRecord.objects.all().delete()
    RemoteCreation.objects.all().delete()
    for source, kind, external_id, snapshot in snapshots:
        record_observe(source=source, kind=kind, external_id=external_id, snapshot=snapshot)


def thirdparty_refs() -> list[str]:
    return sorted(
        {
            thirdparty_ref_ext(snapshot)
            for snapshot in SyncRecord.objects.filter(kind="customer").values_list(
                "snapshot", flat=True
            )
        }
    )


def dolibarr_state(client: DolibarrClient) -> dict[str, Any]:
    """What Dolibarr holds, without its ids and numbers (which depend on the order of work):
    invoices and credit notes by ref_ext, payments by ref_ext with the invoice they pay,
    thirdparties by ref_ext with their Stripe link. Lists, so that a duplicate shows."""
    invoices: dict[str, list] = defaultdict(list)
    payments: dict[str, list] = defaultdict(list)
    for invoice in client.iter_invoices(
        properties=("ref_ext", "type", "statut", "paye", "total_ttc", "close_code")
    ):
        invoices[invoice.ref_ext].append(
            (
                invoice.type,
                invoice.status,
                invoice.paid,
                f"{invoice.total_ttc:f}",
                invoice.close_code,
            )
        )
        for payment in client.invoice_payments(invoice_id=invoice.id):
            payments[payment.ref_ext].append((invoice.ref_ext, f"{payment.amount:f}"))
    thirdparties: dict[str, list] = {}
    for ref, found in client.find_thirdparties_by_ref_exts(ref_exts=thirdparty_refs()).items():
        thirdparties[ref] = []
        for thirdparty in found:
            link = client.stripe_link(thirdparty_id=thirdparty.id)
            thirdparties[ref].append(
                (thirdparty.name, thirdparty.email, link.customer_id if link else None)
            )
    return {
        "invoices": dict(invoices),
        "payments": dict(payments),
        "thirdparties": thirdparties,
    }
