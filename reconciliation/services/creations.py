"""Notes of the Dolibarr objects created once per `ref_ext` (`RemoteCreation`).

Used inside the numbered lane, around the create call, so that the next holder of the lane for
the same `ref_ext` knows what happened without a look-up in Dolibarr:

    with context.lane.hold():
        earlier = creation_note(kind="thirdparty", ref_ext=ref_ext)
        if earlier is None:           # nothing of ours: create it
            new_id = dolibarr.create_thirdparty(...)
            creation_confirm(kind="thirdparty", ref_ext=ref_ext, remote_id=new_id)
        elif earlier.remote_id:       # created by another record: adopt it
            ...
        else:                         # an earlier call's outcome is unknown: ask Dolibarr
            ...

Each function is one short statement in autocommit, never a transaction around the network
call. The notes write no audit event: the create call they guard is audited itself
(`sync.remote.AuditedDolibarr`), and a note changes nothing a person decides on.
"""

from __future__ import annotations

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from reconciliation.models import RemoteCreation


def creation_note(*, kind: str, ref_ext: str) -> RemoteCreation | None:
    """Note that `kind ref_ext` is about to be created. None when the note is new (go ahead);
    the earlier note when there is one (then do not create blindly). One INSERT in the usual
    case: it runs inside the lane, where every statement holds up the other workers."""
    try:
        if connection.in_atomic_block:
            with transaction.atomic():  # a savepoint: the failed INSERT must not spoil it
                RemoteCreation.objects.create(kind=kind, ref_ext=ref_ext)
        else:
            # Autocommit: the INSERT is its own transaction; a failed one leaves nothing.
            RemoteCreation.objects.create(kind=kind, ref_ext=ref_ext)
    except IntegrityError:
        return RemoteCreation.objects.get(kind=kind, ref_ext=ref_ext)
    return None


def creation_confirm(*, kind: str, ref_ext: str, remote_id: int) -> None:
    """The object exists in Dolibarr under `remote_id` (created, or found by a look-up)."""
    updated = RemoteCreation.objects.filter(kind=kind, ref_ext=ref_ext).update(
        remote_id=remote_id, confirmed_at=timezone.now()
    )
    if not updated:
        RemoteCreation.objects.create(
            kind=kind, ref_ext=ref_ext, remote_id=remote_id, confirmed_at=timezone.now()
        )


def creation_forget(*, kind: str, ref_ext: str) -> None:
    """The noted object is gone from Dolibarr (deleted by hand): the next holder looks it up."""
    RemoteCreation.objects.filter(kind=kind, ref_ext=ref_ext).delete()
