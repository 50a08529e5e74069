"""`manage.py setup_schedules`: install the jobs' django-q2 schedules; idempotent."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from reconciliation.errors import Ap24SyncError
from reconciliation.jobs import schedules_install


class Command(BaseCommand):
    help = (
        "Install one django-q2 schedule per job (cadences from JOB_CADENCES or the defaults); "
        "running it again changes only what changed."
    )

    def handle(self, *args, **options):
        try:
            changes = schedules_install()
        except Ap24SyncError as exc:
            raise CommandError(str(exc)) from exc
        for change in changes:
            self.stdout.write(change.line())
