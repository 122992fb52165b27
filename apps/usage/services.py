"""Writes to the usage ledger and to budgets.

The gateway (apps/providers) calls, around every provider call attempt:
    budget_reserve(...)   before sending: worst-case cost; raises BudgetExceeded when a blocking
                          budget has no room (then no request is sent)
    usage_record(...)     after: the ledger row of the attempt (idempotent on call_id)
    budget_settle(...)    after: turn the reservation into the actual cost
    budget_release(...)   when the attempt ends without a cost to settle (or on crash recovery)
These take plain ids so that `usage` depends on nothing but accounts and providers' tables.

How a reservation stays exact (see docs/usage.md):
- one BudgetReservation row per (call_id, window) records what the call holds, so settle and
  release are idempotent and a crashed worker's hold can be found (budget_release_stale);
- every window is changed with a conditional UPDATE in one transaction, windows always in primary
  key order, so concurrent calls neither overspend nor deadlock;
- settling and releasing take the cost from the ledger row of the call when it exists, so a window's
  `spent` is the sum of its calls' ledger costs whoever settles them (gateway, reaper or sweep).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import UUID

import structlog
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connection, connections, models, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Q, Sum
from django.db.models.functions import TruncHour
from django.utils import timezone

from apps.accounts.models import ApiKey, Membership, Workspace
from apps.core.problems import BudgetExceeded, ValidationProblem
from apps.core.rows import column_converters, column_of, convert_row
from apps.usage.models import (
    NIL_UUID,
    Budget,
    BudgetEvent,
    BudgetReservation,
    BudgetWindow,
    UsageHourly,
    UsageRecord,
)
from apps.usage.periods import window_bounds
from apps.usage.selectors import budget_current_windows, budget_open_windows

logger = structlog.get_logger(__name__)

ZERO = Decimal("0")


# --- SQL of the per-call path ----------------------------------------------------------------------
# Every provider call attempt books a ledger row, adds it to the rollup and settles a budget hold.
# Through the ORM that was ~15 statements and ~9 ms of CPU per attempt, most of it spent compiling
# querysets; the statements below are written once, in SQL that PostgreSQL and SQLite (the
# embedded mode) both accept, and their values go through Django's own field adaptation.


def _db() -> BaseDatabaseWrapper:
    # The thread's connection object itself: every attribute read through the `connection` proxy is
    # a thread-local lookup, and these paths read dozens per call.
    return connections[DEFAULT_DB_ALIAS]


def _params(db: BaseDatabaseWrapper, values: Sequence[Any]) -> list[Any]:
    """Query parameters as the driver takes them. PostgreSQL's takes UUIDs and aware datetimes as
    they are; SQLite wants UUIDs as hex and datetimes through Django's adaptation."""
    if db.features.has_native_uuid_field:
        return list(values)
    adapt = db.ops.adapt_datetimefield_value
    return [v.hex if isinstance(v, uuid.UUID) else adapt(v) if isinstance(v, dt.datetime) else v for v in values]


def _execute(sql: str, params: Sequence[Any]) -> int:
    """Run one statement; the number of rows it changed."""
    db = _db()
    with db.cursor() as cursor:
        cursor.execute(sql, _params(db, params))
        return int(cursor.rowcount)


def _fetch(sql: str, params: Sequence[Any], fields: tuple[models.Field[Any, Any], ...]) -> list[list[Any]]:
    """Rows of a query whose columns are `fields`, converted the way the ORM converts them."""
    db = _db()
    with db.cursor() as cursor:
        cursor.execute(sql, _params(db, params))
        rows = cursor.fetchall()
    converters = column_converters(db, fields)
    if not any(converters):
        return [list(row) for row in rows]
    return [convert_row(db, list(row), converters) for row in rows]


def _field(model: type[models.Model], name: str) -> models.Field[Any, Any]:
    field = model._meta.get_field(name)
    assert isinstance(field, models.Field)
    return field


_LEDGER = UsageRecord._meta.db_table
_LEDGER_FIELDS = tuple(UsageRecord._meta.concrete_fields)
# ON CONFLICT on the unique call_id: a repeated booking of the same attempt inserts nothing (and
# waits for, then yields to, a concurrent insert of the same call_id).
_LEDGER_INSERT = (
    f"INSERT INTO {_LEDGER} ({', '.join(column_of(f) for f in _LEDGER_FIELDS)}) "
    f"VALUES ({', '.join(['%s'] * len(_LEDGER_FIELDS))}) ON CONFLICT (call_id) DO NOTHING"
)
_ROLLUP = UsageHourly._meta.db_table
_ROLLUP_BUCKET = ("workspace_id", "hour", "workflow_id", "model_id", "api_key_id", "status", "cache_hit")
_ROLLUP_SUMS = ("calls", "input_tokens", "cached_input_tokens", "output_tokens", "cost_usd", "saved_usd")
# One race-free statement: a new bucket is inserted, an existing one is added to under its row lock.
_ROLLUP_UPSERT = (
    f"INSERT INTO {_ROLLUP} ({', '.join(_ROLLUP_BUCKET + _ROLLUP_SUMS)}) "
    f"VALUES ({', '.join(['%s'] * (len(_ROLLUP_BUCKET) + len(_ROLLUP_SUMS)))}) "
    f"ON CONFLICT ({', '.join(_ROLLUP_BUCKET)}) DO UPDATE SET "
    + ", ".join(f"{name} = {_ROLLUP}.{name} + excluded.{name}" for name in _ROLLUP_SUMS)
)
# PostgreSQL only (a data-modifying WITH): the ledger row and, only if it is new, its rollup, in one
# statement; it reports one row changed exactly when the ledger row is new.
_ROLLUP_OF_BOOKED = _ROLLUP_UPSERT.replace(
    f"VALUES ({', '.join(['%s'] * (len(_ROLLUP_BUCKET) + len(_ROLLUP_SUMS)))})",
    f"SELECT {', '.join(['%s'] * (len(_ROLLUP_BUCKET) + len(_ROLLUP_SUMS)))} FROM booked",
)
_BOOK = f"WITH booked AS ({_LEDGER_INSERT} RETURNING 1) {_ROLLUP_OF_BOOKED}"


