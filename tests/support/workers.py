"""Real `python manage.py rqworker` processes for integration tests, against the test database.

    @pytest.mark.django_db(transaction=True)        # workers only see committed rows
    def test_async_run(rq_workers, ...):
        worker = rq_workers.start("runs", env={"KEEL_RUN_STALE_S": "3"})
        ...
        worker.kill()                                # SIGKILL worker, work horse, scheduler: a lost machine
        rq_workers.start("runs")                     # a new worker on the same queues

Each worker runs with this test process's REDIS_URL, `DATABASE_URL` pointing at the *test*
database, `LOG_FORMAT=json`, and its output in `worker.log`. The fixture stops every worker (and
any work horse it left) before the test database is flushed. Request `transactional_db` (or
`django_db(transaction=True)`) in the test, since a worker cannot see an uncommitted test
transaction; the fixture requests it too, so it is torn down first.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from django.conf import settings
from django.db import connection

from apps.core.redis import get_redis
from tests.support.processes import PYTHON, ROOT, child_env

# Recovery periods short enough for crash tests (the documented resumption bound is
# STALE_S + INTERVAL_S, plus one heartbeat): the environment of workers that should resume quickly.
HEARTBEAT_S, STALE_S, INTERVAL_S = 0.5, 3.0, 1.0
QUICK_RECOVERY_ENV = {
    "KEEL_RUN_HEARTBEAT_S": str(HEARTBEAT_S),
    "KEEL_RUN_STALE_S": str(STALE_S),
    "KEEL_REAPER_INTERVAL_S": str(INTERVAL_S),
}


def worker_database_url() -> str:
    """The URL of the database this test session uses (pytest-django's test_<name>)."""
    params = connection.settings_dict
    user = quote(params.get("USER") or "postgres")
    password = f":{quote(params['PASSWORD'])}" if params.get("PASSWORD") else ""
    return (
        f"postgres://{user}{password}@{params.get('HOST') or '127.0.0.1'}:{params.get('PORT') or 5432}/{params['NAME']}"
    )


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (RQ's work horse runs in its own process group, so killpg misses it)."""
    out, todo = [], [pid]
    while todo:
        for child in _children(todo.pop()):
            out.append(child)
            todo.append(child)
    return out


@dataclass
class RqWorker:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    _out: Any = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except ValueError:
                    continue
        return events

    def horse_pids(self) -> list[int]:
        return descendants(self.proc.pid)

    def kill(self) -> None:
        """SIGKILL the worker and everything it started, at once: nothing gets to clean up."""
        for pid in [*self.horse_pids(), self.proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)
        self._close()

    def stop(self, timeout: float = 15) -> None:
        if self.proc.poll() is None:
            leftovers = self.horse_pids()
            self.proc.send_signal(signal.SIGTERM)  # warm shutdown: finish the current job
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
            for pid in [*leftovers, *self.horse_pids(), self.proc.pid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if self.proc.poll() is None:
                self.proc.wait(timeout=10)
        self._close()

    def _close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


@dataclass
class RqWorkers:
    tmp_path: Path
    workers: list[RqWorker] = field(default_factory=list)

    def start(
        self,
        *queues: str,
        env: Mapping[str, str] | None = None,
        with_scheduler: bool = False,
        burst: bool = False,
        wait: bool = True,
    ) -> RqWorker:
        name = f"test-{uuid.uuid4().hex[:10]}"
        log = self.tmp_path / f"{name}.log"
        argv = [PYTHON, "manage.py", "rqworker", *(queues or ("runs",)), "--name", name]
        if with_scheduler:
            argv.append("--with-scheduler")
        if burst:
            argv.append("--burst")
        overrides = {
            "DEBUG": "1",
            "DATABASE_URL": worker_database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "LOG_FORMAT": "json",
            **(env or {}),
        }
        out = open(log, "wb")  # noqa: SIM115 - closed by stop()/kill()
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=child_env(overrides), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        worker = RqWorker(name=name, proc=proc, log=log, _out=out)
        self.workers.append(worker)
        if wait:
            deadline = time.monotonic() + 60
            while not get_redis().exists(f"rq:worker:{name}"):
                if proc.poll() is not None:
                    raise RuntimeError(f"rqworker exited with {proc.returncode}:\n{worker.log_text()[-3000:]}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"rqworker did not register in 60 s:\n{worker.log_text()[-3000:]}")
                time.sleep(0.1)
        return worker

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.stop()


@pytest.fixture
def rq_workers(transactional_db: None, tmp_path: Path) -> Iterator[RqWorkers]:
    if not settings.REDIS_URL:
        pytest.fail("worker tests need REDIS_URL (a real Redis)")
    workers = RqWorkers(tmp_path=tmp_path)
    try:
        yield workers
    finally:
        workers.stop_all()
