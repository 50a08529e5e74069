"""The sync engine: claim due records, run their handler, record the outcome.

Each worker loops: claim a small batch of due records (`records_claim_due`: row locks with
SKIP LOCKED on PostgreSQL, so two workers never take the same record; a record left in
progress by a dead worker comes back after its lease), look up in one call per Dolibarr object
kind what the batch will need (`sync.known`), run each record's handler — network calls, no
transaction — and record its outcome in one short transaction, with the Dolibarr id, and with
its mismatch when a person must decide.

Records are processed in dependency order, phase by phase: customers, then invoices, then
what points at invoices (refunds, charges, payment intents). Kinds that depend on no other
record and take no lane (fee lines and payouts: `INDEPENDENT_KINDS`) do not wait for their
turn: a share of the workers (`side_workers`) works on them from the start, alongside the
phases that hold the lane, and the rest join them once those phases are done (or they join
the rest, at the next phase, when they run out of independent records first). In a phase of
several kinds each worker starts on a different one. Synced and skipped outcomes are recorded
per batch, in one transaction (`records_mark_settled`). A record whose dependency is still
missing says `Waiting` and comes back later without losing an attempt. Draft creations and
reads run in parallel across workers; every numbered write goes through the one lane
(`context.lane`).

Failures: a transient error (connection, timeout, 5xx, 429, a busy lane) is retried later with
a growing, jittered delay until `SYNC_MAX_ATTEMPTS`, then the record fails with a `sync_failed`
mismatch; a permanent error fails it at once, with the error text. A rejected API key or a
missing setting stops the run instead: it is not the record's fault.

A remote whose circuit breaker is open (`CircuitOpenError`, `resilience`) defers the run: it
stops, every record it had claimed and not finished goes back to pending untouched (its attempt
given back), and `sync_due` raises the CircuitOpenError, for the job to be recorded as deferred.
A run that starts while Dolibarr's breaker is open and no probe is due claims nothing.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta
from itertools import chain, islice
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone

from reconciliation.connectors.dolibarr import DolibarrClient
from reconciliation.connectors.dolibarr_types import BankAccount
from reconciliation.errors import (
    Ap24SyncError,
    AuthenticationError,
    CircuitOpenError,
    ConfigurationError,
    NotFoundError,
    RemoteError,
    TransientError,
)
from reconciliation.models import MismatchKind, Source, SyncRecord, SyncState
from reconciliation.services.records import (
    Settled,
    record_mark_failed_with_mismatch,
    record_mark_needs_review_with_mismatch,
    record_mark_retry_later,
    record_mark_waiting,
    records_claim_due,
    records_mark_settled,
)
from reconciliation.sync import handlers  # noqa: F401  (registers every handler)
from reconciliation.sync.base import (
    DolibarrSetup,
    ForeignCurrency,
    MismatchSpec,
    NeedsReview,
    Outcome,
    Skipped,
    SyncContext,
    Synced,
    Waiting,
    handler_for,
)
from reconciliation.sync.known import KnownObjects, RunCache, known_objects_lookup
from reconciliation.sync.remote import AuditAfterHold, AuditedDolibarr, PlanningDolibarr
from reconciliation.sync.stripe_payouts import fee_line_wanted, fee_lines_lookup

logger = logging.getLogger(__name__)

# Dependency order. Kinds not named here (other sources' records) run last.
PHASES: tuple[tuple[str, ...], ...] = (
    # Aipress24's customers first: they own the thirdparty of every Stripe customer mapped to
    # them, and its one Stripe link (`aipress24_customers`).
    ("organisation", "user"),
    ("customer",),
    ("invoice", "purchase"),
    # Refunds first: they hold the lane, and the workers that start on them keep it busy
    # while the others settle the charges and payment intents (`_run_phase`).
    ("refund", "charge", "payment_intent"),
    ("balance_transaction", "payout"),
)
# Kinds that need no other record synced first and write nothing numbered: they run alongside
# the phases before theirs (a fee line needs neither its charge nor the lane; a payout's
# transfer is checked against Stripe's own list of what it paid out).
INDEPENDENT_KINDS = frozenset({"balance_transaction", "payout"})

# Records claimed together and looked up together: one look-up call per object kind serves
# this many records, and a worker that dies leaves at most this many for the lease to return.
BATCH_SIZE = 20
# Kinds whose records mostly write nothing (pointers at a payment their invoice wrote): their
# cost is the claim and the settle, so they are claimed in bigger batches (`batch_size` x 5).
LIGHT_KINDS = frozenset({"charge", "payment_intent"})
LIGHT_BATCH_FACTOR = 5
# How long a worker waits, at the end of a phase, for other processes' records of that phase.
PHASE_BARRIER_MAX_WAIT = timedelta(seconds=60)
PHASE_BARRIER_POLL_SECONDS = 0.2

RETRY_BASE = timedelta(minutes=1)
RETRY_CAP = timedelta(hours=6)


def retry_delay(attempts: int) -> timedelta:
    """1, 2, 4, 8 … minutes after the 1st, 2nd, 3rd … failed attempt, ±20 % so that records
    that failed together do not come back together, capped at six hours."""
    nominal = min(RETRY_BASE * (2 ** max(0, attempts - 1)), RETRY_CAP)
    return nominal * random.uniform(0.8, 1.2)


# --- building a context -------------------------------------------------------------------------


def dolibarr_setup(*, client: DolibarrClient) -> DolibarrSetup:
    """Facts about the Dolibarr instance, read from it (never hard-coded ids): the company
    currency (`/setup/company`), the card payment type (`CB` in the payment-types dictionary)
    and the bank accounts named by their refs in the settings."""
    currency = client.company_currency()
    try:
        card = client.payment_type_id(code="CB")
    except NotFoundError as exc:
        raise ConfigurationError(
            "Dolibarr has no active payment type with code CB (card): activate it in "
            "Setup > Dictionaries > Payment methods"
        ) from exc
    accounts = {account.ref: account for account in client.bank_accounts()}
    stripe_ref = settings.DOLIBARR_STRIPE_BANK_ACCOUNT
    if stripe_ref not in accounts:
        raise ConfigurationError(
            f"Dolibarr has no bank account with ref {stripe_ref!r} "
            "(DOLIBARR_STRIPE_BANK_ACCOUNT): create it in Dolibarr or set the variable to an "
            "existing ref"
        )
    payout_ref = settings.DOLIBARR_PAYOUT_BANK_ACCOUNT
    if payout_ref and payout_ref not in accounts:
        raise ConfigurationError(
            f"Dolibarr has no bank account with ref {payout_ref!r} "
            "(DOLIBARR_PAYOUT_BANK_ACCOUNT): create it in Dolibarr or set the variable to an "
            "existing ref"
        )
    return DolibarrSetup(
        company_currency=currency,
        multicurrency_enabled=settings.DOLIBARR_MULTICURRENCY,
        card_payment_type_id=card,
        stripe_bank_account_id=accounts[stripe_ref].id,
        payout_bank_account_id=accounts[payout_ref].id if payout_ref else None,
        foreign_currencies=(
            foreign_currencies(client=client, accounts=accounts, company_currency=currency)
            if settings.DOLIBARR_MULTICURRENCY
            else {}
        ),
    )


def _by_code(refs: Mapping[str, str]) -> dict[str, str]:
    return {code.strip().upper(): ref.strip() for code, ref in refs.items()}


def foreign_currencies(
    *, client: DolibarrClient, accounts: Mapping[str, BankAccount], company_currency: str
) -> dict[str, ForeignCurrency]:
    """The currencies configured for the multicurrency module (`DOLIBARR_STRIPE_BANK_ACCOUNTS`,
    `DOLIBARR_PAYOUT_BANK_ACCOUNTS`), each with its accounts or the reason it cannot be written.

    A wrong entry is not a reason to stop the run: the company currency and the other
    currencies still sync, and the records in that currency each get a `currency_unsupported`
    mismatch quoting the reason. One `GET /multicurrencies/bycode/{code}` per currency: a code
    the module does not know would be silently replaced by the company currency on creation."""
    stripe_refs = _by_code(settings.DOLIBARR_STRIPE_BANK_ACCOUNTS)
    payout_refs = _by_code(settings.DOLIBARR_PAYOUT_BANK_ACCOUNTS)
    found: dict[str, ForeignCurrency] = {}
    for code in sorted(set(stripe_refs) | set(payout_refs)):
        if code == company_currency.upper():
            continue
        ids: dict[str, int | None] = {}
        problems: list[str] = []
        for role, refs, variable in (
            ("stripe", stripe_refs, "DOLIBARR_STRIPE_BANK_ACCOUNTS"),
            ("payout", payout_refs, "DOLIBARR_PAYOUT_BANK_ACCOUNTS"),
        ):
            ref = refs.get(code)
            account = accounts.get(ref) if ref else None
            ids[role] = account.id if account else None
            if ref and account is None:
                problems.append(f"Dolibarr has no bank account with ref {ref!r} ({variable})")
            elif account is not None and (account.currency_code or "").upper() != code:
                problems.append(
                    f"Dolibarr bank account {ref!r} ({variable}) is in "
                    f"{account.currency_code or 'no currency'}, not {code}"
                )
        if not problems and client.multicurrency(code=code) is None:
            problems.append(
                f"Dolibarr's multicurrency module has no {code} (or is off): add the currency "
                "and its rate in Dolibarr's multicurrency setup"
            )
        found[code] = ForeignCurrency(
            code=code,
            stripe_bank_account_id=ids["stripe"],
            payout_bank_account_id=ids["payout"],
            problem="; ".join(problems) or None,
        )
    return found


def build_context(
    *,
    dry_run: bool = False,
    client: DolibarrClient | None = None,
    stripe: Any = None,
    lane: Any = None,
    aipress24: Any = None,
) -> SyncContext:
    """A context from the settings (or from the parts given): the Dolibarr client wrapped for
    auditing (or, in a dry run, for planning), its setup, the shared lane, and Stripe when it is
    configured (for tax rates and customers' tax ids)."""
    from reconciliation.connectors.stripe import StripeConnector
    from reconciliation.sync.lane import lane_from_settings

    client = client if client is not None else DolibarrClient.from_settings()
    setup = dolibarr_setup(client=client)
    if lane is None:
        lane = lane_from_settings()
    if stripe is None and settings.STRIPE_API_KEY:
        stripe = StripeConnector.from_settings()
    if aipress24 is None and settings.AIPRESS24_DATABASE_URL:
        from reconciliation.connectors.aipress24 import Aipress24Reader

        aipress24 = Aipress24Reader.from_settings()
    dolibarr: Any
    if dry_run:
        dolibarr = PlanningDolibarr(client, currency=setup.company_currency)
    else:
        dolibarr = AuditedDolibarr(client)
        lane = AuditAfterHold(lane, dolibarr)
    return SyncContext(
        dolibarr=dolibarr,
        stripe=stripe,
        lane=lane,
        setup=setup,
        dry_run=dry_run,
        aipress24=aipress24,
    )


# --- running --------------------------------------------------------------------------------


class _Released:
    """The claim got too old to trust before the handler ran: give the record back."""


class _Run:
    def __init__(self, *, limit: int | None, progress: Callable[[int], Any] | None) -> None:
        self._lock = threading.Lock()
        self._remaining = limit
        self._progress = progress
        self.counts: Counter[str] = Counter()
        self.stop = threading.Event()
        self.fatal: BaseException | None = None
        self.cache = RunCache()

    def take(self, wanted: int) -> int:
        with self._lock:
            if self._remaining is None:
                return wanted
            taken = min(wanted, self._remaining)
            self._remaining -= taken
            return taken

    def give_back(self, count: int) -> None:
        with self._lock:
            if self._remaining is not None:
                self._remaining += count

    def count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1
            self.counts["processed"] += 1
        if self._progress is not None:
            self._progress(1)

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            if self.fatal is None:
                self.fatal = exc
        self.stop.set()


def sync_due(
    *,
    context: SyncContext,
    workers: int | None = None,
    limit: int | None = None,
    kinds: Iterable[str] | None = None,
    progress: Callable[[int], Any] | None = None,
    lease: timedelta | None = None,
    max_attempts: int | None = None,
    delay_for: Callable[[int], timedelta] = retry_delay,
    batch_size: int = BATCH_SIZE,
) -> Counter[str]:
    """Process the due records (all, or of `kinds`; at most `limit`) with `workers` threads
    (one inside a transaction or on an in-memory database) and return how many ended in each
    outcome (`synced`, `needs_review`, `skipped`, `waiting`, `retry`, `failed`, `processed`).

    A CircuitOpenError from any remote ends the run and is raised once the claimed records are
    given back; it is raised before anything is claimed when Dolibarr's breaker is open with no
    probe due.

    In a dry run nothing is claimed or recorded and nothing remote is written: the handlers run
    against `PlanningDolibarr`, whose `plan` and `outcomes` say what would happen."""
    workers = workers if workers is not None else settings.SYNC_WORKERS
    if connection.in_atomic_block or (
        connection.vendor == "sqlite" and connection.is_in_memory_db()
    ):
        # Other threads' connections could not see this transaction's rows (an in-memory
        # SQLite database is shared with table locks, not waits): work in this thread.
        workers = 1
    lease = lease if lease is not None else timedelta(minutes=settings.SYNC_LEASE_MINUTES)
    max_attempts = max_attempts if max_attempts is not None else settings.SYNC_MAX_ATTEMPTS
    breaker = getattr(context.dolibarr, "breaker", None)
    if breaker is not None:
        breaker.check()  # CircuitOpenError: nothing claimed, nothing sent
    run = _Run(limit=limit, progress=progress)
    options: dict[str, Any] = {
        "lease": lease,
        "max_attempts": max_attempts,
        "delay_for": delay_for,
        "batch_size": batch_size,
    }
    phases = _phases(kinds)
    side: _SidePhase | None = None
    side_started = False
    try:
        for index, phase in enumerate(phases):
            if side is not None and side.finished():
                # Its workers ran out of independent records before the phases they ran
                # alongside: they join those. What is left of their kinds (a record that came
                # due since) is done in its own phase's turn, by every worker.
                side.join()
                side = None
            if context.dry_run:
                _plan_phase(run, context, phase, batch_size)
            elif side is not None and phase == side.phase:
                # The phases it ran alongside are done: the other workers join it.
                _run_phase(run, context, phase, workers=max(1, workers - side.workers), **options)
                side.join()
                side = None
                _await_other_workers(phase, lease)
            else:
                if not side_started and workers > 1:
                    side = _SidePhase.start(run, context, phases[index + 1 :], workers, options)
                    side_started = True
                main_workers = workers - side.workers if side is not None else workers
                _run_phase(run, context, phase, workers=max(1, main_workers), **options)
                _await_other_workers(phase, lease)
            if run.fatal is not None:
                break
            if limit is not None and run.counts["processed"] >= limit:
                break
    finally:
        if side is not None:
            if run.fatal is None and not (limit is not None and run.counts["processed"] >= limit):
                # Leaving early for any other reason (an exception here): stop the side workers.
                run.stop.set()
            side.join()
    if run.fatal is not None:
        raise run.fatal
    return run.counts


def side_workers(workers: int) -> int:
    """Of `workers` threads, how many work on the independent kinds while the phases before
    them run: one in four (at least one). The phases that hold the lane keep the others: two or
    three threads already keep the lane busy, and more would only queue for it."""
    return max(1, workers // 4)


class _SidePhase:
    """Worker threads on the independent kinds of a later phase, started while earlier phases
    run."""

    def __init__(self, phase: tuple[str, ...], workers: int, threads: list[threading.Thread]):
        self.phase = phase
        self.workers = workers
        self._threads = threads

    @classmethod
    def start(
        cls,
        run: _Run,
        context: SyncContext,
        later: list[tuple[str, ...]],
        workers: int,
        options: dict[str, Any],
    ) -> _SidePhase | None:
        phase = next((p for p in later if set(p) <= INDEPENDENT_KINDS), None)
        if phase is None:
            return None
        count = side_workers(workers)
        threads = [
            threading.Thread(
                target=_thread_main,
                args=(run, context, phase, options),
                name=f"ap24sync-sync-side-{number}",
                daemon=True,
            )
            for number in range(count)
        ]
        for thread in threads:
            thread.start()
        return cls(phase, count, threads)

    def finished(self) -> bool:
        return not any(thread.is_alive() for thread in self._threads)

    def join(self) -> None:
        for thread in self._threads:
            thread.join()


def _await_other_workers(phase: tuple[str, ...], lease: timedelta) -> None:
    """Workers in other processes may still hold records of this phase, and the next phase
    depends on them (an invoice needs its customer): wait, briefly, until they are settled,
    rather than let the dependants wait a whole retry delay."""
    deadline = time.monotonic() + min(lease, PHASE_BARRIER_MAX_WAIT).total_seconds()
    while time.monotonic() < deadline:
        held = SyncRecord.objects.filter(
            kind__in=phase,
            state=SyncState.IN_PROGRESS,
            last_attempt_at__gte=timezone.now() - lease,
        )
        if not held.exists():
            return
        time.sleep(PHASE_BARRIER_POLL_SECONDS)


def _phases(kinds: Iterable[str] | None) -> list[tuple[str, ...]]:
    active = set(
        SyncRecord.objects.filter(state__in=[SyncState.PENDING, SyncState.IN_PROGRESS])
        .values_list("kind", flat=True)
        .distinct()
    )
    wanted = set(kinds) & active if kinds is not None else active
    ordered = [tuple(kind for kind in phase if kind in wanted) for phase in PHASES]
    rest = tuple(sorted(wanted - set(chain.from_iterable(PHASES))))
    return [phase for phase in ordered if phase] + ([rest] if rest else [])


def _run_phase(
    run: _Run, context: SyncContext, phase: tuple[str, ...], *, workers: int, **options: Any
) -> None:
    if workers == 1:
        _work(run, context, phase, **options)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ap24sync-sync") as pool:
        futures = [
            pool.submit(_thread_main, run, context, phase, options, prefer)
            for prefer in preferred_kinds(phase, workers)
        ]
    for future in futures:
        exc = future.exception()
        if exc is not None and run.fatal is None:
            run.fail(exc)


def preferred_kinds(phase: tuple[str, ...], workers: int) -> list[str]:
    """The kind each worker of a phase starts on (it takes any kind of the phase once its own
    runs out): half of the workers, rounded up, on the phase's first kind — refunds, which hold
    the lane — the others spread over the rest, so that the lane stays busy while they settle
    the light kinds."""
    if len(phase) == 1:
        return [phase[0]] * workers
    first = (workers + 1) // 2
    rest = phase[1:]
    return [phase[0]] * first + [rest[number % len(rest)] for number in range(workers - first)]


def _thread_main(
    run: _Run,
    context: SyncContext,
    phase: tuple[str, ...],
    options: dict[str, Any],
    prefer: str | None = None,
) -> None:
    try:
        _work(run, context, phase, prefer=prefer, **options)
    except BaseException as exc:  # recorded on the run, raised by `sync_due`
        run.fail(exc)
    finally:
        # Each thread has its own database connection; close it before the thread ends.
        connection.close()


def _work(
    run: _Run,
    context: SyncContext,
    phase: tuple[str, ...],
    *,
    lease: timedelta,
    max_attempts: int,
    delay_for: Callable[[int], timedelta],
    batch_size: int,
    prefer: str | None = None,
) -> None:
    """Claim, look up, handle and record batches of the phase's due records until none is
    left; records of the `prefer` kind first, while there are any."""
    if len(phase) < 2:
        prefer = None
    light = set(phase) <= LIGHT_KINDS
    while not run.stop.is_set():
        size = batch_size * LIGHT_BATCH_FACTOR if light or prefer in LIGHT_KINDS else batch_size
        wanted = run.take(size)
        if wanted == 0:
            return
        batch: list[SyncRecord] = []
        if prefer is not None:
            batch = records_claim_due(limit=wanted, lease=lease, kinds=[prefer])
            if not batch:
                prefer = None
                run.give_back(wanted)
                continue
        if not batch:
            batch = records_claim_due(limit=wanted, lease=lease, kinds=list(phase))
        run.give_back(wanted - len(batch))
        if not batch:
            return
        try:
            known = _look_up(batch, context, run.cache)
        except CircuitOpenError as exc:
            _defer(batch, exc)
            run.fail(exc)
            return
        batch_context = replace(context, known=known)
        settled: list[Settled] = []
        try:
            for position, record in enumerate(batch):
                if run.stop.is_set():
                    for left in batch[position:]:
                        record_mark_waiting(
                            record_id=left.pk, reason="the run stopped", delay=timedelta(0)
                        )
                    return
                result = _attempt(record, batch_context, lease)
                simple = _simple_outcome(record, result)
                if simple is not None:
                    settled.append(simple)
                else:
                    run.count(_settle(record, result, run, max_attempts, delay_for))
        finally:
            # Synced and skipped records of the batch are recorded together, in one
            # transaction: the bulk of a backfill, at a handful of statements per batch.
            records_mark_settled(settled)
            for outcome in settled:
                run.count("synced" if outcome.dolibarr_id is not None else "skipped")


def _look_up(batch: list[SyncRecord], context: SyncContext, cache: RunCache) -> KnownObjects:
    """The batch's look-ups; when they fail, none is trusted and each handler looks up alone."""
    try:
        known = known_objects_lookup(records=batch, dolibarr=context.dolibarr, run=cache)
        fee_txn_ids = [
            txn_id
            for record in batch
            if record.source == Source.STRIPE
            and record.kind == "balance_transaction"
            and record.attempts <= 1
            and (txn_id := fee_line_wanted(record)) is not None
        ]
        if fee_txn_ids:
            # Fee lines of first attempts only: after an uncertain attempt the handler looks
            # its line up again itself.
            known = replace(
                known,
                fee_lines=fee_lines_lookup(
                    dolibarr=context.dolibarr,
                    bank_account_id=context.setup.stripe_bank_account_id,
                    txn_ids=fee_txn_ids,
                ),
            )
        return known
    except CircuitOpenError:
        raise
    except RemoteError as exc:
        logger.warning("batched look-up failed (%s); records look themselves up", exc)
        return KnownObjects(run=cache)


def _attempt(record: SyncRecord, context: SyncContext, lease: timedelta) -> Any:
    function = handler_for(record.source, record.kind)
    if function is None:
        return Skipped(f"no handler syncs {record.source} {record.kind} records")
    if timezone.now() - record.last_attempt_at > lease / 2:
        # The batch took so long that the lease may run out while this record is worked on:
        # another worker could then take it too. Hand it back instead.
        return _Released()
    try:
        return function(record, context)
    except Exception as exc:  # every failure is recorded on its record
        return exc


def _simple_outcome(record: SyncRecord, result: Any) -> Settled | None:
    """A Synced or Skipped result as a `Settled` for the batch's one transaction; None for the
    others, which are recorded at once with their mismatch or retry time."""
    if isinstance(result, Synced):
        return Settled(
            record_id=record.pk,
            dolibarr_kind=result.dolibarr_kind,
            dolibarr_id=result.dolibarr_id,
            dolibarr_ref=result.dolibarr_ref,
        )
    if isinstance(result, Skipped):
        return Settled(record_id=record.pk, reason=result.reason)
    return None


def _settle(
    record: SyncRecord,
    result: Any,
    run: _Run,
    max_attempts: int,
    delay_for: Callable[[int], timedelta],
) -> str:
    """Record one outcome other than synced or skipped (`_simple_outcome`) in one transaction;
    returns the name it is counted under."""
    if isinstance(result, NeedsReview):
        record_mark_needs_review_with_mismatch(
            record_id=record.pk,
            reason=result.reason,
            mismatch=result.mismatch,
            dolibarr_kind=result.dolibarr_kind,
            dolibarr_id=result.dolibarr_id,
        )
        return "needs_review"
    if isinstance(result, Waiting):
        record_mark_waiting(record_id=record.pk, reason=result.reason, delay=result.delay)
        return "waiting"
    if isinstance(result, _Released):
        record_mark_waiting(
            record_id=record.pk, reason="claim too old to work on safely", delay=timedelta(0)
        )
        return "waiting"
    if isinstance(result, AuthenticationError | ConfigurationError):
        # Not this record's fault: give it back untouched and stop the run.
        record_mark_waiting(record_id=record.pk, reason=str(result), delay=delay_for(1))
        run.fail(result)
        return "waiting"
    if isinstance(result, CircuitOpenError):
        # The remote is down, not this record: back to pending, its attempt given back, due
        # again at once (the breaker, not the record, says when to try).
        _defer([record], result)
        run.fail(result)
        return "deferred"
    if isinstance(result, TransientError):
        if record.attempts < max_attempts:
            delay = delay_for(record.attempts)
            if result.retry_after:
                delay = max(delay, timedelta(seconds=result.retry_after))
            record_mark_retry_later(record_id=record.pk, error=str(result), delay=delay)
            return "retry"
        error = f"gave up after {record.attempts} attempts: {result}"
    elif isinstance(result, Ap24SyncError):
        error = str(result)
    else:
        logger.exception("handler of %s failed", record, exc_info=result)
        error = f"internal error: {type(result).__name__}: {result}"
    record_mark_failed_with_mismatch(
        record_id=record.pk, error=error, mismatch=_sync_failed(record, error)
    )
    return "failed"


def _defer(records: Iterable[SyncRecord], exc: CircuitOpenError) -> None:
    reason = f"deferred: {exc}"
    for record in records:
        record_mark_waiting(record_id=record.pk, reason=reason, delay=timedelta(0))


def _sync_failed(record: SyncRecord, error: str) -> MismatchSpec:
    return MismatchSpec(
        kind=MismatchKind.SYNC_FAILED,
        fingerprint_parts=(record.source, record.kind, record.external_id),
        summary=f"{record.source} {record.kind} {record.external_id} failed: {error}",
        severity="critical",
        source_snapshot=record.snapshot,
        proposed_fix="retry",
        proposed_fix_params={"record": record.pk},
    )


# --- dry run -----------------------------------------------------------------------------------


def _chunks(items: Iterator[SyncRecord], size: int) -> Iterator[list[SyncRecord]]:
    while batch := list(islice(items, size)):
        yield batch


def _plan_phase(run: _Run, context: SyncContext, phase: tuple[str, ...], batch_size: int) -> None:
    """One thread, nothing claimed or recorded: each due record's handler runs against the
    planner, and what it would become is kept for the records after it (`planned_outcomes`)."""
    planner = context.dolibarr
    if not isinstance(planner, PlanningDolibarr):
        raise TypeError("a dry run needs a PlanningDolibarr context (build_context(dry_run=True))")
    due = SyncRecord.objects.due().filter(kind__in=phase).order_by("id").iterator(chunk_size=200)
    for batch in _chunks(due, batch_size):
        for record in batch:
            record.attempts += 1  # as a claim would
        batch_context = replace(context, known=_look_up(batch, context, run.cache))
        for record in batch:
            wanted = run.take(1)
            if wanted == 0:
                return
            planner.current_record = f"{record.kind} {record.external_id}"
            function = handler_for(record.source, record.kind)
            try:
                result = (
                    function(record, batch_context)
                    if function is not None
                    else Skipped(f"no handler syncs {record.source} {record.kind} records")
                )
            except (AuthenticationError, ConfigurationError, CircuitOpenError) as exc:
                run.fail(exc)
                return
            except Exception as exc:  # shown in the plan
                result = exc
            planner.planned_outcomes[(record.source, record.kind, record.external_id)] = result
            planner.outcomes.append((planner.current_record, result))
            run.count(_outcome_name(result))


def _outcome_name(result: Any) -> str:
    if isinstance(result, Synced):
        return "synced"
    if isinstance(result, NeedsReview):
        return "needs_review"
    if isinstance(result, Skipped):
        return "skipped"
    if isinstance(result, Waiting):
        return "waiting"
    if isinstance(result, TransientError):
        return "retry"
    return "failed"


def describe_outcome(result: Outcome | BaseException) -> str:
    """One line for a plan or a log."""
    if isinstance(result, Synced):
        return f"synced -> Dolibarr {result.dolibarr_kind} {result.dolibarr_id}"
    if isinstance(result, NeedsReview):
        return f"flagged {result.mismatch.kind}: {result.reason}"
    if isinstance(result, Skipped):
        return f"skipped: {result.reason}"
    if isinstance(result, Waiting):
        return f"waiting: {result.reason}"
    return f"error: {result}"
