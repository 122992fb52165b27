"""One heartbeat thread per process, stamping `heartbeat_at` for every run this process executes.

A run's executor `hold()`s its lease here for as long as it executes. Every KEEL_RUN_HEARTBEAT_S
the thread stamps all held runs in one `UPDATE ... WHERE (id, lease_token) IN (...)`, conditional
on each run's own lease token, so a run the reaper has taken over is never stamped again; such a
lease is marked `lost` and its executor stops at its next check.

Why one thread and one statement rather than a thread per run: a thread per run costs a thread
start and a database connection per run (Django connections are per thread), and N statements
every period where one does. Missed beats are what the reaper watches for, so a failed beat is
logged and retried at the next period; it never stops a run.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from functools import reduce
from operator import or_
from uuid import UUID

import structlog
from django.conf import settings
from django.db import DatabaseError, connection
from django.db.models import Q
from django.utils import timezone

from apps.core.db import connection_release
from apps.runs.models import Run

logger = structlog.get_logger(__name__)


@dataclass(eq=False)
class Lease:
    """A run this process executes. `lost` turns true once a beat finds the lease gone."""

    run_id: UUID
    token: UUID
    lost: bool = field(default=False)


class Heartbeats:
    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._held: set[Lease] = set()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def hold(self, *, run_id: UUID, token: UUID) -> Lease:
        lease = Lease(run_id=run_id, token=token)
        with self._lock:
            self._ensure_thread()
            self._held.add(lease)
            self._lock.notify_all()
        return lease

    def release(self, lease: Lease) -> None:
        with self._lock:
            self._held.discard(lease)

    def held(self) -> list[Lease]:
        with self._lock:
            return list(self._held)

    def _ensure_thread(self) -> None:
        # A forked child (an RQ work horse) inherits the parent's state but not its threads.
        if self._pid != os.getpid():
            self._pid, self._thread, self._held = os.getpid(), None, set()
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="keel-run-heartbeat", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._held:
                    # Nothing to stamp: give the connection back until runs come again.
                    connection.close()
                    self._lock.wait()
            time.sleep(settings.KEEL_RUN_HEARTBEAT_S)  # read each period: tests change it per process
            self.beat()
            connection_release()  # pooled: the run threads may need it until the next beat

    def beat(self) -> None:
        """Stamp every held run now (the thread calls this each period)."""
        leases = self.held()
        if not leases:
            return
        mine = reduce(or_, (Q(pk=lease.run_id, lease_token=lease.token) for lease in leases))
        try:
            stamped = Run.objects.filter(mine, status=Run.Status.RUNNING).update(heartbeat_at=timezone.now())
            if stamped == len(leases):
                return
            alive = set(Run.objects.filter(mine, status=Run.Status.RUNNING).values_list("pk", flat=True))
        except DatabaseError:
            logger.warning("run_heartbeat_failed", runs=len(leases), exc_info=True)
            connection.close()
            return
        for lease in leases:
            if lease.run_id not in alive:
                lease.lost = True
                self.release(lease)


heartbeats = Heartbeats()
