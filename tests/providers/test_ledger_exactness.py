"""Acceptance 5: over 1,000 calls with 30% injected transient failures the ledger's tokens equal the
simulator's books exactly, and the total cost equals tokens x prices exactly (Decimal).

The calls come from 4 threads (each with its own database connection), as from several workers:
the books must stay exact under concurrent writers too, and the test stays quick.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import Count, Q, Sum

from apps.providers.gateway import CallContext, ProviderError, gateway_complete
from apps.usage.models import UsageRecord
from tests.support.simulator import PRICES, failing, sim_model, sim_provider

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

CALLS = 1000
THREADS = 4


def test_a_thousand_calls_with_30_percent_failures_book_exactly_what_the_provider_billed(
    simulator, workspace, settings
):
    settings.KEEL_GATEWAY_BACKOFF_BASE_S = 0.0  # no real sleeps: the simulator sends no Retry-After here
    settings.KEEL_BREAKER_FAILURE_THRESHOLD = 10_000  # this test is about the books, not the breaker
    config = {**failing(0.3, seed=2024, statuses=[429, 500, 503]), "cached_ratio": 0.25}
    provider = sim_provider(simulator, workspace, config=config)
    sim_model(provider, alias="fast")
    ctx = CallContext(workspace_id=workspace.pk)

    def work(share: range) -> tuple[int, int, Decimal]:
        answered, gave_up, costs = 0, 0, Decimal("0")
        try:
            for n in share:
                messages = [{"role": "user", "content": f"Ticket {n}: " + "please help " * (n % 7)}]
                try:
                    result = gateway_complete(
                        ctx=ctx, model="fast", messages=messages, retries=3, params={"max_tokens": 64}
                    )
                except ProviderError as exc:
                    gave_up, costs = gave_up + 1, costs + exc.cost_usd
                else:
                    answered, costs = answered + 1, costs + result.cost_usd
        finally:
            connection.close()  # this thread's own connection
        return answered, gave_up, costs

    with ThreadPoolExecutor(THREADS) as pool:
        outcomes = list(pool.map(work, [range(i, CALLS, THREADS) for i in range(THREADS)]))
    answered = sum(o[0] for o in outcomes)
    gave_up = sum(o[1] for o in outcomes)
    result_costs = sum((o[2] for o in outcomes), Decimal("0"))

    stats = simulator.stats()
    ledger = UsageRecord.objects.filter(workspace=workspace).aggregate(
        rows=Count("id"),
        ok=Count("id", filter=Q(status="succeeded")),
        failed=Count("id", filter=Q(status="failed")),
        input=Sum("input_tokens"),
        cached=Sum("cached_input_tokens"),
        output=Sum("output_tokens"),
        cost=Sum("cost_usd"),
    )
    # The failures really happened, at about the injected rate, and were retried.
    assert 0.25 < stats["errors"] / stats["calls"] < 0.35
    assert answered + gave_up == CALLS and answered == stats["billed_calls"]
    # One ledger row per request the provider received; tokens exactly as billed.
    assert ledger["rows"] == stats["calls"]
    assert ledger["ok"] == stats["billed_calls"] and ledger["failed"] == stats["errors"]
    assert ledger["input"] == stats["prompt_tokens"]
    assert ledger["cached"] == stats["cached_tokens"] > 0
    assert ledger["output"] == stats["completion_tokens"]
    # Cost: the provider's token counts times the prices, exactly.
    million = Decimal(1_000_000)
    expected = (
        (stats["prompt_tokens"] - stats["cached_tokens"]) * PRICES["input_price_per_million"]
        + stats["cached_tokens"] * PRICES["cached_input_price_per_million"]
        + stats["completion_tokens"] * PRICES["output_price_per_million"]
    ) / million
    assert ledger["cost"] == expected
    assert result_costs == expected
