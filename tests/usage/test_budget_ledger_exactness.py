"""Acceptance 4: a window's spent equals the ledger's costs of its calls to the last decimal, through
the real gateway: concurrent callers, retried failures, cut streams, cache hits, awkward prices."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import Sum

from apps.accounts.services import api_key_issue, membership_set
from apps.providers.gateway import CallContext, ProviderError, gateway_complete
from apps.usage.models import Budget, BudgetReservation, BudgetWindow, UsageRecord
from tests.support.factories import UserFactory
from tests.support.simulator import failing, sim_model, sim_provider, truncate_after
from tests.usage.conftest import make_budget

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

CALLS, THREADS = 120, 4
# Four decimals per million: every token price has ten decimals, the ledger's precision.
PRICES = {
    "input_price_per_million": Decimal("0.1234"),
    "cached_input_price_per_million": Decimal("0.0617"),
    "output_price_per_million": Decimal("0.9877"),
}


def test_every_windows_spent_equals_the_ledger_cost_of_its_calls_to_the_last_decimal(workspace, simulator, settings):
    settings.KEEL_GATEWAY_BACKOFF_BASE_S = 0.0
    settings.KEEL_BREAKER_FAILURE_THRESHOLD = 10_000  # about the books, not the breaker
    config = {
        **failing(0.3, seed=11, statuses=[429, 500, 503]),
        "cached_ratio": 0.3,
        "models": {"sim-cut": truncate_after(3)},
    }
    provider = sim_provider(simulator, workspace, config=config)
    sim_model(provider, alias="fast", **PRICES)
    sim_model(provider, alias="cut", **PRICES)
    key = api_key_issue(workspace=workspace, name="k").api_key
    user = UserFactory()
    membership_set(user=user, workspace=workspace, role="member")
    workflow_id = uuid.uuid4()
    budgets = [
        make_budget(workspace, "1000"),
        make_budget(workspace, "1000", scope=Budget.Scope.API_KEY, scope_id=key.pk, period=Budget.Period.DAY),
        make_budget(
            workspace, "0.0001", scope=Budget.Scope.USER, scope_id=user.pk, action=Budget.Action.WARN
        ),  # exceeded early: a warn budget keeps counting
    ]
    ctx = CallContext(workspace_id=workspace.pk, workflow_id=workflow_id, api_key_id=key.pk, user_id=user.pk)

    def work(share: range) -> None:
        try:
            for n in share:
                deltas: list[str] = []
                try:
                    gateway_complete(
                        ctx=ctx,
                        model="cut" if n % 13 == 0 else "fast",
                        fallbacks=["fast"] if n % 13 == 0 else [],
                        # Every fifth prompt repeats (temperature 0): cache hits, which reserve nothing.
                        messages=[{"role": "user", "content": f"Question {n % 5 if n % 5 == 0 else n}: tides?"}],
                        params={"max_tokens": 20 + n % 17, "temperature": 0 if n % 5 == 0 else 0.7},
                        retries=2,
                        on_delta=deltas.append if n % 3 == 0 else None,
                    )
                except ProviderError:
                    pass
        finally:
            connection.close()

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(work, [range(i, CALLS, THREADS) for i in range(THREADS)]))

    ledger = UsageRecord.objects.filter(workspace=workspace)
    total = ledger.aggregate(total=Sum("cost_usd"))["total"]
    kinds = {
        "failed": ledger.filter(status="failed").count(),
        "cache hits": ledger.filter(cache_hit=True).count(),
        "cut streams": ledger.filter(model_alias="cut").count(),
        "odd costs": ledger.exclude(cost_usd=0).count(),
    }
    assert all(kinds.values()), f"the test must exercise every kind of call: {kinds}"
    assert total > 0 and total != total.quantize(Decimal("0.00001")), "costs must use the last decimals"
    held = set(BudgetReservation.objects.values_list("call_id", flat=True))
    assert held == set(ledger.filter(cache_hit=False).values_list("call_id", flat=True)), "a hold per paid attempt"
    for budget in budgets:
        window = BudgetWindow.objects.get(budget=budget)
        its_calls = BudgetReservation.objects.filter(window=window).values("call_id")
        by_call = UsageRecord.objects.filter(call_id__in=its_calls).aggregate(total=Sum("cost_usd"))["total"]
        assert window.reserved == 0, budget
        assert window.spent == by_call == total, (budget, window.spent, by_call, total)
