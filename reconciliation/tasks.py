"""django-q2 entry points: each builds its connector from the settings and calls one service.

The jobs (`reconciliation.jobs`) all run through `job_run`, which holds the job's lease and
records the run: `job_task` is what every installed schedule calls, and the older per-job
entry points below call it too. A job that failed raises `JobFailed` after its run is recorded,
so that django-q2's own list of failed tasks agrees with the run history; a deferred run is not
a failure."""

from __future__ import annotations

from typing import Any

from reconciliation.connectors.stripe import StripeConnector
from reconciliation.errors import Ap24SyncError
from reconciliation.jobs import JobOutcome, job_run
from reconciliation.models import RunState, Trigger
from reconciliation.reconcile.fixes import fix_apply
from reconciliation.sync.aipress24_events import aipress24_event_process
from reconciliation.sync.stripe_events import stripe_event_process
from reconciliation.sync.stripe_pull import stripe_stream_pull


class JobFailed(Ap24SyncError):
    """A job's run failed; its SyncRun holds the error."""


def _summary(outcome: JobOutcome) -> dict[str, Any]:
    if outcome.state == RunState.FAILED:
        raise JobFailed(f"{outcome.job} failed (run {outcome.run.pk}): {outcome.error}")
    return {
        "job": outcome.job,
        "run": outcome.run.pk if outcome.run else None,
        "state": outcome.state,
        "counts": outcome.counts,
        "error": outcome.error,
    }


def job_task(name: str, **options: Any) -> dict[str, Any]:
    """One scheduled run of a job (`setup_schedules` installs one schedule per job)."""
    return _summary(job_run(name, trigger=Trigger.SCHEDULE, **options))


def stripe_stream_pull_task(stream: str, *, full: bool = False, trigger: str = Trigger.SCHEDULE):
    """One stream's pull: a step of the stripe_sync job, not a job of its own (no lease)."""
    run = stripe_stream_pull(
        connector=StripeConnector.from_settings(), stream=stream, trigger=trigger, full=full
    )
    return {"run": run.pk, "counts": run.counts}


def stripe_event_process_task(event_pk: int):
    """Queued by the Stripe webhook once the event is stored."""
    outcome = stripe_event_process(event_id=event_pk, connector=StripeConnector.from_settings())
    return {"event": outcome.event.event_id, "result": outcome.result.value}


def aipress24_event_process_task(event_pk: int):
    """Queued by the Aipress24 push endpoint once the event is stored."""
    outcome = aipress24_event_process(event_id=event_pk)
    return {"event": outcome.event.event_id, "result": outcome.result.value}


def stripe_events_pull_task(*, trigger: str = Trigger.SCHEDULE):
    return _summary(job_run("stripe_events", trigger=trigger))


def stripe_sync_task(
    *, streams: list[str] | None = None, full: bool = False, trigger: str = Trigger.SCHEDULE
):
    """Pull the Stripe streams, then write what is due to Dolibarr."""
    options: dict[str, Any] = {"full": True} if full else {}
    if streams:
        options["streams"] = list(streams)
    outcome = job_run("stripe_sync", trigger=trigger, **options)
    summary = _summary(outcome)
    result = outcome.detail
    summary["pulled"] = dict(result.pulled) if result is not None else {}
    summary["processed"] = dict(result.processed) if result is not None else {}
    return summary


def mismatch_fix_task(mismatch_id: int, actor_id: int | None = None) -> dict[str, Any]:
    """Queued once a mismatch's approval is committed: apply its fix and resolve it, or record
    why it failed (`mismatch.fix_failed`); the outcome says which, it never raises for that."""
    return fix_apply(mismatch_id=mismatch_id, actor_id=actor_id)
