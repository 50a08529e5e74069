"""Response shapes copied from the recorded exchanges, and Dolibarr's ways of writing values.

Every object the sandbox returns is built from the recorded answer of the same route as a
template: the keys, their order and the JSON type of every field the sandbox does not model are
exactly those of the real Dolibarr 23.0.0-beta. Only the fields that carry state are overridden.
This keeps the sandbox honest about the ~100 irrelevant keys a client must tolerate, without
hand-copying them.
"""

from __future__ import annotations

import copy
import json
import threading
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

EXCHANGES_DIR = Path(__file__).resolve().parent.parent / "contracts" / "dolibarr" / "exchanges"

EIGHT_PLACES = Decimal("0.00000001")
UNIT_PLACES = Decimal("0.00001")  # MAIN_MAX_DECIMALS_UNIT
FOUR_PLACES = Decimal("0.0001")
CENT = Decimal("0.01")
DAY_SECONDS = 86400

_cache: dict[str, Any] = {}
_cache_lock = threading.Lock()


def exchange_files() -> list[Path]:
    """The recorded exchanges in the order they were made (01 … 99, then 100 … 194)."""
    return sorted(EXCHANGES_DIR.glob("*.json"), key=lambda path: int(path.name.split("-")[0]))


def recorded(number: int) -> dict[str, Any]:
    """One recorded exchange, parsed once and cached (callers must not mutate it)."""
    key = f"exchange:{number}"
    with _cache_lock:
        if key not in _cache:
            prefix = f"{number:02d}-" if number < 100 else f"{number}-"
            matches = [path for path in exchange_files() if path.name.startswith(prefix)]
            if len(matches) != 1:
                raise LookupError(f"no single recorded exchange numbered {number}")
            _cache[key] = json.loads(matches[0].read_text(encoding="utf-8"))
        return _cache[key]


def recorded_body(number: int) -> Any:
    return recorded(number)["response"].get("json")


def _template(number: int, *path: str | int) -> Any:
    node = recorded_body(number)
    for step in path:
        node = node[step]
    return node


# Which recorded answer serves as the shape of which view. Numbers are exchange files.
TEMPLATE_SOURCES: dict[str, tuple[Any, ...]] = {
    "status": (1,),
    "login": (4,),
    "company": (12,),
    "bankaccount": (14, 0),
    "thirdparty.get": (16,),
    "thirdparty.put": (17,),
    "thirdparty.list": (18, 0),
    "thirdparty.empty": (27,),
    "product.get": (30,),
    "order.get": (34,),
    "order.line.product": (34, "lines", 0),
    "order.line.free": (34, "lines", 2),
    "order.action": (35,),
    "order.list": (39, 0),
    "order.lines.product": (80, 0),
    "order.lines.free": (80, 2),
    "invoice.fromorder": (41,),
    "invoice.fromorder.line.product": (41, "lines", 0),
    "invoice.fromorder.line.free": (41, "lines", 2),
    "invoice.fromorder.inserted.product": (41, "lines", 3),
    "invoice.fromorder.inserted.free": (41, "lines", 5),
    "invoice.fromorder.lastline": (41, "line"),
    "invoice.put": (42,),
    "invoice.list": (47, 0),
    "invoice.action": (49,),
    "invoice.get": (53,),
    "invoice.line.product": (53, "lines", 0),
    "invoice.line.free": (53, "lines", 1),
    "invoice.payment": (54, 0),
    "document.build": (75,),
    "document.download": (76,),
    "document.entry": (78, 0),
    "shipment.get": (82,),
    "shipment.line": (82, "lines", 0),
    "shipment.action": (83,),
    "payment": (95,),
    "account.created": (101,),
    "account.row": (102, 0),
    "account.replaced": (105,),
    "account.updated": (108,),
    "bankline.links.transfer": (127, 0),
    "invoice.settounpaid": (139,),
    "bankline": (128,),
    "bankline.links.company": (162, 0),
    "bankline.links.payment": (162, 1),
}


