"""RQ jobs of the usage app: each calls one service."""

from __future__ import annotations

from apps.usage.services import budget_release_stale


def release_stale_reservations_job() -> int:
    return budget_release_stale()
