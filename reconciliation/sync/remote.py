"""What handlers see instead of the raw Dolibarr client.

- `AuditedDolibarr`: reads pass through; every write leaves an audit event once it returned
  (DESIGN §1, "Everything explained": every automatic write is audited), and also when its
  outcome is unknown (a lost answer may hide an applied write, so the trail says so). Inside
  the numbered lane (`AuditAfterHold`) the events are kept until the hold ends and written
  right after the lane is released, whatever the hold ended with: the lane is held for the
  Dolibarr calls only, not for the database.
- `PlanningDolibarr` (`--dry-run`): reads pass through to the real Dolibarr, writes are recorded
  as a plan and answered with placeholders (negative ids), so the handlers run unchanged and
  nothing remote is written.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

from reconciliation.audit import audit_record
from reconciliation.connectors.dolibarr_types import (
    ActionResult,
    Invoice,
    InvoiceStatus,
    InvoiceType,
    NewLine,
    Order,
)
from reconciliation.errors import TransientError
from reconciliation.sync.invoice_lines import dolibarr_totals


@dataclass(frozen=True)
class WriteSpec:
    """How a write method is described in the audit trail and in a plan."""

    action: str  # audit action suffix: dolibarr.<action>
    target_kind: str
    target_argument: str | None  # keyword argument naming the target, None: the result is it
    verb: str  # for the plan: "create", "update", "validate", "pay", "close", "link"


WRITES: dict[str, WriteSpec] = {
    "create_thirdparty": WriteSpec("thirdparty_created", "dolibarr_thirdparty", None, "create"),
    "update_thirdparty": WriteSpec(
        "thirdparty_updated", "dolibarr_thirdparty", "thirdparty_id", "update"
    ),
    "link_stripe_customer": WriteSpec(
        "stripe_link_set", "dolibarr_thirdparty", "thirdparty_id", "link"
    ),
    "merge_thirdparties": WriteSpec(
        "thirdparties_merged", "dolibarr_thirdparty", "keep_id", "merge"
    ),
    "create_product": WriteSpec("product_created", "dolibarr_product", None, "create"),
    "create_order": WriteSpec("order_created", "dolibarr_order", None, "create"),
    "validate_order": WriteSpec("order_validated", "dolibarr_order", "order_id", "validate"),
    "set_order_invoiced": WriteSpec("order_invoiced", "dolibarr_order", "order_id", "update"),
    "close_order": WriteSpec("order_closed", "dolibarr_order", "order_id", "close"),
    "create_invoice": WriteSpec("invoice_created", "dolibarr_invoice", None, "create"),
    "create_credit_note": WriteSpec("credit_note_created", "dolibarr_invoice", None, "create"),
    "create_invoice_from_order": WriteSpec(
        "invoice_created_from_order", "dolibarr_invoice", None, "create"
    ),
    "update_invoice": WriteSpec("invoice_updated", "dolibarr_invoice", "invoice_id", "update"),
    "validate_invoice": WriteSpec(
        "invoice_validated", "dolibarr_invoice", "invoice_id", "validate"
    ),
    "close_zero_total_invoice": WriteSpec(
        "invoice_closed_zero_total", "dolibarr_invoice", "invoice_id", "close"
    ),
    "close_paid_in_document_currency": WriteSpec(
        "invoice_closed_paid_in_currency", "dolibarr_invoice", "invoice_id", "close"
    ),
    "close_invoice_unpaid": WriteSpec(
        "invoice_closed_unpaid", "dolibarr_invoice", "invoice_id", "close"
    ),
    "create_payment": WriteSpec("payment_created", "dolibarr_payment", None, "pay"),
    "add_bank_line": WriteSpec("bank_line_created", "dolibarr_bank_line", None, "create"),
    "create_transfer": WriteSpec("bank_transfer_created", "dolibarr_bank_line", None, "create"),
    "upload_document": WriteSpec("document_uploaded", "dolibarr_document", None, "create"),
    "create_shipment": WriteSpec("shipment_created", "dolibarr_shipment", None, "create"),
    "validate_shipment": WriteSpec(
        "shipment_validated", "dolibarr_shipment", "shipment_id", "validate"
    ),
    "close_shipment": WriteSpec("shipment_closed", "dolibarr_shipment", "shipment_id", "close"),
}


def as_payload(value: Any) -> Any:
    """What was sent, as JSON for the audit trail and the plan: amounts as exact strings."""
    if isinstance(value, Decimal):
        return f"{value:f}"
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, NewLine):
        return {
            item.name: as_payload(getattr(value, item.name))
            for item in fields(value)
            if getattr(value, item.name) is not None
        }
    if isinstance(value, Mapping):
        return {str(key): as_payload(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set):
        return [as_payload(item) for item in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


def _result_id(result: Any) -> Any:
    if isinstance(result, ActionResult):
        value = result.value
        return getattr(value, "id", None)
    if isinstance(result, int | str):
        return result
    return getattr(result, "id", None) or getattr(result, "from_line_id", None)


class AuditedDolibarr:
    """The client, with an audit event after every write. Everything else passes through."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._local = threading.local()

    @property
    def client(self) -> Any:
        return self._client

    @contextmanager
    def audits_deferred(self) -> Iterator[None]:
        """Keep this thread's audit events until the block ends, then write them in order —
        also when the block raises. Nested blocks write at the end of the outermost one."""
        if getattr(self._local, "pending", None) is not None:
            yield
            return
        self._local.pending = []
        try:
            yield
        finally:
            pending, self._local.pending = self._local.pending, None
            for event in pending:
                audit_record(**event)

    def _audit(self, **event: Any) -> None:
        pending = getattr(self._local, "pending", None)
        if pending is not None:
            pending.append(event)
        else:
            audit_record(**event)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        spec = WRITES.get(name)
        if spec is None:
            return attribute

        def audited_write(**kwargs: Any) -> Any:
            sent = as_payload(kwargs)
            try:
                result = attribute(**kwargs)
            except TransientError as exc:
                if exc.outcome_unknown:
                    self._audit(
                        action=f"dolibarr.{spec.action}.outcome_unknown",
                        target=_target(spec, kwargs, None),
                        after=sent,
                        reason=str(exc),
                    )
                raise
            after = dict(sent)
            if isinstance(result, ActionResult):
                after["changed"] = result.changed
            self._audit(
                action=f"dolibarr.{spec.action}", target=_target(spec, kwargs, result), after=after
            )
            return result

        return audited_write


