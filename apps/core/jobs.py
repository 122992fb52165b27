"""Background jobs: enqueue after commit, carry the log context into workers, run periodic jobs.

- `enqueue_after_commit(...)`: a job is enqueued only once the transaction that made its data
  commits (a worker can never fetch a row that is not there yet). If Redis refuses the enqueue, the
  failure is logged and the caller's data stays committed: whatever owns that data must be able to
  find it again (the run reaper re-enqueues queued runs whose job is missing).
- `KeelJob` (RQ `JOB_CLASS`): the `request_id`, `workspace`, `run_id` and `trace_id` bound when the
  job was enqueued travel in `job.meta["log_context"]` and are bound again around the job in the
  worker, so one run's web and worker log lines join up.
- `enqueue(...)` sends a job in one Redis transaction; `KeelWorker` records a dequeued job's start
  in one (RQ: three heartbeat commands and two transactions), keeping RQ's registries as RQ does.
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
from rq.executions import Execution
from rq.job import Job
from rq.utils import now as rq_now
from rq.worker import SimpleWorker, Worker
from rq.worker.base import WorkerStatus

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
    options = {"job_id": job_id, "job_timeout": job_timeout, "at_front": at_front, "meta": {"log_context": context}}
    try:
        rq_queue = django_rq.get_queue(queue, commit_mode="auto")
        if not rq_queue.is_async:  # executed at once, in enqueue(): there is nothing to batch
            return rq_queue.enqueue(func, *args, **options)  # type: ignore[type-var]  # rq takes either
        # One round trip (MULTI ... EXEC) instead of RQ's two (SADD of the queue name, then the job
        # and its push): the enqueue is on the path between a run's insert and its start.
        with rq_queue.connection.pipeline() as pipeline:
            job = rq_queue.enqueue(func, *args, pipeline=pipeline, **options)  # type: ignore[type-var]
            pipeline.execute()
        return job
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
        if last is not None and connection.lpos(f"rq:queue:{job.queue}", last) is not None:  # type: ignore[arg-type]
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
    SimpleWorker), with its database connection reused between jobs (on PostgreSQL borrowed from
    the process's pool, apps/core/db.py; otherwise kept per CONN_MAX_AGE) and dropped when broken,
    as around a request. What the fork protected against is
    covered elsewhere: a run whose worker dies (killed, crashed) is resumed by the reaper; a job
    past its timeout is stopped by RQ's SIGALRM death penalty in this process; a warm shutdown
    finishes the current job. While a job executes, a thread keeps ticking the periodic jobs (a
    busy worker's turn must not lapse). KEEL_WORKER_FORK=1 selects KeelForkWorker instead.
    """

    # A default heartbeat this soon after the previous one is skipped (see heartbeat()).
    HEARTBEAT_REPEAT_S = 1.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._busy = threading.Event()
        self._ticker: threading.Thread | None = None
        self._dequeued = False  # a job was dequeued and prepare_execution() has not run yet
        self._prepared_job_id: str | None = None
        self._last_beat: float | None = None  # monotonic time of the last default heartbeat sent

    # --- Redis round trips between a dequeue and the job's start --------------------------------
    # RQ's SimpleWorker, from BLMOVE to the job function: fetch the job, a heartbeat (HSET, EXPIRE,
    # EXPIRE: three round trips), prepare_execution (a pipeline), then in perform_job
    # prepare_job_execution (another pipeline, whose first command is the same heartbeat). Here the
    # two pipelines are one transaction and the heartbeat goes with it: fetch + one round trip.
    # The same keys are written in the same order, so the registries (started, intermediate
    # queue, executions) and RQ's failure handling are as RQ keeps them.

    def reorder_queues(self, reference_queue: Any) -> None:
        # RQ calls this once per dequeued job, just before the heartbeat that follows the dequeue.
        self._dequeued = True
        super().reorder_queues(reference_queue)

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if pipeline is not None:
            self._last_beat = None  # another TTL may be set: the next default heartbeat is sent
            super().heartbeat(timeout, pipeline=pipeline)
            return
        now = time.monotonic()
        dequeued, self._dequeued = self._dequeued, False
        if timeout is None and (
            # The job just dequeued is about to be prepared, with a heartbeat in that round trip.
            dequeued
            # The previous one (after a job, then again before the next dequeue) set the same TTL:
            # a repeat would move a minutes-long expiry by less than a second.
            or (self._last_beat is not None and now - self._last_beat < self.HEARTBEAT_REPEAT_S)
        ):
            self._tick()
            return
        with self.connection.pipeline(transaction=False) as batch:  # one round trip, not three
            super().heartbeat(timeout, pipeline=batch)
            batch.execute()
        self._last_beat = now if timeout is None else None

    def set_state(self, state: str, pipeline: Any = None) -> None:
        # Only this worker writes its state; after a job it was set to idle twice in a row.
        if pipeline is None and state == self.get_state():
            return
        super().set_state(state, pipeline=pipeline)

    def prepare_execution(self, job: Job) -> Execution:
        """RQ's prepare_execution and prepare_job_execution as one transaction."""
        with self.connection.pipeline() as pipeline:
            ttl = self.get_heartbeat_ttl(job)
            execution = Execution.create(job, ttl, pipeline=pipeline, worker_name=self.name)
            self.executions[execution.id] = execution
            self.set_state(WorkerStatus.BUSY, pipeline=pipeline)
            # What prepare_job_execution writes (perform_job passes it this condition).
            self.heartbeat(ttl, pipeline=pipeline)
            job.heartbeat(rq_now(), ttl, pipeline=pipeline)
            job.prepare_for_execution(self.name, pipeline=pipeline)
            pipeline.persist(job.key)
            if len(self.queues) == 1:
                queue = self.queue_class(job.origin, connection=self.connection)
                pipeline.lrem(queue.intermediate_queue_key, 1, job.id)
            pipeline.execute()
        self._prepared_job_id = job.id
        return execution

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        if self._prepared_job_id != job.id:  # not prepared by prepare_execution(): as RQ does
            super().prepare_job_execution(job, remove_from_intermediate_queue)
            return
        self._prepared_job_id = None
        self.procline(f"Processing {job.func_name} from {job.origin} since {time.time()}")

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
