"""`manage.py doctor`: is the configuration complete and does every remote answer?"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from reconciliation.doctor import run_checks


class Command(BaseCommand):
    help = "Check the configuration and connectivity to each remote; one line each."

    def handle(self, *args, **options):
        failures = 0
        for finding in run_checks():
            style = self.style.SUCCESS if finding.ok else self.style.ERROR
            self.stdout.write(style(finding.line()))
            failures += not finding.ok
        if failures:
            raise CommandError(f"{failures} check(s) failed")
