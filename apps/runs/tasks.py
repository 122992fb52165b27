"""RQ jobs of the runs app: each takes ids and calls one service."""

from __future__ import annotations

from django_rq import get_connection
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from apps.runs.services import run_execute, runs_reap

LIVE_JOB_STATUSES = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED}


def execute_run_job(run_id: str) -> None:
    run_execute(run_id=run_id)


def reap_runs_job() -> None:
    runs_reap()


def job_is_live(job_id: str) -> bool:
    """Whether RQ still has this job waiting or executing (a lost enqueue or a dead job is not)."""
    try:
        return Job.fetch(job_id, connection=get_connection("runs")).get_status() in LIVE_JOB_STATUSES
    except NoSuchJobError:
        return False
