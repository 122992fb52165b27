"""A change to a model or its provider applies to the very next call, however it was made: the
gateway keeps its copy of a model only while the model's and provider's rows are unchanged."""

from __future__ import annotations

from decimal import Decimal

import pytest

from apps.providers.gateway import CallContext, ProviderError, gateway_complete
from apps.providers.models import Model
from apps.providers.services import model_update
from apps.usage.models import UsageRecord
from tests.support.simulator import always, sim_configure, sim_model, sim_provider

pytestmark = [pytest.mark.integration, pytest.mark.django_db]

MESSAGES = [{"role": "user", "content": "What does this cost?"}]


def ask(workspace, model: str = "fast") -> UsageRecord:
    result = gateway_complete(ctx=CallContext(workspace_id=workspace.pk), model=model, messages=MESSAGES, retries=0)
    return UsageRecord.objects.get(call_id=result.call_ids[-1])


def test_a_price_changed_through_the_service_applies_to_the_next_call(simulator, workspace):
    model = sim_model(sim_provider(simulator, workspace), alias="fast")
    assert ask(workspace).output_price_per_million == model.output_price_per_million

    model_update(model=model, output_price_per_million=Decimal("2.5"))

    booked = ask(workspace)
    assert booked.output_price_per_million == Decimal("2.5")
    assert booked.cost_usd == (
        booked.input_tokens * booked.input_price_per_million + booked.output_tokens * Decimal("2.5")
    ) / Decimal(1_000_000)


def test_a_price_changed_by_a_plain_update_without_touching_updated_at_applies_to_the_next_call(simulator, workspace):
    sim_model(sim_provider(simulator, workspace), alias="fast")
    ask(workspace)

    Model.objects.filter(workspace=workspace, alias="fast").update(input_price_per_million=Decimal("7"))

    assert ask(workspace).input_price_per_million == Decimal("7")


def test_a_renamed_alias_is_no_longer_found_and_the_new_one_is(simulator, workspace):
    model = sim_model(sim_provider(simulator, workspace), alias="fast")
    ask(workspace)

    model_update(model=model, alias="quick")

    with pytest.raises(ProviderError) as missing:
        ask(workspace, "fast")
    assert missing.value.code == "model_not_found"
    assert ask(workspace, "quick").model_alias == "quick"


def test_a_provider_change_reaches_the_next_call_through_the_models_it_serves(simulator, workspace):
    provider = sim_provider(simulator, workspace)
    sim_model(provider, alias="fast")
    ask(workspace)

    sim_configure(provider, always(503))

    with pytest.raises(ProviderError) as failed:
        ask(workspace)
    assert failed.value.code == "provider_unavailable"
