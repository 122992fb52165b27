"""Budget periods as UTC calendar windows."""

from __future__ import annotations

import datetime as dt


def window_bounds(period: str, at: dt.datetime) -> tuple[dt.datetime | None, dt.datetime | None]:
    """The calendar window [start, end) of `period` containing `at`, in UTC; `total` has neither bound."""
    at = at.astimezone(dt.UTC)
    if period == "day":
        start = at.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + dt.timedelta(days=1)
    if period == "month":
        start = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        following = (
            start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
        )
        return start, following
    if period == "total":
        return None, None
    raise ValueError(f"unknown budget period {period!r}")


def first_window_start(*, period: str, created_at: dt.datetime, at: dt.datetime) -> dt.datetime:
    """Where a budget's window containing `at` starts: its calendar start, but never before the
    budget existed (a budget counts spending from its creation)."""
    start, _ = window_bounds(period, at)
    return created_at if start is None or created_at > start else start
