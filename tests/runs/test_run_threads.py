"""The threads a process runs runs with: the run pool (sync and stream runs in the web process) and
the one heartbeat thread that stamps every run the process executes."""

from __future__ import annotations

import threading
from datetime import timedelta
from uuid import uuid4

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.accounts.models import Role
from apps.accounts.tenancy import Actor
from apps.runs.heartbeat import Heartbeats, Lease
from apps.runs.models import Run
from apps.runs.pool import Pool
from apps.runs.services import run_start

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_pool_never_makes_a_run_wait_for_a_thread_and_reuses_idle_ones():
    pool = Pool(idle_s=30)
    together = threading.Barrier(6, timeout=10)
    threads: set[int] = set()

    def task() -> int:
        threads.add(threading.get_ident())
        together.wait()  # only passes if all six execute at the same time
        return threading.get_ident()

    first = [pool.submit(task) for _ in range(5)]
    together.wait()
    assert all(t.wait(10) for t in first)
    assert len(threads) == 5

    # The same five threads, now idle, take the next five tasks: no new thread.
    together.reset()
    again = [pool.submit(task) for _ in range(5)]
    together.wait()
    assert all(t.wait(10) for t in again)
    assert {t.result for t in again} == {t.result for t in first}
    assert pool._threads == 5


def test_a_pool_thread_reuses_database_connections_from_run_to_run():
    pool = Pool(idle_s=30)

    def backend_pid() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            return int(cursor.fetchone()[0])

    def run_task() -> int:
        task = pool.submit(backend_pid)
        assert task.wait(10)
        return int(task.result)

    run_task()
    if connection.pool is None:  # KEEL_DB_POOL_MAX_SIZE=0: the thread keeps its own connection
        pids = [run_task() for _ in range(2)]
        assert len(set(pids)) == 1, "each task reconnected"
    else:
        # Each task borrows one of the process's pooled connections (any of them) and gives it back.
        opened = connection.pool.get_stats().get("connections_num", 0)
        for _ in range(3):
            run_task()
        assert connection.pool.get_stats().get("connections_num", 0) == opened, "a task opened a connection"


def test_an_idle_pool_thread_ends_and_closes_its_connection():
    pool = Pool(idle_s=0.2)
    task = pool.submit(lambda: threading.current_thread())
    assert task.wait(10)
    task.result.join(timeout=5)
    assert not task.result.is_alive() and pool._threads == 0


@pytest.fixture
def two_running_runs(workspace, shout) -> list[Run]:
    actor = Actor(workspace=workspace, role=Role.OWNER)
    runs = [
        run_start(workflow=shout, actor=actor, input={"text": str(n)}, mode="sync", claim=True).run for n in range(2)
    ]
    long_ago = timezone.now() - timedelta(minutes=5)
    Run.objects.filter(pk__in=[r.pk for r in runs]).update(heartbeat_at=long_ago)
    return runs


def test_one_statement_stamps_every_held_run(two_running_runs):
    heartbeats = Heartbeats()  # held directly: no thread of its own beating meanwhile
    for run in two_running_runs:
        heartbeats._held.add(lease_of(run))
    with CaptureQueriesContext(connection) as statements:
        heartbeats.beat()
    assert len(statements) == 1 and statements[0]["sql"].startswith("UPDATE")
    fresh = Run.objects.filter(pk__in=[r.pk for r in two_running_runs])
    assert all(timezone.now() - run.heartbeat_at < timedelta(seconds=5) for run in fresh)
    assert not any(lease.lost for lease in heartbeats.held())


def test_a_beat_leaves_a_run_taken_over_alone_and_marks_its_lease_lost(two_running_runs):
    mine, taken = two_running_runs
    heartbeats = Heartbeats()
    leases = [lease_of(run) for run in two_running_runs]
    heartbeats._held.update(leases)
    Run.objects.filter(pk=taken.pk).update(lease_token=uuid4())  # the reaper gave it to another executor
    before = Run.objects.get(pk=taken.pk).heartbeat_at

    heartbeats.beat()

    assert Run.objects.get(pk=taken.pk).heartbeat_at == before
    assert timezone.now() - Run.objects.get(pk=mine.pk).heartbeat_at < timedelta(seconds=5)
    assert [lease.lost for lease in leases] == [False, True]
    assert heartbeats.held() == [leases[0]]


def lease_of(run: Run) -> Lease:
    return Lease(run_id=run.pk, token=run.lease_token)
