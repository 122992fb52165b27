"""The gateway's remaining promises: trace propagation, Retry-After forms, per-version clients that
heal with their provider, budget refusals before any call, and call ids that fit the ledger."""

from __future__ import annotations

import email.utils
from decimal import Decimal

import pytest

from apps.core.problems import BudgetExceeded
from apps.providers import clients
from apps.providers.gateway import CallContext, ProviderError, gateway_complete, parse_retry_after
from apps.usage.models import BudgetWindow, UsageRecord
from apps.usage.services import budget_create
from tests.support.simulator import always, fail_first, sim_configure, sim_model, sim_provider

pytestmark = [pytest.mark.integration, pytest.mark.django_db]

MESSAGES = [{"role": "user", "content": "Route this ticket"}]
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_the_callers_traceparent_reaches_the_provider(simulator, workspace):
    sim_model(sim_provider(simulator, workspace), alias="fast")
    gateway_complete(ctx=CallContext(workspace_id=workspace.pk), model="fast", messages=MESSAGES)
    gateway_complete(
        ctx=CallContext(workspace_id=workspace.pk, traceparent=TRACEPARENT), model="fast", messages=MESSAGES
    )
    assert simulator.stats()["calls"] == 2 and simulator.stats()["traced_calls"] == 1


def test_retry_after_is_read_as_seconds_or_as_an_http_date():
    assert parse_retry_after("1") == 1.0
    assert parse_retry_after("0.5") == 0.5
    now = 1_800_000_000.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == 30.0
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_a_retry_after_longer_than_the_limit_goes_to_the_fallback_without_retrying(simulator, workspace, settings):
    settings.KEEL_GATEWAY_RETRY_AFTER_MAX_S = 5
    sim_model(sim_provider(simulator, workspace, name="Busy", config=always(429, retry_after="120")), alias="fast")
    sim_model(sim_provider(simulator, workspace, name="Backup"), alias="backup")
    result = gateway_complete(
        ctx=CallContext(workspace_id=workspace.pk), model="fast", fallbacks=["backup"], messages=MESSAGES, retries=3
    )
    assert result.model_alias == "backup"
    assert simulator.calls("sim-fast") == 1


def test_a_failure_healed_by_changing_the_provider_is_picked_up_by_the_next_call(simulator, workspace, no_backoff):
    provider = sim_provider(simulator, workspace, config=always(503))
    sim_model(provider, alias="fast")
    ctx = CallContext(workspace_id=workspace.pk)
    with pytest.raises(ProviderError):
        gateway_complete(ctx=ctx, model="fast", messages=MESSAGES, retries=0)
    before = clients.client_for(provider)
    assert clients.client_for(provider) is before  # an unchanged provider keeps its client

    healed = sim_configure(provider, {})
    assert gateway_complete(ctx=ctx, model="fast", messages=MESSAGES, retries=0).content
    assert clients.client_for(healed) is not before


def test_a_blocking_budget_without_room_refuses_before_any_provider_call(simulator, workspace):
    sim_model(sim_provider(simulator, workspace), alias="fast")
    budget_create(workspace=workspace, scope="workspace", period="month", limit_usd=Decimal("0.0000010000"))
    with pytest.raises(BudgetExceeded):
        gateway_complete(ctx=CallContext(workspace_id=workspace.pk), model="fast", messages=MESSAGES)
    assert simulator.calls() == 0 and not UsageRecord.objects.exists()


def test_a_call_within_budget_is_settled_at_its_ledger_cost(simulator, workspace, no_backoff):
    sim_model(sim_provider(simulator, workspace, config=fail_first(1, status=500)), alias="fast")
    budget_create(workspace=workspace, scope="workspace", period="month", limit_usd=Decimal("5"))
    result = gateway_complete(
        ctx=CallContext(workspace_id=workspace.pk), model="fast", messages=MESSAGES, params={"max_tokens": 50}
    )
    window = BudgetWindow.objects.get()
    assert window.spent == result.cost_usd > 0
    assert window.reserved == 0  # the failed attempt's hold was released, the good one's settled


def test_call_ids_from_a_long_call_key_still_fit_the_ledger_and_stay_deterministic(simulator, workspace):
    sim_model(sim_provider(simulator, workspace), alias="fast")
    key = "run-" + "7" * 36 + "-a-step-id-that-is-quite-long-indeed-" + "x" * 40 + "-1"
    first = gateway_complete(ctx=CallContext(workspace_id=workspace.pk), model="fast", messages=MESSAGES, call_key=key)
    assert len(first.call_ids[0]) <= 64 and first.call_ids[0].endswith("-1")
    again = gateway_complete(
        ctx=CallContext(workspace_id=workspace.pk), model="fast", messages=MESSAGES, call_key=key, retries=0
    )
    assert again.call_ids == first.call_ids  # the same key names the same call (booked once)
    assert UsageRecord.objects.filter(call_id=first.call_ids[0]).count() == 1