def template(name: str) -> dict[str, Any]:
    """The recorded shape `name`, parsed once. Never mutate it: `render` copies it."""
    key = f"template:{name}"
    with _cache_lock:
        cached = _cache.get(key)
    if cached is None:
        number, *path = TEMPLATE_SOURCES[name]
        cached = copy.deepcopy(_template(number, *path))
        with _cache_lock:
            _cache[key] = cached
    return cached


def render(name: str, values: dict[str, Any]) -> dict[str, Any]:
    """A fresh copy of the recorded shape with the state-carrying fields replaced.

    A key that the recorded shape does not have is a programming error here, not a feature:
    it would make the sandbox answer with a key the real server never sends.
    """
    shape = template(name)
    result = {key: _fresh(value) for key, value in shape.items()}
    for key, value in values.items():
        if key not in result:
            raise KeyError(f"{name} has no key {key!r} in the recorded answer")
        result[key] = value
    return result


def _fresh(value: Any) -> Any:
    if isinstance(value, dict | list):
        return copy.deepcopy(value)
    return value


def select_properties(obj: dict[str, Any], properties: str | None) -> dict[str, Any]:
    """`properties=id,ref,...`: keep those keys in the object's own order; unknown names are
    dropped silently, so `nom` on a thirdparty returns nothing (169)."""
    if not properties:
        return obj
    wanted = {name.strip() for name in properties.split(",") if name.strip()}
    return {key: value for key, value in obj.items() if key in wanted}


# -- how Dolibarr writes values ---------------------------------------------------------------


def money8(value: Decimal | None) -> str | None:
    """DECIMAL(24,8) columns come back as strings with 8 decimals: "122.40000000"."""
    if value is None:
        return None
    return f"{value.quantize(EIGHT_PLACES, rounding=ROUND_HALF_UP):f}"


def rate4(value: Decimal) -> str:
    """VAT rates are DECIMAL(7,4): "20.0000"."""
    return f"{value.quantize(FOUR_PLACES, rounding=ROUND_HALF_UP):f}"


def php_string(value: Decimal) -> str:
    """PHP's string of a float computed by price2num: "22.4", "0", "-54" (no trailing zeros)."""
    normalised = value.normalize()
    if normalised == 0:
        return "0"
    text = f"{normalised:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def php_number(value: Decimal) -> int | float:
    """A PHP float/int put in JSON as is: 27, 122.4, -30 (totalpaid, createfromorder totals).

    The float is only the JSON encoding of an exact Decimal with at most 8 decimals; no
    arithmetic is ever done on it.
    """
    if value == value.to_integral_value():
        return int(value)
    return float(php_string(value))


def qty_string(value: Decimal) -> str:
    """qty is a REAL column: "2", "0.5"."""
    return php_string(value)


def rate_number(value: Decimal) -> str:
    """tva_tx inside an in-memory line (createfromorder): "20"."""
    return php_string(value)


def round_cents(value: Decimal) -> Decimal:
    """price2num(…, 'MT'): PHP round() at 2 decimals, half away from zero."""
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def round_unit(value: Decimal) -> Decimal:
    """price2num(…, 'MU'): PHP round() at MAIN_MAX_DECIMALS_UNIT (5) decimals, half away from
    zero: unit prices derived by Dolibarr, and amounts converted with a rate."""
    return value.quantize(UNIT_PLACES, rounding=ROUND_HALF_UP)


def midnight(timestamp: int) -> int:
    """Date-only columns (invoice date, order date, date_valid, bank dates) come back as
    midnight UTC of the day (34, 53)."""
    return timestamp - timestamp % DAY_SECONDS


def yymm(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).strftime("%y%m")


def sql_datetime(timestamp: int) -> str:
    """'2026-11-21 11:28:50': how the invoice payments list and accounts show dates (54, 101)."""
    return datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def sql_date(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%d")


def id_string(value: int | None) -> str | None:
    return None if value is None else str(value)
