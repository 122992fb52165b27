"""Writes to the usage ledger and to budgets.

The gateway (apps/providers) calls, around every provider call attempt:
    budget_reserve(...)   before sending: worst-case cost; raises BudgetExceeded when a blocking
                          budget has no room (then no request is sent)
    usage_record(...)     after: the ledger row of the attempt (idempotent on call_id)
    budget_settle(...)    after: turn the reservation into the actual cost
    budget_release(...)   when the attempt ends without a cost to settle (or on crash recovery)
These take plain ids so that `usage` depends on nothing but accounts and providers' tables.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from uuid import UUID

from apps.usage.models import UsageRecord


def usage_record(*, call_id: str, **fields: Any) -> UsageRecord:
    """Book one provider call attempt. Idempotent on `call_id`: a repeat returns the first row unchanged."""
    record, _ = UsageRecord.objects.get_or_create(call_id=call_id, defaults=fields)
    return record


def budget_reserve(
    *,
    call_id: str,
    amount: Decimal,
    workspace_id: UUID,
    workflow_id: UUID | None = None,
    api_key_id: UUID | None = None,
    user_id: UUID | None = None,
) -> None:
    """Reserve `amount` in every budget window that applies to this call, or raise BudgetExceeded.

    Budgets are not built yet (issue #5): no budget applies, so there is nothing to reserve.
    """


def budget_settle(*, call_id: str, actual: Decimal) -> None:
    """Replace the reservation made for `call_id` by the actual cost. No-op when nothing was reserved."""


def budget_release(*, call_id: str) -> None:
    """Drop the reservation made for `call_id` (the attempt failed before costing, or was abandoned)."""
