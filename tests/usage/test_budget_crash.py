"""Acceptance 3 (and 4): a worker SIGKILLed mid-call leaves a budget hold; after the reaper the
window holds nothing and has spent exactly what the ledger says the window's calls cost."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db.models import Sum

from apps.runs.models import Run, StepRun
from apps.runs.services import runs_reap
from apps.usage.models import Budget, BudgetReservation, BudgetWindow, UsageRecord
from apps.workflows.services import workflow_create
from tests.runs.helpers import wait_for, wait_for_status
from tests.support.simulator import sim_configure, sim_model, sim_provider, slow
from tests.support.tenancy import key_client
from tests.support.workers import QUICK_RECOVERY_ENV, STALE_S
from tests.usage.conftest import make_budget
from tests.workflows.definitions import llm_chain_definition

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def two_calls() -> dict:
    steps = [("outline", "fast", "Outline {{ input.topic }}"), ("expand", "slow", "Expand {{ steps.outline.output }}")]
    return llm_chain_definition("two-calls", steps)


def books_of(budget: Budget) -> tuple[BudgetWindow, Decimal, Decimal]:
    """The window, the ledger's cost of the calls booked against it, and the ledger's cost of every
    call of the workspace made while the window was open."""
    window = BudgetWindow.objects.get(budget=budget)
    calls = BudgetReservation.objects.filter(window=window).values("call_id")
    by_call = UsageRecord.objects.filter(call_id__in=calls).aggregate(total=Sum("cost_usd"))["total"]
    by_time = UsageRecord.objects.filter(
        workspace=budget.workspace, created_at__gte=window.start, created_at__lt=window.end
    ).aggregate(total=Sum("cost_usd"))["total"]
    return window, by_call or Decimal("0"), by_time or Decimal("0")


def start_and_kill_mid_call(workspace, simulator, rq_workers) -> tuple[str, list[str], Budget]:
    provider = sim_provider(simulator, workspace)
    sim_model(provider, alias="fast")
    slow_provider = sim_provider(simulator, workspace, name="Slow simulator", config=slow(30))
    sim_model(slow_provider, alias="slow")
    workflow_create(workspace=workspace, definition=two_calls())
    budget = make_budget(workspace, "1", period=Budget.Period.DAY)
    worker = rq_workers.start("runs", env=QUICK_RECOVERY_ENV)

    response = key_client(workspace).post(
        "/api/v1/workflows/two-calls/runs/", {"input": {"topic": "tides"}, "mode": "async"}, format="json"
    )
    run_id = response.json()["id"]
    wait_for(lambda: simulator.calls("sim-slow") == 1, timeout=30, what="the slow call to reach the simulator")
    in_flight = StepRun.objects.get(run_id=run_id, step_id="expand").call_ids
    window = BudgetWindow.objects.get(budget=budget)
    assert window.reserved > 0 and window.spent > 0, "the first call is settled, the second one held"
    worker.kill()
    sim_configure(slow_provider, {})  # the provider answers at once from now on
    return run_id, in_flight, budget


def test_after_a_worker_is_killed_mid_call_the_reaper_leaves_nothing_reserved_and_spent_equal_to_the_ledger(
    workspace, simulator, rq_workers
):
    run_id, in_flight, budget = start_and_kill_mid_call(workspace, simulator, rq_workers)
    assert BudgetWindow.objects.get(budget=budget).reserved > 0  # the dead worker's hold is still there

    rq_workers.start("runs", env=QUICK_RECOVERY_ENV)  # its periodic reaper finds the run and resumes it
    run = wait_for_status(run_id, {"succeeded", "failed", "cancelled"}, timeout=60)

    assert run.status == "succeeded", run.error
    window, by_call, by_time = books_of(budget)
    assert window.reserved == 0
    assert window.spent == by_call == by_time == run.cost_usd > 0
    abandoned = UsageRecord.objects.get(call_id=in_flight[0])
    assert (abandoned.error_code, abandoned.cost_usd) == ("abandoned", 0)
    assert BudgetReservation.objects.get(call_id=in_flight[0]).state == BudgetReservation.State.SETTLED
    assert not BudgetReservation.objects.filter(state=BudgetReservation.State.HELD).exists()


def test_a_run_the_reaper_gives_up_on_also_releases_its_hold(workspace, simulator, rq_workers, settings):
    run_id, in_flight, budget = start_and_kill_mid_call(workspace, simulator, rq_workers)
    settings.KEEL_RUN_MAX_EXECUTIONS = 1  # this reaper fails the run (worker_lost) instead of resuming it
    settings.KEEL_RUN_STALE_S = STALE_S

    wait_for(lambda: runs_reap().failed, timeout=30, every=0.5, what="the reaper to fail the stale run")

    run = Run.objects.get(pk=run_id)
    assert run.status == "failed" and run.error["code"] == "worker_lost"
    window, by_call, by_time = books_of(budget)
    assert window.reserved == 0
    assert window.spent == by_call == by_time == run.cost_usd > 0  # the first call's cost, the cut call's 0
    assert simulator.calls() == 2
