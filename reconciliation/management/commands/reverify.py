"""`manage.py reverify --since YYYY-MM-DD [--until YYYY-MM-DD] [--source stripe]
[--kind invoice] [--no-run]`: make every synced record whose source object was created in that
range due again, so that its handler checks Dolibarr again, then process them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from reconciliation.management.commands.retry_record import operator_label, process_due
from reconciliation.services.records import CREATED_AT_KEYS, records_reverify
from reconciliation.sync.stripe_pull import STREAMS

# The record kinds each source has (`--kind`).
SOURCE_KINDS = {"stripe": [stream.kind for stream in STREAMS.values()]}


def _day(value: str, option: str) -> datetime:
    try:
        return datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise CommandError(f"{option} takes a date as YYYY-MM-DD, not {value!r}") from None


class Command(BaseCommand):
    help = (
        "Make the synced records whose source object was created in a date range (UTC) due "
        "again, so that each is checked against Dolibarr once more; then process them."
    )

    def add_arguments(self, parser):
        parser.add_argument("--since", required=True, help="first day, YYYY-MM-DD (UTC)")
        parser.add_argument("--until", help="last day, YYYY-MM-DD, included (default: today)")
        parser.add_argument(
            "--source", choices=sorted(CREATED_AT_KEYS), default="stripe", help="default stripe"
        )
        parser.add_argument("--kind", help="only records of this kind (invoice, customer …)")
        parser.add_argument(
            "--no-run", action="store_true", help="only make them due; the schedule processes them"
        )

    def handle(self, *args, **options):
        since = _day(options["since"], "--since")
        until = (
            _day(options["until"], "--until")
            if options["until"]
            else datetime.combine(timezone.now().astimezone(UTC).date(), datetime.min.time(), UTC)
        )
        if until < since:
            raise CommandError(f"--until {until:%Y-%m-%d} comes before --since {since:%Y-%m-%d}")
        source, kind = options["source"], options["kind"]
        kinds = SOURCE_KINDS.get(source, [])
        if kind and kinds and kind not in kinds:
            raise CommandError(f"{source} has no kind {kind!r}; one of {', '.join(kinds)}")
        ids = records_reverify(
            source=source,
            kind=kind,
            created_from=since,
            created_before=until + timedelta(days=1),
            actor_label=operator_label("reverify"),
            reason="re-verification asked for with manage.py reverify",
        )
        what = f"synced {source} {kind + ' ' if kind else ''}records"
        span = f"created {since:%Y-%m-%d} to {until:%Y-%m-%d}"
        if not ids:
            self.stdout.write(f"nothing to re-verify: no {what} {span}")
            return
        self.stdout.write(f"{len(ids)} {what} {span} are due again")
        if not options["no_run"]:
            process_due(self, options["verbosity"])
