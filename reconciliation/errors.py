"""The project's own exceptions. Connectors translate every transport or HTTP failure into one of
these, so that the engine can decide between retrying (transient) and giving up (permanent)."""

from __future__ import annotations


class Ap24SyncError(Exception):
    """Base of every error raised on purpose by ap24sync."""


class ConfigurationError(Ap24SyncError):
    """A required setting is missing or wrong. The message names it and how to fix it."""


class RemoteError(Ap24SyncError):
    """A call to an outside system failed."""

    def __init__(
        self,
        message: str,
        *,
        system: str,
        status: int | None = None,
        endpoint: str = "",
    ) -> None:
        super().__init__(message)
        self.system = system
        self.status = status
        self.endpoint = endpoint


class TransientError(RemoteError):
    """May succeed later: connection refused or reset, timeout, 429, 5xx.

    `outcome_unknown` is True when a write may have been applied although no answer came back
    (a timeout or a connection lost after the request was sent): the caller must look the object
    up again before retrying. `retry_after` is the delay in seconds the remote asked for (429)."""

    def __init__(
        self,
        message: str,
        *,
        system: str,
        status: int | None = None,
        endpoint: str = "",
        outcome_unknown: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, system=system, status=status, endpoint=endpoint)
        self.outcome_unknown = outcome_unknown
        self.retry_after = retry_after


class PermanentError(RemoteError):
    """Will fail again if repeated unchanged: 4xx other than 404/429, or a refused value."""


class NotFoundError(PermanentError):
    """The remote object does not exist (404)."""


class AuthenticationError(PermanentError):
    """The remote refused our credentials (401/403)."""


class UnsafeFilterValue(Ap24SyncError, ValueError):
    """A value cannot be placed in a Dolibarr sqlfilters expression without changing its meaning."""


class UnknownCurrency(Ap24SyncError, ValueError):
    """A currency code ap24sync does not know the exponent of."""


class InvalidTransition(Ap24SyncError):
    """A state change that the record's current state does not allow."""


class CircuitOpenError(TransientError):
    """The remote system's circuit breaker is open (`resilience`): no call was made — or, for
    the attempt whose failure opened it, that call failed (the message says which). The work is
    deferred, not failed; it goes on once a probe finds the system back."""
