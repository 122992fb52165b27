"""Liveness and readiness. Readiness names each failing check so an operator sees which part is down."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor

from apps.core.redis import get_redis

_migrations_applied = False


def check_database() -> None:
    with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
        cursor.execute("SELECT 1")


def check_redis() -> None:
    if settings.REDIS_URL:
        get_redis().ping()


def check_migrations() -> None:
    # Once applied they stay applied for the life of this process; skip the graph load after that.
    global _migrations_applied
    if _migrations_applied:
        return
    connection = connections[DEFAULT_DB_ALIAS]
    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    if plan:
        raise RuntimeError(f"{len(plan)} unapplied migration(s), first {plan[0][0].app_label}.{plan[0][0].name}")
    _migrations_applied = True


READINESS_CHECKS: dict[str, Callable[[], None]] = {
    "database": check_database,
    "redis": check_redis,
    "migrations": check_migrations,
}


def readiness() -> tuple[bool, dict[str, dict[str, str]]]:
    results: dict[str, dict[str, str]] = {}
    ready = True
    for name, check in READINESS_CHECKS.items():
        if name == "migrations" and results.get("database", {}).get("status") == "fail":
            results[name] = {"status": "skipped", "detail": "database unreachable"}
            continue
        try:
            check()
        except Exception as exc:  # noqa: BLE001 - any failure means not ready; say which and why
            ready = False
            results[name] = {"status": "fail", "detail": f"{type(exc).__name__}: {exc}"[:300]}
        else:
            results[name] = {"status": "ok"}
    return ready, results
