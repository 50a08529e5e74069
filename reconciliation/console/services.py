"""What the console's own pages change. Each function is the one way its page acts: it audits
the person as the actor and queues any work once the audit row is committed."""

from __future__ import annotations

from django.db import transaction
from django_q.tasks import async_task

from reconciliation.audit import audit_record
from reconciliation.jobs import job_get
from reconciliation.models import AuditEvent, Trigger

# `job_run` takes the job's lease and records the run (trigger, started_by); a job already
# running when the task starts is recorded as deferred, as a schedule's run would be.
JOB_RUN_TASK = "reconciliation.jobs.job_run"


def job_run_request(*, name: str, actor) -> AuditEvent:
    """Queue a manual run of the job `name` for the cluster, as `actor`. Raises JobError for a
    job that does not exist."""
    job = job_get(name)
    with transaction.atomic():
        event = audit_record(
            action="job.run_requested",
            actor=actor,
            target=("job", job.name),
            after={"job": job.name, "trigger": Trigger.MANUAL},
        )
        transaction.on_commit(
            lambda: async_task(JOB_RUN_TASK, job.name, trigger=Trigger.MANUAL, actor=actor)
        )
    return event
