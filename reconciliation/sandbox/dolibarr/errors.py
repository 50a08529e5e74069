"""Dolibarr's error answers: the Restler body `{"error": {"code", "message"}, "debug": {...}}`.

`message` is the HTTP reason phrase, ": ", then Dolibarr's text. Extra Dolibarr error strings come
as numeric keys inside `error` ("0": "ErrorProductAlreadyExists", 32). The `debug` block names the
stage that failed: parameter validation ("validate", 50, 51, 117) or the API method ("call").
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from reconciliation.sandbox.base import Response

_STAGES = ["get", "route", "negotiate", "authenticate", "validate", "call"]


class ApiError(Exception):
    """Raised by a handler to answer with Dolibarr's error body."""

    def __init__(
        self,
        status: int,
        text: str,
        *,
        source: str = "api.class.php",
        stage: str = "call",
        extra: list[str] | None = None,
    ) -> None:
        super().__init__(text)
        self.status, self.text, self.source, self.stage = status, text, source, stage
        self.extra = extra or []

    def response(self) -> Response:
        return error_response(
            self.status, self.text, source=self.source, stage=self.stage, extra=self.extra
        )


class NotModified(Exception):
    """304 with an empty body: "nothing done" (36, 89, 145)."""


def error_body(
    status: int, text: str, *, source: str, stage: str = "call", extra: list[str] | None = None
) -> dict[str, Any]:
    reason = HTTPStatus(status).phrase
    error: dict[str, Any] = {"code": status, "message": f"{reason}: {text}" if text else reason}
    for index, detail in enumerate(extra or []):
        error[str(index)] = detail
    failed_at = _STAGES.index(stage)
    return {
        "error": error,
        "debug": {
            "source": f"{source} at {stage} stage",
            "stages": {"success": _STAGES[:failed_at], "failure": [stage, "message"]},
        },
    }


def error_response(
    status: int, text: str, *, source: str, stage: str = "call", extra: list[str] | None = None
) -> Response:
    body = error_body(status, text, source=source, stage=stage, extra=extra)
    return Response(status=status, body=json.dumps(body).encode())


def required(name: str) -> ApiError:
    """Restler's check of a mandatory method argument (50, 117)."""
    return ApiError(400, f"`{name}` is required.", source="Validator.php:436", stage="validate")


def expecting_integer(name: str) -> ApiError:
    """Restler's type check (51)."""
    return ApiError(
        400,
        f"Invalid value specified for `{name}`. Expecting integer value",
        source="Validator.php:718",
        stage="validate",
    )
