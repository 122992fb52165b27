"""Acceptance 4: after the threshold a failing model is skipped for the cool-down (the simulator sees
no calls to it), then exactly one probe goes through."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from apps.providers.breaker import breaker_allow, breaker_failure, breaker_state
from apps.providers.gateway import CallContext, ProviderError, gateway_complete
from tests.support.simulator import always, fail_first, sim_configure, sim_model, sim_provider

pytestmark = [pytest.mark.integration, pytest.mark.django_db]

MESSAGES = [{"role": "user", "content": "ping"}]
COOLDOWN = 0.5


@pytest.fixture
def breaker_settings(settings):
    settings.KEEL_BREAKER_FAILURE_THRESHOLD = 3
    settings.KEEL_BREAKER_COOLDOWN_S = COOLDOWN
    settings.KEEL_GATEWAY_BACKOFF_BASE_S = 0.0


def test_a_failing_model_is_skipped_during_the_cool_down_then_probed_once(simulator, workspace, breaker_settings):
    primary = sim_provider(simulator, workspace, name="Primary", config=always(500))
    fast = sim_model(primary, alias="fast")
    sim_model(sim_provider(simulator, workspace, name="Backup"), alias="backup")

    def ask() -> str:
        result = gateway_complete(
            ctx=CallContext(workspace_id=workspace.pk), model="fast", fallbacks=["backup"], messages=MESSAGES, retries=0
        )
        return result.model_alias

    assert [ask() for _ in range(3)] == ["backup"] * 3
    assert simulator.calls("sim-fast") == 3 and breaker_state(fast.pk) == "open"

    assert [ask() for _ in range(4)] == ["backup"] * 4
    assert simulator.calls("sim-fast") == 3  # skipped: not one request during the cool-down

    time.sleep(COOLDOWN + 0.05)
    assert ask() == "backup"  # the probe went to the still-failing primary ...
    assert simulator.calls("sim-fast") == 4
    assert ask() == "backup"  # ... which opened the breaker for another cool-down
    assert simulator.calls("sim-fast") == 4

    sim_configure(primary, {})  # the provider recovers
    time.sleep(COOLDOWN + 0.05)
    assert ask() == "fast"  # the probe succeeds and closes the breaker
    assert ask() == "fast"
    assert simulator.calls("sim-fast") == 6 and breaker_state(fast.pk) == "closed"


def test_a_success_resets_the_count_of_consecutive_failures(simulator, workspace, breaker_settings):
    provider = sim_provider(simulator, workspace, config={"fail_first": 2, "status": 503})
    fast = sim_model(provider, alias="fast")
    ctx = CallContext(workspace_id=workspace.pk)
    gateway_complete(ctx=ctx, model="fast", messages=MESSAGES, retries=2)  # fails twice, then succeeds
    breaker_failure(fast.pk)
    breaker_failure(fast.pk)
    assert breaker_state(fast.pk) == "closed"  # 2 failures since the success, below the threshold of 3


def test_only_one_of_many_concurrent_callers_gets_the_half_open_probe(breaker_settings):
    model_id = uuid.uuid4()
    for _ in range(3):
        breaker_failure(model_id)
    assert breaker_allow(model_id) is False
    time.sleep(COOLDOWN + 0.05)

    start = threading.Barrier(8)
    allowed: list[bool] = []

    def contend() -> None:
        start.wait()
        allowed.append(breaker_allow(model_id))

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(allowed) == [False] * 7 + [True]


def test_a_probe_refused_by_a_budget_gives_its_slot_back(simulator, workspace, breaker_settings, settings):
    from decimal import Decimal

    from apps.core.problems import BudgetExceeded
    from apps.usage.services import budget_create, budget_update

    settings.KEEL_BREAKER_FAILURE_THRESHOLD = 1
    provider = sim_provider(simulator, workspace, config=fail_first(1, status=500))
    sim_model(provider, alias="fast")
    ctx = CallContext(workspace_id=workspace.pk)
    with pytest.raises(ProviderError):
        gateway_complete(ctx=ctx, model="fast", messages=MESSAGES, retries=0)  # opens the breaker
    budget = budget_create(workspace=workspace, scope="workspace", period="month", limit_usd=Decimal("0.000001"))
    time.sleep(COOLDOWN + 0.05)

    with pytest.raises(BudgetExceeded):
        gateway_complete(ctx=ctx, model="fast", messages=MESSAGES, retries=0)  # won the probe, sent nothing
    budget_update(budget=budget, limit_usd=Decimal("10"))
    assert gateway_complete(ctx=ctx, model="fast", messages=MESSAGES, retries=0).model_alias == "fast"
    assert simulator.calls("sim-fast") == 2
