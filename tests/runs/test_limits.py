"""Per-run limits (max_cost_usd, timeout_s), per-step timeout, and budgets refusing a run."""

from __future__ import annotations

from decimal import Decimal

import pytest

from apps.runs.models import StepRun
from apps.usage.models import UsageRecord
from apps.usage.services import budget_create
from apps.workflows.services import workflow_create
from tests.support.simulator import sim_model, sim_provider, slow
from tests.support.tenancy import key_client

pytestmark = pytest.mark.django_db(transaction=True)


def chain(limits: dict | None = None, **step_fields) -> dict:
    steps = [
        {"id": name, "type": "llm", "model": "fast", "prompt": f"{name}: {{{{ input.topic }}}}", "max_tokens": 40,
         "cache": False, **step_fields}
        for name in ("one", "two", "three")
    ]  # fmt: skip
    definition = {"slug": "chain", "name": "Chain", "steps": steps}
    if limits:
        definition["limits"] = limits
    return definition


def start(workspace) -> dict:
    response = key_client(workspace).post(
        "/api/v1/workflows/chain/runs/", {"input": {"topic": "otters"}, "mode": "sync"}, format="json"
    )
    assert response.status_code == 200, response.content
    return response.json()


def test_a_run_over_max_cost_usd_fails_after_the_step_that_crossed_it(workspace):
    sim_model(sim_provider(None, workspace), alias="fast")
    workflow_create(workspace=workspace, definition=chain({"max_cost_usd": "0.0000000001"}))
    body = start(workspace)
    assert body["status"] == "failed" and body["error"]["code"] == "cost_limit_exceeded"
    assert body["error"]["step"] == "one"
    assert [s["status"] for s in body["steps"]] == ["succeeded", "pending", "pending"]
    assert UsageRecord.objects.filter(run_id=body["id"]).count() == 1
    assert Decimal(body["usage"]["cost_usd"]) > Decimal("0.0000000001")


@pytest.mark.integration
def test_the_run_timeout_cuts_a_slow_stream_and_fails_the_run(workspace, simulator):
    # The first answer streams for several seconds: longer than the whole run may take.
    sim_model(sim_provider(simulator, workspace, config=slow(0.1, per_token_ms=300)), alias="fast")
    workflow_create(workspace=workspace, definition=chain({"timeout_s": 1.5}))
    body = start(workspace)
    # Cut inside step one (not after it, between steps): the stream was aborted at the limit.
    assert body["status"] == "failed" and body["error"]["code"] == "run_timeout" and body["error"]["step"] == "one"
    assert body["steps"][0]["status"] == "failed"
    assert simulator.calls("sim-fast") == 1


@pytest.mark.integration
def test_a_step_timeout_fails_the_step_after_its_retries(workspace, simulator, settings):
    settings.KEEL_GATEWAY_BACKOFF_BASE_S = 0.0
    sim_model(sim_provider(simulator, workspace, config=slow(2.0)), alias="fast")
    workflow_create(workspace=workspace, definition=chain(timeout_s=0.3, retries=1))
    body = start(workspace)
    assert body["status"] == "failed" and body["error"]["step"] == "one"
    assert body["error"]["code"] == "provider_timeout", body["error"]
    assert simulator.calls("sim-fast") == 2  # the first attempt and its one retry
    assert StepRun.objects.get(run_id=body["id"], step_id="one").attempts == 2


def test_a_run_refused_by_a_budget_fails_with_budget_exceeded_before_any_provider_call(workspace):
    sim_model(sim_provider(None, workspace), alias="fast")
    workflow_create(workspace=workspace, definition=chain())
    budget_create(workspace=workspace, scope="workspace", period="month", limit_usd=Decimal("0.0000000100"))
    body = start(workspace)  # sync: 200 with the failed run
    assert body["status"] == "failed"
    assert body["error"]["code"] == "budget_exceeded" and body["error"]["step"] == "one"
    assert not UsageRecord.objects.filter(run_id=body["id"]).exists()
