"""`manage.py stripe_sync [--stream NAME …] [--since YYYY-MM-DD] [--full] [--dry-run]`: pull
Stripe and write what is new to Dolibarr now (or, with --dry-run, print what would be written)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from reconciliation.errors import Ap24SyncError
from reconciliation.jobs import job_lease
from reconciliation.models import Trigger
from reconciliation.sync.stripe_pull import STREAMS
from reconciliation.sync.stripe_sync import stripe_sync


def _day(value: str) -> datetime:
    try:
        return datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise CommandError(f"--since takes a date as YYYY-MM-DD, not {value!r}") from None


class Command(BaseCommand):
    help = (
        "Pull Stripe objects into sync records, then write what is due to Dolibarr: customers, "
        "invoices and their payments, refunds, fees and payouts."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--stream",
            choices=list(STREAMS),
            action="append",
            help="only this stream (repeatable); all streams by default",
        )
        parser.add_argument("--since", help="pull objects created since this day (YYYY-MM-DD)")
        parser.add_argument(
            "--full", action="store_true", help="rescan every stream from the start"
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="print what would be created, updated and flagged; write nothing to Dolibarr",
        )

    def handle(self, *args, **options) -> None:
        since = _day(options["since"]) if options["since"] else None
        quiet = options["verbosity"] < 1
        bar: tqdm | None = None

        def pulled(name: str, counts: dict[str, int]) -> None:
            summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing"
            self.stdout.write(f"pulled {name}: {summary}")

        def start(total: int) -> None:
            nonlocal bar
            bar = tqdm(
                total=total,
                desc="dry run" if options["dry_run"] else "sync",
                unit=" rec",
                disable=quiet,
                file=self.stderr._out,
            )

        try:
            # The scheduled stripe_sync's lease: this run and a scheduled one never overlap.
            with job_lease("stripe_sync", dry_run=options["dry_run"]):
                result = stripe_sync(
                    streams=options["stream"],
                    since=since,
                    full=options["full"],
                    dry_run=options["dry_run"],
                    trigger=Trigger.MANUAL,
                    on_pulled=pulled,
                    before_processing=start,
                    progress=lambda n: bar.update(n) if bar is not None else None,
                )
        except Ap24SyncError as exc:
            raise CommandError(str(exc)) from exc
        finally:
            if bar is not None:
                bar.close()

        processed = result.processed
        names = ("synced", "needs_review", "skipped", "waiting", "retry", "failed")
        summary = ", ".join(f"{name} {processed[name]}" for name in names if processed[name])
        if options["dry_run"]:
            self._print_plan(result)
            self.stdout.write(f"dry run: {summary or 'nothing due'}; nothing was written")
        else:
            self.stdout.write(f"processed {processed['processed']}: {summary or 'nothing due'}")

    def _print_plan(self, result) -> None:
        if not result.plan and not result.planned_outcomes:
            self.stdout.write("plan: nothing to do")
            return
        verbs = Counter(write.verb for write in result.plan)
        detail = ", ".join(f"{count} {verb}" for verb, count in sorted(verbs.items()))
        self.stdout.write(f"plan: {len(result.plan)} Dolibarr writes ({detail or 'none'})")
        for write in result.plan:
            self.stdout.write(f"  {write.line()}")
        flagged = [
            (label, text)
            for label, text in result.planned_outcomes
            if text.startswith(("flagged", "error"))
        ]
        if flagged:
            self.stdout.write(f"flagged: {len(flagged)}")
            for label, text in flagged:
                self.stdout.write(f"  {label}: {text}")
