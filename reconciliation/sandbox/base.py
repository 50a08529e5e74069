"""What every sandbox stand-in shares: a threaded HTTP/1.1 server on loopback, a small router, and
the latency / fault-injection knobs.

A sandbox runs in-process (tests start it on a free port in a background thread) or standalone
(`python -m reconciliation.sandbox.dolibarr`, used by the demo).
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import re
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

logger = logging.getLogger(__name__)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    query_items: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes
    params: dict[str, str] = field(default_factory=dict)

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)

    def json(self) -> Any:
        """The body as JSON, or None when empty. Raises ValueError on malformed JSON."""
        if not self.body.strip():
            return None
        return json.loads(self.body)

    def query_list(self, name: str) -> list[str]:
        return [value for key, value in self.query_items if key == name]


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, payload: Any, status: int = 200, **kwargs) -> Response:
        return cls(status=status, body=json.dumps(payload).encode(), **kwargs)


Handler = Callable[[Request], Response]


class Router:
    """Routes `METHOD /path/{name}/...` patterns to handlers; first match wins."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern)
        self._routes.append((method.upper(), re.compile(f"^{regex}$"), handler))

    def route(self, method: str, pattern: str) -> Callable[[Handler], Handler]:
        def decorator(handler: Handler) -> Handler:
            self.add(method, pattern, handler)
            return handler

        return decorator

    def resolve(self, method: str, path: str) -> tuple[Handler | None, dict[str, str], bool]:
        """(handler, params, path_exists_for_another_method)."""
        path_known = False
        for route_method, regex, handler in self._routes:
            match = regex.match(path)
            if match:
                if route_method == method:
                    return handler, match.groupdict(), True
                path_known = True
        return None, {}, path_known


@dataclass
class Faults:
    """Knobs, changeable while the server runs (tests and benchmarks set them through the
    object or the `/_sandbox/faults` control endpoint).

    - latency_ms: the time every request takes: the real server's whole time per request. The
      sandbox's own work on a request (up to `SandboxServer.latency_reserve_seconds` of it) and
      a handler's modelled pauses (the Dolibarr numbering window) are spent out of it, not
      added to it (`SandboxServer.handle`).
    - error_rate: probability of answering 500 without doing anything.
    - timeout_rate: probability of sleeping `timeout_seconds` and then closing without an answer,
      nothing done (a client with a shorter read timeout sees a timeout).
    - drop_rate: probability of closing the connection at once, nothing done.
    - lost_response_rate: probability of doing the work and then closing the connection without
      answering ("write applied but response lost", the case that makes naive clients create
      duplicates).
    """

    latency_ms: float = 0.0
    error_rate: float = 0.0
    timeout_rate: float = 0.0
    drop_rate: float = 0.0
    lost_response_rate: float = 0.0
    timeout_seconds: float = 5.0
    seed: int | None = None
    _random: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        self._random.seed(self.seed)

    def update(self, **changes: Any) -> None:
        for key, value in changes.items():
            if key.startswith("_") or not hasattr(self, key):
                raise ValueError(f"unknown fault knob {key!r}")
            if key != "seed" and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise ValueError(f"fault knob {key!r} takes a number, not {value!r}")
            setattr(self, key, value)
        if "seed" in changes:
            self._random.seed(self.seed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "latency_ms": self.latency_ms,
            "error_rate": self.error_rate,
            "timeout_rate": self.timeout_rate,
            "drop_rate": self.drop_rate,
            "lost_response_rate": self.lost_response_rate,
            "timeout_seconds": self.timeout_seconds,
        }

    def draw(self) -> str | None:
        """Which fault, if any, hits this request."""
        roll = self._random.random()
        for name, rate in (
            ("error", self.error_rate),
            ("timeout", self.timeout_rate),
            ("drop", self.drop_rate),
            ("lost_response", self.lost_response_rate),
        ):
            if roll < rate:
                return name
            roll -= rate
        return None


