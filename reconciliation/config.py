"""Reading required settings at the moment a job needs them, with one clear line when missing."""

from __future__ import annotations

from django.conf import settings

from reconciliation.errors import ConfigurationError


def setting_required(name: str) -> str:
    """The value of a required setting, or a ConfigurationError naming the variable."""
    value = getattr(settings, name, "")
    if value in ("", None):
        raise ConfigurationError(f"{name} is not set; see .env.example")
    return value
