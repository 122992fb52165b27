"""Reads over the ledger and budgets: the usage summary and the budgets' current windows."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

from django.db.models import Count, F, Q, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from apps.accounts.models import Workspace
from apps.providers.selectors import model_aliases_by_id
from apps.usage.models import NIL_UUID, Budget, BudgetWindow, UsageHourly, UsageRecord
from apps.usage.periods import first_window_start, window_bounds

GroupBy = Literal["day", "workflow", "model", "api_key"]
GROUP_BYS: tuple[str, ...] = ("day", "workflow", "model", "api_key")
ZERO = Decimal("0")
HOUR = dt.timedelta(hours=1)


@dataclass
class UsageTotals:
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = ZERO
    cache_hits: int = 0
    saved_usd: Decimal = ZERO

    def add(self, row: dict[str, Any]) -> None:
        """Add one aggregate row of _rollup_rows or _ledger_rows (same names, NULL for no rows)."""
        self.calls += row["n_calls"] or 0
        self.input_tokens += row["n_input"] or 0
        self.output_tokens += row["n_output"] or 0
        self.cost_usd += row["s_cost"] or ZERO
        self.cache_hits += row["n_hits"] or 0
        self.saved_usd += row["s_saved"] or ZERO


@dataclass
class UsageSummary:
    start: dt.datetime
    end: dt.datetime
    group_by: str
    rows: list[tuple[str | None, UsageTotals]] = field(default_factory=list)
    totals: UsageTotals = field(default_factory=UsageTotals)


def _floor_hour(at: dt.datetime) -> dt.datetime:
    return at.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)


def _ceil_hour(at: dt.datetime) -> dt.datetime:
    floor = _floor_hour(at)
    return floor if floor == at else floor + HOUR


_ROLLUP_GROUP = {
    "day": TruncDate("hour", tzinfo=dt.UTC),
    "workflow": F("workflow_id"),
    "model": F("model_id"),
    "api_key": F("api_key_id"),
}
_LEDGER_GROUP = {
    "day": TruncDate("created_at", tzinfo=dt.UTC),
    "workflow": F("workflow_id"),
    "model": F("model"),
    "api_key": F("api_key"),
}


def _rollup_rows(workspace: Workspace, start: dt.datetime, end: dt.datetime, group_by: str) -> QuerySet[Any]:
    return (
        UsageHourly.objects.filter(workspace=workspace, hour__gte=start, hour__lt=end)
        .annotate(group=_ROLLUP_GROUP[group_by])
        .values("group")
        .annotate(
            # Named apart from the model's own fields, which an annotation may not shadow.
            n_calls=Sum("calls"),
            n_input=Sum("input_tokens"),
            n_output=Sum("output_tokens"),
            s_cost=Sum("cost_usd"),
            n_hits=Sum("calls", filter=Q(cache_hit=True)),
            s_saved=Sum("saved_usd"),
        )
        .order_by()
    )


def _ledger_rows(workspace: Workspace, start: dt.datetime, end: dt.datetime, group_by: str) -> QuerySet[Any]:
    return (
        UsageRecord.objects.filter(workspace=workspace, created_at__gte=start, created_at__lt=end)
        .annotate(group=_LEDGER_GROUP[group_by])
        .values("group")
        .annotate(
            n_calls=Count("id"),
            n_input=Sum("input_tokens"),
            n_output=Sum("output_tokens"),
            s_cost=Sum("cost_usd"),
            n_hits=Count("id", filter=Q(cache_hit=True)),
            s_saved=Sum("saved_usd"),
        )
        .order_by()
    )


def usage_summary(*, workspace: Workspace, start: dt.datetime, end: dt.datetime, group_by: str) -> UsageSummary:
    """Calls, tokens, cost, cache hits and savings in [start, end), grouped; exact to the ledger.

    Whole hours come from the hourly rollup (a few thousand rows for a month however busy the
    workspace); only the partial hours at either edge read the ledger, through its
    (workspace, created_at) index. Keys: the UTC date for `day`, the model's alias for `model`,
    the workflow's or API key's id (None when the calls had none) for the others.
    """
    if group_by not in GROUP_BYS:
        raise ValueError(f"unknown group_by {group_by!r}")
    groups: dict[Any, UsageTotals] = {}

    def merge(rows: QuerySet[Any]) -> None:
        for row in rows:
            key = None if row["group"] == NIL_UUID else row["group"]
            groups.setdefault(key, UsageTotals()).add(row)

    first_hour, last_hour = _ceil_hour(start), _floor_hour(end)
    if first_hour < last_hour:
        merge(_rollup_rows(workspace, first_hour, last_hour, group_by))
        for edge_start, edge_end in ((start, first_hour), (last_hour, end)):
            if edge_start < edge_end:
                merge(_ledger_rows(workspace, edge_start, edge_end, group_by))
    elif start < end:
        merge(_ledger_rows(workspace, start, end, group_by))

    summary = UsageSummary(start=start, end=end, group_by=group_by)
    labels = _labels(workspace, group_by, [k for k in groups if k is not None])
    for key, totals in groups.items():
        summary.rows.append((labels.get(key) if key is not None else None, totals))
        for name in ("calls", "input_tokens", "output_tokens", "cost_usd", "cache_hits", "saved_usd"):
            setattr(summary.totals, name, getattr(summary.totals, name) + getattr(totals, name))
    if group_by == "day":
        summary.rows.sort(key=lambda item: item[0] or "")
    else:
        summary.rows.sort(key=lambda item: (-item[1].cost_usd, -item[1].calls, item[0] or ""))
    return summary


def _labels(workspace: Workspace, group_by: str, keys: Sequence[Any]) -> dict[Any, str]:
    if group_by == "day":
        return {key: key.isoformat() for key in keys}
    if group_by == "model":
        aliases = model_aliases_by_id(workspace_id=workspace.pk, ids=keys)
        return {key: aliases.get(key, str(key)) for key in keys}
    return {key: str(key) for key in keys}


def usage_ledger_totals(records: QuerySet[UsageRecord]) -> dict[str, Any]:
    """Token and cost totals of a set of ledger rows (the admin's filtered changelist)."""
    return records.order_by().aggregate(
        calls=Count("id"),
        sum_input=Sum("input_tokens"),
        sum_output=Sum("output_tokens"),
        sum_cost=Sum("cost_usd"),
        sum_saved=Sum("saved_usd"),
    )


def usage_rollup_totals(buckets: QuerySet[UsageHourly]) -> dict[str, Any]:
    """The same totals from rollup buckets, for filters the rollup can answer."""
    return buckets.order_by().aggregate(
        calls=Sum("calls"),
        sum_input=Sum("input_tokens"),
        sum_output=Sum("output_tokens"),
        sum_cost=Sum("cost_usd"),
        sum_saved=Sum("saved_usd"),
    )


def budget_open_windows(*, budgets: Sequence[Budget], now: dt.datetime | None = None) -> dict[UUID, BudgetWindow]:
    """Each budget's current window (the latest one not yet ended), where one exists."""
    now = now or timezone.now()
    found: dict[UUID, BudgetWindow] = {}
    windows = (
        BudgetWindow.objects.filter(budget__in=[b.pk for b in budgets])
        .filter(Q(end__isnull=True) | Q(end__gt=now))
        .order_by("budget_id", "start")
    )
    for window in windows:
        found[window.budget_id] = window  # ordered by start: the latest wins
    return found


def budget_current_windows(*, budgets: Sequence[Budget], now: dt.datetime | None = None) -> dict[UUID, BudgetWindow]:
    """Each budget's current window; an unsaved empty one where no call has opened it yet."""
    now = now or timezone.now()
    found = budget_open_windows(budgets=budgets, now=now)
    for budget in budgets:
        if budget.pk not in found:
            found[budget.pk] = BudgetWindow(
                budget=budget,
                start=first_window_start(period=budget.period, created_at=budget.created_at, at=now),
                end=window_bounds(budget.period, now)[1],
                limit_usd=budget.limit_usd,
            )
    return found
