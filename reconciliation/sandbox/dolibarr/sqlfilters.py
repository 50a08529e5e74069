"""Dolibarr's Universal Search Filter (`sqlfilters`) as this version parses and runs it.

Syntax (README "sqlfilters"): criteria `(t.column:operator:value)` joined with `and` / `or`,
parentheses for grouping. Operators `= < > <= >= != in notin like notlike is isnot`. String
values are single-quoted; numbers may be bare. The quirks the real server has are kept on purpose,
because a client must cope with them:

* a bare non-numeric value is stripped to `[a-z0-9_]` and used as a column name, so
  `(t.ref_ext:=:ap24-user-42)` fails with 503 "Unknown column 'ap24user42' in 'WHERE'" (22);
* anything that is not made of criteria is refused with 400 "Bad syntax" (23);
* an unknown column is a 503 from the database (22, 119);
* `like` takes `%` and `_` as wildcards (164), comparisons follow the `utf8mb4_unicode_ci`
  collation (case and accents ignored);
* an apostrophe inside a quoted value never matches a stored apostrophe (170, 173): the escaping
  of the real server leaves a backslash in the compared text.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

Row = Any
Getter = Callable[[Row], Any]
Predicate = Callable[[Row], bool]

OPERATORS = {"=", "<", ">", "<=", ">=", "!=", "<>", "in", "notin", "like", "notlike", "is", "isnot"}
_CRITERION = re.compile(r"\(([^:()]+):([^:()]+):([^()]*)\)")
_WORD = re.compile(r"(and|or)\b", re.IGNORECASE)
_FIELD = re.compile(r"^[a-z0-9_.]+$", re.IGNORECASE)
_NUMBER = re.compile(r"^[+-]?\d+(\.\d+)?$")


class FilterSyntaxError(Exception):
    """400 from the parameter check: the text is not made of criteria."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class UnknownColumn(Exception):
    """503 from the database: a column that the table (or alias) does not have."""

    def __init__(self, column: str) -> None:
        super().__init__(column)
        self.column = column


@dataclass(frozen=True)
class Literal:
    value: Any  # str, Decimal, None (NULL), or a tuple for in/notin


@dataclass(frozen=True)
class ColumnRef:
    name: str


@dataclass(frozen=True)
class Criterion:
    field: str
    operator: str
    operand: Literal | ColumnRef


@dataclass(frozen=True)
class BoolOp:
    op: str  # "and" / "or"
    left: Any
    right: Any


# -- parsing ----------------------------------------------------------------------------------


def parse(text: str) -> Any:
    """The filter's syntax tree, or FilterSyntaxError with the text the server quotes back."""
    source = text.strip()
    if not source.startswith("("):
        # The server wraps a bare filter in parentheses before checking it (23).
        source = f"({source})"
    tokens = _tokenize(source)
    if tokens is None:
        raise FilterSyntaxError(source)
    parser = _Parser(tokens, source)
    tree = parser.expression()
    if parser.position != len(tokens):
        raise FilterSyntaxError(source)
    return tree


def _tokenize(source: str) -> list[Any] | None:
    tokens: list[Any] = []
    position = 0
    while position < len(source):
        char = source[position]
        if char.isspace():
            position += 1
            continue
        criterion = _CRITERION.match(source, position)
        if criterion:
            tokens.append(_criterion(*criterion.groups()))
            position = criterion.end()
            continue
        if char in "()":
            tokens.append(char)
            position += 1
            continue
        word = _WORD.match(source, position)
        if word:
            tokens.append(word.group(1).lower())
            position = word.end()
            continue
        return None
    return tokens


def _criterion(field: str, operator: str, value: str) -> Criterion | None:
    field, operator, value = field.strip(), operator.strip().lower(), value.strip()
    if not _FIELD.match(field) or operator not in OPERATORS:
        return None
    return Criterion(field, operator, _operand(operator, value))


