"""`manage.py stripe_events [--first-window-hours N]`: read Stripe's events since the event cursor
now, store each one and make the objects they concern pending again."""

from __future__ import annotations

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from reconciliation.connectors.stripe import StripeConnector
from reconciliation.errors import Ap24SyncError
from reconciliation.jobs import job_lease
from reconciliation.models import Trigger
from reconciliation.sync.stripe_events import FIRST_RUN_WINDOW, stripe_events_pull


class Command(BaseCommand):
    help = "Process Stripe events created since the last processed one (the events cursor)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--first-window-hours",
            type=float,
            default=FIRST_RUN_WINDOW.total_seconds() / 3600,
            help="without a cursor yet, read the events of this many hours back "
            "(default %(default)s)",
        )

    def handle(self, *args, **options):
        window = timedelta(hours=options["first_window_hours"])
        try:
            connector = StripeConnector.from_settings()
            with (
                job_lease("stripe_events"),
                tqdm(
                    desc="events",
                    unit=" evt",
                    disable=options["verbosity"] < 1,
                    file=self.stderr._out,
                ) as bar,
            ):
                run = stripe_events_pull(
                    connector=connector,
                    trigger=Trigger.MANUAL,
                    first_window=window,
                    progress=bar.update,
                )
        except Ap24SyncError as exc:
            raise CommandError(str(exc)) from exc
        counts = ", ".join(f"{k} {v}" for k, v in sorted(run.counts.items())) or "nothing new"
        self.stdout.write(f"events: {counts}")
