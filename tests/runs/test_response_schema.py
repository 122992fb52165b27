"""Acceptance 8: response_schema validation with exactly one repair call."""

from __future__ import annotations

import pytest

from apps.runs.models import StepRun
from apps.usage.models import UsageRecord
from apps.workflows.services import workflow_create
from tests.support.simulator import invalid_json_first, sim_model, sim_provider
from tests.support.tenancy import key_client
from tests.workflows.definitions import triage_definition

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def start(workspace, simulator, invalid: int) -> dict:
    provider = sim_provider(simulator, workspace, config=invalid_json_first(invalid))
    sim_model(provider, alias="fast")
    sim_model(provider, alias="backup")
    definition = triage_definition()
    definition["steps"][0]["cache"] = False
    workflow_create(workspace=workspace, definition=definition)
    return (
        key_client(workspace)
        .post(
            "/api/v1/workflows/support-triage/runs/", {"input": {"ticket": "Refund me"}, "mode": "sync"}, format="json"
        )
        .json()
    )


def test_an_invalid_answer_gets_exactly_one_repair_call_which_fixes_it(workspace, simulator):
    body = start(workspace, simulator, invalid=1)
    assert body["status"] == "succeeded", body["error"]
    assert body["output"]["category"] in {"billing", "bug", "other"} and isinstance(body["output"]["urgent"], bool)
    assert simulator.calls("sim-fast") == 2
    step = body["steps"][0]
    assert step["attempts"] == 2 and step["status"] == "succeeded"
    assert UsageRecord.objects.filter(run_id=body["id"]).count() == 2


def test_a_still_invalid_answer_fails_the_step_with_the_validation_errors(workspace, simulator):
    body = start(workspace, simulator, invalid=2)
    assert body["status"] == "failed"
    error = body["error"]
    assert error["code"] == "invalid_response" and error["step"] == "classify"
    assert error["errors"], "the validation errors are listed"
    assert all(e.split(":")[0] for e in error["errors"])
    assert "; ".join(error["errors"][:1]) in error["message"]
    assert simulator.calls("sim-fast") == 2, "one answer and exactly one repair"
    assert StepRun.objects.get(run_id=body["id"]).error["code"] == "invalid_response"