def _operand(operator: str, value: str) -> Literal | ColumnRef:
    if operator in {"is", "isnot"}:
        return Literal(None)
    if operator in {"in", "notin"}:
        return Literal(tuple(_scalar(item.strip()) for item in value.split(",") if item.strip()))
    if len(value) >= 2 and value.startswith("'") and value.endswith("'"):
        return Literal(_quoted(value))
    if _NUMBER.match(value):
        return Literal(Decimal(value))
    if value.upper() == "NULL":
        return Literal(None)
    # Bare words become a column name after the server strips them to [a-z0-9_] (22).
    return ColumnRef(re.sub(r"[^a-z0-9_]", "", value, flags=re.IGNORECASE))


def _scalar(item: str) -> Any:
    if len(item) >= 2 and item.startswith("'") and item.endswith("'"):
        return _quoted(item)
    if _NUMBER.match(item):
        return Decimal(item)
    return item


def _quoted(value: str) -> str:
    # What reaches the database for an apostrophe inside the quotes still carries the
    # backslash of the escaping, so it never equals a stored apostrophe (170).
    return value[1:-1].replace("'", "\\'")


class _Parser:
    """expression := term ("or" term)* ; term := factor ("and" factor)* ;
    factor := criterion | "(" expression ")"."""

    def __init__(self, tokens: list[Any], source: str) -> None:
        self.tokens, self.source, self.position = tokens, source, 0

    def _peek(self) -> Any:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _take(self) -> Any:
        token = self._peek()
        self.position += 1
        return token

    def expression(self) -> Any:
        node = self.term()
        while self._peek() == "or":
            self._take()
            node = BoolOp("or", node, self.term())
        return node

    def term(self) -> Any:
        node = self.factor()
        while self._peek() == "and":
            self._take()
            node = BoolOp("and", node, self.factor())
        return node

    def factor(self) -> Any:
        item = self._take()
        if isinstance(item, Criterion):
            return item
        if item == "(":
            node = self.expression()
            if self._take() != ")":
                raise FilterSyntaxError(self.source)
            return node
        raise FilterSyntaxError(self.source)


# -- evaluation -------------------------------------------------------------------------------


def table_columns(names: str) -> dict[str, Getter]:
    """The columns of a table (whitespace-separated names, as in schema.sql), each NULL until
    the caller maps it to a value: filtering on a real but unmodelled column matches nothing,
    while a column the table does not have is a 503."""
    return dict.fromkeys(names.split(), lambda row: None)


@dataclass(frozen=True)
class Lookup:
    """A filter that is one `=` criterion, or an `or` of them, all on the same column with a
    quoted value: a row matches when its `column` equals one of `values` (text comparison in
    the collation), so an equality index of that column can answer it."""

    column: str
    values: tuple[str, ...]


def compile_filter(
    text: str | None, columns: Mapping[str, Getter], *, alias: str | None = "t"
) -> Predicate:
    """A row predicate for `text`. `columns` maps the table's real column names to getters;
    `alias` is the table alias of the server's query (`t`, or None for queries without one,
    like the bank lines list, where `t.label` is an unknown column: 119)."""
    return plan(text, columns, alias=alias)[0]


def plan(
    text: str | None, columns: Mapping[str, Getter], *, alias: str | None = "t"
) -> tuple[Predicate, Lookup | None]:
    """The predicate of `compile_filter` and, when the filter has the shape of a `Lookup`, that
    lookup (the column by its real, lower-case name). Errors are those of `compile_filter`."""
    if not text or not text.strip():
        return (lambda row: True), None
    tree = parse(text)
    return _compile(tree, columns, alias), _lookup(tree, columns, alias)


def _lookup(tree: Any, columns: Mapping[str, Getter], alias: str | None) -> Lookup | None:
    criteria: list[Criterion] = []
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, BoolOp):
            if node.op != "or":
                return None
            pending += [node.right, node.left]
            continue
        if (
            node.operator != "="
            or not isinstance(node.operand, Literal)
            or not isinstance(node.operand.value, str)
        ):
            return None
        criteria.append(node)
    names = {_column_name(criterion.field, columns, alias) for criterion in criteria}
    if len(names) != 1:
        return None
    return Lookup(names.pop(), tuple(criterion.operand.value for criterion in criteria))