_BUDGETS = Budget._meta.db_table
_WINDOWS = BudgetWindow._meta.db_table
_RESERVATIONS = BudgetReservation._meta.db_table


@functools.cache
def _book_and_settle_sql(states: int) -> str:
    """PostgreSQL: _BOOK, then, only if the ledger row is new and the call holds exactly one hold in
    one of `states`, that hold finished and its window settled, in one statement (the common case:
    one blocking budget). Answers (ledger row new, holds found, window, amount, state before,
    alert threshold). Locks in the order of every other path: the rollup bucket, the call's holds
    (in window order), the window. With several holds nothing is finished (the caller does it)."""
    return (
        f"WITH booked AS ({_LEDGER_INSERT} RETURNING 1), rolled AS ({_ROLLUP_OF_BOOKED} RETURNING 1), "
        f"held AS (SELECT id, window_id, amount, state FROM {_RESERVATIONS} WHERE call_id = %s "
        f"AND state IN ({', '.join(['%s'] * states)}) AND EXISTS (SELECT 1 FROM rolled) "
        "ORDER BY window_id FOR UPDATE), "
        "one AS (SELECT * FROM held WHERE (SELECT count(*) FROM held) = 1), "
        f"finished AS (UPDATE {_RESERVATIONS} AS r SET state = %s, actual = %s, finished_at = %s FROM one "
        "WHERE r.id = one.id RETURNING one.window_id, one.amount, one.state), "
        f"settled AS (UPDATE {_WINDOWS} AS w SET spent = w.spent + %s, reserved = w.reserved - CASE "
        "WHEN f.state = %s THEN f.amount ELSE 0 END FROM finished AS f WHERE w.id = f.window_id "
        "RETURNING w.budget_id) "
        "SELECT (SELECT count(*) FROM booked), (SELECT count(*) FROM held), f.window_id, f.amount, f.state, "
        f"(SELECT b.alert_threshold_pct FROM {_BUDGETS} AS b WHERE b.id = (SELECT budget_id FROM settled)) "
        "FROM (SELECT 1) AS x LEFT JOIN finished AS f ON true"
    )


_TARGET_FIELDS = (
    *(_field(Budget, name) for name in ("id", "scope", "scope_id", "period", "limit_usd", "action", "created_at")),
    *(_field(BudgetWindow, name) for name in ("id", "limit_usd", "spent", "reserved", "start")),
)
_WINDOW_TOTAL_FIELDS = tuple(_field(BudgetWindow, name) for name in ("limit_usd", "spent", "reserved"))
_HOLD_FIELDS = (
    *(_field(BudgetReservation, name) for name in ("id", "window", "amount", "state")),
    _field(Budget, "alert_threshold_pct"),
)
_BOOKED_FIELDS = (_field(UsageRecord, "cost_usd"),)
# PostgreSQL only (data-modifying WITHs): read the budgets that apply with their windows and, when
# exactly one applies, is blocking and has an open window, reserve in it and record the hold, all in
# one statement. Answers the budgets (as _budget_targets does) and whether the hold was taken.
_RESERVE_FAST = (
    "WITH t AS ({targets}), "
    "one AS (SELECT max(window_id) AS window_id FROM t HAVING count(*) = 1 AND bool_and(action = %s)), "
    f"held AS (UPDATE {_WINDOWS} SET reserved = reserved + %s WHERE id = (SELECT window_id FROM one) "
    f"AND limit_usd >= spent + reserved + %s AND NOT EXISTS (SELECT 1 FROM {_RESERVATIONS} WHERE call_id = %s) "
    "RETURNING id), "
    f"ins AS (INSERT INTO {_RESERVATIONS} (call_id, window_id, amount, state, created_at) "
    "SELECT %s, id, %s, %s, %s FROM held RETURNING 1) "
    "SELECT t.*, (SELECT count(*) FROM ins) FROM t ORDER BY budget_id, window_start"
)


# --- The ledger ------------------------------------------------------------------------------------


