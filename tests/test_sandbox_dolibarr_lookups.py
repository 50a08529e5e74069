"""The sandbox Dolibarr's indexed look-ups: `(t.ref_ext:=:'a') or …` answered from the store's
index must return exactly what the full `sqlfilters` evaluator returns, in the same order."""

from __future__ import annotations

import random
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
import requests

from reconciliation.sandbox.base import Request
from reconciliation.sandbox.dolibarr import (
    DolibarrSandbox,
    api_bank,
    api_invoices,
    api_sales,
    api_thirdparties,
)
from reconciliation.sandbox.dolibarr.params import ListQuery
from reconciliation.sandbox.dolibarr.sqlfilters import Lookup, plan
from reconciliation.sandbox.dolibarr.store import (
    Invoice,
    Order,
    Payment,
    Shipment,
    Store,
    Table,
    Thirdparty,
    index_key,
)

# Values that collide under utf8mb4_unicode_ci as the evaluator models it (case, accents,
# combining marks, casefold), plus NULL, the empty string and apostrophes (never equal, 170).
STORED = [
    None,
    "",
    "ch_1",
    "CH_1",
    "Café",
    "cafe",
    "CAFE\u0301",
    "straße",
    "STRASSE",
    "o'brien",
    "txn_42",
    "txn_42 ",
    "Ünïcode",
    "unicode",
    "x",
]
QUERIED = [*STORED[1:], "CAFÉ", "Strasse", "O'Brien", "absent", "UNICODE", "ch_%", "ch__"]

# table attribute -> (columns, {column: attribute}, alias, spellings of the column)
ROUTES: dict[str, tuple[dict[str, Any], dict[str, str], str | None, dict[str, list[str]]]] = {
    "thirdparties": (
        api_thirdparties.COLUMNS,
        api_thirdparties.INDEXED,
        "t",
        {"ref_ext": ["t.ref_ext", "ref_ext", "T.REF_EXT"], "email": ["t.email", "email"]},
    ),
    "invoices": (
        api_invoices.INVOICE_COLUMNS,
        api_invoices.INVOICE_INDEXED,
        "t",
        {"ref_ext": ["t.ref_ext", "ref_ext"]},
    ),
    "orders": (api_sales.ORDER_COLUMNS, api_sales.ORDER_INDEXED, "t", {"ref_ext": ["t.ref_ext"]}),
    "shipments": (
        api_sales.SHIPMENT_COLUMNS,
        api_sales.SHIPMENT_INDEXED,
        "t",
        {"ref_ext": ["t.ref_ext"]},
    ),
    "payments": (
        api_invoices.PAYMENT_COLUMNS,
        api_invoices.PAYMENT_INDEXED,
        "t",
        {"ref_ext": ["t.ref_ext"], "num_paiement": ["t.num_paiement", "num_paiement"]},
    ),
    "bank_lines": (api_bank.LINE_COLUMNS, api_bank.LINE_INDEXED, None, {"num_chq": ["num_chq"]}),
}

SORTS = [None, "t.rowid", "t.ref_ext", "rowid"]


def populated_store(rng: random.Random, rows: int) -> Store:
    """Rows of every indexed table with colliding values, then updates, deletes, replacements."""
    store = Store()
    store.seed(bank_account=True)

    def pick() -> str | None:
        return rng.choice(STORED)

    for _ in range(rows):
        socid = rng.randint(1, 5)
        thirdparty = Thirdparty(
            id=store.next_id("societe"), name="x", date_creation=0, email=pick(), ref_ext=pick()
        )
        store.thirdparties[thirdparty.id] = thirdparty
        invoice = Invoice(id=store.next_id("facture"), socid=socid, type=0, date=0, date_creation=0)
        invoice.ref_ext = pick()
        store.add_invoice(invoice)
        store.orders[order_id] = Order(
            id=(order_id := store.next_id("commande")),
            socid=socid,
            date=0,
            date_creation=0,
            ref_ext=pick(),
        )
        store.shipments[shipment_id] = Shipment(
            id=(shipment_id := store.next_id("expedition")),
            socid=socid,
            origin_id=order_id,
            date_creation=0,
            ref_ext=pick(),
        )
        store.add_payment(
            Payment(
                id=store.next_id("paiement"),
                ref="PAY",
                datepaye=0,
                amount=Decimal(1),
                type_id=6,
                fk_account=1,
                allocations=[],
                ref_ext=pick() or "",
                num_payment=pick() or "",
            )
        )
        store.add_bank_line(
            account_id=rng.choice([1, 2]),
            when=0,
            amount=Decimal(1),
            fk_type="CB",
            label="x",
            num_chq=pick(),
        )
    tables = {name: getattr(store, name) for name in ROUTES}
    for _ in range(rows):
        name = rng.choice(list(ROUTES))
        table = tables[name]
        key = rng.choice(list(table))
        action = rng.random()
        if action < 0.6:
            # A PUT: setattr on the stored row.
            attribute = rng.choice(list(ROUTES[name][1].values()))
            setattr(table[key], attribute, pick() or ("" if name == "payments" else None))
        elif action < 0.8:
            del table[key]
        elif action < 0.9:
            table.pop(key)
        else:
            # Same id, a fresh row object (its predecessor must leave the index).
            old = table[key]
            row = type(old)(**{f: getattr(old, f) for f in old.__dataclass_fields__})
            table[key] = row
            setattr(old, rng.choice(list(ROUTES[name][1].values())), "detached")
    return store


def random_filter(rng: random.Random, spellings: list[str]) -> str:
    count = rng.choice([1, 1, 2, 3, 5, 40])
    criteria = [f"({rng.choice(spellings)}:=:'{rng.choice(QUERIED)}')" for _ in range(count)]
    text = " or ".join(criteria)
    if rng.random() < 0.3:
        text = f"({text})"
    return text


