"""Long-lived threads that execute sync and stream runs in the web process.

A thread per run would open (and close) a PostgreSQL connection per run, since Django's
connections belong to threads. These threads outlive their runs, so their connections are reused
like a request thread's: on PostgreSQL each run borrows one from the process's bounded connection
pool and gives it back when it ends (KEEL_DB_POOL_MAX_SIZE, apps/core/db.py); without the pool a
thread keeps its own (CONN_MAX_AGE, health checks). The pool never makes a run wait for a thread:
when no thread is idle a new one starts, so the number of runs in flight is bounded by the requests
that start them, never by this pool. A thread idle for IDLE_S closes its connection and ends.
"""

from __future__ import annotations

import contextvars
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

import structlog
from django.db import close_old_connections, connection

logger = structlog.get_logger(__name__)

IDLE_S = 60.0


class Task:
    """A submitted callable; `wait()` until it has returned (`result`) or raised (the pool logs it)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.context = contextvars.copy_context()  # request_id and friends stay on the run's log lines
        self.done = threading.Event()
        self.result: Any = None

    def wait(self, timeout: float | None) -> bool:
        return self.done.wait(timeout)


class Pool:
    def __init__(self, idle_s: float = IDLE_S) -> None:
        self.idle_s = idle_s
        self._lock = threading.Lock()
        self._tasks: queue.SimpleQueue[Task] = queue.SimpleQueue()
        self._idle = 0  # idle threads no submitted task has claimed yet
        self._threads = 0
        self._pid = os.getpid()

    def submit(self, fn: Callable[[], Any]) -> Task:
        task = Task(fn)
        with self._lock:
            if self._pid != os.getpid():  # a forked child has none of its parent's threads
                self._pid, self._idle, self._threads, self._tasks = os.getpid(), 0, 0, queue.SimpleQueue()
            self._tasks.put(task)
            if self._idle > 0:
                self._idle -= 1  # that thread is this task's
                return task
            self._threads += 1
        threading.Thread(target=self._work, name=f"keel-run-{self._threads}", daemon=True).start()
        return task

    def _work(self) -> None:
        try:
            while True:
                try:
                    task = self._tasks.get(timeout=self.idle_s)
                except queue.Empty:
                    with self._lock:
                        if self._idle > 0:  # nobody claimed this thread meanwhile: retire it
                            self._idle -= 1
                            self._threads -= 1
                            return
                    continue  # a task is on its way to this thread
                self._run(task)
                with self._lock:
                    self._idle += 1
        finally:
            connection.close()

    def _run(self, task: Task) -> None:
        # As around a request: drop a connection that is broken or past CONN_MAX_AGE.
        close_old_connections()
        try:
            task.result = task.context.run(task.fn)
        except Exception:  # noqa: BLE001 - the run records its own failure; this is the last resort log
            logger.exception("run_pool_task_error")
        finally:
            close_old_connections()
            task.done.set()


pool = Pool()