def usage_record(*, call_id: str, settle_budget: bool | int = False, **fields: Any) -> UsageRecord:
    """Book one provider call attempt. Idempotent on `call_id`: a repeat returns the first row unchanged.

    The hourly rollup is updated in the same transaction, only when the row is new, so reports
    read from it always equal the ledger's sum. With `settle_budget`, the call's budget hold
    (budget_reserve) is finished in that transaction too, at the booked cost: settled when the
    attempt succeeded or cost something, else released, exactly as budget_settle / budget_release
    called right after would; a crash between booking and settling can then no longer happen.
    `settle_budget` may be budget_reserve's count of holds: with exactly one, PostgreSQL does it all
    in one statement (_book_and_settle).
    """
    record = UsageRecord(call_id=call_id, **fields)
    db = _db()
    row = [f.get_db_prep_save(f.pre_save(record, True), db) for f in _LEDGER_FIELDS]
    if db.vendor == "postgresql" and settle_budget == 1 and _book_and_settle(record, row):
        return record
    # On PostgreSQL the row and its rollup are one statement, atomic by itself (a cache hit's whole
    # booking). Lock order: the rollup bucket, then the budget windows in id order, in every
    # transaction that takes both (this is the only one).
    one_statement = db.vendor == "postgresql" and not settle_budget
    with contextlib.nullcontext() if one_statement else transaction.atomic():
        if db.vendor == "postgresql":
            created = bool(_execute(_BOOK, [*row, *_rollup_values(record)]))
        else:
            created = bool(_execute(_LEDGER_INSERT, row))
            if created:
                _execute(_ROLLUP_UPSERT, _rollup_values(record))
        if created:
            record._state.adding, record._state.db = False, db.alias
        else:
            record = UsageRecord.objects.get(call_id=call_id)
        if settle_budget:
            paid = record.status == UsageRecord.Status.SUCCEEDED or record.cost_usd > 0
            _finish(
                call_id=call_id, actual=record.cost_usd if paid else None, now=timezone.now(), booked=record.cost_usd
            )
    return record


def _book_and_settle(record: UsageRecord, row: list[Any]) -> bool:
    """PostgreSQL: book a new ledger row and finish the call's hold in one statement, as
    usage_record's transaction would (paid: settled at the row's cost; else released). False when
    the row was booked before (a repeat): the caller then books it as usual, which changes nothing
    but finishes the holds. Should the call hold several holds after all (settle_budget=True with
    several budgets), the row is booked here and they are finished in a second transaction; a crash
    in between leaves them to budget_release_stale, which settles a booked call's holds at its
    ledger cost. The gateway passes budget_reserve's count, which takes the transaction instead."""
    paid = record.status == UsageRecord.Status.SUCCEEDED or record.cost_usd > 0
    actual = Decimal(record.cost_usd) if paid else None
    states = [BudgetReservation.State.HELD]
    if paid:
        states.append(BudgetReservation.State.RELEASED)
    state = BudgetReservation.State.SETTLED if paid else BudgetReservation.State.RELEASED
    now = timezone.now()
    held = BudgetReservation.State.HELD
    params = [*row, *_rollup_values(record), record.call_id, *states, state, actual, now, actual or ZERO, held]
    db = _db()
    # Atomic by itself; inside a caller's transaction a savepoint keeps a failure (a check constraint)
    # from aborting the caller's transaction, as usage_record's own transaction did.
    with transaction.atomic() if db.in_atomic_block else contextlib.nullcontext():
        rows = _fetch(_book_and_settle_sql(len(states)), params, ())
    created, holds, window_id, amount, before, alert_pct = rows[0]
    if not created:
        return False
    record._state.adding, record._state.db = False, db.alias
    if holds > 1:
        _finish(call_id=record.call_id, actual=actual, now=now, booked=record.cost_usd)
    elif window_id is not None and actual is not None:
        if before == BudgetReservation.State.HELD and actual > amount:
            logger.warning(
                "budget_settled_above_reservation", call_id=record.call_id, reserved=str(amount), actual=str(actual)
            )
        if alert_pct is not None:
            with transaction.atomic():
                _events_record(list(_threshold_events(window_id, record.call_id)))
    return True


def _rollup_values(record: UsageRecord) -> list[Any]:
    """The parameters of _ROLLUP_UPSERT for one new ledger row: its bucket and what it adds."""
    return [
        record.workspace_id,
        record.created_at.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0),
        record.workflow_id or NIL_UUID,
        record.model_id,
        record.api_key_id or NIL_UUID,
        record.status,
        record.cache_hit,
        1,
        record.input_tokens,
        record.cached_input_tokens,
        record.output_tokens,
        Decimal(record.cost_usd),
        Decimal(record.saved_usd),
    ]