def query_for(columns: dict[str, Any], alias: str | None, text: str, sort: str | None) -> ListQuery:
    parameters = {"sqlfilters": text, "limit": "0"}
    if sort is not None and (alias is not None or "." not in sort):
        parameters["sortfield"] = sort
        parameters["sortorder"] = random.Random(text).choice(["ASC", "DESC"])
    request = Request("GET", "/x", parameters, list(parameters.items()), {}, b"")
    return ListQuery(
        request,
        columns,
        alias=alias,
        default_sort="t.rowid" if alias else "rowid",
        error_text="",
        error_source="",
    )


@pytest.mark.parametrize("seed", range(6))
def test_index_answers_like_the_full_evaluator(seed: int) -> None:
    rng = random.Random(seed)
    store = populated_store(rng, 120)
    indexed_answers = 0
    for _ in range(400):
        name = rng.choice(list(ROUTES))
        columns, indexed, alias, spellings = ROUTES[name]
        column = rng.choice(list(spellings))
        text = random_filter(rng, spellings[column])
        query = query_for(columns, alias, text, rng.choice(SORTS))
        assert query.lookup is not None
        assert query.lookup.column == column
        table: Table[Any] = getattr(store, name)
        where: Callable[[Any], bool] | None = rng.choice(
            [None, lambda row: row.id % 3 != 0, lambda row: getattr(row, "socid", 1) in {1, 2}]
        )
        if name == "bank_lines":
            where = lambda row: row.fk_account == 1  # noqa: E731 - the route's own filter
        fast = query.select_from(table, indexed, where)
        full = query.select([row for row in table.values() if where is None or where(row)])
        assert [row.id for row in fast[0]] == [row.id for row in full[0]], text
        assert fast[1] == full[1]
        indexed_answers += table.lookup(indexed[column], list(query.lookup.values)) is not None
    assert indexed_answers == 400


def test_index_follows_every_write() -> None:
    store = populated_store(random.Random(99), 200)
    for name, (_, indexed, _, _) in ROUTES.items():
        table: Table[Any] = getattr(store, name)
        for attribute in indexed.values():
            expected: dict[str, set[int]] = {}
            for row in table.values():
                key = index_key(getattr(row, attribute))
                if key is not None:
                    expected.setdefault(key, set()).add(row.id)
            assert table.indexes[attribute].keys == expected, (name, attribute)


def test_other_shapes_are_not_lookups() -> None:
    columns = api_invoices.PAYMENT_COLUMNS
    for text in [
        "(t.ref_ext:=:'a') and (t.ref_ext:=:'b')",
        "(t.ref_ext:=:'a') or (t.num_paiement:=:'b')",
        "(t.ref_ext:like:'a%')",
        "(t.ref_ext:!=:'a')",
        "(t.ref_ext:=:42)",
        "(t.ref_ext:=:ref)",
        "(t.ref_ext:in:'a','b')",
        "(t.ref_ext:is:NULL)",
    ]:
        assert plan(text, columns)[1] is None, text
    assert plan("(t.ref_ext:=:'a') or ((ref_ext:=:'b'))", columns)[1] == Lookup(
        "ref_ext", ("a", "b")
    )


def test_numbers_in_an_indexed_column_fall_back_to_the_evaluator() -> None:
    store = Store()
    payment = Payment(1, "PAY", 0, Decimal(1), 6, 1, [], ref_ext="0042")
    store.add_payment(payment)
    assert store.payments.lookup("ref_ext", ["42"]) == []
    payment.ref_ext = 42  # type: ignore[assignment] - numbers compare numerically ('42.0' = 42)
    assert store.payments.lookup("ref_ext", ["42.0"]) is None
    payment.ref_ext = "42"
    assert [row.id for row in store.payments.lookup("ref_ext", ["42"]) or []] == [1]


def test_routes_answer_from_the_index_over_http(
    dolibarr_sandbox: DolibarrSandbox, dolibarr_api_key: str
) -> None:
    store = dolibarr_sandbox.store
    with store.lock:
        for index, value in enumerate(["Café", "cafe", "CAFÉ ", "x", "o'brien"]):
            payment = Payment(
                store.next_id("paiement"), f"PAY{index}", 0, Decimal(1), 6, 1, [], ref_ext=value
            )
            store.add_payment(payment)
            store.add_bank_line(
                account_id=1, when=0, amount=Decimal(1), fk_type="CB", label="x", num_chq=value
            )
    session = requests.Session()
    session.headers["DOLAPIKEY"] = dolibarr_api_key
    text = "(t.ref_ext:=:'CAFE') or (t.ref_ext:=:'o'brien') or (t.ref_ext:=:'x')"
    answer = session.get(
        dolibarr_sandbox.api_url + "/paiements",
        params={"sqlfilters": text, "sortfield": "t.rowid", "sortorder": "DESC"},
        timeout=10,
    )
    # utf8mb4_unicode_ci ignores case, accents and trailing spaces for `=` (checked against
    # MariaDB in tests/contract/test_dolibarr_schema_mariadb.py).
    assert [row["ref_ext"] for row in answer.json()] == ["x", "CAFÉ ", "cafe", "Café"]
    answer = session.get(
        dolibarr_sandbox.api_url + "/bankaccounts/1/lines",
        params={"sqlfilters": "(num_chq:=:'café') or (num_chq:=:'X')"},
        timeout=10,
    )
    assert [row["num_chq"] for row in answer.json()] == ["Café", "cafe", "CAFÉ ", "x"]
    session.close()
