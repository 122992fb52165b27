"""Acceptance 3: the same run job delivered twice (and a second job for the same run) executes once."""

from __future__ import annotations

import django_rq
import pytest

from apps.runs.models import Run, RunEvent, StepRun
from apps.usage.models import UsageRecord
from apps.workflows.services import workflow_create
from tests.runs.helpers import wait_for
from tests.support.simulator import sim_model, sim_provider, slow
from tests.support.tenancy import key_client
from tests.workflows.definitions import triage_definition

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_a_run_job_delivered_twice_executes_once(workspace, simulator, rq_workers):
    provider = sim_provider(simulator, workspace, config=slow(1.0))
    sim_model(provider, alias="fast")
    sim_model(provider, alias="backup")
    definition = triage_definition()
    definition["steps"][0]["cache"] = False
    workflow_create(workspace=workspace, definition=definition)

    response = key_client(workspace).post(
        "/api/v1/workflows/support-triage/runs/", {"input": {"ticket": "It crashes"}, "mode": "async"}, format="json"
    )
    run = Run.objects.get(pk=response.json()["id"])
    queue = django_rq.get_queue("runs")
    queue.push_job_id(run.job_id)  # the very same job, delivered a second time
    queue.enqueue("apps.runs.tasks.execute_run_job", str(run.pk), job_id=f"run-{run.pk}-again")  # and another job
    assert queue.count == 3

    workers = [rq_workers.start("runs"), rq_workers.start("runs")]
    wait_for(lambda: queue.count == 0, timeout=30, what="every delivery to be taken")

    def logs() -> str:
        return "".join(w.log_text() for w in workers)

    wait_for(
        lambda: Run.objects.get(pk=run.pk).status in Run.TERMINAL and logs().count('"event": "run_not_claimed"') >= 2,
        timeout=60,
        what="the run to finish and the other two deliveries to be turned away",
    )

    run.refresh_from_db()
    assert run.status == "succeeded" and run.executions == 1
    assert simulator.calls("sim-fast") == 1
    assert StepRun.objects.filter(run=run).count() == 1
    assert StepRun.objects.get(run=run).executions == 1
    assert RunEvent.objects.filter(run=run, type="run.started").count() == 1
    assert RunEvent.objects.filter(run=run, type="run.finished").count() == 1
    assert UsageRecord.objects.filter(run_id=run.pk).count() == 1
    assert logs().count('"event": "run_finished"') == 1  # run_claimed is a DEBUG line
    assert logs().count('"event": "run_not_claimed"') == 2