@transaction.atomic
def usage_rollup_rebuild(*, workspace: Workspace | None = None) -> int:
    """Recompute the hourly rollup from the ledger (all workspaces, or one). Returns the bucket count.

    For ledger rows written without usage_record (bulk loads, restores). Locks the ledger against
    inserts while it runs so no call is missed or counted twice.
    """
    ledger = UsageRecord.objects.all()
    hourly = UsageHourly.objects.all()
    if workspace is not None:
        ledger = ledger.filter(workspace=workspace)
        hourly = hourly.filter(workspace=workspace)
    if connection.vendor == "postgresql":
        # SHARE mode lets readers in and keeps writers out until the rebuilt rollup is committed.
        with connection.cursor() as cursor:
            cursor.execute(f"LOCK TABLE {UsageRecord._meta.db_table} IN SHARE MODE")
    hourly.delete()
    rows = (
        ledger.annotate(hour=TruncHour("created_at", tzinfo=dt.UTC))
        .values("workspace_id", "hour", "workflow_id", "model_id", "api_key_id", "status", "cache_hit")
        .annotate(
            calls=models.Count("id"),
            sum_input=Sum("input_tokens"),
            sum_cached=Sum("cached_input_tokens"),
            sum_output=Sum("output_tokens"),
            sum_cost=Sum("cost_usd"),
            sum_saved=Sum("saved_usd"),
        )
        .order_by()
    )
    buckets = [
        UsageHourly(
            workspace_id=row["workspace_id"],
            hour=row["hour"],
            workflow_id=row["workflow_id"] or NIL_UUID,
            model_id=row["model_id"],
            api_key_id=row["api_key_id"] or NIL_UUID,
            status=row["status"],
            cache_hit=row["cache_hit"],
            calls=row["calls"],
            input_tokens=row["sum_input"] or 0,
            cached_input_tokens=row["sum_cached"] or 0,
            output_tokens=row["sum_output"] or 0,
            cost_usd=row["sum_cost"] or ZERO,
            saved_usd=row["sum_saved"] or ZERO,
        )
        for row in rows.iterator(chunk_size=2000)
    ]
    UsageHourly.objects.bulk_create(buckets, batch_size=2000)
    return len(buckets)


# --- Budgets: definitions --------------------------------------------------------------------------


def _scope_target_exists(*, workspace: Workspace, scope: str, scope_id: UUID) -> bool:
    if scope == Budget.Scope.API_KEY:
        return ApiKey.objects.for_workspace(workspace).filter(pk=scope_id).exists()
    if scope == Budget.Scope.USER:
        return Membership.objects.filter(workspace=workspace, user_id=scope_id).exists()
    if scope == Budget.Scope.WORKFLOW:
        from django.apps import apps

        # Looked up by label: `usage` must not depend on the workflows app's code (only on its table).
        try:
            workflow_model = apps.get_model("workflows", "Workflow")
        except LookupError:
            return False
        return bool(workflow_model._default_manager.filter(workspace=workspace, pk=scope_id).exists())
    return False


