"""The demo: the sandboxes, the django-q2 cluster and the web server as child processes, started
together and stopped together.

Every child runs in its own session (process group) so that stopping the demo stops everything a
child started too; nothing outlives the demo.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from reconciliation.errors import Ap24SyncError


class DemoError(Ap24SyncError):
    """A child process did not start; the message says which and where its log is."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    log_path: Path


@dataclass
class Supervisor:
    """Starts children, remembers them, and stops them all (newest first)."""

    log_dir: Path
    env: dict[str, str]
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, args: list[str]) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        log_file = log_path.open("w")
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and modules
            [sys.executable, *args],
            stdout=subprocess.PIPE,
            stderr=log_file,
            stdin=subprocess.DEVNULL,
            text=True,
            env=self.env,
            start_new_session=True,
        )
        log_file.close()
        child = Child(name=name, process=process, log_path=log_path)
        self.children.append(child)
        return child

    def first_line(self, child: Child, *, timeout: float = 30.0) -> str:
        """The child's first line on stdout (sandboxes print their address there); the rest of
        its stdout is copied to its log so that the pipe never fills up."""
        result: list[str] = []
        ready = threading.Event()

        def pump() -> None:
            with child.log_path.open("a") as log:
                for number, line in enumerate(child.process.stdout):
                    if number == 0:
                        result.append(line.strip())
                        ready.set()
                    log.write(line)
                    log.flush()
            ready.set()

        threading.Thread(target=pump, name=f"{child.name}-stdout", daemon=True).start()
        if not ready.wait(timeout) or not result:
            raise DemoError(f"{child.name} did not start; see {child.log_path}")
        return result[0]

    def drain(self, child: Child) -> None:
        """Copy a child's stdout to its log in the background."""

        def pump() -> None:
            with child.log_path.open("a") as log:
                for line in child.process.stdout:
                    log.write(line)
                    log.flush()

        threading.Thread(target=pump, name=f"{child.name}-stdout", daemon=True).start()

    def wait_http(self, child: Child, url: str, *, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if child.process.poll() is not None:
                raise DemoError(f"{child.name} stopped while starting; see {child.log_path}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(url, timeout=2, allow_redirects=False).status_code < 500:
                    return
            time.sleep(0.3)
        raise DemoError(f"{child.name} did not answer at {url}; see {child.log_path}")

    def first_exited(self) -> Child | None:
        return next((c for c in self.children if c.process.poll() is not None), None)

    def stop_all(self, *, grace: float = 10.0) -> None:
        for child in reversed(self.children):
            if child.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in reversed(self.children):
            remaining = max(0.1, deadline - time.monotonic())
            try:
                child.process.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait(timeout=5)
            # A child may have left grandchildren in its group (django-q2 workers).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.process.pid, signal.SIGKILL)
        self.children.clear()