class _CloseWithoutAnswer(Exception):
    pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes; with Nagle on, a keep-alive client waits for the
    # delayed ACK (about 40 ms) on every request.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def _dispatch(self) -> None:
        sandbox = self.server.sandbox
        split = urlsplit(self.path)
        query_items = parse_qsl(split.query, keep_blank_values=True)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = Request(
            method=self.command,
            path=split.path,
            query=dict(query_items),
            query_items=query_items,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        try:
            response = sandbox.handle(request)
        except _CloseWithoutAnswer:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        for key, value in response.headers.items():
            self.send_header(key, value)
        if response.status == 304:
            self.end_headers()
            return
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _dispatch


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    sandbox: SandboxServer


class SandboxServer:
    """Base of the stand-ins. Subclasses fill `self.router` and may override `authenticate`."""

    name = "sandbox"
    # How often the serving thread checks for `stop()`; stopping waits up to this long.
    poll_interval = 0.5
    # The last part of every request's latency, held back for the handler: its own work and its
    # modelled pauses (`spend_latency`) are spent out of it, so that a request takes the
    # latency, not the latency plus the sandbox's Python time. A subclass with longer modelled
    # pauses holds back more.
    latency_reserve_seconds = 0.005

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, faults: Faults | None = None):
        self.host, self.port = host, port
        self.faults = faults or Faults()
        self.router = Router()
        self.request_count = 0
        self._count_lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.router.add("GET", "/_sandbox/faults", self._faults_get)
        self.router.add("POST", "/_sandbox/faults", self._faults_set)

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> SandboxServer:
        self._server = _Server((self.host, self.port), _Handler)
        self._server.sandbox = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": self.poll_interval},
            name=f"{self.name}-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; the same port is used again by a later `start()`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def serve_until_signalled(self, *, banner: Callable[[SandboxServer], str]) -> None:
        """The standalone mode: start, print one line (the demo reads the address from it),
        serve until SIGINT or SIGTERM, then stop cleanly."""
        stopping = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stopping.set())
        self.start()
        print(banner(self), flush=True)
        try:
            while not stopping.wait(timeout=0.5):
                pass
        finally:
            self.stop()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # -- request handling ------------------------------------------------------------------
    def authenticate(self, request: Request) -> Response | None:
        """Return a response to refuse the request, or None to let it through."""
        return None

    def not_found(self, request: Request) -> Response:
        return Response.json({"error": {"code": 404, "message": "Not Found"}}, status=404)

    def internal_error(self, request: Request, exc: Exception) -> Response:
        return Response.json({"error": {"code": 500, "message": str(exc)}}, status=500)

    def handle(self, request: Request) -> Response:
        with self._count_lock:
            self.request_count += 1
        is_control = request.path.startswith("/_sandbox/")
        fault = None if is_control else self.faults.draw()
        latency = 0.0 if is_control else self.faults.latency_ms / 1000
        # The latency less the reserve is slept first; the handler's work and pauses then spend
        # the reserve, and what they leave is slept after, so every request takes the latency
        # (or the handler's time, when that is longer than the reserve).
        reserve = min(latency, self.latency_reserve_seconds)
        if latency > reserve:
            time.sleep(latency - reserve)
        started = time.monotonic()
        try:
            return self._handle_after_latency(request, fault, is_control)
        finally:
            left = reserve - (time.monotonic() - started)
            if left > 0:
                time.sleep(left)

    def spend_latency(self, seconds: float) -> None:
        """Sleep `seconds` inside a handler (a modelled pause of the real server). Like the
        handler's own work it is spent out of the request's latency (`handle`): the request does
        not take longer than the latency because of it, unless it is longer than the reserve."""
        if seconds > 0:
            time.sleep(seconds)

    def _handle_after_latency(
        self, request: Request, fault: str | None, is_control: bool
    ) -> Response:
        if fault == "drop":
            raise _CloseWithoutAnswer
        if fault == "timeout":
            time.sleep(self.faults.timeout_seconds)
            raise _CloseWithoutAnswer
        if fault == "error":
            return self.internal_error(request, RuntimeError("injected fault"))
        refusal = None if is_control else self.authenticate(request)
        if refusal is not None:
            return refusal
        handler, params, _ = self.router.resolve(request.method, request.path)
        if handler is None:
            return self.not_found(request)
        request.params = params
        try:
            response = handler(request)
        except Exception as exc:
            logger.exception(
                "%s: handler failed for %s %s", self.name, request.method, request.path
            )
            return self.internal_error(request, exc)
        if fault == "lost_response":
            raise _CloseWithoutAnswer
        return response

    def _faults_get(self, request: Request) -> Response:
        return Response.json(self.faults.as_dict())

    def _faults_set(self, request: Request) -> Response:
        try:
            self.faults.update(**(request.json() or {}))
        except (ValueError, TypeError) as exc:
            return Response.json({"error": {"code": 400, "message": str(exc)}}, status=400)
        return Response.json(self.faults.as_dict())
