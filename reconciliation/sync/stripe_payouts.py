"""Stripe fees and payouts on Dolibarr's Stripe bank account.

Payments and refunds already move Dolibarr's Stripe bank account (each `paymentsdistributed`
writes its bank line, 163); what Stripe keeps (its fees) and what it sends on to the company's
bank (payouts) are written here, so that the account's balance in Dolibarr can be checked
against Stripe's own balance (`stripe_balance.py`):

- a balance transaction with a fee -> one bank line of `-fee` on the Stripe account of its
  currency (the company currency's, or another one's with the multicurrency module), found
  again by `num_chq` = the `txn_…` id (the bank-lines list filters on bare columns,
  `(num_chq:=:'…')`, 119, 163);
- a `paid` payout -> one internal transfer from the Stripe account of its currency to the
  payout account of that currency, found again by its label, which holds the `po_…` id (the
  transfer's `cheque_number` is stored where the API never shows it, 126, 128).

Neither bank lines nor transfers make Dolibarr allocate a number (`llx_bank` has no ref), so these
handlers do **not** take the numbered-write lane: the look-up that guards each write only has to
be safe against a second worker on the same record, and the engine's claim (row lock + lease)
already guarantees one worker per record. Holding the lane would only queue fee lines behind
validations and payments for nothing.

`GET /bankaccounts/{id}/lines` has no limit or paging and answers every line of the account
(120), so a look-up always carries a selective filter; the account is never listed whole. An
engine that claims records in batches can look the fee lines of a whole batch up in one call per
40 (`fee_line_wanted`, `fee_lines_lookup`) and hand the answer over as `ctx.known.fee_lines`.
After a write whose answer was lost (`TransientError.outcome_unknown`) nothing is assumed: the
error goes up to the engine, and the next attempt starts with the look-up again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.utils import timezone

from reconciliation.connectors.dolibarr_types import BankLine
from reconciliation.connectors.sqlfilters import any_of, equals, like
from reconciliation.errors import ConfigurationError
from reconciliation.models import MismatchKind, SyncRecord
from reconciliation.money import currency_code, is_known_currency, minor_to_decimal
from reconciliation.sync.base import (
    MismatchSpec,
    NeedsReview,
    Outcome,
    Skipped,
    SyncContext,
    Synced,
    Waiting,
    handler,
)
from reconciliation.sync.stripe_common import foreign_currency_reason

# What a Synced fee line or payout transfer points to: a row of llx_bank (for a transfer, its
# outgoing line on the Stripe account; the incoming one is linked to it, 127).
DOLIBARR_KIND = "bank_line"

# Payment-type code of a fee line. Dolibarr does not check it (118: "FEE" was stored), but a code
# that is not in the payment-types dictionary shows as a bare code in Dolibarr's screens and
# exports. `PRE` (direct debit, id 3 in 08) is what a Stripe fee is — Stripe takes it from the
# balance — and what Dolibarr itself writes on the outgoing side of a transfer (127).
FEE_TYPE_CODE = "PRE"

# Transactions that a payout record accounts for (its own debit, and the credit back when it
# fails or is canceled): the fee handler leaves them to the payout handler.
PAYOUT_TRANSACTION_TYPES = frozenset({"payout", "payout_cancel", "payout_failure"})

# Transactions that are themselves a charge by Stripe (Radar, Billing, currency conversion,
# Stripe Tax): `fee` is 0 and the amount taken is the (negative) `net`.
STRIPE_CHARGE_TYPES = frozenset({"stripe_fee", "stripe_fx_fee", "tax_fee"})

# Fee look-ups per request when a batch is looked up at once: `txn_…` ids are 28 characters, so
# 40 criteria keep the URL near 2 KB, far below common limits (8 KB).
BATCH_CHEQUE_NUMBERS = 40

PAYOUT_WAITING_STATUSES = frozenset({"pending", "in_transit"})
PAYOUT_ABANDONED_STATUSES = frozenset({"failed", "canceled"})

PAYOUT_ACCOUNT_SETTING = "DOLIBARR_PAYOUT_BANK_ACCOUNT"

# How long a payout that has not arrived yet waits before the engine looks again, when its
# arrival date gives no better hint. The change to `paid` normally comes first, through the
# `payout.paid` event or webhook.
PAYOUT_RECHECK = timedelta(hours=1)
PAYOUT_RECHECK_MAX = timedelta(days=3)


# --- Fee lines ------------------------------------------------------------------------------


@handler("stripe", "balance_transaction")
def stripe_fee_sync(record: SyncRecord, ctx: SyncContext) -> Outcome:
    """One bank line of `-fee` on the Stripe account per balance transaction with a fee, dated
    on the day of the transaction (when Stripe deducted it, like the payment's own line), with
    the day the funds become available as its value date."""
    txn = record.snapshot
    txn_id = str(txn["id"])
    txn_type = str(txn.get("type") or "")
    if txn_type in PAYOUT_TRANSACTION_TYPES:
        return Skipped(
            f"{txn_type} transaction: the transfer is written by the payout {txn.get('source')}"
        )
    line_minor = _fee_line_minor(txn)
    if line_minor == 0:
        return Skipped(
            f"no Stripe fee on this {txn_type or 'balance'} transaction; its amount reaches "
            "the Stripe bank account through its payment or refund"
        )
    currency = str(txn.get("currency") or "")
    reason = _currency_reason(currency, ctx, needs_payout_account=False)
    if reason is not None:
        return _currency_unsupported(
            what=f"Stripe fee of {txn_id}",
            identity=("stripe_fee", txn_id),
            minor=line_minor,
            currency=currency,
            reason=reason,
            snapshot=txn,
            ctx=ctx,
        )
    amount = minor_to_decimal(line_minor, currency)
    account_id = _stripe_account(currency, ctx)

    found = _fee_lines(record, ctx, txn_id, account_id)
    if len(found) > 1:
        return _duplicate_lines(what=f"Stripe fee {txn_id}", lines=found, snapshot=txn)
    if found:
        return _adopted(found[0], expected=amount, what=f"Stripe fee {txn_id}", snapshot=txn)

    line_id = ctx.dolibarr.add_bank_line(
        bank_account_id=account_id,
        date=_utc_day(txn["created"]),
        type_code=FEE_TYPE_CODE,
        label=_fee_label(txn),
        amount=amount,
        cheque_number=txn_id,
        value_date=_utc_day(txn.get("available_on") or txn["created"]),
    )
    return Synced(dolibarr_kind=DOLIBARR_KIND, dolibarr_id=line_id)


def fee_line_wanted(record: SyncRecord) -> str | None:
    """The `num_chq` (the `txn_…` id) the fee handler will look up for this record, or None when
    it will not look anything up. For an engine that looks up a whole batch of claimed records
    at once (`fee_lines_lookup`)."""
    txn = record.snapshot
    if txn.get("type") in PAYOUT_TRANSACTION_TYPES or _fee_line_minor(txn) == 0:
        return None
    return str(txn["id"])


def fee_lines_lookup(
    *, dolibarr: Any, bank_account_id: int, txn_ids: Iterable[str]
) -> dict[str, list[BankLine]]:
    """The fee lines of many balance transactions, `BATCH_CHEQUE_NUMBERS` per request
    (`(num_chq:=:'txn_a') or (num_chq:=:'txn_b') …`): guarding a backlog of fee lines then
    costs a call per batch instead of one per line. Every asked id is a key (`[]` when
    Dolibarr holds no line for it); exact-case matches only."""
    found: dict[str, list[BankLine]] = {txn_id: [] for txn_id in txn_ids}
    ids = sorted(found)
    for start in range(0, len(ids), BATCH_CHEQUE_NUMBERS):
        chunk = ids[start : start + BATCH_CHEQUE_NUMBERS]
        lines = dolibarr.bank_lines(
            bank_account_id=bank_account_id,
            filters=any_of(*(equals("num_chq", txn_id) for txn_id in chunk)),
        )
        for line in lines:
            if line.num_chq in found:
                found[line.num_chq].append(line)
    return found


def _fee_lines(
    record: SyncRecord, ctx: SyncContext, txn_id: str, account_id: int
) -> list[BankLine]:
    """The lines of the Stripe account whose `num_chq` is this transaction.

    A batched answer (`ctx.known.fee_lines`, from `fee_lines_lookup`) is used only on the
    record's first attempt, made right after its exclusive claim, so nobody can have written
    the line since that look-up; on any later attempt an earlier one may have left a line
    behind (a lost answer), and the handler looks again itself. `num_chq` compares
    case-insensitively in the database and Stripe ids may differ by case alone, so only exact
    matches count. The batch looks in the company-currency Stripe account only: a line on
    another currency's account is always looked up here."""
    batched = getattr(ctx.known, "fee_lines", None)
    if (
        isinstance(batched, Mapping)
        and record.attempts <= 1
        and txn_id in batched
        and account_id == ctx.setup.stripe_bank_account_id
    ):
        return list(batched[txn_id])
    lines = ctx.dolibarr.bank_lines(bank_account_id=account_id, filters=equals("num_chq", txn_id))
    return [line for line in lines if line.num_chq == txn_id]


def _fee_line_minor(txn: dict[str, Any]) -> int:
    """The signed amount of the fee line in minor units: `-fee` (a fee refunded by Stripe is a
    negative fee and gives a positive line), or the `net` of a transaction that is itself a
    Stripe charge."""
    if txn.get("type") in STRIPE_CHARGE_TYPES:
        return int(txn.get("net") or 0)
    return -int(txn.get("fee") or 0)


def _fee_label(txn: dict[str, Any]) -> str:
    """`Stripe fee txn_… (ch_…)`: the transaction and what it was charged on, so that a reader
    of the bank account can find both in Stripe's dashboard."""
    source = txn.get("source")
    about = source if isinstance(source, str) and source else txn.get("description") or ""
    return f"Stripe fee {txn['id']} ({about})" if about else f"Stripe fee {txn['id']}"


# --- Payout transfers -----------------------------------------------------------------------


@handler("stripe", "payout")
def stripe_payout_sync(record: SyncRecord, ctx: SyncContext) -> Outcome:
    """One transfer Stripe account -> payout account per paid payout, dated on its arrival
    date (the day the money reaches the bank, as the bank statement shows it), once the
    payout's contents add up to its amount."""
    payout = record.snapshot
    payout_id = str(payout["id"])
    status = str(payout.get("status") or "")
    if status in PAYOUT_WAITING_STATUSES:
        return Waiting(
            f"payout {payout_id} is {status}; its transfer is written once it is paid",
            delay=_until_arrival(payout),
        )
    if status in PAYOUT_ABANDONED_STATUSES:
        return _abandoned_payout(payout, status, ctx)
    if status != "paid":
        return NeedsReview(
            reason=f"payout {payout_id} has the unknown status {status!r}",
            mismatch=MismatchSpec(
                kind=MismatchKind.SYNC_FAILED,
                fingerprint_parts=("stripe_payout_status", payout_id),
                summary=f"Stripe payout {payout_id} has a status ap24sync does not know "
                f"({status!r}); nothing was written.",
                source_snapshot=payout,
            ),
        )
    currency = str(payout.get("currency") or "")
    reason = _currency_reason(currency, ctx, needs_payout_account=True)
    if reason is not None:
        return _currency_unsupported(
            what=f"Stripe payout {payout_id}",
            identity=("stripe_payout", payout_id),
            minor=-int(payout["amount"]),
            currency=currency,
            reason=reason,
            snapshot=payout,
            ctx=ctx,
        )
    amount = minor_to_decimal(int(payout["amount"]), currency)
    source_id = _stripe_account(currency, ctx)
    target_id = ctx.setup.payout_account_for(currency_code(currency))
    if target_id is None:
        return _payout_account_missing(payout, amount, currency)

    found = _payout_lines(payout_id, ctx, source_id)
    if len(found) > 1:
        return _duplicate_lines(what=f"Stripe payout {payout_id}", lines=found, snapshot=payout)
    if found:
        return _adopted(
            found[0], expected=-amount, what=f"Stripe payout {payout_id}", snapshot=payout
        )

    unbalanced = _payout_imbalance(payout, ctx)
    if unbalanced is not None:
        return unbalanced
    transfer = ctx.dolibarr.create_transfer(
        from_account_id=source_id,
        to_account_id=target_id,
        date=_utc_day(payout.get("arrival_date") or payout["created"]),
        amount=amount,
        description=payout_label(payout_id),
    )
    if transfer.from_line_id is None:
        raise ValueError(f"Dolibarr created the transfer of {payout_id} without a bank line id")
    return Synced(dolibarr_kind=DOLIBARR_KIND, dolibarr_id=transfer.from_line_id)


def payout_label(payout_id: str) -> str:
    """The transfer's description, which Dolibarr stores as the label of both lines (127): the
    only place the payout id can be read back from (126, 128)."""
    return f"Stripe payout {payout_id}"


def _payout_lines(payout_id: str, ctx: SyncContext, account_id: int) -> list[BankLine]:
    """The outgoing lines on the Stripe account whose label names the payout. `like` with the id
    between wildcards still finds a line whose label someone completed by hand; `_` is a
    wildcard too (164) and the comparison is case-insensitive, so the id is checked again
    exactly."""
    lines = ctx.dolibarr.bank_lines(
        bank_account_id=account_id, filters=like("label", f"%{payout_id}%")
    )
    return [
        line
        for line in lines
        if payout_id in (line.label or "") and line.amount is not None and line.amount < 0
    ]


def _payout_imbalance(payout: dict[str, Any], ctx: SyncContext) -> NeedsReview | None:
    """What the payout paid out (`?payout=po_…`, its own payout transaction excluded) must add
    up to its amount; otherwise the transfer would book an amount nobody can explain."""
    if ctx.stripe is None:
        raise ConfigurationError(
            "syncing Stripe payouts needs the Stripe connector (STRIPE_API_KEY; see .env.example)"
        )
    payout_id = str(payout["id"])
    own = payout.get("balance_transaction")
    contents = [
        txn
        for txn in ctx.stripe.balance_transactions(payout=payout_id)
        if txn["id"] != own and not (txn.get("type") == "payout" and txn.get("source") == payout_id)
    ]
    currency = str(payout["currency"])
    foreign = sorted({str(t.get("currency")) for t in contents if t.get("currency") != currency})
    net_minor = sum(int(t.get("net") or 0) for t in contents if t.get("currency") == currency)
    difference_minor = int(payout["amount"]) - net_minor
    if difference_minor == 0 and not foreign:
        return None
    difference = minor_to_decimal(difference_minor, currency)
    net = minor_to_decimal(net_minor, currency)
    amount = minor_to_decimal(int(payout["amount"]), currency)
    summary = (
        f"Stripe payout {payout_id} of {amount} {currency.upper()} paid out "
        f"{len(contents)} transactions whose net adds up to {net} (difference {difference})"
    )
    if foreign:
        summary += f", and some of them are in {', '.join(foreign)}"
    return NeedsReview(
        reason=f"payout {payout_id} does not add up: {difference} {currency.upper()} unexplained",
        mismatch=MismatchSpec(
            kind=MismatchKind.PAYOUT_UNBALANCED,
            fingerprint_parts=("stripe_payout", payout_id),
            summary=summary + "; no transfer was written.",
            severity="critical",
            amount_difference=difference,
            currency=currency.upper(),
            source_snapshot={
                "payout": payout,
                "transactions": [
                    {k: t.get(k) for k in ("id", "type", "source", "currency", "net")}
                    for t in contents
                ],
            },
        ),
    )


def _abandoned_payout(payout: dict[str, Any], status: str, ctx: SyncContext) -> Outcome:
    """A failed or canceled payout sent nothing: Stripe credits the amount back to the balance
    (a `payout_failure` / `payout_cancel` transaction). Nothing to write — unless the payout
    failed after it was seen paid and its transfer was written: then that transfer is wrong."""
    payout_id = str(payout["id"])
    reason = payout.get("failure_message") or payout.get("failure_code") or ""
    why = f"payout {payout_id} is {status}" + (f" ({reason})" if reason else "")
    account_id = ctx.setup.stripe_account_for(str(payout.get("currency") or ""))
    found = _payout_lines(payout_id, ctx, account_id) if account_id is not None else []
    if not found:
        return Skipped(f"{why}: no money left Stripe, nothing to write")
    currency = str(payout.get("currency") or "").upper()
    total = sum((line.amount or Decimal(0) for line in found), Decimal(0))
    return NeedsReview(
        reason=f"{why}, but its transfer is in Dolibarr",
        mismatch=MismatchSpec(
            kind=MismatchKind.PAYOUT_UNBALANCED,
            fingerprint_parts=("stripe_payout", payout_id),
            summary=f"Stripe payout {payout_id} is {status} but Dolibarr holds its transfer "
            f"(bank lines {', '.join(str(line.id) for line in found)}): the Stripe account is "
            f"short of {-total} {currency} in Dolibarr.",
            severity="critical",
            amount_difference=-total,
            currency=currency,
            source_snapshot=payout,
            dolibarr_snapshot={"lines": [line.raw for line in found]},
            proposed_fix="reverse_payout_transfer",
            proposed_fix_params={
                "payout": payout_id,
                "bank_line_ids": [line.id for line in found],
                "amount": str(-total),
            },
        ),
        dolibarr_kind=DOLIBARR_KIND,
        dolibarr_id=found[0].id,
    )


def _payout_account_missing(payout: dict[str, Any], amount: Decimal, currency: str) -> Outcome:
    """Without a payout account there is nowhere to transfer to. A bank line out of the Stripe
    account alone would balance it but lose where the money went; finance wants the transfer,
    so the payout waits for a person to configure the account and retry it."""
    payout_id = str(payout["id"])
    return NeedsReview(
        reason=f"{PAYOUT_ACCOUNT_SETTING} is not set: payout {payout_id} has nowhere to go",
        mismatch=MismatchSpec(
            kind=MismatchKind.PAYOUT_UNBALANCED,
            fingerprint_parts=("stripe_payout", payout_id),
            summary=f"Stripe payout {payout_id} of {amount} {currency.upper()} is paid but no "
            f"payout bank account is configured; set {PAYOUT_ACCOUNT_SETTING} to the ref of "
            "the Dolibarr account that receives Stripe payouts, then retry the record.",
            amount_difference=-amount,
            currency=currency.upper(),
            source_snapshot=payout,
            proposed_fix="configure_payout_bank_account",
            proposed_fix_params={"setting": PAYOUT_ACCOUNT_SETTING, "payout": payout_id},
        ),
    )


def _until_arrival(payout: dict[str, Any]) -> timedelta:
    """Until the payout's arrival date, within [PAYOUT_RECHECK, PAYOUT_RECHECK_MAX]."""
    arrival = payout.get("arrival_date")
    if not isinstance(arrival, int):
        return PAYOUT_RECHECK
    remaining = datetime.fromtimestamp(arrival, UTC) - timezone.now()
    return min(max(remaining, PAYOUT_RECHECK), PAYOUT_RECHECK_MAX)


# --- Shared ---------------------------------------------------------------------------------


def _currency_reason(currency: str, ctx: SyncContext, *, needs_payout_account: bool) -> str | None:
    """Why an amount in `currency` cannot be written on a Stripe bank account (None: it can,
    on the account for that currency)."""
    if not is_known_currency(currency):
        return "a currency whose decimals are unknown"
    return foreign_currency_reason(
        ctx.setup, currency_code(currency), needs_payout_account=needs_payout_account
    )


def _stripe_account(currency: str, ctx: SyncContext) -> int:
    account_id = ctx.setup.stripe_account_for(currency_code(currency))
    if account_id is None:  # `_currency_reason` said it exists
        raise ConfigurationError(f"no Dolibarr bank account for Stripe's {currency} balance")
    return account_id


def _currency_unsupported(
    *,
    what: str,
    identity: tuple[str, ...],
    minor: int,
    currency: str,
    reason: str,
    snapshot: dict[str, Any],
    ctx: SyncContext,
) -> NeedsReview:
    """A fee or payout in a currency no Dolibarr bank account stands for is never converted
    (there is no rate to be sure of), it is shown, with `reason`. `minor` is the movement that
    is not written, signed as it would move the Stripe account."""
    known = is_known_currency(currency)
    code = currency_code(currency) if known else currency
    amount = minor_to_decimal(minor, currency) if known else None
    return NeedsReview(
        reason=f"{what} is in {code}, not {ctx.setup.company_currency}: {reason}",
        mismatch=MismatchSpec(
            kind=MismatchKind.CURRENCY_UNSUPPORTED,
            fingerprint_parts=identity,
            summary=f"{what} ({amount if known else minor} {code}) is not in the company "
            f"currency {ctx.setup.company_currency} and {reason}: nothing was written, "
            "ap24sync never converts.",
            severity="info",
            amount_difference=amount,
            currency=code,
            source_snapshot=snapshot,
        ),
    )


def _duplicate_lines(*, what: str, lines: list[BankLine], snapshot: dict[str, Any]) -> NeedsReview:
    keep, *extra = sorted(lines, key=lambda line: line.id)
    ids = [line.id for line in lines]
    return NeedsReview(
        reason=f"{what} is in Dolibarr {len(lines)} times (bank lines {ids})",
        mismatch=MismatchSpec(
            kind=MismatchKind.DUPLICATE_IN_DOLIBARR,
            fingerprint_parts=("bank_line", str(snapshot["id"])),
            summary=f"{what} appears on {len(lines)} bank lines of the Stripe account "
            f"({', '.join(map(str, ids))}); keep the first, delete the others in Dolibarr.",
            severity="critical",
            amount_difference=sum((line.amount or Decimal(0) for line in extra), Decimal(0)),
            currency=str(snapshot.get("currency") or "").upper(),
            source_snapshot=snapshot,
            dolibarr_snapshot={"lines": [line.raw for line in lines]},
            proposed_fix="delete_bank_lines",
            proposed_fix_params={"keep": keep.id, "delete": [line.id for line in extra]},
        ),
        dolibarr_kind=DOLIBARR_KIND,
        dolibarr_id=keep.id,
    )


def _adopted(line: BankLine, *, expected: Decimal, what: str, snapshot: dict[str, Any]) -> Outcome:
    """A line written by an earlier attempt (or by hand) is adopted when its amount is the one
    the source says; otherwise a person looks at it."""
    if line.amount == expected:
        return Synced(dolibarr_kind=DOLIBARR_KIND, dolibarr_id=line.id)
    return NeedsReview(
        reason=f"{what} is bank line {line.id} of {line.amount}, expected {expected}",
        mismatch=MismatchSpec(
            kind=MismatchKind.TOTAL_DIFFERS,
            fingerprint_parts=("bank_line", str(snapshot["id"])),
            summary=f"{what} is bank line {line.id} for {line.amount} in Dolibarr, but Stripe "
            f"says {expected}.",
            amount_difference=(line.amount or Decimal(0)) - expected,
            currency=str(snapshot.get("currency") or "").upper(),
            source_snapshot=snapshot,
            dolibarr_snapshot=line.raw,
        ),
        dolibarr_kind=DOLIBARR_KIND,
        dolibarr_id=line.id,
    )


def _utc_day(timestamp: int) -> date:
    """Bank lines carry dates, not times (`dateo`/`datev` come back as midnight UTC, 120)."""
    return datetime.fromtimestamp(int(timestamp), UTC).date()
