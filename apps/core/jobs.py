"""Background jobs: enqueue after commit, carry the log context into workers, run periodic jobs.

- `enqueue_after_commit(...)`: a job is enqueued only once the transaction that made its data
  commits (a worker can never fetch a row that is not there yet). If Redis refuses the enqueue, the
  failure is logged and the caller's data stays committed: whatever owns that data must be able to
  find it again (the run reaper re-enqueues queued runs whose job is missing).
- `KeelJob` (RQ `JOB_CLASS`): the `request_id`, `workspace`, `run_id` and `trace_id` bound when the
  job was enqueued travel in `job.meta["log_context"]` and are bound again around the job in the
  worker, so one run's web and worker log lines join up.
- `KeelWorker` (RQ `WORKER_CLASS`): executes jobs in its own process (no work horse per job), and
  also enqueues the registered periodic jobs. Each worker ticks at most every second; a Redis
  `SET NX PX` per job and period lets exactly one worker enqueue it per period, whichever workers
  are alive. Unlike RQ's scheduler lock (which a killed scheduler holds for a minute or more), this
  keeps the period even right after a worker is lost. `KeelForkWorker` is the same on RQ's forking
  worker (KEEL_WORKER_FORK=1).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import django_rq
import structlog
from django.db import close_old_connections, transaction
from redis import Redis
from rq.job import Job
from rq.worker import SimpleWorker, Worker

logger = structlog.get_logger(__name__)

LOG_CONTEXT_KEYS = ("request_id", "workspace", "run_id", "trace_id")


def current_log_context() -> dict[str, Any]:
    bound = structlog.contextvars.get_contextvars()
    return {key: bound[key] for key in LOG_CONTEXT_KEYS if bound.get(key)}


def enqueue(
    func: Callable[..., Any] | str,
    *args: Any,
    queue: str = "default",
    job_id: str | None = None,
    job_timeout: int | None = None,
    at_front: bool = False,
    log_context: dict[str, Any] | None = None,
) -> Job | None:
    """Enqueue now, with the current log context in job.meta. Returns None (and logs) if Redis refuses."""
    context = {**current_log_context(), **(log_context or {})}
    try:
        return django_rq.get_queue(queue, commit_mode="auto").enqueue(
            func,
            *args,
            job_id=job_id,
            job_timeout=job_timeout,
            at_front=at_front,
            meta={"log_context": context},
        )
    except Exception:  # noqa: BLE001 - the data is committed; its owner recovers a lost enqueue
        logger.exception("job_enqueue_failed", job_id=job_id, queue=queue)
        return None


def enqueue_after_commit(
    func: Callable[..., Any] | str,
    *args: Any,
    queue: str = "default",
    job_id: str | None = None,
    job_timeout: int | None = None,
    at_front: bool = False,
    log_context: dict[str, Any] | None = None,
) -> None:
    """Enqueue once the current transaction commits (at once when there is none)."""
    context = {**current_log_context(), **(log_context or {})}
    transaction.on_commit(
        lambda: enqueue(
            func, *args, queue=queue, job_id=job_id, job_timeout=job_timeout, at_front=at_front, log_context=context
        )
    )


class KeelJob(Job):
    def perform(self) -> Any:
        context = dict((self.meta or {}).get("log_context") or {})
        with structlog.contextvars.bound_contextvars(**context, job_id=self.id):
            return super().perform()


@dataclass(frozen=True)
class PeriodicJob:
    name: str
    func: str  # import path of a job function without arguments
    every_s: float
    queue: str


_PERIODIC: dict[str, PeriodicJob] = {}


def periodic_register(*, name: str, func: str, every_s: float, queue: str = "default") -> None:
    """Have workers serving `queue` enqueue `func` every `every_s` seconds (apps call this in ready())."""
    _PERIODIC[name] = PeriodicJob(name=name, func=func, every_s=every_s, queue=queue)


def periodic_jobs() -> list[PeriodicJob]:
    return list(_PERIODIC.values())


def periodic_tick(*, connection: Redis, queue_names: Iterable[str]) -> list[str]:
    """Enqueue each periodic job of these queues whose period has no enqueue yet. Returns job ids.

    A job whose previous enqueue still waits in the queue (every worker busy) is not enqueued again.
    """
    served = set(queue_names)
    enqueued = []
    for job in _PERIODIC.values():
        if job.queue not in served:
            continue
        period_ms = max(1, int(job.every_s * 1000))
        if not connection.set(f"keel:periodic:{job.name}", "1", nx=True, px=period_ms):
            continue
        last_key = f"keel:periodic:{job.name}:last"
        last = connection.get(last_key)
        if last is not None and connection.lpos(f"rq:queue:{job.queue}", last) is not None:
            continue  # the previous one still waits in the queue
        # At the front: a backlog of long runs must not delay the reaper that rescues them.
        created = enqueue(job.func, queue=job.queue, job_id=f"periodic-{job.name}-{time.time_ns()}", at_front=True)
        if created is not None:
            connection.set(last_key, created.id, ex=max(60, int(job.every_s * 10)))
            enqueued.append(created.id)
    return enqueued


class _PeriodicTicks:
    """Keel's periodic jobs from a worker (see the module docstring): a mixin for RQ worker classes."""

    TICK_EVERY_S = 1.0
    _burst = False
    _last_tick = 0.0

    def _periodic_here(self) -> list[PeriodicJob]:
        if not getattr(self, "queues", None):  # asked during Worker.__init__, before queues are set
            return []
        names = set(self.queue_names())  # type: ignore[attr-defined]
        return [job for job in _PERIODIC.values() if job.queue in names]

    @property
    def dequeue_timeout(self) -> int:
        timeout = super().dequeue_timeout  # type: ignore[misc]
        jobs = self._periodic_here()
        if jobs:
            # Wake often enough, when idle, to keep the periods.
            timeout = min(timeout, max(1, int(min(job.every_s for job in jobs))))
        return int(timeout)

    def work(self, burst: bool = False, *args: Any, **kwargs: Any) -> bool:
        self._burst = burst
        return bool(super().work(burst, *args, **kwargs))  # type: ignore[misc]

    def heartbeat(self, *args: Any, **kwargs: Any) -> None:
        super().heartbeat(*args, **kwargs)  # type: ignore[misc]
        self._tick()

    def _tick(self) -> None:
        now = time.monotonic()
        if self._burst or now - self._last_tick < self.TICK_EVERY_S:
            return
        self._last_tick = now
        try:
            periodic_tick(connection=self.connection, queue_names=self.queue_names())  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - a failed tick must not stop the worker; the next one retries
            logger.exception("periodic_tick_failed")