class AuditAfterHold:
    """The numbered lane, with the audit events of the writes made while it is held written
    just after it is released (`AuditedDolibarr.audits_deferred`): the next worker's numbered
    write does not wait for this one's database inserts. The look-ups and writes themselves
    stay inside the hold."""

    def __init__(self, lane: Any, dolibarr: AuditedDolibarr) -> None:
        self._lane = lane
        self._dolibarr = dolibarr

    @property
    def lane(self) -> Any:
        return self._lane

    @contextmanager
    def hold(self) -> Iterator[None]:
        with self._dolibarr.audits_deferred(), self._lane.hold():
            yield


def _target(spec: WriteSpec, kwargs: Mapping[str, Any], result: Any) -> tuple[str, str]:
    if spec.target_argument is not None:
        identity = kwargs.get(spec.target_argument)
    else:
        identity = _result_id(result) if result is not None else None
    return spec.target_kind, "" if identity is None else str(identity)


# --- dry run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedWrite:
    verb: str
    method: str
    target: str
    details: dict[str, Any]
    record: str = ""

    def line(self) -> str:
        """`create invoice in_… [invoice in_…]`, `validate invoice new#13 [invoice in_…]`;
        a document or payment in another currency than the company's says so (`… in GBP`)."""
        what = self.method.replace("_", " ")
        label = self.details.get("ref_ext") or self.target
        if isinstance(label, str) and label.startswith("-"):
            label = f"new#{label[1:]}"
        currency = self.details.get("multicurrency_code") or (
            self.details.get("currency") if self.details.get("in_document_currency") else None
        )
        in_currency = f" in {currency}" if currency else ""
        suffix = f" [{self.record}]" if self.record else ""
        return f"{what} {label}{in_currency}{suffix}"


@dataclass
class _PlannedInvoice:
    id: int
    thirdparty_id: int
    ref_ext: str
    type: int
    lines: tuple[NewLine, ...]
    status: int = InvoiceStatus.DRAFT
    paid: bool = False
    multicurrency_code: str | None = None


