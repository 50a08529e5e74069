"""Reading what a client sent: JSON bodies without floats, Restler's parameter checks, and the
list parameters shared by every collection route (sortfield, limit, page, pagination_data)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from reconciliation.sandbox.base import Request
from reconciliation.sandbox.dolibarr import sqlfilters
from reconciliation.sandbox.dolibarr.errors import ApiError, expecting_integer, required
from reconciliation.sandbox.dolibarr.store import Table


def body(request: Request) -> dict[str, Any]:
    """The JSON body as a dict, numbers with a fraction as Decimal (money never goes through
    float). An empty body is an empty dict: action routes work without one (35)."""
    if not request.body.strip():
        return {}
    try:
        data = json.loads(request.body, parse_float=Decimal)
    except ValueError as exc:
        raise ApiError(
            400, f"Error parsing JSON: {exc}", source="JsonFormat.php:240", stage="negotiate"
        ) from exc
    if not isinstance(data, dict):
        raise ApiError(400, "Body must be a JSON object", source="Validator.php:436")
    return data


def path_id(request: Request, name: str = "id") -> int:
    """`{id}` in a route is declared integer: anything else fails Restler's validation."""
    value = request.params.get(name, "")
    if not value.isdigit():
        raise expecting_integer(name)
    return int(value)


def integer(value: Any, name: str) -> int:
    """An integer argument: a JSON integer or a string of digits ("CB" fails, 51)."""
    if isinstance(value, bool):
        raise expecting_integer(name)
    if isinstance(value, int):
        return value
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise expecting_integer(name)


def require(data: Mapping[str, Any], *names: str) -> None:
    """Restler checks mandatory arguments in signature order and names the first missing."""
    for name in names:
        if name not in data or data[name] is None or data[name] == "":
            raise required(name)


def decimal(value: Any, default: Decimal | None = None) -> Decimal | None:
    """A number as the API accepts it: JSON number or numeric string; '' or null is unset."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return Decimal(int(value))
    if isinstance(value, int | Decimal):
        return Decimal(value)
    try:
        return Decimal(str(value).strip())
    except InvalidOperation:
        return default


def optional_int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(Decimal(str(value)))
    except (InvalidOperation, ValueError):
        return None


def text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def query_int(request: Request, name: str, default: int) -> int:
    value = request.query.get(name)
    if value is None or value == "":
        return default
    if not value.lstrip("-").isdigit():
        raise expecting_integer(name)
    return int(value)


def query_bool(request: Request, name: str) -> bool:
    return request.query.get(name, "").lower() in {"1", "true", "yes", "on"}


class ListQuery:
    """The collection parameters of a list route, checked against the table's columns."""

    def __init__(
        self,
        request: Request,
        columns: Mapping[str, Callable[[Any], Any]],
        *,
        alias: str | None = "t",
        default_sort: str = "t.rowid",
        default_limit: int = 100,
        error_text: str,
        error_source: str,
    ) -> None:
        self.request, self.columns, self.alias = request, columns, alias
        self.error_text, self.error_source = error_text, error_source
        self.sortfield = request.query.get("sortfield") or default_sort
        self.sortorder = (request.query.get("sortorder") or "ASC").upper()
        self.limit = query_int(request, "limit", default_limit)
        self.page = max(query_int(request, "page", 0), 0)
        self.pagination = query_bool(request, "pagination_data")
        self.properties = request.query.get("properties")
        try:
            self.predicate, self.lookup = sqlfilters.plan(
                request.query.get("sqlfilters"), columns, alias=alias
            )
        except sqlfilters.FilterSyntaxError as exc:
            raise ApiError(
                400,
                "Error when validating parameter sqlfilters -> Bad syntax of the search string: "
                f"{exc.text}",
                source=error_source,
            ) from exc
        except sqlfilters.UnknownColumn as exc:
            raise self.unknown_column(exc.column) from exc

    def unknown_column(self, column: str) -> ApiError:
        """A database error inside the list query: 503 (22, 119)."""
        return ApiError(
            503,
            f"{self.error_text} Unknown column '{column}' in 'WHERE'",
            source=self.error_source,
        )

    def select(self, rows: Iterable[Any]) -> tuple[list[Any], int]:
        """(the page of matching rows, the number of matching rows)."""
        try:
            matching = [row for row in rows if self.predicate(row)]
        except sqlfilters.UnknownColumn as exc:
            raise self.unknown_column(exc.column) from exc
        return self._page(matching)

    def select_from(
        self,
        table: Table[Any],
        indexed: Mapping[str, str],
        where: Callable[[Any], bool] | None = None,
    ) -> tuple[list[Any], int]:
        """`select` over the rows of `table` that pass `where` (the route's own filters).
        A filter of the `sqlfilters.Lookup` shape on a column of `indexed` (column name ->
        row attribute that its getter returns) is answered from the table's index instead of
        running the predicate on every row: the same rows, in the same order."""
        lookup = self.lookup
        found = None
        if lookup is not None and lookup.column in indexed:
            found = table.lookup(indexed[lookup.column], list(lookup.values))
        if found is None:
            rows = table.values() if where is None else (r for r in table.values() if where(r))
            return self.select(rows)
        return self._page(found if where is None else [row for row in found if where(row)])

    def _page(self, matching: list[Any]) -> tuple[list[Any], int]:
        sort_key = self._sort_key()
        matching.sort(key=sort_key, reverse=self.sortorder == "DESC")
        total = len(matching)
        if self.limit > 0:
            start = self.page * self.limit
            return matching[start : start + self.limit], total
        return matching, total

    def _sort_key(self) -> Callable[[Any], Any]:
        fields = [field.strip() for field in self.sortfield.split(",") if field.strip()]
        getters = []
        for field in fields:
            name = field.split(".", 1)[1] if "." in field else field
            if name.lower() not in self.columns:
                raise ApiError(
                    503,
                    f"{self.error_text} Unknown column '{field}' in 'ORDER BY'",
                    source=self.error_source,
                )
            getters.append(self.columns[name.lower()])

        def key(row: Any) -> tuple[Any, ...]:
            # MySQL sorts NULL first in ascending order.
            return tuple(_sortable(getter(row)) for getter in getters)

        return key

    def answer(self, page: list[dict[str, Any]], total: int) -> Any:
        """A bare array, or {data, pagination} with pagination_data=true (90, 166)."""
        if not self.pagination:
            return page
        page_count = math.ceil(total / self.limit) if self.limit > 0 else 1
        return {
            "data": page,
            "pagination": {
                "total": total,
                "page": self.page,
                "page_count": page_count,
                "limit": self.limit,
            },
        }


def _sortable(value: Any) -> tuple[int, Any]:
    if value is None:
        return (0, 0)
    if isinstance(value, int | Decimal) and not isinstance(value, bool):
        return (1, Decimal(value))
    return (2, str(value).casefold())