class KeelWorker(_PeriodicTicks, SimpleWorker):
    """An RQ worker that executes each job in its own process, and ticks Keel's periodic jobs.

    RQ's default forks a work horse per job: tens of milliseconds per job, and a fresh database
    connection and Django state each time. Here jobs run in the worker's main thread (RQ's
    SimpleWorker), with its database connection reused between jobs (CONN_MAX_AGE, health checks)
    and dropped when broken or too old, as around a request. What the fork protected against is
    covered elsewhere: a run whose worker dies (killed, crashed) is resumed by the reaper; a job
    past its timeout is stopped by RQ's SIGALRM death penalty in this process; a warm shutdown
    finishes the current job. While a job executes, a thread keeps ticking the periodic jobs (a
    busy worker's turn must not lapse). KEEL_WORKER_FORK=1 selects KeelForkWorker instead.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._busy = threading.Event()
        self._ticker: threading.Thread | None = None

    def execute_job(self, job: Job, queue: Any) -> None:
        if self._ticker is None and not self._burst:
            self._ticker = threading.Thread(target=self._tick_while_busy, name="keel-periodic-ticks", daemon=True)
            self._ticker.start()
        close_old_connections()
        self._busy.set()
        try:
            super().execute_job(job, queue)
        finally:
            self._busy.clear()
            close_old_connections()

    def _tick_while_busy(self) -> None:
        while True:
            self._busy.wait()
            time.sleep(self.TICK_EVERY_S)
            if self._busy.is_set():
                self._tick()


class KeelForkWorker(_PeriodicTicks, Worker):
    """RQ's forking worker (a work horse per job) with Keel's periodic jobs: KEEL_WORKER_FORK=1."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._periodic_here():
            # The worker wakes at this interval while its horse works: often enough to keep the periods.
            period = max(1, int(min(job.every_s for job in self._periodic_here())))
            self.job_monitoring_interval = min(self.job_monitoring_interval, period)
