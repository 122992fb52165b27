"""Appending to a run's event log, and waking in-process listeners (SSE streams) when it grows.

Sequence numbers come from the run row's `last_event_seq`: `event_append` (a cancel request, the
reaper) takes the next one with one `UPDATE ... RETURNING`; the executor, which holds the run's
lease, numbers its own events and saves `last_event_seq` with them (apps/runs/engine.py). Either
way they are gap-free and ordered, and `(run, seq)` is unique. Listeners are woken after commit: a
stream never announces an event a reader cannot see yet.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from django.db import connection, transaction

from apps.runs.models import Run, RunEvent

RUN_STARTED = "run.started"
STEP_STARTED = "step.started"
STEP_DELTA = "step.delta"
STEP_FINISHED = "step.finished"
RUN_FINISHED = "run.finished"

_listeners: dict[UUID, set[threading.Event]] = defaultdict(set)
_lock = threading.Lock()


def _next_seq(run_id: UUID) -> int:
    pk = Run._meta.pk.get_db_prep_value(run_id, connection)  # type: ignore[union-attr]
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {Run._meta.db_table} SET last_event_seq = last_event_seq + 1 WHERE id = %s RETURNING last_event_seq",
            [pk],
        )
        row = cursor.fetchone()
    if row is None:
        raise Run.DoesNotExist(run_id)
    return int(row[0])


def event_append(*, run_id: UUID, workspace_id: UUID, type: str, data: dict[str, Any]) -> RunEvent:
    with transaction.atomic():
        event = RunEvent.objects.create(
            workspace_id=workspace_id, run_id=run_id, seq=_next_seq(run_id), type=type, data=data
        )
        transaction.on_commit(lambda: wake(run_id))
    return event


def wake(run_id: UUID) -> None:
    """Wake this process's readers of the run (call once the events are committed)."""
    with _lock:
        waiters = list(_listeners.get(run_id, ()))
    for waiter in waiters:
        waiter.set()


def has_listeners(run_id: UUID) -> bool:
    """Whether a reader in this process waits for the run's events (a stream)."""
    with _lock:
        return run_id in _listeners


@contextmanager
def event_listener(run_id: UUID) -> Iterator[threading.Event]:
    """An Event set whenever this process appends an event to the run (others are found by polling)."""
    waiter = threading.Event()
    with _lock:
        _listeners[run_id].add(waiter)
    try:
        yield waiter
    finally:
        with _lock:
            _listeners[run_id].discard(waiter)
            if not _listeners[run_id]:
                del _listeners[run_id]