@dataclass
class _PlannedOrder:
    id: int
    thirdparty_id: int
    ref_ext: str
    lines: tuple[NewLine, ...]
    status: int = 0
    billed: bool = False


class PlanningDolibarr:
    """Reads go to Dolibarr; writes become `plan` entries and return placeholders: negative ids
    for what would be created, `ActionResult(changed=True)` for state changes. Reads of a
    placeholder (the draft just "created") are answered from the plan, with the totals Dolibarr
    would compute. `planned_outcomes` lets later records see what earlier ones would become."""

    def __init__(self, client: Any, *, currency: str = "EUR") -> None:
        self._client = client
        self._currency = currency
        self._lock = threading.Lock()
        self._next_id = 0
        self._invoices: dict[int, _PlannedInvoice] = {}
        self._orders: dict[int, _PlannedOrder] = {}
        self.plan: list[PlannedWrite] = []
        self.planned_outcomes: dict[tuple[str, str, str], Any] = {}
        self.outcomes: list[tuple[str, Any]] = []
        self.current_record = ""

    @property
    def client(self) -> Any:
        return self._client

    def _placeholder(self) -> int:
        with self._lock:
            self._next_id -= 1
            return self._next_id

    def _note(self, method: str, kwargs: Mapping[str, Any], target: Any) -> None:
        spec = WRITES[method]
        details = as_payload(dict(kwargs))
        with self._lock:
            self.plan.append(
                PlannedWrite(spec.verb, method, str(target), details, self.current_record)
            )

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if name not in WRITES:
            return attribute

        def planned_write(**kwargs: Any) -> Any:
            spec = WRITES[name]
            if spec.target_argument is None:
                placeholder = self._placeholder()
                self._note(name, kwargs, placeholder)
                if name == "create_transfer":
                    from reconciliation.connectors.dolibarr_types import BankTransfer

                    return BankTransfer(from_line_id=placeholder, to_line_id=placeholder, raw={})
                return placeholder
            self._note(name, kwargs, kwargs.get(spec.target_argument))
            return ActionResult(changed=True)

        return planned_write

    # Writes whose placeholder must be readable back.

    def create_invoice(self, **kwargs: Any) -> int:
        return self._plan_invoice("create_invoice", InvoiceType.STANDARD, kwargs)

    def create_credit_note(self, **kwargs: Any) -> int:
        return self._plan_invoice("create_credit_note", InvoiceType.CREDIT_NOTE, kwargs)

    def _plan_invoice(self, method: str, invoice_type: int, kwargs: dict[str, Any]) -> int:
        placeholder = self._placeholder()
        self._note(method, kwargs, placeholder)
        with self._lock:
            self._invoices[placeholder] = _PlannedInvoice(
                id=placeholder,
                thirdparty_id=kwargs["thirdparty_id"],
                ref_ext=kwargs["ref_ext"],
                type=invoice_type,
                lines=tuple(kwargs["lines"]),
                multicurrency_code=kwargs.get("multicurrency_code"),
            )
        return placeholder

    # Orders (Aipress24 purchases): a planned order reads back with its lines' totals, and an
    # invoice planned from it copies them, as Dolibarr's createfromorder does (41).

    def create_order(self, **kwargs: Any) -> int:
        placeholder = self._placeholder()
        self._note("create_order", kwargs, placeholder)
        with self._lock:
            self._orders[placeholder] = _PlannedOrder(
                id=placeholder,
                thirdparty_id=kwargs["thirdparty_id"],
                ref_ext=kwargs["ref_ext"],
                lines=tuple(kwargs["lines"]),
            )
        return placeholder

    def get_order(self, *, order_id: int) -> Order:
        planned = self._orders.get(order_id)
        if planned is None:
            return self._client.get_order(order_id=order_id)
        totals = dolibarr_totals(planned.lines, currency=self._currency)
        return Order.from_raw(
            {
                "id": planned.id,
                "ref": f"(PROV{planned.id})",
                "ref_ext": planned.ref_ext,
                "socid": planned.thirdparty_id,
                "statut": planned.status,
                "billed": 1 if planned.billed else 0,
                "total_ht": f"{totals.ht:f}",
                "total_tva": f"{totals.tva:f}",
                "total_ttc": f"{totals.ttc:f}",
                "lines": [],
                "linkedObjectsIds": None,
            }
        )

    def validate_order(self, *, order_id: int) -> ActionResult[Order]:
        self._note("validate_order", {"order_id": order_id}, order_id)
        planned = self._orders.get(order_id)
        if planned is not None:
            planned.status = 1
        return ActionResult(changed=True)

    def set_order_invoiced(self, *, order_id: int) -> ActionResult[Order]:
        self._note("set_order_invoiced", {"order_id": order_id}, order_id)
        planned = self._orders.get(order_id)
        if planned is not None:
            planned.billed = True
        return ActionResult(changed=True)

    def create_invoice_from_order(self, *, order_id: int) -> Invoice:
        planned = self._orders.get(order_id)
        if planned is not None:
            thirdparty_id, lines = planned.thirdparty_id, planned.lines
        else:
            order = self._client.get_order(order_id=order_id)
            thirdparty_id = order.thirdparty_id
            lines = tuple(
                NewLine(
                    qty=line.qty,
                    subprice=line.subprice,
                    tva_tx=line.tva_tx,
                    description=line.description or f"line {line.id}",
                    product_id=line.product_id,
                )
                for line in order.lines
            )
        placeholder = self._placeholder()
        self._note("create_invoice_from_order", {"order_id": order_id}, placeholder)
        with self._lock:
            self._invoices[placeholder] = _PlannedInvoice(
                id=placeholder,
                thirdparty_id=thirdparty_id,
                ref_ext="",
                type=InvoiceType.STANDARD,
                lines=lines,
            )
        return self.get_invoice(invoice_id=placeholder)

    def update_invoice(self, *, invoice_id: int, changes: Mapping[str, Any]) -> Invoice:
        self._note("update_invoice", {"invoice_id": invoice_id, "changes": changes}, invoice_id)
        planned = self._invoices.get(invoice_id)
        if planned is None:
            return self._client.get_invoice(invoice_id=invoice_id)
        if changes.get("ref_ext"):
            planned.ref_ext = changes["ref_ext"]
        return self.get_invoice(invoice_id=invoice_id)

    def validate_invoice(self, *, invoice_id: int) -> ActionResult[Invoice]:
        self._note("validate_invoice", {"invoice_id": invoice_id}, invoice_id)
        planned = self._invoices.get(invoice_id)
        if planned is not None:
            planned.status = InvoiceStatus.VALIDATED
        return ActionResult(changed=True)

    def get_invoice(self, *, invoice_id: int, properties: Any = ()) -> Invoice:
        planned = self._invoices.get(invoice_id)
        if planned is None:
            return self._client.get_invoice(invoice_id=invoice_id, properties=properties)
        code = planned.multicurrency_code or self._currency
        totals = dolibarr_totals(planned.lines, currency=code)
        sign = -1 if planned.type == InvoiceType.CREDIT_NOTE else 1
        return Invoice.from_raw(
            {
                "id": planned.id,
                "ref": f"(PROV{planned.id})",
                "ref_ext": planned.ref_ext,
                "type": planned.type,
                "socid": planned.thirdparty_id,
                "statut": int(planned.status),
                "paye": 1 if planned.paid else 0,
                "total_ht": f"{sign * totals.ht:f}",
                "total_tva": f"{sign * totals.tva:f}",
                "total_ttc": f"{sign * totals.ttc:f}",
                # A multicurrency draft's company-currency totals depend on Dolibarr's rate,
                # which a plan does not know: only the document currency's are given.
                "multicurrency_code": code,
                "multicurrency_total_ttc": f"{sign * totals.ttc:f}",
            }
        )

    def invoice_payments(self, *, invoice_id: int) -> list:
        if invoice_id < 0:
            return []
        return self._client.invoice_payments(invoice_id=invoice_id)

    def stripe_link(self, *, thirdparty_id: int) -> Any:
        if thirdparty_id < 0:
            return None
        return self._client.stripe_link(thirdparty_id=thirdparty_id)

    def close_zero_total_invoice(self, *, invoice_id: int) -> ActionResult[Invoice]:
        self._note("close_zero_total_invoice", {"invoice_id": invoice_id}, invoice_id)
        return ActionResult(changed=True)
