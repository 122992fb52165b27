"""Acceptance 1 and 2: Keel's own retry loop (the SDK's retries are off), Retry-After, fallbacks."""

from __future__ import annotations

import time

import pytest

from apps.providers.gateway import CallContext, ProviderError, gateway_complete
from apps.usage.models import UsageRecord
from tests.support.simulator import always, fail_first, sim_model, sim_provider

pytestmark = [pytest.mark.integration, pytest.mark.django_db]

MESSAGES = [{"role": "user", "content": "Classify: my invoice is wrong"}]


def test_429_with_retry_after_one_second_then_success_waits_and_books_both_attempts(simulator, workspace):
    provider = sim_provider(simulator, workspace, config=fail_first(1, status=429, retry_after="1"))
    sim_model(provider, alias="fast")

    started = time.monotonic()
    result = gateway_complete(ctx=CallContext(workspace_id=workspace.pk), model="fast", messages=MESSAGES, retries=2)
    waited = time.monotonic() - started

    assert result.content and result.attempts == 2 and not result.fallback_used
    assert waited >= 0.9
    assert simulator.calls("sim-fast") == 2
    rows = list(UsageRecord.objects.filter(call_id__in=result.call_ids).order_by("attempt"))
    assert [(r.status, r.http_status, r.error_code) for r in rows] == [
        ("failed", 429, "provider_rate_limited"),
        ("succeeded", 200, ""),
    ]
    assert rows[0].cost_usd == 0 and rows[0].input_tokens == 0
    assert rows[1].cost_usd == result.cost_usd > 0


def test_a_primary_that_always_fails_is_retried_exactly_then_the_fallback_answers(simulator, workspace, no_backoff):
    primary = sim_provider(simulator, workspace, name="Primary", config=always(500))
    backup = sim_provider(simulator, workspace, name="Backup")
    sim_model(primary, alias="fast")
    sim_model(backup, alias="backup")

    result = gateway_complete(
        ctx=CallContext(workspace_id=workspace.pk), model="fast", fallbacks=["backup"], messages=MESSAGES, retries=3
    )

    assert result.model_alias == "backup" and result.model_name == "sim-backup"
    assert result.provider_name == "Backup" and result.fallback_used
    assert simulator.calls("sim-fast") == 4  # the first attempt and exactly 3 retries: no SDK retries
    assert simulator.calls("sim-backup") == 1
    assert result.attempts == 5
    statuses = list(
        UsageRecord.objects.filter(call_id__in=result.call_ids).order_by("attempt").values_list("model_alias", "status")
    )
    assert statuses == [("fast", "failed")] * 4 + [("backup", "succeeded")]


def test_with_every_model_failing_the_error_names_each_model_and_counts_every_attempt(simulator, workspace, no_backoff):
    provider = sim_provider(simulator, workspace, config=always(503))
    sim_model(provider, alias="fast")
    sim_model(provider, alias="backup")

    with pytest.raises(ProviderError) as caught:
        gateway_complete(
            ctx=CallContext(workspace_id=workspace.pk), model="fast", fallbacks=["backup"], messages=MESSAGES, retries=1
        )

    error = caught.value
    assert error.code == "provider_unavailable" and error.status == 503
    assert error.attempts == 4 and len(error.call_ids) == 4
    assert "fast:" in str(error) and "backup:" in str(error) and "503" in str(error)
    assert UsageRecord.objects.filter(call_id__in=error.call_ids, status="failed").count() == 4


def test_a_request_the_provider_refuses_is_not_retried_but_falls_back(simulator, workspace, no_backoff):
    primary = sim_provider(simulator, workspace, name="Primary", config=always(400))
    backup = sim_provider(simulator, workspace, name="Backup")
    sim_model(primary, alias="fast")
    sim_model(backup, alias="backup")

    result = gateway_complete(
        ctx=CallContext(workspace_id=workspace.pk), model="fast", fallbacks=["backup"], messages=MESSAGES, retries=3
    )

    assert result.model_alias == "backup"
    assert simulator.calls("sim-fast") == 1


def test_call_ids_follow_the_call_key_and_on_attempt_sees_each_before_it_is_sent(simulator, workspace, no_backoff):
    provider = sim_provider(simulator, workspace, config=fail_first(2, status=503))
    sim_model(provider, alias="fast")
    seen: list[tuple[str, int]] = []

    result = gateway_complete(
        ctx=CallContext(workspace_id=workspace.pk),
        model="fast",
        messages=MESSAGES,
        retries=2,
        call_key="run1-classify-1",
        on_attempt=lambda call_id, model, provider: seen.append((call_id, simulator.calls("sim-fast"))),
    )

    assert result.call_ids == ["run1-classify-1-1", "run1-classify-1-2", "run1-classify-1-3"]
    # Each id was announced while the simulator had seen only the attempts before it.
    assert seen == [("run1-classify-1-1", 0), ("run1-classify-1-2", 1), ("run1-classify-1-3", 2)]


def test_on_attempt_names_the_model_and_provider_each_call_goes_to_fallbacks_included(simulator, workspace):
    sim_model(sim_provider(simulator, workspace, name="Primary", config=always(500)), alias="fast")
    sim_model(sim_provider(simulator, workspace, name="Secondary"), alias="backup")
    seen: list[tuple[str, str, str]] = []

    result = gateway_complete(
        ctx=CallContext(workspace_id=workspace.pk),
        model="fast",
        fallbacks=["backup"],
        messages=MESSAGES,
        retries=0,
        call_key="run1-classify-1",
        on_attempt=lambda call_id, model, provider: seen.append((call_id, model, provider)),
    )

    assert result.model_alias == "backup"
    assert seen == [("run1-classify-1-1", "fast", "Primary"), ("run1-classify-1-2", "backup", "Secondary")]


def test_an_unknown_alias_is_a_model_not_found_error_without_any_call(simulator, workspace):
    with pytest.raises(ProviderError) as caught:
        gateway_complete(ctx=CallContext(workspace_id=workspace.pk), model="nope", messages=MESSAGES)
    assert caught.value.code == "model_not_found" and "'nope'" in str(caught.value)
    assert simulator.calls() == 0


def test_a_model_of_another_workspace_is_not_found(simulator, workspace, other_workspace):
    theirs = sim_provider(simulator, other_workspace)
    sim_model(theirs, alias="fast")
    with pytest.raises(ProviderError) as caught:
        gateway_complete(ctx=CallContext(workspace_id=workspace.pk), model="fast", messages=MESSAGES)
    assert caught.value.code == "model_not_found"
    assert simulator.calls() == 0
