"""A run's usage is the sum of its steps; a cache hit costs nothing and counts what it saved."""

from __future__ import annotations

from decimal import Decimal

import pytest

from apps.usage.models import UsageRecord
from apps.workflows.services import workflow_create
from tests.support.simulator import sim_model, sim_provider
from tests.support.tenancy import key_client

pytestmark = pytest.mark.django_db(transaction=True)


def test_run_totals_add_up_the_steps_and_a_cached_rerun_costs_nothing(workspace):
    sim_model(sim_provider(None, workspace), alias="fast")
    steps = [
        {"id": name, "type": "llm", "model": "fast", "prompt": f"{name} {{{{ input.topic }}}}", "temperature": 0,
         "max_tokens": 20}
        for name in ("one", "two")
    ]  # fmt: skip
    workflow_create(workspace=workspace, definition={"slug": "pair", "name": "Pair", "steps": steps})
    client = key_client(workspace)

    def start() -> dict:
        return client.post(
            "/api/v1/workflows/pair/runs/", {"input": {"topic": "bees"}, "mode": "sync"}, format="json"
        ).json()

    first, second = start(), start()

    assert first["status"] == second["status"] == "succeeded"
    assert first["output"] == second["output"]
    usage = first["usage"]
    assert usage["input_tokens"] == sum(s["input_tokens"] for s in first["steps"]) > 0
    assert usage["output_tokens"] == sum(s["output_tokens"] for s in first["steps"]) > 0
    assert Decimal(usage["cost_usd"]) == sum(Decimal(s["cost_usd"]) for s in first["steps"]) > 0
    assert Decimal(usage["cost_usd"]) == sum(r.cost_usd for r in UsageRecord.objects.filter(run_id=first["id"]))
    assert usage["cache_hits"] == 0

    assert [s["cache_hit"] for s in second["steps"]] == [True, True]
    assert second["usage"]["cache_hits"] == 2
    assert second["usage"]["cost_usd"] == "0.0000000000" and second["usage"]["input_tokens"] == 0
    assert Decimal(second["usage"]["saved_usd"]) == Decimal(usage["cost_usd"])
