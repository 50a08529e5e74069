"""Dolibarr's "Universal Search Filter" (the `sqlfilters` query parameter), built in one place.

Dolibarr turns `(t.<column>:<operator>:<value>)` into SQL. A quoted value is escaped by Dolibarr, an
unquoted one is either a number or, stripped to `[a-z0-9_]`, a *column name* (recorded exchange 22:
`(t.ref_ext:=:ap24-user-42)` -> 503 "Unknown column 'ap24user42'"). A value that can end the
criterion early or confuse the quoting must therefore never reach the URL. This module quotes
every string, leaves numbers bare, and refuses with `UnsafeFilterValue` what it cannot make safe:

* `(` and `)` end or open a criterion (the parser's regex forbids them in values);
* `'` cannot be escaped: `\\'`, `''` and a bare `'` all failed to match a stored apostrophe (170,
  173) — a `like` with `%` in its place is the only working way, and it is the caller's choice;
* `"` makes Dolibarr's injection filter answer an HTML 403 instead of the API (172);
* `\\` is an escape character in MariaDB string literals;
* control characters (and Unicode line separators) have no business in a search value.

In `like` and `notlike`, `%` and `_` are wildcards (`in_REC1%` also matches `inXREC1…`, 164):
a caller that needs an exact prefix checks the rows it gets back.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal

from reconciliation.errors import UnsafeFilterValue

# The operators this build's parser accepts (README, "sqlfilters"); `in`, `notin`, `is` and
# `isnot` are left out because no recorded exchange shows how their values must be written.
OPERATORS = frozenset({"=", "!=", "<", ">", "<=", ">=", "like", "notlike"})

# `t.<column>` for most lists; a bare `<column>` for the bank-lines list, whose query has no alias
# (exchange 119).
_FIELD = re.compile(r"^(?:t\.)?[a-z_][a-z0-9_]*$")

REFUSED_CHARACTERS = frozenset("()'\"\\")
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})

FilterValue = str | int | Decimal | date | datetime


def unsafe_reason(value: str) -> str | None:
    """Why a string cannot be placed in a quoted filter value, or None when it can."""
    for character in value:
        if character in REFUSED_CHARACTERS:
            return f"it contains {character!r}"
        if unicodedata.category(character) in _REFUSED_CATEGORIES:
            return f"it contains the control character U+{ord(character):04X}"
    return None


def quote_value(value: FilterValue) -> str:
    """The value as it must appear after the second `:` of a criterion.

    Strings are single-quoted; integers and Decimals stay bare (Dolibarr reads them as numbers,
    `(t.client:=:1)`); dates become `'YYYY-MM-DD'`, compared as SQL strings against the column
    (exchange 98); aware datetimes become `'YYYY-MM-DD HH:MM:SS'` in UTC, the server's time zone.
    """
    if isinstance(value, bool):
        raise TypeError("a filter value must not be a bool: write 1 or 0")
    if isinstance(value, float):
        raise TypeError(f"a filter value must not be a float ({value!r}): use Decimal or int")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise UnsafeFilterValue(f"{value!r} is not a finite number")
        return f"{value:f}"
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"a datetime filter value must be timezone-aware, not {value!r}")
        return "'" + value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") + "'"
    if isinstance(value, date):
        return "'" + value.isoformat() + "'"
    if isinstance(value, str):
        reason = unsafe_reason(value)
        if reason is not None:
            raise UnsafeFilterValue(f"cannot search Dolibarr for {value!r}: {reason}")
        return "'" + value + "'"
    raise TypeError(f"cannot use a {type(value).__name__} as a filter value")


@dataclass(frozen=True, slots=True)
class SqlFilter:
    """A ready `sqlfilters` string, with the columns it uses (the bank-lines list needs them bare).

    `joiner` is None for a single criterion, else "and" / "or"; `and` and `or` are never mixed in
    one expression, because no recorded exchange shows how this build groups them.
    """

    text: str
    fields: tuple[str, ...]
    joiner: str | None = None

    def __str__(self) -> str:
        return self.text

    def __and__(self, other: SqlFilter) -> SqlFilter:
        return all_of(self, other)

    def __or__(self, other: SqlFilter) -> SqlFilter:
        return any_of(self, other)

    @property
    def uses_table_alias(self) -> bool:
        return any(field.startswith("t.") for field in self.fields)


def criterion(field: str, operator: str, value: FilterValue) -> SqlFilter:
    """One criterion, `(t.ref_ext:=:'in_123')`. The field is a database column (`t.nom`, not
    `name`: exchange 97), never user input."""
    if not isinstance(field, str) or not _FIELD.match(field):
        raise ValueError(f"{field!r} is not a column name (t.<column> or <column>)")
    if operator not in OPERATORS:
        raise ValueError(f"operator {operator!r} is not one of {sorted(OPERATORS)}")
    return SqlFilter(text=f"({field}:{operator}:{quote_value(value)})", fields=(field,))


def _join(joiner: str, filters: tuple[SqlFilter, ...]) -> SqlFilter:
    if not filters:
        raise ValueError(f"{joiner!r} needs at least one criterion")
    for item in filters:
        if not isinstance(item, SqlFilter):
            raise TypeError(f"expected a SqlFilter, not {type(item).__name__}")
        if item.joiner not in (None, joiner):
            raise ValueError("'and' and 'or' cannot be mixed in one Dolibarr filter")
    if len(filters) == 1:
        return filters[0]
    return SqlFilter(
        text=f" {joiner} ".join(item.text for item in filters),
        fields=tuple(field for item in filters for field in item.fields),
        joiner=joiner,
    )


def all_of(*filters: SqlFilter) -> SqlFilter:
    """Criteria that must all hold: `(t.nom:like:'%Curie%') and (t.client:=:1)` (exchange 97)."""
    return _join("and", filters)


def any_of(*filters: SqlFilter) -> SqlFilter:
    """Criteria of which one must hold, joined with `or`."""
    return _join("or", filters)


def equals(field: str, value: FilterValue) -> SqlFilter:
    return criterion(field, "=", value)


def like(field: str, pattern: str) -> SqlFilter:
    """`%` and `_` in the pattern are SQL wildcards; everything else is refused as for `=`."""
    return criterion(field, "like", pattern)
