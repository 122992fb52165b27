"""`python manage.py rqworker runs default ingest notifications` works against REDIS_URL."""

from __future__ import annotations

import time

import django_rq
import pytest
from django.conf import settings

from tests.support.processes import PYTHON, running


@pytest.mark.integration
def test_rqworker_serves_every_configured_queue(tmp_path):
    assert settings.RQ_ASYNC, "tests run with a real Redis, so jobs go to workers"
    jobs = {name: django_rq.get_queue(name).enqueue("math.hypot", 3, 4) for name in settings.RQ_QUEUE_NAMES}
    argv = [PYTHON, "manage.py", "rqworker", *settings.RQ_QUEUE_NAMES, "--burst"]
    with running(argv, log=tmp_path / "worker.log") as worker:
        worker.wait(timeout=60)
    for name, job in jobs.items():
        job.refresh()
        assert job.get_status() == "finished", (name, job.get_status(), (tmp_path / "worker.log").read_text()[-2000:])
        assert job.return_value() == 5.0


@pytest.mark.integration
def test_long_running_worker_picks_up_a_job_enqueued_later(tmp_path):
    argv = [PYTHON, "manage.py", "rqworker", "default"]
    with running(argv, log=tmp_path / "worker.log"):
        job = django_rq.get_queue("default").enqueue("math.hypot", 6, 8)
        deadline = time.monotonic() + 60
        while job.get_status(refresh=True) != "finished" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert job.return_value() == 10.0


@pytest.mark.integration
def test_a_keel_worker_keeps_rqs_registries_for_finished_and_failed_jobs(tmp_path):
    """KeelWorker records a job's start in one Redis transaction instead of RQ's several round trips
    (apps/core/jobs.py): the keys RQ's registries, failure handling and the reaper read are the same."""
    from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry
    from rq.worker import Worker

    queue = django_rq.get_queue("default")
    argv = [PYTHON, "manage.py", "rqworker", "default"]
    with running(argv, log=tmp_path / "worker.log"):
        ok = queue.enqueue("math.hypot", 6, 8)
        failing = queue.enqueue("math.sqrt", -1)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
            ok.get_status(refresh=True) == "finished" and failing.get_status(refresh=True) == "failed"
        ):
            time.sleep(0.1)
        workers = Worker.all(queue=queue)
        assert len(workers) == 1, (tmp_path / "worker.log").read_text()[-2000:]
        assert workers[0].get_state() == "idle"
        assert queue.connection.ttl(workers[0].key) > 0
    ok.refresh()
    failing.refresh()
    assert ok.return_value() == 10.0 and ok.started_at is not None and ok.worker_name == workers[0].name
    assert "math domain error" in failing.latest_result().exc_string
    assert ok.id in FinishedJobRegistry(queue=queue).get_job_ids()
    assert failing.id in FailedJobRegistry(queue=queue).get_job_ids()
    assert StartedJobRegistry(queue=queue).get_job_ids() == []
    assert queue.connection.llen(queue.intermediate_queue_key) == 0