def _compile(node: Any, columns: Mapping[str, Getter], alias: str | None) -> Predicate:
    if isinstance(node, BoolOp):
        left, right = _compile(node.left, columns, alias), _compile(node.right, columns, alias)
        if node.op == "and":
            return lambda row: left(row) and right(row)
        return lambda row: left(row) or right(row)
    getter = _column(node.field, columns, alias)
    if isinstance(node.operand, ColumnRef):
        other = _column(node.operand.name, columns, alias)
        return lambda row: _compare(node.operator, getter(row), other(row))
    literal = node.operand.value
    return lambda row: _compare(node.operator, getter(row), literal)


def _column(name: str, columns: Mapping[str, Getter], alias: str | None) -> Getter:
    return columns[_column_name(name, columns, alias)]


def _column_name(name: str, columns: Mapping[str, Getter], alias: str | None) -> str:
    if "." in name:
        prefix, column = name.split(".", 1)
        if alias is None or prefix.lower() != alias or column.lower() not in columns:
            raise UnknownColumn(name)
        return column.lower()
    if name.lower() not in columns:
        raise UnknownColumn(name)
    return name.lower()


def _compare(operator: str, left: Any, right: Any) -> bool:
    if operator == "is":
        return left is None
    if operator == "isnot":
        return left is not None
    if left is None:
        return False
    if operator in {"in", "notin"}:
        hit = any(_equal(left, item) for item in right if item is not None)
        return hit if operator == "in" else not hit
    if right is None:
        return False
    if operator in {"like", "notlike"}:
        hit = _like(_text(left), _text(right))
        return hit if operator == "like" else not hit
    if operator == "=":
        return _equal(left, right)
    if operator in {"!=", "<>"}:
        return not _equal(left, right)
    ordered = _order(left, right)
    return {
        "<": ordered < 0,
        ">": ordered > 0,
        "<=": ordered <= 0,
        ">=": ordered >= 0,
    }[operator]


def _equal(left: Any, right: Any) -> bool:
    return _order(left, right) == 0


def _order(left: Any, right: Any) -> int:
    """MySQL comparison: numbers against numbers (a string meeting a number is read as one),
    otherwise text in the case- and accent-insensitive collation."""
    if is_number(left) or is_number(right):
        a, b = _number(left), _number(right)
    else:
        a, b = collate_padded(_text(left)), collate_padded(_text(right))
    return (a > b) - (a < b)


def is_number(value: Any) -> bool:
    return isinstance(value, int | Decimal) and not isinstance(value, bool)


def _number(value: Any) -> Decimal:
    if is_number(value):
        return Decimal(value)
    match = re.match(r"\s*[+-]?\d+(\.\d+)?", str(value))
    if not match:
        return Decimal(0)
    try:
        return Decimal(match.group(0))
    except InvalidOperation:
        return Decimal(0)


def _text(value: Any) -> str:
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def collate(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(char for char in decomposed if not unicodedata.combining(char)).casefold()


def collate_padded(text: str) -> str:
    """`collate` for `=` and ordering: `utf8mb4_unicode_ci` is a PAD SPACE collation, where
    trailing spaces do not count (`'x' = 'x '`), while LIKE compares them (`'a' LIKE 'a '` is
    false). Checked against MariaDB 10.11 (tests/contract/test_dolibarr_schema_mariadb.py)."""
    return collate(text.rstrip(" "))


def _like(value: str, pattern: str) -> bool:
    regex = "".join(
        ".*" if char == "%" else "." if char == "_" else re.escape(char)
        for char in collate(pattern)
    )
    return re.fullmatch(regex, collate(value), flags=re.DOTALL) is not None
