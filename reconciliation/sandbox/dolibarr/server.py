"""The Dolibarr stand-in: authentication, the injection filter, error bodies and routing.

It answers like the recorded Dolibarr 23.0.0-beta (../contracts/dolibarr/exchanges and the
README next to them), including the quirks a client must survive: 404 for an empty thirdparty
search, 304 for "nothing done", numbers as strings, and the numbering races of parallel writes.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import unquote, urlencode

from reconciliation.sandbox.base import Faults, Request, Response, SandboxServer
from reconciliation.sandbox.dolibarr.errors import ApiError, NotModified, error_response
from reconciliation.sandbox.dolibarr.store import Store

API_PREFIX = "/api/index.php"

MISSING_KEY = (
    "Failed to login to API. Neither parameter 'HTTP_DOLAPIKEY' nor 'Authentication: Bearer' "
    "found on HTTP header (and no parameter DOLAPIKEY in URL)."
)
WRONG_KEY = (
    "Error user not valid (not found with api key or bad status or bad validity dates) "
    "(conf->entity=1)"
)

# main.inc.php refuses these before the API runs (README "Non-JSON refusals", 171, 172).
_PATH_REFUSED = re.compile(r"[:;\"'<>?(){}$%#]")
_QUERY_REFUSED = re.compile(
    r"\"|<script|<svg|<iframe|javascript\s*:|"
    r"\bon(abort|blur|change|click|contextmenu|dblclick|drag\w*|drop|error|focus\w*|input|"
    r"key\w+|load|mouse\w+|pointer\w+|reset|resize|scroll|select|submit|toggle|unload|wheel)"
    r"\s*=|\bselect\b.*\bfrom\b|\bunion\b.*\bselect\b|\bdelete\s+from\b|\binsert\s+into\b",
    re.IGNORECASE | re.DOTALL,
)

ApiHandler = Callable[["DolibarrSandbox", Request], Any]


class DolibarrSandbox(SandboxServer):
    """A Dolibarr REST API on loopback, with in-memory state.

    `numbering_window_ms` is the pause between reading the next document number and inserting
    it, taken outside the state lock: concurrent numbered writes collide exactly as they did on
    the real server (500 duplicate key for invoices, orders, shipments and thirdparty codes; a
    silently shared `PAY…` ref for payments). Sequential calls never collide. With a latency
    set, the window is spent out of it: a numbered write takes the latency, like any request.

    `multicurrency` switches Dolibarr's Multicurrency module on (None, the default, is the
    recorded instance: off). `{"GBP": Decimal("0.85"), ...}` puts those currencies and their
    latest rates (units per 1 unit of the company currency, EUR) in llx_multicurrency, with
    EUR at 1; `/multicurrencies` then exists and documents and payments can be in those
    currencies. This mode is read from Dolibarr's source, not recorded (docs/sandbox.md).
    """

    name = "dolibarr"
    # Tests stop a sandbox after each test; a short poll keeps that stop quick.
    poll_interval = 0.05

    def __init__(
        self,
        *,
        api_key: str,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: Faults | None = None,
        numbering_window_ms: float = 3.0,
        multicurrency: Mapping[str, Decimal] | None = None,
    ) -> None:
        super().__init__(host=host, port=port, faults=faults)
        self.api_key = api_key
        self.numbering_window_ms = numbering_window_ms
        self.store = Store(multicurrency=multicurrency)
        self.store.seed(bank_account=True)
        self._register_routes()
        self.router.add("POST", "/_sandbox/reset", self._reset_endpoint)

    # -- public interface ------------------------------------------------------------------
    @property
    def api_url(self) -> str:
        return f"{self.base_url}{API_PREFIX}"

    def reset(self, *, bank_account: bool = True) -> None:
        """Back to a fresh sandbox: the dictionaries, the own company, the Multicurrency
        module's currencies if it is on, and (unless told not to) the Stripe bank account id 1."""
        with self.store.lock:
            self.store.clear()
            self.store.seed(bank_account=bank_account)

    @property
    def latency_reserve_seconds(self) -> float:  # type: ignore[override]
        return max(SandboxServer.latency_reserve_seconds, self.numbering_window_ms / 1000)

    def numbering_pause(self) -> None:
        """The PHP read-then-insert gap of the numbering modules; never hold the lock here.
        It is part of the request's latency (the real server's time), not added to it."""
        self.spend_latency(self.numbering_window_ms / 1000)

    def route(self, method: str, path: str, handler: ApiHandler) -> None:
        self.router.add(method, API_PREFIX + path, functools.partial(self._call, handler))

    # -- request handling --------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        request.path = unquote(request.path)
        return super().handle(request)

    def authenticate(self, request: Request) -> Response | None:
        if not request.path.startswith(API_PREFIX):
            return None
        refusal = self._injection_filter(request)
        if refusal is not None:
            return refusal
        if request.method == "POST" and request.path == f"{API_PREFIX}/login":
            return None
        key = self._presented_key(request)
        if key is None:
            return error_response(
                401, MISSING_KEY, source="api_access.class.php:317", stage="authenticate"
            )
        if key != self.api_key:
            return error_response(
                401, WRONG_KEY, source="api_access.class.php:242", stage="authenticate"
            )
        return None

    def not_found(self, request: Request) -> Response:
        return error_response(404, "", source="Routes.php:482", stage="route")

    def internal_error(self, request: Request, exc: Exception) -> Response:
        return error_response(500, str(exc), source="api.class.php:0")

    def _call(self, handler: ApiHandler, request: Request) -> Response:
        try:
            result = handler(self, request)
        except ApiError as exc:
            return exc.response()
        except NotModified:
            return Response(status=304, body=b"")
        if isinstance(result, Response):
            return result
        return Response(status=200, body=json.dumps(result).encode())

    @staticmethod
    def _presented_key(request: Request) -> str | None:
        header = request.header("dolapikey")
        if header:
            return header
        authorization = request.header("authorization")
        if authorization.lower().startswith("bearer "):
            return authorization[7:].strip()
        return request.query.get("DOLAPIKEY") or None

    @staticmethod
    def _injection_filter(request: Request) -> Response | None:
        if _PATH_REFUSED.search(request.path[len(API_PREFIX) :]):
            return _refused(request, paramtype=2, value=request.path)
        for key, value in request.query_items:
            if _QUERY_REFUSED.search(value) or _QUERY_REFUSED.search(key):
                return _refused(request, paramtype=1, value=f"{key}={value}")
        return None

    def _reset_endpoint(self, request: Request) -> Response:
        options = json.loads(request.body or b"{}") if request.body.strip() else {}
        self.reset(bank_account=bool(options.get("bank_account", True)))
        return Response.json({"reset": True})

    def _register_routes(self) -> None:
        from reconciliation.sandbox.dolibarr import (
            api_bank,
            api_documents,
            api_invoices,
            api_multicurrencies,
            api_sales,
            api_setup,
            api_thirdparties,
        )

        for module in (
            api_setup,
            api_thirdparties,
            api_sales,
            api_invoices,
            api_bank,
            api_documents,
        ):
            module.register(self)
        if self.store.multicurrency_enabled:
            # The API class of a disabled module is not loaded: its routes are Restler's 404.
            api_multicurrencies.register(self)


def _refused(request: Request, *, paramtype: int, value: str) -> Response:
    """The HTML page of the injection filter (171, 172), not a JSON error."""
    page = request.path
    if request.query_items:
        page = f"{page}?{urlencode(request.query_items)}"
    shown = value.replace('"', "&quot;")
    body = (
        "Access refused to 127.0.0.1 by SQL or Script injection protection in "
        f"main.inc.php:analyseVarsForSqlAndScriptsInjection type={paramtype}<br>\n"
        "Try to go back, fix data of your form and resubmit it. You can contact also your "
        "technical support.\n<!--\n"
        f"page={page} paramtype={paramtype} paramkey=0 paramvalue={shown}\n-->"
    )
    return Response(status=403, body=body.encode(), content_type="text/html; charset=UTF-8")
