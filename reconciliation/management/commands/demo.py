"""`manage.py demo`: the console on the embedded default, with demo data, in one command.

Migrates, installs the job schedules, creates a demo staff login (printed), starts the sandbox
Dolibarr and Stripe with generated data, pulls the Stripe data into sync records, starts the
django-q2 cluster (which then runs the jobs on their schedules) and the web server, and prints
where to log in. Ctrl-C (or SIGTERM) stops every process it started.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from reconciliation.demo import DemoError, Supervisor, free_port, port_is_free
from reconciliation.errors import Ap24SyncError
from reconciliation.sandbox.aipress24 import build_sqlite
from reconciliation.sandbox.seed import PAYOUT_ACCOUNT_REF, dolibarr_bank_account_create

DEMO_USERNAME = "finance"
# The sandbox Dolibarr's multicurrency rates (units per euro) for the currencies the demo writes.
DEMO_RATES = {"GBP": "0.85", "USD": "1.08"}


class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise _Stop


class Command(BaseCommand):
    help = "Start the console with demo data on the embedded default; Ctrl-C stops everything."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=8000, help="web port (0 = any free one)")
        parser.add_argument("--seed", type=int, default=2026, help="seed of the demo data")
        parser.add_argument("--customers", type=int, default=40, help="Stripe demo customers")
        parser.add_argument(
            "--log-dir",
            default=str(Path(settings.BASE_DIR) / ".demo"),
            help="where the child processes write their logs",
        )

    def handle(self, *args, **options):
        signal.signal(signal.SIGTERM, _raise_stop)
        web_port = options["port"] or free_port()
        if not port_is_free(web_port):
            web_port = free_port()
        dolibarr_key = secrets.token_hex(16)
        stripe_key = "sk_test_demo" + secrets.token_hex(12)
        webhook_secret = "whsec_demo" + secrets.token_hex(16)

        self.stdout.write("Preparing the database …")
        call_command("migrate", interactive=False, verbosity=0)
        self.stdout.write("Installing the job schedules …")
        call_command("setup_schedules", stdout=self.stdout)
        password = self._demo_login()

        supervisor = Supervisor(log_dir=Path(options["log_dir"]), env=dict(os.environ))
        # Aipress24's synthetic data in its SQLite equivalent: the demo stays on the embedded
        # default, and its customers and purchases flow into the sandbox Dolibarr.
        aipress24_path = Path(options["log_dir"]).resolve() / "aipress24.sqlite3"
        aipress24_path.parent.mkdir(parents=True, exist_ok=True)
        aipress24_path.unlink(missing_ok=True)
        build_sqlite(aipress24_path)
        aipress24_url = f"sqlite:///{aipress24_path}"
        try:
            dolibarr_url = self._start_sandbox(
                supervisor,
                "dolibarr-sandbox",
                [
                    "-m",
                    "reconciliation.sandbox.dolibarr",
                    "--port",
                    "0",
                    "--api-key",
                    dolibarr_key,
                    # Pounds and dollars in Dolibarr's multicurrency module; yen left out, so
                    # the demo's yen invoice waits in the review queue, saying why.
                    "--multicurrency",
                    ",".join(f"{code}={rate}" for code, rate in DEMO_RATES.items()),
                ],
            )
            stripe_url = self._start_sandbox(
                supervisor,
                "stripe-sandbox",
                [
                    "-m",
                    "reconciliation.sandbox.stripe",
                    "--port",
                    "0",
                    "--api-key",
                    stripe_key,
                    "--seed",
                    str(options["seed"]),
                    "--customers",
                    str(options["customers"]),
                    "--webhook-secret",
                    webhook_secret,
                    "--aipress24-database",
                    aipress24_url,
                    "--aipress24-vat-rates",
                    ",".join(f"{k}={v}" for k, v in settings.AIPRESS24_VAT_RATES.items()),
                ],
            )
            # The accounts a finance team creates in Dolibarr: where Stripe payouts go, and for
            # each other currency Stripe holds, its Stripe balance and its payout account.
            dolibarr_bank_account_create(api_url=dolibarr_url, api_key=dolibarr_key)
            for code in DEMO_RATES:
                for ref in (f"STRIPE-{code}", f"BANK-{code}"):
                    dolibarr_bank_account_create(
                        api_url=dolibarr_url,
                        api_key=dolibarr_key,
                        ref=ref,
                        label=f"{ref.split('-')[0].title()} {code}",
                        currency=code,
                    )
            remote_env = {
                "DOLIBARR_URL": dolibarr_url,
                "DOLIBARR_API_KEY": dolibarr_key,
                "DOLIBARR_PAYOUT_BANK_ACCOUNT": PAYOUT_ACCOUNT_REF,
                "DOLIBARR_MULTICURRENCY": "true",
                "DOLIBARR_STRIPE_BANK_ACCOUNTS": ",".join(f"{c}=STRIPE-{c}" for c in DEMO_RATES),
                "DOLIBARR_PAYOUT_BANK_ACCOUNTS": ",".join(f"{c}=BANK-{c}" for c in DEMO_RATES),
                "STRIPE_API_BASE": stripe_url,
                "STRIPE_API_KEY": stripe_key,
                "STRIPE_WEBHOOK_SECRET": webhook_secret,
                "AIPRESS24_DATABASE_URL": aipress24_url,
            }
            supervisor.env.update(remote_env)
            for name, value in remote_env.items():
                setattr(settings, name, value)
            settings.DOLIBARR_MULTICURRENCY = True
            settings.DOLIBARR_STRIPE_BANK_ACCOUNTS = {c: f"STRIPE-{c}" for c in DEMO_RATES}
            settings.DOLIBARR_PAYOUT_BANK_ACCOUNTS = {c: f"BANK-{c}" for c in DEMO_RATES}

            self.stdout.write("Pulling the demo data from the Stripe sandbox …")
            self._pull_demo_data()

            cluster = supervisor.start("qcluster", ["manage.py", "qcluster"])
            supervisor.drain(cluster)
            web = supervisor.start(
                "web", ["manage.py", "runserver", f"127.0.0.1:{web_port}", "--noreload"]
            )
            supervisor.drain(web)
            base = f"http://127.0.0.1:{web_port}"
            supervisor.wait_http(web, f"{base}/admin/login/")
            self._announce(base, password, dolibarr_url, stripe_url, supervisor.log_dir)
            signal.signal(signal.SIGINT, _raise_stop)
            while True:
                exited = supervisor.first_exited()
                if exited is not None:
                    raise DemoError(f"{exited.name} stopped; see {exited.log_path}")
                time.sleep(0.5)
        except (_Stop, KeyboardInterrupt):
            self.stdout.write("Stopping …")
        except (DemoError, Ap24SyncError) as exc:
            raise CommandError(str(exc)) from exc
        finally:
            supervisor.stop_all()
        self.stdout.write("Demo stopped; every process it started has ended.")

    def _demo_login(self) -> str:
        password = secrets.token_urlsafe(12)
        user, _ = get_user_model().objects.get_or_create(
            username=DEMO_USERNAME, defaults={"email": "finance@demo.invalid"}
        )
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        return password

    def _start_sandbox(self, supervisor: Supervisor, name: str, args: list[str]) -> str:
        child = supervisor.start(name, args)
        line = supervisor.first_line(child)
        url = line.rsplit(" ", 1)[-1]
        if not url.startswith("http://127.0.0.1:"):
            raise DemoError(f"{name} said {line!r}; see {child.log_path}")
        self.stdout.write(f"  {name}: {url}")
        return url

    def _pull_demo_data(self) -> None:
        from reconciliation.connectors.aipress24 import Aipress24Reader
        from reconciliation.sync.aipress24_pull import aipress24_pull_all
        from reconciliation.sync.stripe_sync import stripe_sync

        with Aipress24Reader.from_settings() as reader:
            aipress24 = aipress24_pull_all(reader=reader, trigger="manual", full=True)
        result = stripe_sync(trigger="manual")
        summary = ", ".join(
            f"{counts.get('seen', 0)} {stream}"
            for stream, counts in (
                *((f"aipress24 {name}", c) for name, c in aipress24.items()),
                *result.pulled.items(),
            )
        )
        self.stdout.write(f"  sync records: {summary}")
        done = result.processed
        self.stdout.write(
            f"  written to Dolibarr: {done['synced']} synced, {done['needs_review']} to review, "
            f"{done['skipped']} skipped, {done['failed']} failed"
        )

    def _announce(self, base, password, dolibarr_url, stripe_url, log_dir) -> None:
        self.stdout.write("")
        self.stdout.write(self.style.SUCCESS(f"ap24sync demo is running at {base}/admin/"))
        self.stdout.write(f"The finance console: {base}/console/ (the same login)")
        self.stdout.write(f"Log in at {base}/admin/ as {DEMO_USERNAME} / {password}")
        self.stdout.write(f"Sandbox Dolibarr {dolibarr_url}, sandbox Stripe {stripe_url}")
        self.stdout.write(f"Logs: {log_dir}/  —  Ctrl-C stops everything.")
        self.stdout.flush()
