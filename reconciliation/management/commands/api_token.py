"""`manage.py api_token create --thirdparty-ref-ext ap24-org-42 --name "…"`, `manage.py api_token
revoke <prefix>`, `manage.py api_token list`: the per-customer tokens with which Aipress24 reads
a customer's invoice PDFs (docs/invoice-pdfs.md).

`create` prints the token once, alone on standard output (so that `TOKEN=$(manage.py api_token
create …)` works), and what it is for on standard error; only its hash is stored. Both changes
are audited (`api_token.created`, `api_token.revoked`), with the token's prefix, never the token.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from reconciliation.connectors.dolibarr import DolibarrClient
from reconciliation.errors import Ap24SyncError, InvalidTransition, TransientError
from reconciliation.invoice_pdfs import (
    ApiTokenNotFound,
    api_token_create,
    api_token_revoke,
)
from reconciliation.management.commands.retry_record import operator_label
from reconciliation.models import ApiClientToken

NAME_MAX_LENGTH = ApiClientToken._meta.get_field("name").max_length


class Command(BaseCommand):
    help = "Create, revoke or list the API tokens with which Aipress24 reads invoice PDFs."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True, metavar="create|revoke|list")
        create = actions.add_parser(
            "create",
            help="a new token for one customer (printed once)",
            description="Create a token that reads the invoice PDFs of one Dolibarr thirdparty.",
        )
        create.add_argument(
            "--thirdparty-ref-ext",
            required=True,
            help="the customer's ref_ext in Dolibarr, e.g. ap24-org-42",
        )
        create.add_argument(
            "--name", required=True, help="what the token is for, e.g. 'Aipress24 prod, org 42'"
        )
        create.add_argument(
            "--created-by", metavar="USERNAME", help="the console user asking for it (optional)"
        )
        revoke = actions.add_parser("revoke", help="refuse a token from now on")
        revoke.add_argument("prefix", help="the token's first 8 characters (see `list`)")
        revoke.add_argument(
            "--by", metavar="USERNAME", help="the console user asking for it (optional)"
        )
        actions.add_parser("list", help="every token: prefix, customer, use, revocation")

    def handle(self, *args, **options):
        action = options["action"]
        if action == "create":
            self._create(options)
        elif action == "revoke":
            self._revoke(options)
        else:
            self._list()

    def _create(self, options) -> None:
        name = options["name"].strip()
        if not name:
            raise CommandError("--name must not be empty")
        if len(name) > NAME_MAX_LENGTH:
            raise CommandError(f"--name must be at most {NAME_MAX_LENGTH} characters")
        ref_ext = options["thirdparty_ref_ext"].strip()
        user = _user(options["created_by"], "--created-by")
        thirdparty_id = _thirdparty_id(ref_ext)
        issued = api_token_create(
            name=name,
            thirdparty_id=thirdparty_id,
            thirdparty_ref_ext=ref_ext,
            created_by=user,
            actor_label="" if user else operator_label("api_token create"),
        )
        prefix = issued.row.token_prefix
        self.stderr.write(
            f'API token {prefix} "{name}" reads the invoice PDFs of Dolibarr thirdparty '
            f"{thirdparty_id} ({ref_ext}). It is shown this once and stored only as a hash: "
            f"hand it to Aipress24 now. Revoke it with `manage.py api_token revoke {prefix}`."
        )
        self.stdout.write(issued.token)

    def _revoke(self, options) -> None:
        user = _user(options["by"], "--by")
        try:
            row = api_token_revoke(
                prefix=options["prefix"].strip(),
                actor=user,
                actor_label="" if user else operator_label("api_token revoke"),
            )
        except (ApiTokenNotFound, InvalidTransition) as exc:
            raise CommandError(f"{exc}; see `manage.py api_token list`") from exc
        self.stdout.write(
            f'API token {row.token_prefix} "{row.name}" revoked: it is refused from now on'
        )

    def _list(self) -> None:
        rows = ApiClientToken.objects.order_by("created_at", "pk")
        if not rows:
            self.stdout.write("no API tokens; create one with `manage.py api_token create`")
            return
        for row in rows:
            used = f"{row.last_used_at:%Y-%m-%d %H:%M}" if row.last_used_at else "never"
            state = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "active"
            self.stdout.write(
                f"{row.token_prefix}  {state:<24}  thirdparty {row.thirdparty_id} "
                f"({row.thirdparty_ref_ext or '?'})  last used {used}  {row.name}"
            )


def _user(username: str | None, option: str):
    if not username:
        return None
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise CommandError(f"{option}: no user is called {username!r}")
    return user


def _thirdparty_id(ref_ext: str) -> int:
    """The one Dolibarr thirdparty with this ref_ext; none or several is a one-line error."""
    if not ref_ext:
        raise CommandError("--thirdparty-ref-ext must not be empty")
    try:
        with DolibarrClient.from_settings() as client:
            found = client.find_thirdparties(ref_ext=ref_ext)
    except TransientError as exc:
        raise CommandError(f"cannot look the thirdparty up: {exc}; try again later") from exc
    except (Ap24SyncError, ValueError) as exc:
        raise CommandError(f"cannot look the thirdparty up: {exc}") from exc
    if not found:
        raise CommandError(
            f"Dolibarr has no thirdparty with ref_ext {ref_ext!r}; sync the customer first"
        )
    if len(found) > 1:
        ids = ", ".join(str(party.id) for party in found)
        raise CommandError(
            f"Dolibarr has {len(found)} thirdparties with ref_ext {ref_ext!r} (ids {ids}): "
            "merge the duplicates first (see the duplicate_in_dolibarr mismatch)"
        )
    return found[0].id
