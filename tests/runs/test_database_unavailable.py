"""An execution that cannot get a database connection leaves its run to the reaper: the run is
resumed, never failed for it (docs/operations.md, "Database connections")."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from apps.accounts.models import Role
from apps.accounts.tenancy import Actor
from apps.runs.models import Run
from apps.runs.services import run_execute, run_execute_in_thread, run_start, runs_reap

pytestmark = pytest.mark.django_db(transaction=True)


@contextmanager
def pool_of(*, max_size: int, timeout_s: float) -> Iterator[None]:
    """This process's connection pool, for the block, at most `max_size` connections, each waited
    for at most `timeout_s` (KEEL_DB_POOL_MAX_SIZE / KEEL_DB_POOL_TIMEOUT_S)."""
    options = connection.settings_dict["OPTIONS"].get("pool")
    assert options, "the test database is used through the pool (KEEL_DB_POOL_MAX_SIZE > 0)"
    saved = dict(options)
    connection.close()
    connection.close_pool()
    options.update(max_size=max_size, timeout=timeout_s)
    try:
        yield
    finally:
        connection.close()
        connection.close_pool()
        options.clear()
        options.update(saved)


@contextmanager
def connections_taken(count: int) -> Iterator[None]:
    """`count` other threads each hold a pooled connection until the block ends."""
    taken, done = threading.Barrier(count + 1, timeout=10), threading.Event()

    def hold() -> None:
        connection.ensure_connection()
        taken.wait()
        done.wait(30)
        connection.close()  # back to the pool

    threads = [threading.Thread(target=hold, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    taken.wait()
    try:
        yield
    finally:
        done.set()
        for thread in threads:
            thread.join(10)


def test_a_run_thread_that_gets_no_connection_leaves_its_run_to_the_reaper(workspace, shout, settings):
    started = run_start(
        workflow=shout, actor=Actor(workspace=workspace, role=Role.OWNER), input={"text": "hi"}, claim=True
    )
    with pool_of(max_size=2, timeout_s=1.0):
        with connections_taken(2):
            handle = run_execute_in_thread(started=started)
            # Past the run thread's wait for its first write's connection (1 s), then the
            # connections come back: a second write (the run's failure) would now get through.
            time.sleep(1.6)
        assert handle.wait(10)

    run = Run.objects.get(pk=started.run.pk)
    assert (run.status, run.error, run.lease_token) == ("running", None, started.claim.token)
    assert handle.result is None  # no finished body: the sync request answers 202 with the run

    later = timezone.now() + timedelta(seconds=settings.KEEL_RUN_STALE_S + 1)
    assert runs_reap(now=later).resumed == [str(run.pk)]
    body = run_execute(run_id=run.pk)  # the worker's job the reaper enqueued
    assert body is not None and body["status"] == "succeeded" and body["output"]["text"] == "HI"
    run = Run.objects.get(pk=run.pk)
    assert (run.status, run.executions) == ("succeeded", 2)
