"""Acceptance 6: cancel during a slow step; cancel of a finished run gets 409."""

from __future__ import annotations

import time

import pytest
from django.utils import timezone

from apps.accounts.models import Role
from apps.accounts.tenancy import Actor
from apps.runs.engine import Executor, run_claim
from apps.runs.models import Run, StepRun
from apps.runs.services import run_start
from apps.usage.models import UsageRecord
from apps.workflows.services import workflow_create
from tests.runs.helpers import sse_events, wait_for, wait_for_status
from tests.support.simulator import sim_model, sim_provider, slow
from tests.support.tenancy import key_client, problem
from tests.workflows.definitions import llm_chain_definition

pytestmark = pytest.mark.django_db(transaction=True)


def two_slow_steps() -> dict:
    return {
        "slug": "two-steps",
        "name": "Two model calls",
        "steps": [
            {"id": "draft", "type": "llm", "model": "one", "prompt": "Draft {{ input.topic }}", "max_tokens": 60},
            {
                "id": "polish",
                "type": "llm",
                "model": "two",
                "prompt": "Polish {{ steps.draft.output }}",
                "max_tokens": 60,
            },
        ],
    }


@pytest.mark.integration
def test_cancel_during_a_slow_streamed_step_ends_the_run_cancelled_with_no_further_calls(
    workspace, simulator, rq_workers
):
    # A slow stream: several seconds for the first answer, token by token.
    provider = sim_provider(simulator, workspace, config=slow(0.2, per_token_ms=300))
    sim_model(provider, alias="one")
    sim_model(provider, alias="two")
    workflow_create(workspace=workspace, definition=two_slow_steps())
    rq_workers.start("runs")
    client = key_client(workspace)
    run_id = client.post(
        "/api/v1/workflows/two-steps/runs/", {"input": {"topic": "moths"}, "mode": "async"}, format="json"
    ).json()["id"]
    wait_for(lambda: simulator.calls("sim-one") == 1, timeout=30, what="the first step's call to start")

    response = client.post(f"/api/v1/runs/{run_id}/cancel/")

    assert response.status_code == 202, response.content  # accepted: it stops at its next check
    assert response.json()["status"] == "running"
    run = wait_for_status(run_id, set(Run.TERMINAL), timeout=30)
    assert run.status == "cancelled" and run.error["code"] == "cancelled" and run.error["step"] == "draft"
    # The first step itself was cancelled: its streamed answer was cut, not waited out.
    steps = {s.step_id: s.status for s in StepRun.objects.filter(run_id=run_id)}
    assert steps == {"draft": "cancelled", "polish": "pending"}
    time.sleep(1.0)  # anything still going would have called by now
    assert simulator.calls("sim-one") == 1 and simulator.calls("sim-two") == 0
    body = client.get(f"/api/v1/runs/{run_id}/").json()
    assert body["status"] == "cancelled"
    events = sse_events(client.get(f"/api/v1/runs/{run_id}/events/"))
    assert events[-1]["event"] == "run.finished" and events[-1]["data"]["status"] == "cancelled"
    problem(client.post(f"/api/v1/runs/{run_id}/cancel/"), 409, "conflict")


def test_cancel_of_a_queued_run_is_immediate_and_its_job_then_does_nothing(workspace, shout):
    from apps.runs.services import run_execute

    client = key_client(workspace)
    run_id = client.post(
        "/api/v1/workflows/shout/runs/", {"input": {"text": "x"}, "mode": "async"}, format="json"
    ).json()["id"]
    response = client.post(f"/api/v1/runs/{run_id}/cancel/")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled" and response.json()["finished_at"]
    run_execute(run_id=run_id)  # the job arrives later
    run = Run.objects.get(pk=run_id)
    assert run.status == "cancelled" and run.executions == 0
    assert set(StepRun.objects.filter(run=run).values_list("status", flat=True)) == {"cancelled"}


def test_cancel_of_a_finished_run_gets_409(workspace, shout):
    client = key_client(workspace)
    run_id = client.post(
        "/api/v1/workflows/shout/runs/", {"input": {"text": "x"}, "mode": "sync"}, format="json"
    ).json()["id"]
    body = problem(client.post(f"/api/v1/runs/{run_id}/cancel/"), 409, "conflict")
    assert "succeeded" in body["detail"]
    assert Run.objects.get(pk=run_id).status == "succeeded"


def test_a_cancel_seen_as_the_first_call_is_noted_sends_nothing_and_names_no_model(workspace, simulator):
    sim_model(sim_provider(simulator, workspace), alias="one")
    workflow = workflow_create(
        workspace=workspace, definition=llm_chain_definition("one-step", [("draft", "one", "x")])
    )
    run = run_start(workflow=workflow, actor=Actor(workspace=workspace, role=Role.OWNER), input={"topic": "x"}).run
    claim = run_claim(run_id=run.pk)
    assert claim is not None
    # The cancel arrives after the claim: the executor learns of it from its first write, the one
    # that notes the step's first call id, and must then send nothing.
    Run.objects.filter(pk=run.pk).update(cancel_requested_at=timezone.now())

    Executor(claim).execute()

    assert Run.objects.get(pk=run.pk).status == "cancelled"
    step = StepRun.objects.get(run=run)
    assert (step.status, step.call_ids, step.model, step.provider) == ("cancelled", [], "", "")
    assert simulator.calls() == 0 and not UsageRecord.objects.filter(run_id=run.pk).exists()
