"""What one provider call costs the database: a fixed, small number of statements for its whole
bookkeeping (model lookup, budget reservation, ledger row, rollup, settlement). A regression here is
slower calls for every run."""

from __future__ import annotations

from decimal import Decimal

import pytest

from apps.providers.gateway import CallContext, gateway_complete
from apps.usage.models import BudgetWindow, UsageHourly, UsageRecord
from apps.usage.services import budget_create
from tests.support.simulator import sim_model, sim_provider

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

MESSAGES = [{"role": "user", "content": "Count my statements"}]


def ask(workspace):
    return gateway_complete(ctx=CallContext(workspace_id=workspace.pk), model="fast", messages=MESSAGES, retries=0)


def test_a_call_in_a_workspace_without_budgets_costs_three_statements(simulator, workspace, django_assert_num_queries):
    sim_model(sim_provider(simulator, workspace), alias="fast")
    ask(workspace)  # this process reads the model through the ORM once

    # The model's row; the budgets that apply (none); the ledger row with its rollup.
    with django_assert_num_queries(3):
        result = ask(workspace)

    assert UsageRecord.objects.get(call_id=result.call_ids[0]).cost_usd == result.cost_usd > 0
    assert UsageHourly.objects.get().calls == 2


def test_a_call_under_one_blocking_budget_costs_three_statements(simulator, workspace, django_assert_num_queries):
    sim_model(sim_provider(simulator, workspace), alias="fast")
    budget_create(workspace=workspace, scope="workspace", period="month", limit_usd=Decimal("5"))
    ask(workspace)  # the first call of the period opens the budget's window

    # The model's row; the budget lookup and the reservation (one statement); the ledger row with
    # its rollup, the hold settled and the window's spent (one statement).
    with django_assert_num_queries(3):
        result = ask(workspace)

    window = BudgetWindow.objects.get()
    assert window.reserved == 0
    assert window.spent == sum(UsageRecord.objects.values_list("cost_usd", flat=True)) > result.cost_usd > 0
