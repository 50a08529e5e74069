"""The numbered-write lane: one at a time per Dolibarr instance, across every thread, process and
machine that talks to it.

Dolibarr allocates invoice, credit-note, payment and customer numbers by reading the highest one
and inserting the next with nothing reserving it in between, so two such writes at once either
fail on a unique key or, for payments, silently share a `PAY…` number (../shared/dolibarr/README.md,
"Concurrency"; exchanges 174-192). Every write that allocates a number runs inside
`lane.hold()`, together with the look-up that guards it.

Each lane is an in-process `threading.Lock` (threads of one process queue there, cheaply) in front
of a lock every process can see: a PostgreSQL advisory lock, a Redis lock, or an `flock` on a
file. Whatever holds it and dies frees it: the PostgreSQL session ends, the Redis key expires,
the kernel drops the `flock`. A worker that cannot get it within `DOLIBARR_LANE_TIMEOUT` seconds
gets a `TransientError`, so the record is retried later instead of failing.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from reconciliation.errors import TransientError

logger = logging.getLogger(__name__)

# Cross-process waiters poll; the sleep between polls grows to this cap so that a freed lane is
# taken within a couple of milliseconds (a hold lasts tens of milliseconds on a real server).
_POLL_FIRST_SECONDS = 0.0002
_POLL_CAP_SECONDS = 0.002


# --- Identity of a Dolibarr instance ----------------------------------------------------------


def lane_name(dolibarr_url: str) -> str:
    """The instance's canonical URL: the same server spelled with a different case, a default
    port or a trailing slash is the same lane; credentials in the URL never reach a lock name."""
    parts = urlsplit(dolibarr_url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    default_port = {"http": 80, "https": 443}.get(scheme)
    port = f":{parts.port}" if parts.port and parts.port != default_port else ""
    path = parts.path.rstrip("/")
    return urlunsplit((scheme, host + port, path, "", ""))


def lane_key(dolibarr_url: str) -> int:
    """A stable signed 64-bit key (PostgreSQL's `bigint`) for the instance: the first eight bytes
    of a SHA-256, so every machine and Python version computes the same one."""
    digest = hashlib.sha256(f"ap24sync-lane:{lane_name(dolibarr_url)}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _key_hex(dolibarr_url: str) -> str:
    return f"{lane_key(dolibarr_url) & 0xFFFF_FFFF_FFFF_FFFF:016x}"


# --- The in-process queue -----------------------------------------------------------------------

_process_locks: dict[str, threading.Lock] = {}
_process_locks_guard = threading.Lock()


def _process_lock(name: str) -> threading.Lock:
    """One lock per (backend, instance) in this process, shared by every lane object built for it
    (the engine may build a lane per run)."""
    with _process_locks_guard:
        return _process_locks.setdefault(name, threading.Lock())


def _forget_process_locks() -> None:
    # A child forked while a parent thread held a lock would inherit it held forever, and
    # would share the parent's lane connections.
    global _process_locks_guard, _lanes_guard
    _process_locks.clear()
    _process_locks_guard = threading.Lock()
    _lanes.clear()
    _lanes_guard = threading.Lock()


os.register_at_fork(after_in_child=_forget_process_locks)


def _lane_busy(*, backend: str, name: str, timeout: float) -> TransientError:
    return TransientError(
        f"Dolibarr numbered-write lane busy: not free after {timeout:g} s "
        f"({backend} lane of {name}); another worker holds it, retry later",
        system="dolibarr",
    )


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _poll_until(deadline: float, attempt: Any) -> bool:
    """Call `attempt()` until it returns True or the deadline passes, sleeping a little more
    each time (up to a couple of milliseconds)."""
    pause = _POLL_FIRST_SECONDS
    while True:
        if attempt():
            return True
        left = _remaining(deadline)
        if left <= 0:
            return False
        time.sleep(min(pause, left))
        pause = min(pause * 2, _POLL_CAP_SECONDS)


# --- The lanes ------------------------------------------------------------------------------


class _CrossProcessLock(Protocol):
    def acquire(self, deadline: float) -> bool: ...

    def release(self) -> None: ...


class LocalLane:
    """For one process (tests, a single-threaded dry run): a `threading.Lock` per instance."""

    backend = "local"

    def __init__(self, dolibarr_url: str, *, timeout: float) -> None:
        self.name = lane_name(dolibarr_url)
        self.timeout = timeout
        self._local = _process_lock(f"{self.backend}:{self.name}")

    @contextmanager
    def hold(self) -> Iterator[None]:
        if not self._local.acquire(timeout=self.timeout):
            raise _lane_busy(backend=self.backend, name=self.name, timeout=self.timeout)
        try:
            yield
        finally:
            self._local.release()


class _SharedLane:
    """The in-process queue in front of a lock other processes see; one deadline covers both."""

    backend = ""

    def __init__(self, dolibarr_url: str, *, timeout: float) -> None:
        self.name = lane_name(dolibarr_url)
        self.timeout = timeout
        self._local = _process_lock(f"{self.backend}:{self.name}")
        self._shared: _CrossProcessLock

    @contextmanager
    def hold(self) -> Iterator[None]:
        deadline = time.monotonic() + self.timeout
        if not self._local.acquire(timeout=self.timeout):
            raise _lane_busy(backend=self.backend, name=self.name, timeout=self.timeout)
        try:
            if not self._shared.acquire(deadline):
                raise _lane_busy(backend=self.backend, name=self.name, timeout=self.timeout)
            try:
                yield
            finally:
                self._shared.release()
        finally:
            self._local.release()


# --- File (SQLite, one machine) -------------------------------------------------------------


class _FlockTurnstile:
    """Two `flock`s: a waiter takes `queue`, then `lane`, then lets `queue` go. A process that
    just left the lane must queue behind the one already waiting, so polling waiters are not
    starved by a busy process re-taking the lane a microsecond after releasing it."""

    def __init__(self, lane_path: Path) -> None:
        self.lane_path = lane_path
        self.queue_path = lane_path.with_suffix(".queue")
        self._lane_fd: int | None = None

    def acquire(self, deadline: float) -> bool:
        queue_fd = self._open(self.queue_path)
        try:
            if not _poll_until(deadline, lambda: _try_flock(queue_fd)):
                return False
            lane_fd = self._open(self.lane_path)
            if not _poll_until(deadline, lambda: _try_flock(lane_fd)):
                os.close(lane_fd)
                return False
            self._lane_fd = lane_fd
            return True
        finally:
            # Closing the only descriptor of the open file drops its flock.
            os.close(queue_fd)

    def release(self) -> None:
        lane_fd, self._lane_fd = self._lane_fd, None
        if lane_fd is not None:
            os.close(lane_fd)

    @staticmethod
    def _open(path: Path) -> int:
        # Opened per hold: a descriptor kept open would be shared with forked children, and
        # the flock would outlive the process that took it.
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class FileLane(_SharedLane):
    """For SQLite: every worker runs on the machine that holds the database file, so an `flock`
    beside it (or in the temporary directory) is shared by all of them. The kernel drops it when
    the holder's process ends, however it ends."""

    backend = "file"

    def __init__(self, dolibarr_url: str, *, timeout: float, directory: Path | None = None):
        super().__init__(dolibarr_url, timeout=timeout)
        folder = Path(directory) if directory is not None else Path(tempfile.gettempdir())
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"ap24sync-lane-{_key_hex(dolibarr_url)}.lock"
        self._shared = _FlockTurnstile(self.path)


# --- PostgreSQL -----------------------------------------------------------------------------


class _AdvisoryLock:
    """A session-level advisory lock on a connection of its own, in autocommit: it is never
    part of a caller's transaction, and no transaction stays open while the lane is held.
    PostgreSQL grants a freed advisory lock to the longest waiter, so the lane is fair."""

    def __init__(self, key: int, connect_kwargs: dict[str, Any]) -> None:
        self.key = key
        self.connect_kwargs = connect_kwargs
        self._connection: Any = None
        self._pid = 0

    def acquire(self, deadline: float) -> bool:
        import psycopg

        # A kept connection may have been dropped since the last hold (server restart, idle
        # timeout of a proxy): one fresh connection is tried before giving up.
        attempts = 2 if self._has_connection() else 1
        for attempt in range(1, attempts + 1):
            try:
                return self._lock_on(self._connection_for_this_process(), deadline)
            except psycopg.OperationalError as exc:
                self._discard()
                if attempt == attempts:
                    raise _postgres_unavailable(exc) from exc
            except psycopg.Error as exc:
                self._discard()
                raise _postgres_unavailable(exc) from exc
        return False

    def _lock_on(self, connection: Any, deadline: float) -> bool:
        from psycopg import errors

        if connection.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()[0]:
            return True
        # Waiting in pg_advisory_lock, not polling: the server hands the lock to its waiter.
        wait_ms = max(1, int(_remaining(deadline) * 1000))
        connection.execute("SELECT set_config('lock_timeout', %s, false)", (f"{wait_ms}ms",))
        try:
            connection.execute("SELECT pg_advisory_lock(%s)", (self.key,))
        except errors.LockNotAvailable:
            return False
        finally:
            connection.execute("SELECT set_config('lock_timeout', '0', false)")
        return True

    def _has_connection(self) -> bool:
        return self._connection is not None and self._pid == os.getpid()

    def release(self) -> None:
        import psycopg

        try:
            self._connection.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
        except psycopg.Error:
            # The session is gone, and the lock with it; a new connection is opened next time.
            logger.warning("lane: advisory unlock failed; dropping the lane's connection")
            self._discard()

    def _connection_for_this_process(self) -> Any:
        import psycopg

        if self._connection is None or self._connection.closed or self._pid != os.getpid():
            self._connection = psycopg.connect(**self.connect_kwargs, autocommit=True)
            self._pid = os.getpid()
            # The server notices a holder whose machine vanished within about a minute.
            for name, value in (
                ("tcp_keepalives_idle", "30"),
                ("tcp_keepalives_interval", "10"),
                ("tcp_keepalives_count", "3"),
                ("application_name", "ap24sync numbered-write lane"),
            ):
                self._connection.execute("SELECT set_config(%s, %s, false)", (name, value))
        return self._connection

    def _discard(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and self._pid == os.getpid():
            import psycopg

            try:
                connection.close()
            except psycopg.Error:
                logger.debug("lane: closing a broken connection failed", exc_info=True)


def _postgres_unavailable(exc: Exception) -> TransientError:
    return TransientError(
        f"numbered-write lane unavailable: PostgreSQL refused the advisory lock ({exc})",
        system="postgresql",
    )


class PostgresLane(_SharedLane):
    """For PostgreSQL: a session-level `pg_advisory_lock` keyed by a hash of the Dolibarr URL.

    `connect_kwargs` are psycopg's (`dbname`, `user`, `host`, …); `postgres_connect_kwargs()`
    derives them from Django's default database."""

    backend = "postgresql"

    def __init__(
        self, dolibarr_url: str, *, timeout: float, connect_kwargs: dict[str, Any]
    ) -> None:
        super().__init__(dolibarr_url, timeout=timeout)
        self._shared = _AdvisoryLock(lane_key(dolibarr_url), dict(connect_kwargs))


def postgres_connect_kwargs(alias: str = "default") -> dict[str, Any]:
    """psycopg's connection arguments for a Django database, as Django itself builds them,
    minus what only Django's own connections use (its adapters and cursor class)."""
    from django.db import connections

    params = connections[alias].get_connection_params()
    for django_only in ("context", "cursor_factory", "pool"):
        params.pop(django_only, None)
    return params


# --- Redis ----------------------------------------------------------------------------------


class _RedisTurnstile:
    """Two redis-py locks (queue, then lane, as in `_FlockTurnstile`) with a lease that a holder
    which dies stops renewing, so its key expires and the lane frees itself. While nobody queues
    (no `queue` key), the lane is taken directly: three round trips per hold instead of five.

    One renewer thread per process renews the lease of the lock held, so a slow Dolibarr call
    keeps the lane."""

    def __init__(self, client: Any, prefix: str, lease: float) -> None:
        self.client = client
        self.queue_name = f"{prefix}:queue"
        self.lane_name = f"{prefix}:lane"
        self.lease = lease
        self._held: Any = None
        self._renewer_pid = 0

    def acquire(self, deadline: float) -> bool:
        import redis

        try:
            lane = self._lock(self.lane_name)
            if not self._take_directly(lane) and not self._take_in_turn(lane, deadline):
                return False
        except redis.RedisError as exc:
            raise TransientError(
                f"numbered-write lane unavailable: Redis refused the lock ({exc})",
                system="redis",
            ) from exc
        self._held = lane
        self._start_renewer()
        return True

    def release(self) -> None:
        lane, self._held = self._held, None
        if lane is not None:
            _release_quietly(lane)

    def _take_directly(self, lane: Any) -> bool:
        return not self.client.exists(self.queue_name) and lane.acquire(blocking=False)

    def _take_in_turn(self, lane: Any, deadline: float) -> bool:
        queue = self._lock(self.queue_name)
        if not queue.acquire(blocking_timeout=_remaining(deadline)):
            return False
        try:
            return bool(lane.acquire(blocking_timeout=_remaining(deadline)))
        finally:
            _release_quietly(queue)

    def _lock(self, name: str) -> Any:
        # `thread_local=False`: the renewer thread renews the token the holder thread took.
        return self.client.lock(
            name, timeout=self.lease, sleep=_POLL_CAP_SECONDS, thread_local=False
        )

    def _start_renewer(self) -> None:
        if self._renewer_pid == os.getpid():
            return
        self._renewer_pid = os.getpid()
        threading.Thread(
            target=self._renew_forever, name="ap24sync-lane-lease", daemon=True
        ).start()

    def _renew_forever(self) -> None:
        import redis

        while True:
            time.sleep(self.lease / 3)
            lane = self._held
            if lane is None:
                continue
            try:
                lane.reacquire()
            except redis.exceptions.LockError:
                pass  # released (and maybe re-taken by another worker) since it was read
            except redis.RedisError:
                logger.error("lane: the Redis lease could not be renewed; it may expire while held")


def _release_quietly(lock: Any) -> None:
    import redis

    try:
        lock.release()
    except redis.exceptions.LockError:
        # The lease expired while held (a process paused longer than the lease): someone else
        # may already hold the lane; there is nothing of ours left to release.
        logger.warning("lane: the Redis lock had expired before it was released")
    except redis.RedisError:
        logger.warning("lane: releasing the Redis lock failed; it will expire by itself")


class RedisLane(_SharedLane):
    """For several machines sharing a Redis (the django-q2 broker): a redis-py `Lock` keyed by a
    hash of the Dolibarr URL, with a `lease` in seconds after which a dead holder's lock expires
    (renewed every lease/3 while a live holder keeps it)."""

    backend = "redis"

    def __init__(
        self, dolibarr_url: str, *, timeout: float, redis_url: str, lease: float = 30.0
    ) -> None:
        import redis

        super().__init__(dolibarr_url, timeout=timeout)
        client = redis.Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=10)
        self.key_prefix = f"ap24sync:lane:{_key_hex(dolibarr_url)}"
        self._shared = _RedisTurnstile(client, self.key_prefix, lease)


# --- Choice -----------------------------------------------------------------------------------


Lane = LocalLane | FileLane | PostgresLane | RedisLane

_lanes: dict[tuple[Any, ...], Lane] = {}
_lanes_guard = threading.Lock()


def lane_from_settings() -> Lane:
    """The lane every worker of this deployment shares: Redis when `REDIS_URL` is set (workers
    may run on several machines and already share it), else PostgreSQL when it is the database
    (every worker reaches it), else a file beside the SQLite database (one machine).

    Built once per process and configuration, so the PostgreSQL lane keeps one connection per
    worker process however many runs ask for it."""
    from django.conf import settings

    from reconciliation.config import setting_required

    dolibarr_url = setting_required("DOLIBARR_URL")
    timeout = float(settings.DOLIBARR_LANE_TIMEOUT)
    redis_url = getattr(settings, "REDIS_URL", "")
    database = settings.DATABASES["default"]
    if redis_url:
        identity: tuple[Any, ...] = ("redis", dolibarr_url, timeout, redis_url)
        build = partial(RedisLane, dolibarr_url, timeout=timeout, redis_url=redis_url)
    elif database["ENGINE"] == "django.db.backends.postgresql":
        kwargs = postgres_connect_kwargs()
        identity = ("postgresql", dolibarr_url, timeout, repr(sorted(kwargs.items())))
        build = partial(PostgresLane, dolibarr_url, timeout=timeout, connect_kwargs=kwargs)
    else:
        folder = _sqlite_folder(database)
        identity = ("file", dolibarr_url, timeout, str(folder))
        build = partial(FileLane, dolibarr_url, timeout=timeout, directory=folder)
    with _lanes_guard:
        if identity not in _lanes:
            _lanes[identity] = build()
        return _lanes[identity]


def _sqlite_folder(database: dict[str, Any]) -> Path | None:
    name = str(database.get("NAME") or "")
    if not name or name == ":memory:" or name.startswith("file:"):
        return None
    return Path(name).resolve().parent
