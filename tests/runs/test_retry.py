"""Acceptance 7: retry of a run that failed at step 2 reuses step 1 without calling it again."""

from __future__ import annotations

import pytest

from apps.runs.models import Run, StepRun
from apps.usage.models import UsageRecord
from apps.workflows.services import workflow_create
from tests.runs.helpers import wait_for_status
from tests.support.simulator import always, sim_configure, sim_model, sim_provider
from tests.support.tenancy import key_client, problem

pytestmark = pytest.mark.django_db(transaction=True)


def two_steps() -> dict:
    return {
        "slug": "two-steps",
        "name": "Two model calls",
        "steps": [
            {"id": "draft", "type": "llm", "model": "one", "prompt": "Draft {{ input.topic }}", "max_tokens": 30},
            {
                "id": "polish",
                "type": "llm",
                "model": "two",
                "prompt": "Polish {{ steps.draft.output }}",
                "max_tokens": 30,
                "retries": 1,
            },
        ],
        "output": {"draft": "{{ steps.draft.output }}", "final": "{{ steps.polish.output }}"},
    }


@pytest.mark.integration
def test_retry_of_a_run_failed_at_step_2_succeeds_without_calling_step_1_again(
    workspace, simulator, rq_workers, settings
):
    settings.KEEL_GATEWAY_BACKOFF_BASE_S = 0.0
    provider = sim_provider(simulator, workspace, config={"models": {"sim-two": always(500)}})
    sim_model(provider, alias="one")
    sim_model(provider, alias="two")
    workflow_create(workspace=workspace, definition=two_steps())
    client = key_client(workspace)

    failed = client.post(
        "/api/v1/workflows/two-steps/runs/", {"input": {"topic": "owls"}, "mode": "sync"}, format="json"
    ).json()
    assert failed["status"] == "failed"
    assert failed["error"]["step"] == "polish" and failed["error"]["code"].startswith("provider")
    assert [s["status"] for s in failed["steps"]] == ["succeeded", "failed"]
    assert simulator.calls("sim-one") == 1 and simulator.calls("sim-two") == 2  # first attempt + 1 retry

    sim_configure(provider, {})  # healed
    rq_workers.start("runs")
    response = client.post(f"/api/v1/runs/{failed['id']}/retry/")

    assert response.status_code == 202, response.content
    retry = response.json()
    assert retry["retry_of"] == failed["id"] and retry["id"] != failed["id"]
    assert response["Location"] == f"/api/v1/runs/{retry['id']}/"
    wait_for_status(retry["id"], set(Run.TERMINAL), timeout=60)
    done = client.get(f"/api/v1/runs/{retry['id']}/").json()
    assert done["status"] == "succeeded", done["error"]
    assert done["output"]["draft"] == failed["steps"][0]["output"]
    assert simulator.calls("sim-one") == 1, "step 1 was reused, not called again"
    assert simulator.calls("sim-two") == 3
    reused = StepRun.objects.get(run_id=retry["id"], step_id="draft")
    assert reused.reused_from_id == StepRun.objects.get(run_id=failed["id"], step_id="draft").pk
    assert reused.executions == 0 and reused.cost_usd == 0
    assert not UsageRecord.objects.filter(run_id=retry["id"], step_id="draft").exists()


def test_only_failed_or_cancelled_runs_can_be_retried(workspace, shout):
    client = key_client(workspace)
    run_id = client.post(
        "/api/v1/workflows/shout/runs/", {"input": {"text": "x"}, "mode": "sync"}, format="json"
    ).json()["id"]
    problem(client.post(f"/api/v1/runs/{run_id}/retry/"), 409, "conflict")
    assert Run.objects.count() == 1
