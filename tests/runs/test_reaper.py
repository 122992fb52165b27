"""The reaper: runs whose executor died are resumed (or failed) and their cut calls booked once."""

from __future__ import annotations

from datetime import timedelta

import django_rq
import pytest
from django.utils import timezone

from apps.accounts.models import Role
from apps.accounts.tenancy import Actor
from apps.core.jobs import periodic_tick
from apps.core.redis import get_redis
from apps.runs.engine import Executor, LeaseLost, run_claim
from apps.runs.models import Run, StepRun
from apps.runs.services import run_start, runs_reap
from apps.usage.models import UsageRecord
from apps.workflows.services import workflow_create
from tests.support.simulator import sim_model, sim_provider
from tests.workflows.definitions import triage_definition

pytestmark = pytest.mark.django_db


@pytest.fixture
def crashed(workspace, settings) -> Run:
    """A run whose executor died in its first step, after sending one provider request."""
    provider = sim_provider(None, workspace)
    sim_model(provider, alias="fast")
    sim_model(provider, alias="backup")
    workflow = workflow_create(workspace=workspace, definition=triage_definition())
    run = run_start(workflow=workflow, actor=Actor(workspace=workspace, role=Role.OWNER), input={"ticket": "x"}).run
    claim = run_claim(run_id=run.pk)
    assert claim is not None
    call_id = f"{run.pk}-0-1-1-1"
    StepRun.objects.filter(run=run).update(status="running", executions=1, call_ids=[call_id])
    stale = timezone.now() - timedelta(seconds=settings.KEEL_RUN_STALE_S + 1)
    Run.objects.filter(pk=run.pk).update(heartbeat_at=stale)
    return Run.objects.get(pk=run.pk)


def test_a_run_whose_heartbeat_stopped_is_queued_again_and_its_cut_call_booked_once(
    crashed, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        report = runs_reap()

    assert report.resumed == [str(crashed.pk)]
    run = Run.objects.get(pk=crashed.pk)
    assert run.status == "queued" and run.lease_token is None and run.job_id == f"run-{run.pk}-2"
    assert django_rq.get_queue("runs").fetch_job(run.job_id) is not None
    step = StepRun.objects.get(run=run)
    assert step.status == "pending" and step.executions == 1
    row = UsageRecord.objects.get(call_id=step.call_ids[0])
    assert (row.status, row.error_code, row.input_tokens, row.output_tokens, row.cost_usd) == (
        "failed", "abandoned", 0, 0, 0
    )  # fmt: skip
    assert row.model_alias == "fast" and row.run_id == run.pk and row.step_id == "classify"

    # Reaped again (say, two reapers): nothing new happens.
    assert runs_reap().resumed == []
    assert UsageRecord.objects.filter(run_id=run.pk).count() == 1


def test_a_cut_call_is_booked_against_the_model_the_step_was_calling(crashed):
    # The step had fallen back to "backup" when its executor died (note_call records it).
    StepRun.objects.filter(run=crashed).update(model="backup", provider="Simulator")

    runs_reap()

    step = StepRun.objects.get(run=crashed)
    row = UsageRecord.objects.get(call_id=step.call_ids[0])
    assert (row.error_code, row.model_alias, row.provider_name) == ("abandoned", "backup", "Simulator")


def test_a_cut_call_whose_model_is_gone_is_booked_against_the_steps_main_model(crashed):
    StepRun.objects.filter(run=crashed).update(model="deleted-since", provider="Simulator")

    runs_reap()

    row = UsageRecord.objects.get(call_id=StepRun.objects.get(run=crashed).call_ids[0])
    assert (row.error_code, row.model_alias) == ("abandoned", "fast")


def test_a_run_already_executed_the_maximum_times_is_failed_worker_lost(crashed, settings):
    Run.objects.filter(pk=crashed.pk).update(executions=settings.KEEL_RUN_MAX_EXECUTIONS)
    assert runs_reap().failed == [str(crashed.pk)]
    run = Run.objects.get(pk=crashed.pk)
    assert run.status == "failed" and run.error["code"] == "worker_lost" and run.error["step"] == "classify"
    assert run.events.filter(type="run.finished").count() == 1
    assert StepRun.objects.get(run=run).status == "failed"
    assert UsageRecord.objects.filter(run_id=run.pk, error_code="abandoned").count() == 1


def test_a_run_past_its_deadline_is_failed_run_timeout(crashed):
    Run.objects.filter(pk=crashed.pk).update(deadline_at=timezone.now() - timedelta(seconds=1))
    runs_reap()
    assert Run.objects.get(pk=crashed.pk).error["code"] == "run_timeout"


def test_a_run_that_is_still_heart_beating_is_left_alone(crashed):
    Run.objects.filter(pk=crashed.pk).update(heartbeat_at=timezone.now())
    assert runs_reap().resumed == []
    assert Run.objects.get(pk=crashed.pk).status == "running"
    assert not UsageRecord.objects.exists()


def test_an_executor_whose_run_was_taken_over_cannot_write_to_it(crashed):
    stale_executor = Executor.__new__(Executor)  # the dead worker's executor, come back to life
    stale_executor.run, stale_executor.token = crashed, crashed.lease_token
    runs_reap()
    assert run_claim(run_id=crashed.pk) is not None  # a new executor owns it now
    with pytest.raises(LeaseLost):
        with stale_executor._leased():
            pass


def test_a_queued_run_whose_job_was_lost_is_enqueued_again(
    workspace, shout, settings, django_capture_on_commit_callbacks
):
    run = run_start(
        workflow=shout, actor=Actor(workspace=workspace, role=Role.OWNER), input={"text": "x"}, mode="async"
    ).run
    long_ago = timezone.now() - timedelta(seconds=settings.KEEL_RUN_STALE_S + 1)
    Run.objects.filter(pk=run.pk).update(created_at=long_ago, updated_at=long_ago, job_id=f"run-{run.pk}")
    # The enqueue after commit never happened (this test's transaction never commits): no job exists.
    with django_capture_on_commit_callbacks(execute=True):
        report = runs_reap()
    assert report.requeued == [str(run.pk)]
    job_id = Run.objects.get(pk=run.pk).job_id
    assert job_id != f"run-{run.pk}" and django_rq.get_queue("runs").fetch_job(job_id) is not None
    assert runs_reap().requeued == []  # its job is now live


def test_workers_enqueue_the_reaper_once_per_interval(settings):
    redis = get_redis()

    def tick(queues: list[str]) -> list[str]:
        return [job_id for job_id in periodic_tick(connection=redis, queue_names=queues) if "reap-runs" in job_id]

    first = tick(["runs"])
    assert len(first) == 1
    assert tick(["runs"]) == []  # same period
    assert tick(["default"]) == []  # not this worker's queue
    queue = django_rq.get_queue("runs")
    assert first[0] in queue.job_ids[:2]  # at the front
    assert queue.fetch_job(first[0]).func_name == "apps.runs.tasks.reap_runs_job"
    redis.delete("keel:periodic:reap-runs")  # the period is over
    assert tick(["runs"]) == []  # the last one still waits in the queue: no pile-up
    queue.remove(first[0])
    redis.delete("keel:periodic:reap-runs")
    assert len(tick(["runs"])) == 1


def test_the_reap_runs_command_reaps_once_and_says_what_it_did(crashed, capsys):
    from django.core.management import call_command

    call_command("reap_runs")
    out = capsys.readouterr().out
    assert "resumed 1, failed 0" in out and f"resumed: {crashed.pk}" in out and "abandoned calls booked 1" in out
    assert Run.objects.get(pk=crashed.pk).status == "queued"
