"""Acceptance 8: streaming delivers deltas in order and books usage from the final chunk."""

from __future__ import annotations

import json
import time

import pytest

from apps.providers.gateway import CallAborted, CallContext, ProviderError, _sse_data, gateway_complete
from apps.usage.models import UsageRecord
from tests.support.simulator import sim_model, sim_provider, truncate_after

pytestmark = [pytest.mark.integration, pytest.mark.django_db]

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Explain retries, please."}]


def test_deltas_arrive_in_order_and_usage_comes_from_the_final_chunk(simulator, workspace):
    provider = sim_provider(simulator, workspace, config={"latency_per_token_ms": 1})
    sim_model(provider, alias="fast")
    ctx = CallContext(workspace_id=workspace.pk)
    deltas: list[str] = []

    streamed = gateway_complete(ctx=ctx, model="fast", messages=MESSAGES, on_delta=deltas.append)
    whole = gateway_complete(ctx=ctx, model="fast", messages=MESSAGES)  # the same request, not streamed

    assert len(deltas) > 5
    assert "".join(deltas) == streamed.content == whole.content
    assert len(deltas) == streamed.output_tokens == whole.output_tokens
    stats = simulator.model_stats("sim-fast")
    row = UsageRecord.objects.get(call_id=streamed.call_ids[0])
    assert (row.input_tokens, row.output_tokens) == (streamed.input_tokens, streamed.output_tokens)
    assert row.input_tokens + whole.input_tokens == stats["prompt_tokens"]
    assert row.output_tokens + whole.output_tokens == stats["completion_tokens"]
    assert row.cost_usd == streamed.cost_usd > 0


def test_a_model_that_cannot_stream_feeds_the_stream_once_with_the_whole_answer(simulator, workspace):
    sim_model(sim_provider(simulator, workspace), alias="fast", supports_streaming=False)
    deltas: list[str] = []
    result = gateway_complete(
        ctx=CallContext(workspace_id=workspace.pk), model="fast", messages=MESSAGES, on_delta=deltas.append
    )
    assert deltas == [result.content]


def test_a_stream_cut_on_the_primary_is_discarded_before_the_fallback_streams(simulator, workspace, no_backoff):
    provider = sim_provider(simulator, workspace, config={"models": {"sim-fast": truncate_after(2)}})
    sim_model(provider, alias="fast")
    sim_model(provider, alias="backup")
    received: list[str] = []

    result = gateway_complete(
        ctx=CallContext(workspace_id=workspace.pk),
        model="fast",
        fallbacks=["backup"],
        messages=MESSAGES,
        retries=0,
        on_delta=received.append,
        on_retry=received.clear,
    )

    assert result.model_alias == "backup"
    assert "".join(received) == result.content


def test_cancelling_mid_stream_stops_the_call_books_the_attempt_and_is_not_billed(simulator, workspace):
    sim_model(sim_provider(simulator, workspace, config={"latency_per_token_ms": 10}), alias="fast")
    deltas: list[str] = []
    call_ids: list[str] = []

    with pytest.raises(CallAborted):
        gateway_complete(
            ctx=CallContext(workspace_id=workspace.pk),
            model="fast",
            messages=MESSAGES,
            on_delta=deltas.append,
            should_abort=lambda: len(deltas) >= 3,
            on_attempt=lambda call_id, model, provider: call_ids.append(call_id),
        )

    assert len(deltas) == 3
    row = UsageRecord.objects.get(call_id=call_ids[0])
    assert (row.status, row.error_code, row.cost_usd) == ("failed", "aborted", 0)
    time.sleep(0.5)  # past the end the stream would have reached (at most 40 tokens x 10 ms) had we stayed
    assert simulator.stats()["billed_calls"] == 0


def test_a_cancelled_run_makes_no_call_at_all(simulator, workspace):
    sim_model(sim_provider(simulator, workspace), alias="fast")
    with pytest.raises(CallAborted):
        gateway_complete(
            ctx=CallContext(workspace_id=workspace.pk), model="fast", messages=MESSAGES, should_abort=lambda: True
        )
    assert simulator.calls() == 0 and not UsageRecord.objects.exists()


def test_a_stream_that_stalls_past_the_timeout_is_a_provider_timeout_after_its_first_deltas(simulator, workspace):
    sim_model(sim_provider(simulator, workspace, config={"latency_per_token_ms": 1000}), alias="fast")
    deltas: list[str] = []
    with pytest.raises(ProviderError) as failed:
        gateway_complete(
            ctx=CallContext(workspace_id=workspace.pk),
            model="fast",
            messages=MESSAGES,
            on_delta=deltas.append,
            retries=0,
            timeout_s=0.3,
        )
    assert failed.value.code == "provider_timeout" and "while streaming" in str(failed.value)
    row = UsageRecord.objects.get(call_id=failed.value.call_ids[0])
    assert (row.status, row.error_code) == ("failed", "provider_timeout")


@pytest.mark.parametrize(
    "chunks",
    [
        [b'data: {"a": 1}\n\ndata: {"a": 2}\n\n'],
        [b'data: {"a": 1}\r\n\r\ndata: {"a": 2}\r\n\r\n'],
        [b'data: {"a": 1}\r', b"\n\r", b'\ndata: {"a": 2}\r\n', b"\r\n"],  # CRLF split across reads
        [b'data: {"a": 1}\r\rdata: {"a"', b": 2}\r\r"],
        [b': keep-alive\n\nevent: chunk\nid: 7\ndata: {"a": 1}\n\n', b'data:{"a": 2}\n\n'],
        [b'data: {"a": 1}\n\ndata: {"a": 2}\n\ndata: {"a": 3}\n'],  # the stream ends inside an event
    ],
)
def test_server_sent_events_are_read_whatever_the_line_ends_and_read_boundaries(chunks):
    assert [json.loads(data) for data in _sse_data(iter(chunks))] == [{"a": 1}, {"a": 2}]


def test_an_event_of_several_data_lines_is_one_value():
    assert list(_sse_data(iter([b'data: {"a":\ndata:  1}\n\n']))) == [b'{"a":\n 1}']
