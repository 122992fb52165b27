"""Acceptance 6: an identical temperature-0 call is served from the cache, costs nothing, books the
saved cost, and never crosses workspaces."""

from __future__ import annotations

import pytest
from django.core.cache import cache

from apps.providers.gateway import CachePolicy, CallContext, gateway_complete
from apps.providers.response_cache import response_cache_key
from apps.usage.models import UsageRecord
from tests.support.simulator import invalid_json_first, sim_model, sim_provider

pytestmark = [pytest.mark.integration, pytest.mark.django_db]

MESSAGES = [{"role": "user", "content": "Which team owns billing?"}]
SCHEMA = {"type": "object", "required": ["team"], "properties": {"team": {"type": "string"}}}


def test_a_second_identical_temperature_zero_call_makes_no_provider_call_and_books_the_saving(simulator, workspace):
    sim_model(sim_provider(simulator, workspace), alias="fast")
    ctx = CallContext(workspace_id=workspace.pk)

    first = gateway_complete(ctx=ctx, model="fast", messages=MESSAGES, params={"temperature": 0})
    second = gateway_complete(ctx=ctx, model="fast", messages=MESSAGES, params={"temperature": 0})

    assert simulator.calls("sim-fast") == 1
    assert not first.cache_hit and first.cost_usd > 0
    assert second.cache_hit and second.attempts == 0 and second.cost_usd == 0
    assert second.content == first.content and second.saved_usd == first.cost_usd
    assert (second.input_tokens, second.output_tokens) == (first.input_tokens, first.output_tokens)
    hit = UsageRecord.objects.get(call_id=second.call_ids[0])
    assert hit.cache_hit and hit.status == "succeeded" and hit.attempt == 0
    assert hit.cost_usd == 0 and hit.saved_usd == first.cost_usd
    assert (hit.input_tokens, hit.output_tokens) == (0, 0)  # nothing was billed for it


def test_the_same_request_from_another_workspace_is_not_served_from_the_first_workspaces_cache(
    simulator, workspace, other_workspace
):
    for ws in (workspace, other_workspace):
        sim_model(sim_provider(simulator, ws), alias="fast")  # same upstream model on the same simulator

    mine = gateway_complete(
        ctx=CallContext(workspace_id=workspace.pk), model="fast", messages=MESSAGES, params={"temperature": 0}
    )
    theirs = gateway_complete(
        ctx=CallContext(workspace_id=other_workspace.pk), model="fast", messages=MESSAGES, params={"temperature": 0}
    )

    assert not mine.cache_hit and not theirs.cache_hit
    assert simulator.calls("sim-fast") == 2
    assert UsageRecord.objects.filter(workspace=other_workspace, cache_hit=True).count() == 0


def test_only_temperature_zero_is_cached_unless_the_policy_says_otherwise(simulator, workspace):
    sim_model(sim_provider(simulator, workspace), alias="fast")
    ctx = CallContext(workspace_id=workspace.pk)

    def twice(**kwargs) -> bool:
        gateway_complete(ctx=ctx, model="fast", messages=MESSAGES, **kwargs)
        return gateway_complete(ctx=ctx, model="fast", messages=MESSAGES, **kwargs).cache_hit

    assert twice(params={"temperature": 0.7}) is False
    assert twice(params={}) is False
    assert twice(params={"temperature": 0.7, "seed": 1}, cache=CachePolicy(enabled=True)) is True
    assert twice(params={"temperature": 0, "seed": 2}, cache=CachePolicy(enabled=False)) is False


def test_entries_live_for_the_policys_ttl(simulator, workspace):
    model = sim_model(sim_provider(simulator, workspace), alias="fast")
    gateway_complete(
        ctx=CallContext(workspace_id=workspace.pk),
        model="fast",
        messages=MESSAGES,
        params={"temperature": 0},
        cache=CachePolicy(ttl_s=120),
    )
    key = response_cache_key(
        workspace_id=workspace.pk,
        provider_id=model.provider_id,
        model_name="sim-fast",
        messages=MESSAGES,
        params={"temperature": 0},
        response_schema=None,
    )
    assert 0 < cache.ttl(key) <= 120


def test_an_answer_that_fails_the_response_schema_is_not_cached(simulator, workspace):
    sim_model(sim_provider(simulator, workspace, config=invalid_json_first(1)), alias="fast")
    ctx = CallContext(workspace_id=workspace.pk)

    def ask():
        return gateway_complete(
            ctx=ctx, model="fast", messages=MESSAGES, params={"temperature": 0}, response_schema=SCHEMA
        )

    invalid, valid, cached = ask(), ask(), ask()
    assert "team" not in invalid.parsed and not invalid.cache_hit
    assert valid.parsed["team"] and not valid.cache_hit
    assert cached.cache_hit and cached.parsed == valid.parsed
    assert simulator.calls("sim-fast") == 2
