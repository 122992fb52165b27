"""Writes to the usage ledger (and, later, budgets)."""

from __future__ import annotations

from typing import Any

from apps.usage.models import UsageRecord


def usage_record(*, call_id: str, **fields: Any) -> UsageRecord:
    """Book one provider call attempt. Idempotent on `call_id`: a repeat returns the first row unchanged."""
    record, _ = UsageRecord.objects.get_or_create(call_id=call_id, defaults=fields)
    return record
