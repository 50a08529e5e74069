"""The dictionaries of the recorded instance (countries, payment types, VAT rates), read from the
recorded answers so that ids and codes are the real ones: card payments are id 6 `CB` (08),
France is country 1 (09, 10)."""

from __future__ import annotations

from functools import cache
from typing import Any

from reconciliation.sandbox.dolibarr.templates import recorded_body

FRANCE_ID = 1


@cache
def countries() -> tuple[dict[str, Any], ...]:
    """All 251 rows of `llx_c_country` as `GET /setup/dictionary/countries?limit=300` gave them."""
    return tuple(recorded_body(9))


@cache
def country_by_code() -> dict[str, dict[str, Any]]:
    return {row["code"]: row for row in countries() if row["code"]}


@cache
def country_by_id() -> dict[int, dict[str, Any]]:
    return {row["id"]: row for row in countries()}


@cache
def payment_types() -> tuple[dict[str, Any], ...]:
    """The five active payment modes of 08 (`id` is a string there, as recorded)."""
    return tuple(recorded_body(8))


@cache
def payment_type_by_id() -> dict[int, dict[str, Any]]:
    return {int(row["id"]): row for row in payment_types()}


@cache
def vat_rates() -> tuple[dict[str, Any], ...]:
    """France's VAT rates (11). Other countries' rates were not recorded and are not served."""
    return tuple(recorded_body(11))
