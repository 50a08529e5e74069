"""`manage.py run_job <name> [--dry-run] [--full]`: run a job now, through its lease, as the
schedule would (recorded as a manual run). `--dry-run` prints what it would write to Dolibarr
and writes nothing there; `--full` rescans every Stripe stream from the start."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.core.management.base import BaseCommand, CommandError, OutputWrapper
from tqdm import tqdm

from reconciliation.errors import Ap24SyncError
from reconciliation.jobs import JOBS, JobOutcome, JobProgress, job_get, job_run
from reconciliation.models import RunState, Trigger

OUTCOME_NAMES = ("synced", "needs_review", "skipped", "waiting", "retry", "deferred", "failed")
# How a run's counts are listed: what was read, then what became of it.
COUNT_ORDER = ("seen", "new", "changed", "processed", *OUTCOME_NAMES)


class CommandProgress(JobProgress):
    """A job's lines on stdout and its progress bars on stderr (as the stripe commands draw
    them), none of either with --verbosity 0."""

    def __init__(self, job: str, *, stdout: OutputWrapper, stderr: OutputWrapper, verbosity: int):
        super().__init__(job)
        self.stdout, self.stderr, self.quiet = stdout, stderr, verbosity < 1

    def line(self, text: str) -> None:
        if not self.quiet:
            self.stdout.write(text)

    @contextmanager
    def bar(
        self, *, desc: str, total: int | None = None, unit: str = " rec"
    ) -> Iterator[Callable[[int], Any]]:
        with tqdm(
            total=total, desc=desc, unit=unit, disable=self.quiet, file=self.stderr._out
        ) as progress:
            yield progress.update


def counts_line(counts: dict[str, Any]) -> str:
    rank = {name: position for position, name in enumerate(COUNT_ORDER)}
    names = sorted(counts, key=lambda name: (rank.get(name, len(rank)), name))
    return ", ".join(f"{name} {counts[name]}" for name in names if counts[name]) or "nothing"


def outcome_line(outcome: JobOutcome) -> str:
    """One line for a run that ended; raises CommandError for one that failed or did not run."""
    run = f" (run {outcome.run.pk})" if outcome.run is not None else ""
    if outcome.state == RunState.FAILED:
        raise CommandError(f"{outcome.job} failed{run}: {outcome.error}")
    if outcome.state == RunState.DEFERRED:
        raise CommandError(f"{outcome.job} did not run{run}: {outcome.error}")
    return f"{outcome.job} succeeded{run}: {counts_line(outcome.counts)}"


def plan_lines(result: Any) -> list[str]:
    """A dry run's plan: the Dolibarr writes it would make, then what it would flag."""
    plan = list(getattr(result, "plan", []) or [])
    planned = list(getattr(result, "planned_outcomes", []) or [])
    if not plan and not planned:
        return ["plan: nothing to do"]
    verbs = Counter(write.verb for write in plan)
    detail = ", ".join(f"{count} {verb}" for verb, count in sorted(verbs.items()))
    lines = [f"plan: {len(plan)} Dolibarr writes ({detail or 'none'})"]
    lines += [f"  {write.line()}" for write in plan]
    flagged = [(label, text) for label, text in planned if text.startswith(("flagged", "error"))]
    if flagged:
        lines.append(f"flagged: {len(flagged)}")
        lines += [f"  {label}: {text}" for label, text in flagged]
    return lines


class Command(BaseCommand):
    help = (
        "Run a job now (stripe_events, stripe_sync, stripe_full_rescan, sync_retry, "
        "breakers_check …) unless another run holds it; recorded as a manual run."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", help=f"the job: {', '.join(JOBS)}")
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="print what would be written to Dolibarr; write nothing there",
        )
        parser.add_argument(
            "--full", action="store_true", help="rescan every Stripe stream from the start"
        )

    def handle(self, *args, **options):
        name = options["name"]
        try:
            job = job_get(name)
            extra: dict[str, Any] = {}
            if options["full"]:
                if "full" not in job.options:
                    takers = ", ".join(j.name for j in JOBS.values() if "full" in j.options)
                    raise CommandError(f"{name} takes no --full (jobs that do: {takers})")
                extra["full"] = True
            progress = CommandProgress(
                name, stdout=self.stdout, stderr=self.stderr, verbosity=options["verbosity"]
            )
            outcome = job_run(
                name,
                trigger=Trigger.MANUAL,
                dry_run=options["dry_run"],
                progress=progress,
                **extra,
            )
        except Ap24SyncError as exc:
            raise CommandError(str(exc)) from exc
        if options["dry_run"] and outcome.state == RunState.SUCCEEDED:
            for line in plan_lines(outcome.detail):
                self.stdout.write(line)
            summary = ", ".join(
                f"{key} {outcome.counts[key]}" for key in OUTCOME_NAMES if outcome.counts.get(key)
            )
            self.stdout.write(f"dry run: {summary or 'nothing due'}; nothing was written")
            return
        self.stdout.write(outcome_line(outcome))
