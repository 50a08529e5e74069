"""The reconciliation job: detect (reads only), then record what was found — each finding
opens or refreshes its mismatch (one per fingerprint), and each subject found in step closes
its open mismatch, with an audit event."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from reconciliation.models import Mismatch, MismatchState, RunState, SyncRecord, Trigger
from reconciliation.reconcile.detect import Detection, detect
from reconciliation.services.mismatches import (
    mismatch_detected,
    mismatch_fingerprint,
    mismatches_close_fingerprints,
)
from reconciliation.services.runs import run_finish, run_start

JOB = "reconcile"
CLOSED_NOTE = "The reconciliation found it in step again"


@dataclass
class ReconcileResult:
    counts: Counter[str] = field(default_factory=Counter)
    detection: Detection | None = None


def default_since(now: datetime | None = None) -> datetime:
    """The scheduled run's window: what changed in the last `RECONCILE_WINDOW_DAYS` days."""
    return (now or timezone.now()) - timedelta(days=settings.RECONCILE_WINDOW_DAYS)


def reconcile(
    *,
    dolibarr: Any,
    setup: Any,
    stripe: Any = None,
    since: datetime | None = None,
    trigger: str = Trigger.MANUAL,
    actor=None,
) -> ReconcileResult:
    """One run over the window (`since` None: all time). Remote reads happen first, outside
    any transaction; then each mismatch is written in its own short transaction."""
    run = run_start(job=JOB, trigger=trigger, actor=actor)
    try:
        detection = detect(dolibarr=dolibarr, setup=setup, stripe=stripe, since=since)
    except Exception as exc:
        run_finish(run=run, state=RunState.FAILED, error=str(exc))
        raise
    counts: Counter[str] = Counter({f"checked {k}": v for k, v in detection.checked.items()})
    records = dict(
        SyncRecord.objects.filter(
            pk__in={f.record_id for f in detection.findings if f.record_id}
        ).in_bulk()
    )
    found = detection.fingerprints_found()
    # Which findings are already known (open, approved or ignored): one query per 500, not one
    # per finding.
    known: set[str] = set()
    ordered = sorted(found)
    for start in range(0, len(ordered), 500):
        known.update(
            Mismatch.objects.filter(fingerprint__in=ordered[start : start + 500])
            .exclude(state=MismatchState.RESOLVED)
            .values_list("fingerprint", flat=True)
        )
    for finding in detection.findings:
        spec = finding.spec
        fingerprint = mismatch_fingerprint(kind=spec.kind, parts=spec.fingerprint_parts)
        existed = fingerprint in known
        mismatch_detected(
            kind=spec.kind,
            fingerprint_parts=spec.fingerprint_parts,
            summary=spec.summary,
            severity=spec.severity,
            record=records.get(finding.record_id),
            amount_difference=spec.amount_difference,
            currency=spec.currency,
            source_snapshot=spec.source_snapshot,
            dolibarr_snapshot=spec.dolibarr_snapshot,
            proposed_fix=spec.proposed_fix,
            proposed_fix_params=spec.proposed_fix_params,
        )
        counts["seen again" if existed else "found"] += 1
        counts[spec.kind] += 1
    gone = detection.clean - found
    counts["closed"] = mismatches_close_fingerprints(fingerprints=gone, note=CLOSED_NOTE)
    run_finish(run=run, counts={k: int(v) for k, v in counts.items() if v})
    return ReconcileResult(counts=counts, detection=detection)
