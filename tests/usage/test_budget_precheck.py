"""The 402 pre-check: a run is not even started when a blocking budget has no room left."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from apps.core.problems import BudgetExceeded
from apps.runs.models import Run
from apps.usage.models import Budget
from apps.usage.services import budget_check, budget_reserve, budget_settle
from apps.workflows.services import workflow_create
from tests.support.simulator import sim_model, sim_provider
from tests.support.tenancy import key_client, problem
from tests.usage.conftest import make_budget

pytestmark = pytest.mark.django_db


def fill(workspace, amount: str, call_id: str = "filler") -> None:
    budget_reserve(call_id=call_id, amount=Decimal(amount), workspace_id=workspace.pk)
    budget_settle(call_id=call_id, actual=Decimal(amount))


def test_a_full_blocking_budget_refuses_and_a_warn_budget_does_not(workspace):
    make_budget(workspace, "1", action=Budget.Action.WARN)
    fill(workspace, "1")
    budget_check(workspace_id=workspace.pk)  # only a warn budget is full: no refusal

    blocking = make_budget(workspace, "0.5")
    fill(workspace, "0.5", call_id="filler-2")
    with pytest.raises(BudgetExceeded) as refused:
        budget_check(workspace_id=workspace.pk)
    assert refused.value.extra["budget_id"] == str(blocking.pk)


def test_with_an_amount_the_check_refuses_when_that_amount_does_not_fit(workspace):
    make_budget(workspace, "1")
    fill(workspace, "0.7")
    budget_check(workspace_id=workspace.pk, amount=Decimal("0.3"))
    with pytest.raises(BudgetExceeded):
        budget_check(workspace_id=workspace.pk, amount=Decimal("0.3000000001"))


def test_the_check_reserves_nothing_and_opens_no_window(workspace):
    budget = make_budget(workspace, "1", period=Budget.Period.DAY)
    budget_check(workspace_id=workspace.pk, amount=Decimal("0.5"))
    assert not budget.windows.exists()


def test_a_zero_limit_refuses_before_any_call_has_opened_a_window(workspace):
    make_budget(workspace, "0")
    with pytest.raises(BudgetExceeded):
        budget_check(workspace_id=workspace.pk)


def test_a_full_daily_budget_has_room_again_the_next_day(workspace):
    daily = make_budget(workspace, "1", period=Budget.Period.DAY)
    fill(workspace, "1")
    with pytest.raises(BudgetExceeded):
        budget_check(workspace_id=workspace.pk)
    budget_check(workspace_id=workspace.pk, now=daily.created_at + dt.timedelta(days=1))


def test_budgets_of_another_scope_do_not_refuse(workspace, other_workspace):
    make_budget(other_workspace, "0")
    budget_check(workspace_id=workspace.pk)


@pytest.fixture
def summarise(workspace):
    sim_model(sim_provider(None, workspace), alias="fast")  # in-process simulator: never called here
    return workflow_create(
        workspace=workspace,
        definition={
            "slug": "summarise",
            "name": "Summarise",
            "input_schema": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
            "steps": [{"id": "sum", "type": "llm", "model": "fast", "prompt": "Summarise {{ input.text }}"}],
            "output": "{{ steps.sum.output }}",
        },
    )


@pytest.mark.parametrize("mode", ["sync", "async", "stream"])
def test_starting_a_run_against_a_full_blocking_budget_answers_402_and_starts_nothing(workspace, summarise, mode):
    make_budget(workspace, "0.25")
    fill(workspace, "0.25")

    response = key_client(workspace).post(
        "/api/v1/workflows/summarise/runs/", {"input": {"text": "hello"}, "mode": mode}, format="json"
    )

    body = problem(response, 402, "budget_exceeded")
    assert "$0 left" in body["detail"]
    assert not Run.objects.exists()


def test_a_repeated_idempotent_request_gets_its_first_answer_even_when_the_budget_is_now_full(workspace, summarise):
    client = key_client(workspace)
    first = client.post(
        "/api/v1/workflows/summarise/runs/",
        {"input": {"text": "hello"}, "mode": "async"},
        format="json",
        HTTP_IDEMPOTENCY_KEY="once",
    )
    assert first.status_code == 202
    make_budget(workspace, "0")

    again = client.post(
        "/api/v1/workflows/summarise/runs/",
        {"input": {"text": "hello"}, "mode": "async"},
        format="json",
        HTTP_IDEMPOTENCY_KEY="once",
    )

    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    problem(
        client.post("/api/v1/workflows/summarise/runs/", {"input": {"text": "new"}, "mode": "async"}, format="json"),
        402,
        "budget_exceeded",
    )


def test_a_full_workflow_budget_refuses_that_workflow_only(workspace, summarise):
    from tests.runs.conftest import transform_definition

    workflow_create(workspace=workspace, definition=transform_definition())  # "shout": no model calls
    make_budget(workspace, "0", scope=Budget.Scope.WORKFLOW, scope_id=summarise.pk)
    client = key_client(workspace)

    refused = client.post("/api/v1/workflows/summarise/runs/", {"input": {"text": "hi"}}, format="json")
    other = client.post("/api/v1/workflows/shout/runs/", {"input": {"text": "hi"}, "mode": "async"}, format="json")

    problem(refused, 402, "budget_exceeded")
    assert other.status_code == 202 and Run.objects.filter(workflow__slug="shout").count() == 1
