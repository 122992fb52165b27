"""Acceptance 3: timeouts, refused connections, malformed bodies and cut streams end as ProviderError
with a clear message; nothing escapes as an unhandled exception, and every attempt is booked."""

from __future__ import annotations

import pytest

from apps.providers.gateway import CallContext, ProviderError, gateway_complete
from apps.providers.models import Provider
from apps.providers.services import provider_create
from apps.usage.models import UsageRecord
from tests.support.processes import free_port
from tests.support.simulator import malformed, sim_model, sim_provider, slow, truncate_after

pytestmark = [pytest.mark.integration, pytest.mark.django_db]

MESSAGES = [{"role": "user", "content": "Summarise the ticket"}]


def call(workspace, **kwargs) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        gateway_complete(ctx=CallContext(workspace_id=workspace.pk), model="fast", messages=MESSAGES, **kwargs)
    return caught.value


def booked(error: ProviderError) -> list[tuple[str, str]]:
    rows = UsageRecord.objects.filter(call_id__in=error.call_ids).order_by("attempt")
    return list(rows.values_list("status", "error_code"))


def test_a_timeout_is_a_provider_timeout_error(simulator, workspace, no_backoff):
    sim_model(sim_provider(simulator, workspace, config=slow(2)), alias="fast")
    error = call(workspace, retries=1, timeout_s=0.3)
    assert error.code == "provider_timeout"
    assert "did not answer in time" in str(error) and "0.3s" in str(error)
    assert booked(error) == [("failed", "provider_timeout")] * 2
    assert simulator.calls("sim-fast") == 2


def test_a_refused_connection_is_a_provider_unavailable_error(simulator, workspace, no_backoff):
    provider = provider_create(
        workspace=workspace,
        name="Nobody home",
        kind=Provider.Kind.OPENAI_COMPATIBLE,
        base_url=f"http://127.0.0.1:{free_port()}/v1",
    )
    sim_model(provider, alias="fast")
    error = call(workspace, retries=1)
    assert error.code == "provider_unavailable"
    assert "could not connect to http://127.0.0.1:" in str(error) and "ConnectError" in str(error)
    assert booked(error) == [("failed", "provider_unavailable")] * 2


def test_a_malformed_json_body_is_a_bad_response_error(simulator, workspace, no_backoff):
    sim_model(sim_provider(simulator, workspace, config=malformed()), alias="fast")
    error = call(workspace, retries=0)
    assert error.code == "provider_bad_response"
    assert "malformed response from the provider" in str(error)
    assert booked(error) == [("failed", "provider_bad_response")]


def test_a_truncated_stream_is_a_bad_response_error_and_its_deltas_were_delivered(simulator, workspace, no_backoff):
    sim_model(sim_provider(simulator, workspace, config=truncate_after(3)), alias="fast")
    deltas: list[str] = []
    error = call(workspace, retries=0, on_delta=deltas.append)
    assert error.code == "provider_bad_response"
    assert "stream was cut before its end" in str(error)
    assert len(deltas) == 3
    # The simulator did not bill the cut stream and the ledger books no tokens for it.
    assert simulator.stats()["billed_calls"] == 0
    row = UsageRecord.objects.get(call_id=error.call_ids[0])
    assert (row.status, row.input_tokens, row.output_tokens, row.cost_usd) == ("failed", 0, 0, 0)


def test_the_in_process_simulator_cuts_a_stream_the_same_way(workspace):
    sim_model(sim_provider(None, workspace, config=truncate_after(2)), alias="fast")
    deltas: list[str] = []
    error = call(workspace, retries=0, on_delta=deltas.append)
    assert error.code == "provider_bad_response" and "stream was cut before its end" in str(error)
    assert len(deltas) == 2
