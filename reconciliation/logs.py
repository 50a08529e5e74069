"""Logging helpers: a filter that removes configured secrets from every record, and a JSON
formatter for structured logs."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

REDACTED = "[redacted]"


def secret_values() -> list[str]:
    """The secret values currently configured (never short ones, which would redact noise)."""
    from django.conf import settings

    values = []
    for name in getattr(settings, "SECRET_SETTING_NAMES", ()):
        value = getattr(settings, name, "")
        if isinstance(value, str) and len(value) >= 8:
            values.append(value)
    return values


def redact(text: str, secrets: list[str] | None = None) -> str:
    for value in secret_values() if secrets is None else secrets:
        text = text.replace(value, REDACTED)
    return text


class RedactSecretsFilter(logging.Filter):
    """Formats the message once and removes every configured secret from it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not lose the log line
            message = str(record.msg)
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("system", "endpoint", "status", "record_id", "run_id", "job"):
            if hasattr(record, key):
                payload[key] = getattr(record, key)
        if record.exc_text:
            payload["exception"] = record.exc_text
        elif record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)
