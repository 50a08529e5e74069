"""`manage.py stripe_pull [--stream NAME] [--full]`: pull Stripe objects into sync records now."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from reconciliation.connectors.stripe import StripeConnector
from reconciliation.errors import Ap24SyncError
from reconciliation.jobs import job_lease
from reconciliation.models import Trigger
from reconciliation.sync.stripe_pull import STREAMS, stripe_stream_pull


class Command(BaseCommand):
    help = "Pull Stripe objects created since each stream's cursor (or all with --full)."

    def add_arguments(self, parser):
        parser.add_argument("--stream", choices=sorted(STREAMS), action="append")
        parser.add_argument("--full", action="store_true", help="rescan from the beginning")

    def handle(self, *args, **options):
        try:
            connector = StripeConnector.from_settings()
            # The pull moves the cursors the scheduled stripe_sync moves: hold its lease.
            with job_lease("stripe_sync"):
                self._pull(connector, options)
        except Ap24SyncError as exc:
            raise CommandError(str(exc)) from exc

    def _pull(self, connector, options) -> None:
        for name in options["stream"] or list(STREAMS):
            with tqdm(
                desc=name, unit=" obj", disable=options["verbosity"] < 1, file=self.stderr._out
            ) as bar:
                run = stripe_stream_pull(
                    connector=connector,
                    stream=name,
                    trigger=Trigger.MANUAL,
                    full=options["full"],
                    progress=bar.update,
                )
            counts = ", ".join(f"{k} {v}" for k, v in sorted(run.counts.items())) or "nothing"
            self.stdout.write(f"{name}: {counts}")