def budget_validate(
    *, workspace: Workspace, scope: str, scope_id: UUID | None, limit_usd: Decimal, alert_threshold_pct: int | None
) -> None:
    """Raise ValidationProblem naming each bad field; scope_id must name an object of `workspace`."""
    errors: list[dict[str, str]] = []
    if scope == Budget.Scope.WORKSPACE:
        if scope_id is not None:
            errors.append({"field": "scope_id", "message": "Must be null for a workspace budget."})
    elif scope_id is None:
        errors.append({"field": "scope_id", "message": f"Required for a {scope} budget."})
    elif not _scope_target_exists(workspace=workspace, scope=scope, scope_id=scope_id):
        errors.append({"field": "scope_id", "message": f"No {scope} with this id in your workspace."})
    if limit_usd < 0:
        errors.append({"field": "limit_usd", "message": "Must be zero or more."})
    if alert_threshold_pct is not None and not 1 <= alert_threshold_pct <= 100:
        errors.append({"field": "alert_threshold_pct", "message": "Must be between 1 and 100."})
    if errors:
        raise ValidationProblem("; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors)


@transaction.atomic
def budget_create(
    *,
    workspace: Workspace,
    scope: str,
    period: str,
    limit_usd: Decimal,
    scope_id: UUID | None = None,
    action: str = Budget.Action.BLOCK,
    alert_threshold_pct: int | None = None,
) -> Budget:
    """Create a budget. It counts spending from now on: its first window starts at its creation."""
    budget_validate(
        workspace=workspace,
        scope=scope,
        scope_id=scope_id,
        limit_usd=limit_usd,
        alert_threshold_pct=alert_threshold_pct,
    )
    return Budget.objects.create(
        workspace=workspace,
        scope=scope,
        scope_id=scope_id,
        period=period,
        limit_usd=limit_usd,
        action=action,
        alert_threshold_pct=alert_threshold_pct,
    )


_UNSET: Any = object()


@transaction.atomic
def budget_update(
    *,
    budget: Budget,
    limit_usd: Decimal = _UNSET,
    action: str = _UNSET,
    alert_threshold_pct: int | None = _UNSET,
) -> Budget:
    """Change a budget's limit, action or alert threshold; the open window takes the new limit at once.

    Scope and period are fixed for a budget's life (its windows are cut by them): make a new budget.
    """
    locked = Budget.objects.select_for_update().get(pk=budget.pk)
    changed: list[str] = []
    for name, value in (("limit_usd", limit_usd), ("action", action), ("alert_threshold_pct", alert_threshold_pct)):
        if value is not _UNSET and getattr(locked, name) != value:
            setattr(locked, name, value)
            changed.append(name)
    if changed:
        budget_validate(
            workspace=locked.workspace,
            scope=locked.scope,
            scope_id=locked.scope_id,
            limit_usd=locked.limit_usd,
            alert_threshold_pct=locked.alert_threshold_pct,
        )
        locked.save(update_fields=[*changed, "updated_at"])
    if "limit_usd" in changed:
        # Windows still open follow the budget; closed windows keep the limit they had.
        BudgetWindow.objects.filter(budget=locked).filter(Q(end__isnull=True) | Q(end__gt=timezone.now())).update(
            limit_usd=locked.limit_usd
        )
    return locked


def budget_delete(*, budget: Budget) -> None:
    """Delete a budget with its windows. Calls in flight then settle against nothing (no error)."""
    budget.delete()


@transaction.atomic
def budget_window_reset(*, budget: Budget, now: dt.datetime | None = None) -> BudgetWindow:
    """Start a fresh window now: the open window is closed at `now` and a new one, empty, begins.

    Calls in flight keep their hold in the old window and settle there, so every window stays equal
    to the ledger costs of its calls. Used by staff (admin) to forgive a period's spending.
    """
    now = now or timezone.now()
    locked = Budget.objects.select_for_update().get(pk=budget.pk)
    current = budget_open_windows(budgets=[locked], now=now).get(locked.pk)
    end = window_bounds(locked.period, now)[1]
    if current is not None:
        BudgetWindow.objects.filter(pk=current.pk).update(end=now)
    return BudgetWindow.objects.create(budget=locked, start=now, end=end, limit_usd=locked.limit_usd)


# --- Budgets: windows ------------------------------------------------------------------------------


def budget_windows_current(*, budgets: Sequence[Budget], now: dt.datetime | None = None) -> dict[UUID, BudgetWindow]:
    """The current window of each budget, created on demand (race-safe: unique on budget + start)."""
    now = now or timezone.now()
    windows = budget_current_windows(budgets=budgets, now=now)
    fresh = [w for w in windows.values() if w.pk is None]
    if not fresh:
        return windows
    with transaction.atomic():
        # Lock the budgets so a concurrent limit change cannot slip between reading the limit
        # and inserting the window; taken in primary key order like every budget lock.
        limits = dict(
            Budget.objects.select_for_update()
            .filter(pk__in=[w.budget_id for w in fresh])
            .order_by("pk")
            .values_list("pk", "limit_usd")
        )
        # A budget deleted since it was read gets no window (its row would fail the foreign key).
        fresh = [w for w in fresh if w.budget_id in limits]
        for window in fresh:
            window.limit_usd = limits[window.budget_id]
        BudgetWindow.objects.bulk_create(fresh, ignore_conflicts=True)
    windows.update(budget_open_windows(budgets=[w.budget for w in fresh], now=now))
    return windows


# --- Budgets: reserve, settle, release -------------------------------------------------------------


@dataclass
class _Target:
    """A budget that applies to a call, and its open window (None: no call has opened the period yet)."""

    budget: Budget
    window: BudgetWindow | None


def _targets_query(
    *, workspace_id: UUID, workflow_id: UUID | None, api_key_id: UUID | None, user_id: UUID | None, now: dt.datetime
) -> tuple[str, list[Any]]:
    """The query of the budgets that apply to a call, each with its open window(s): _TARGET_FIELDS."""
    match = ["b.scope = %s"]
    params: list[Any] = [now, workspace_id, Budget.Scope.WORKSPACE]
    for scope, target in (
        (Budget.Scope.WORKFLOW, workflow_id),
        (Budget.Scope.API_KEY, api_key_id),
        (Budget.Scope.USER, user_id),
    ):
        if target is not None:
            match.append("(b.scope = %s AND b.scope_id = %s)")
            params += [scope, target]
    sql = (
        "SELECT b.id AS budget_id, b.scope, b.scope_id, b.period, b.limit_usd AS budget_limit, b.action, "
        "b.created_at, w.id AS window_id, w.limit_usd AS window_limit, w.spent, w.reserved, w.start AS window_start "
        f'FROM {_BUDGETS} b LEFT JOIN {_WINDOWS} w ON w.budget_id = b.id AND (w."end" IS NULL OR w."end" > %s) '
        f"WHERE b.workspace_id = %s AND ({' OR '.join(match)})"
    )
    return sql, params


def _targets_from(rows: list[list[Any]], workspace_id: UUID) -> list[_Target]:
    """_Targets from rows of the targets query ordered by budget, then window start."""
    targets: dict[UUID, _Target] = {}
    for budget_id, scope, scope_id, period, limit, action, created_at, window_id, w_limit, spent, reserved in (
        row[:11] for row in rows
    ):
        budget = Budget(
            id=budget_id,
            workspace_id=workspace_id,
            scope=scope,
            scope_id=scope_id,
            period=period,
            limit_usd=limit,
            action=action,
            created_at=created_at,
        )
        window = None
        if window_id is not None:
            window = BudgetWindow(id=window_id, budget=budget, limit_usd=w_limit, spent=spent, reserved=reserved)
        targets[budget_id] = _Target(budget, window)  # ordered by start: the latest open window wins
    return list(targets.values())


def _budget_targets(
    *, workspace_id: UUID, workflow_id: UUID | None, api_key_id: UUID | None, user_id: UUID | None, now: dt.datetime
) -> list[_Target]:
    """Every budget that applies to a call, with its current window, in one query (budget id order).

    Read fresh on every call, never cached: a budget created, raised or deleted a moment ago applies
    to the very next reservation in every process.
    """
    sql, params = _targets_query(
        workspace_id=workspace_id, workflow_id=workflow_id, api_key_id=api_key_id, user_id=user_id, now=now
    )
    return _targets_from(_fetch(sql + " ORDER BY budget_id, window_start", params, _TARGET_FIELDS), workspace_id)


def _window_totals(window_id: int) -> BudgetWindow | None:
    rows = _fetch(f"SELECT limit_usd, spent, reserved FROM {_WINDOWS} WHERE id = %s", [window_id], _WINDOW_TOTAL_FIELDS)
    if not rows:
        return None
    limit, spent, reserved = rows[0]
    return BudgetWindow(id=window_id, limit_usd=limit, spent=spent, reserved=reserved)


def budget_check(
    *,
    workspace_id: UUID,
    workflow_id: UUID | None = None,
    api_key_id: UUID | None = None,
    user_id: UUID | None = None,
    amount: Decimal = ZERO,
    now: dt.datetime | None = None,
) -> None:
    """The 402 pre-check for starting a run: raise BudgetExceeded when a blocking budget that applies
    already has no room for the run's first call; otherwise return None. Reserves nothing.

    `amount` is the worst-case cost of the first call when the caller can estimate it; with the
    default 0 the check refuses only a budget that is already full (spent + reserved >= limit).
    Racing runs can all pass this check: the reservation before each call is what holds the limit.
    """
    now = now or timezone.now()
    targets = _budget_targets(
        workspace_id=workspace_id, workflow_id=workflow_id, api_key_id=api_key_id, user_id=user_id, now=now
    )
    for target in targets:  # budget id order
        if target.budget.action != Budget.Action.BLOCK:
            continue
        # A period no call has opened yet is empty.
        window = target.window or BudgetWindow(budget=target.budget, limit_usd=target.budget.limit_usd)
        committed = window.spent + window.reserved
        full = committed + amount > window.limit_usd if amount > 0 else committed >= window.limit_usd
        if full:
            raise _refusal(target.budget, window, amount)


def _refusal(budget: Budget, window: BudgetWindow, amount: Decimal) -> BudgetExceeded:
    target = "workspace" if budget.scope == Budget.Scope.WORKSPACE else f"{budget.scope} {budget.scope_id}"
    remaining = max(ZERO, window.limit_usd - window.spent - window.reserved)
    logger.info("budget_refused", budget_id=str(budget.pk), amount=str(amount), remaining=str(remaining))
    return BudgetExceeded(
        f"The {budget.period} budget of ${window.limit_usd.normalize():f} on the {target} has "
        f"${remaining.normalize():f} left; this needs up to ${amount.normalize():f}.",
        extra={"budget_id": str(budget.pk)},
    )


def budget_reserve(
    *,
    call_id: str,
    amount: Decimal,
    workspace_id: UUID,
    workflow_id: UUID | None = None,
    api_key_id: UUID | None = None,
    user_id: UUID | None = None,
    now: dt.datetime | None = None,
) -> int:
    """Reserve `amount` in every budget window that applies to this call, or raise BudgetExceeded.

    All-or-nothing: one transaction, one conditional UPDATE per blocking window
    (`spent + reserved + amount <= limit`), windows in primary key order. Warn budgets take the
    reservation unconditionally and record a BudgetEvent when it goes over their limit.
    Idempotent on call_id: a call that already holds (or held) reservations reserves nothing more.
    Returns how many holds the call has (0: no budget applies): only then is there something to
    settle after the call; usage_record(settle_budget=...) takes this count.
    """
    amount = Decimal(amount)
    if amount < 0:
        raise ValueError(f"a reservation cannot be negative: {amount}")
    now = now or timezone.now()
    scope = {"workflow_id": workflow_id, "api_key_id": api_key_id, "user_id": user_id}
    if _db().vendor == "postgresql":
        # The common cases in one statement: no budget applies, or one blocking budget holds the call.
        targets_sql, targets_params = _targets_query(workspace_id=workspace_id, **scope, now=now)
        hold = [Budget.Action.BLOCK, amount, amount, call_id, call_id, amount, BudgetReservation.State.HELD]
        rows = _fetch(
            _RESERVE_FAST.format(targets=targets_sql), [*targets_params, *hold, timezone.now()], _TARGET_FIELDS
        )
        if rows and rows[0][-1]:
            return 1
        # Not held: several budgets, a warn budget, a period not opened yet, a repeat, no room, or a
        # budget deleted meanwhile. The general path below finds out which and answers accordingly.
        targets = _targets_from(rows, workspace_id)
    else:
        targets = _budget_targets(workspace_id=workspace_id, **scope, now=now)
    if not targets:
        return 0
    fresh = [t.budget for t in targets if t.window is None]
    if fresh:
        # The first call of a period (or of a new budget) opens its window, race-free.
        opened = budget_windows_current(budgets=fresh, now=now)
        for target in targets:
            if target.window is None:
                target.window = opened.get(target.budget.pk)
    windows = sorted(
        ((t.budget, t.window) for t in targets if t.window is not None and t.window.pk is not None),
        key=lambda pair: pair[1].pk,
    )
    with transaction.atomic():
        events: list[BudgetEvent] = []
        held: list[int] = []
        repeat_ruled_out = False
        for budget, window in windows:
            blocking = budget.action == Budget.Action.BLOCK
            # The limit is checked in the UPDATE itself: PostgreSQL re-evaluates this WHERE on the
            # latest row version after waiting for a concurrent writer, so racing calls cannot overspend.
            sql = f"UPDATE {_WINDOWS} SET reserved = reserved + %s WHERE id = %s"
            params: list[Any] = [amount, window.pk]
            if blocking:
                sql += " AND limit_usd >= spent + reserved + %s"
                params.append(amount)
            if not repeat_ruled_out:
                # Idempotency on call_id rides on the first UPDATE instead of costing a statement.
                sql += f" AND NOT EXISTS (SELECT 1 FROM {_RESERVATIONS} WHERE call_id = %s)"
                params.append(call_id)
            if _execute(sql, params):
                repeat_ruled_out = True
            else:
                if not repeat_ruled_out:
                    earlier = _fetch(f"SELECT 1 FROM {_RESERVATIONS} WHERE call_id = %s", [call_id], ())
                    if earlier:
                        return len(earlier)  # reserved before: nothing more (nothing was changed by this call yet)
                    repeat_ruled_out = True
                current = _window_totals(window.pk)
                if current is None:
                    continue  # the budget was deleted meanwhile: nothing to hold
                if blocking:
                    raise _refusal(budget, current, amount)
                continue
            if not blocking:
                current = _window_totals(window.pk)
                if current is not None and current.spent + current.reserved > current.limit_usd:
                    events.append(_event(current, BudgetEvent.Kind.LIMIT_EXCEEDED, call_id))
            held.append(window.pk)
        if held:
            created = timezone.now()
            _execute(
                f"INSERT INTO {_RESERVATIONS} (call_id, window_id, amount, state, created_at) VALUES "
                + ", ".join(["(%s, %s, %s, %s, %s)"] * len(held)),
                [v for window_id in held for v in (call_id, window_id, amount, BudgetReservation.State.HELD, created)],
            )
        _events_record(events)
    return len(held)


def budget_settle(*, call_id: str, actual: Decimal, now: dt.datetime | None = None) -> None:
    """Replace the reservation made for `call_id` by the actual cost. No-op when nothing was reserved.

    The cost booked in the ledger for this call_id wins over `actual` when the row exists (they
    should be equal), so `spent` always matches the ledger. Idempotent: a second settle does nothing.
    A hold already released (by the reaper or the stale sweep) still gets its cost added to `spent`:
    the money was spent, and the books must say so.
    """
    _finish(call_id=call_id, actual=Decimal(actual), now=now or timezone.now())


def budget_release(*, call_id: str, now: dt.datetime | None = None) -> None:
    """Drop the reservation made for `call_id` (the attempt failed before costing, or was abandoned).

    When the ledger already holds a row for this call_id, its cost is settled instead (the attempt
    did cost that much, e.g. a stream cut after usage was reported, or a worker killed between
    booking and settling). Idempotent; a no-op for an unknown call_id.
    """
    _finish(call_id=call_id, actual=None, now=now or timezone.now())


_UNKNOWN: Any = object()


def _in(values: Sequence[Any]) -> str:
    return ", ".join(["%s"] * len(values))


def _holds_sql(states: Sequence[str]) -> str:
    lock = ""
    features = _db().features
    if features.has_select_for_update:  # SQLite serialises writers instead
        lock = " FOR UPDATE OF r" if features.has_select_for_update_of else " FOR UPDATE"
    return (
        f"SELECT r.id, r.window_id, r.amount, r.state, b.alert_threshold_pct FROM {_RESERVATIONS} r "
        f"JOIN {_WINDOWS} w ON w.id = r.window_id JOIN {_BUDGETS} b ON b.id = w.budget_id "
        f"WHERE r.call_id = %s AND r.state IN ({_in(states)}) ORDER BY r.window_id{lock}"
    )


def _finish_holds_sql(states: Sequence[str]) -> str:
    """PostgreSQL: lock this call's holds (in window order) and finish them in one statement,
    answering what _holds_sql answers, with each hold's state from before the update."""
    return (
        f"UPDATE {_RESERVATIONS} AS r SET state = %s, actual = %s, finished_at = %s "
        f"FROM (SELECT id, state FROM {_RESERVATIONS} WHERE call_id = %s AND state IN ({_in(states)}) "
        "ORDER BY window_id FOR UPDATE) AS before WHERE r.id = before.id "
        f"RETURNING r.id, r.window_id, r.amount, before.state, (SELECT b.alert_threshold_pct FROM {_WINDOWS} w "
        f"JOIN {_BUDGETS} b ON b.id = w.budget_id WHERE w.id = r.window_id)"
    )


def _settled_amount(call_id: str, actual: Decimal | None, booked: Decimal | None) -> Decimal | None:
    """What a hold is finished at: the ledger's cost when the call is booked, else `actual`
    (None: released)."""
    if booked is None:
        return actual
    if actual is not None and actual != booked:
        logger.warning("budget_settle_differs_from_ledger", call_id=call_id, actual=str(actual), ledger=str(booked))
    return Decimal(booked)


def _finish(*, call_id: str, actual: Decimal | None, now: dt.datetime, booked: Any = _UNKNOWN) -> None:
    """Settle (`actual` given) or release the holds of `call_id`; `booked` is the call's ledger cost
    when the caller knows it (None: not booked), else it is read here."""
    # No savepoint when usage_record already opened the transaction: nothing here is retried on error.
    with transaction.atomic(savepoint=False):
        states = [BudgetReservation.State.HELD]
        if actual is not None:
            states.append(BudgetReservation.State.RELEASED)
        if booked is not _UNKNOWN and _db().vendor == "postgresql":
            # The usage_record path: everything about the holds is known up front, one statement.
            actual = _settled_amount(call_id, actual, booked)
            state = BudgetReservation.State.RELEASED if actual is None else BudgetReservation.State.SETTLED
            holds = _fetch(_finish_holds_sql(states), [state, actual, now, call_id, *states], _HOLD_FIELDS)
            holds.sort(key=lambda hold: hold[1])
        else:
            holds = _fetch(_holds_sql(states), [call_id, *states], _HOLD_FIELDS)
            if not holds:
                return
            if booked is _UNKNOWN:
                rows = _fetch(f"SELECT cost_usd FROM {_LEDGER} WHERE call_id = %s", [call_id], _BOOKED_FIELDS)
                booked = rows[0][0] if rows else None
            actual = _settled_amount(call_id, actual, booked)
            ids = [hold[0] for hold in holds]
            # The holds (this call's own rows) first, the windows (shared by every call) last: their
            # row locks are held until commit, so as briefly as possible.
            if actual is None:
                _execute(
                    f"UPDATE {_RESERVATIONS} SET state = %s, finished_at = %s WHERE id IN ({_in(ids)})",
                    [BudgetReservation.State.RELEASED, now, *ids],
                )
            else:
                _execute(
                    f"UPDATE {_RESERVATIONS} SET state = %s, actual = %s, finished_at = %s WHERE id IN ({_in(ids)})",
                    [BudgetReservation.State.SETTLED, actual, now, *ids],
                )
        events: list[BudgetEvent] = []
        for _, window_id, amount, state, alert_pct in holds:  # in window order, like every window lock
            if actual is None:
                _execute(f"UPDATE {_WINDOWS} SET reserved = reserved - %s WHERE id = %s", [amount, window_id])
                continue
            was_held = state == BudgetReservation.State.HELD
            _execute(
                f"UPDATE {_WINDOWS} SET reserved = reserved - %s, spent = spent + %s WHERE id = %s",
                [amount if was_held else ZERO, actual, window_id],
            )
            if actual > amount:
                logger.warning(
                    "budget_settled_above_reservation", call_id=call_id, reserved=str(amount), actual=str(actual)
                )
            if alert_pct is not None:
                events.extend(_threshold_events(window_id, call_id))
        _events_record(events)


def budget_release_stale(*, older_than: dt.timedelta | None = None, now: dt.datetime | None = None) -> int:
    """Release every hold older than `older_than` (default settings.KEEL_BUDGET_RESERVATION_TTL_S).

    A hold lives as long as one provider call attempt; one that outlives the longest allowed call
    was left by a worker that died (and whose run the reaper could not attribute). Each is finished
    like budget_release: settled at its ledger cost when the call was booked, else released.
    Safe to run at any time and from several processes. Returns the number of calls finished.
    """
    now = now or timezone.now()
    cutoff = now - (older_than or dt.timedelta(seconds=settings.KEEL_BUDGET_RESERVATION_TTL_S))
    finished = 0
    while True:
        call_ids = list(
            BudgetReservation.objects.filter(state=BudgetReservation.State.HELD, created_at__lt=cutoff)
            .order_by("created_at")
            .values_list("call_id", flat=True)
            .distinct()[:500]
        )
        if not call_ids:
            return finished
        for call_id in dict.fromkeys(call_ids):
            budget_release(call_id=call_id, now=now)
            finished += 1
        if len(call_ids) < 500:
            return finished


# --- Budget events (the future `budget.threshold` webhook) -----------------------------------------


def _event(window: BudgetWindow, kind: str, call_id: str) -> BudgetEvent:
    return BudgetEvent(
        window_id=window.pk,
        kind=kind,
        call_id=call_id,
        spent=window.spent,
        reserved=window.reserved,
        limit_usd=window.limit_usd,
    )


def _threshold_events(window_id: int, call_id: str) -> Iterable[BudgetEvent]:
    window = BudgetWindow.objects.select_related("budget").get(pk=window_id)
    pct = window.budget.alert_threshold_pct
    if pct is not None and window.limit_usd > 0 and window.spent * 100 >= window.limit_usd * pct:
        yield _event(window, BudgetEvent.Kind.THRESHOLD_REACHED, call_id)


def _events_record(events: Sequence[BudgetEvent]) -> None:
    """Store events (once per window and kind) and notify each new one after commit."""
    for event in events:
        if BudgetEvent.objects.filter(window_id=event.window_id, kind=event.kind).exists():
            continue
        try:
            with transaction.atomic():
                event.save()
        except IntegrityError:
            continue  # a concurrent call recorded the same crossing first
        transaction.on_commit(functools.partial(_notify, event.pk))


def _notify(event_id: int) -> None:
    budget_event_notify(event_id=event_id)  # looked up at call time, so the hook can be replaced


def budget_event_notify(*, event_id: int) -> None:
    """HOOK for the `budget.threshold` webhook event: called once per new BudgetEvent, after commit.

    The webhooks app will enqueue the delivery here; until then the event is logged (and listed
    in the admin).
    """
    event = BudgetEvent.objects.select_related("window__budget").filter(pk=event_id).first()
    if event is None:
        return
    budget = event.window.budget
    logger.warning(
        "budget_threshold",
        budget_id=str(budget.pk),
        workspace=str(budget.workspace_id),
        kind=event.kind,
        spent=str(event.spent),
        limit=str(event.limit_usd),
    )
