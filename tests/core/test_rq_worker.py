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
