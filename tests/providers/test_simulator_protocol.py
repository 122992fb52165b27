"""The simulator speaks the OpenAI chat-completions protocol over HTTP, through the `openai` SDK."""

from __future__ import annotations

import json
import time

import httpx
import httpx2
import jsonschema
import openai
import pytest

from apps.providers.simulator import KNOBS_HEADER, SimulatorCore, SimulatorTransport, key_fingerprint

pytestmark = pytest.mark.integration

MESSAGES = [{"role": "system", "content": "You triage."}, {"role": "user", "content": "My invoice is wrong!"}]
SCHEMA = {
    "type": "object",
    "required": ["category", "urgent"],
    "properties": {
        "category": {"enum": ["billing", "bug", "other"]},
        "urgent": {"type": "boolean"},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "minItems": 1},
        "note": {"type": ["string", "null"], "minLength": 3},
    },
}


def client(base_url: str, knobs: dict | None = None, api_key: str = "sk-test") -> openai.OpenAI:
    headers = {KNOBS_HEADER: json.dumps(knobs)} if knobs else None
    return openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=0, default_headers=headers)


def test_a_json_completion_carries_content_and_usage_and_is_billed(simulator):
    completion = client(simulator.base_url).chat.completions.create(model="sim-a", messages=MESSAGES)
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens > 0
    stats = simulator.stats()
    assert stats["calls"] == 1 and stats["billed_calls"] == 1
    assert stats["models"]["sim-a"]["prompt_tokens"] == usage.prompt_tokens
    assert stats["models"]["sim-a"]["completion_tokens"] == usage.completion_tokens
    assert "not a real model" in stats["simulator"]


def test_the_same_request_gets_the_same_answer_and_another_request_another(simulator):
    sdk = client(simulator.base_url)
    first = sdk.chat.completions.create(model="sim-a", messages=MESSAGES).choices[0].message.content
    again = sdk.chat.completions.create(model="sim-a", messages=MESSAGES).choices[0].message.content
    other = sdk.chat.completions.create(model="sim-a", messages=[{"role": "user", "content": "Hi"}])
    assert first == again
    assert other.choices[0].message.content != first


def test_a_stream_delivers_the_same_text_in_pieces_and_usage_in_its_final_chunk(simulator):
    sdk = client(simulator.base_url)
    whole = sdk.chat.completions.create(model="sim-a", messages=MESSAGES)
    chunks = list(
        sdk.chat.completions.create(
            model="sim-a", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == whole.choices[0].message.content
    assert len(pieces) == whole.usage.completion_tokens
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])
    assert simulator.stats()["billed_calls"] == 2


def test_json_schema_answers_are_valid_for_the_schema(simulator):
    sdk = client(simulator.base_url)
    for text in ("one", "two", "three", "four"):
        completion = sdk.chat.completions.create(
            model="sim-a",
            messages=[{"role": "user", "content": text}],
            response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": SCHEMA}},
        )
        jsonschema.validate(json.loads(completion.choices[0].message.content), SCHEMA)


def test_invalid_json_first_answers_against_the_schema_then_valid(simulator):
    sdk = client(simulator.base_url, {"invalid_json_first": 1})
    fmt = {"type": "json_schema", "json_schema": {"name": "t", "schema": SCHEMA}}
    first = json.loads(
        sdk.chat.completions.create(model="sim-a", messages=MESSAGES, response_format=fmt).choices[0].message.content
    )
    second = json.loads(
        sdk.chat.completions.create(model="sim-a", messages=MESSAGES, response_format=fmt).choices[0].message.content
    )
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(first, SCHEMA)
    jsonschema.validate(second, SCHEMA)


def test_max_tokens_cuts_the_answer_with_finish_reason_length(simulator):
    completion = client(simulator.base_url).chat.completions.create(model="sim-a", messages=MESSAGES, max_tokens=3)
    assert completion.usage.completion_tokens == 3
    assert completion.choices[0].finish_reason == "length"


def test_forced_status_answers_an_openai_shaped_error_with_retry_after_and_bills_nothing(simulator):
    with pytest.raises(openai.RateLimitError) as caught:
        client(simulator.base_url, {"status": 429, "retry_after": "2"}).chat.completions.create(
            model="sim-a", messages=MESSAGES
        )
    assert caught.value.response.headers["retry-after"] == "2"
    body = caught.value.response.json()
    assert body["error"]["code"] == "rate_limit_exceeded" and body["error"]["message"]
    for status, error in ((500, openai.InternalServerError), (503, openai.InternalServerError)):
        with pytest.raises(error):
            client(simulator.base_url, {"status": status}).chat.completions.create(model="sim-a", messages=MESSAGES)
    stats = simulator.stats()
    assert stats["calls"] == 3 and stats["errors"] == 3 and stats["billed_calls"] == 0
    assert stats["prompt_tokens"] == 0


def test_fail_first_fails_exactly_n_calls_per_model_then_succeeds(simulator):
    sdk = client(simulator.base_url, {"fail_first": 2, "status": 503})
    outcomes = []
    for _ in range(3):
        try:
            sdk.chat.completions.create(model="sim-a", messages=MESSAGES)
            outcomes.append("ok")
        except openai.InternalServerError:
            outcomes.append("503")
    assert outcomes == ["503", "503", "ok"]
    # Counters are per model: another model starts failing from its own first call.
    with pytest.raises(openai.InternalServerError):
        sdk.chat.completions.create(model="sim-b", messages=MESSAGES)


def test_a_failure_rate_is_deterministic_for_a_seed(simulator):
    def pattern(seed: int) -> list[bool]:
        simulator.reset()
        sdk = client(simulator.base_url, {"failure_rate": 0.5, "failure_seed": seed})
        failed = []
        for _ in range(20):
            try:
                sdk.chat.completions.create(model="sim-a", messages=MESSAGES)
                failed.append(False)
            except openai.APIStatusError as exc:
                assert exc.status_code in (500, 503)
                failed.append(True)
        return failed

    first = pattern(7)
    assert first == pattern(7)
    assert 0 < sum(first) < 20
    assert first != pattern(8)


def test_per_model_knobs_override_the_provider_wide_ones(simulator):
    sdk = client(simulator.base_url, {"models": {"sim-bad": {"status": 500}}})
    assert sdk.chat.completions.create(model="sim-good", messages=MESSAGES).choices
    with pytest.raises(openai.InternalServerError):
        sdk.chat.completions.create(model="sim-bad", messages=MESSAGES)


def test_bad_requests_and_bad_knobs_answer_400_naming_what_is_wrong(simulator):
    no_messages = httpx.post(f"{simulator.base_url}/chat/completions", json={"model": "m", "messages": []})
    assert no_messages.status_code == 400 and no_messages.json()["error"]["param"] == "messages"
    bad_knob = httpx.post(
        f"{simulator.base_url}/chat/completions",
        json={"model": "m", "messages": MESSAGES},
        headers={KNOBS_HEADER: json.dumps({"failure_rate": 3})},
    )
    assert bad_knob.status_code == 400 and "failure_rate" in bad_knob.json()["error"]["message"]
    assert httpx.get(f"{simulator.url}/nowhere").status_code == 404


def test_stats_name_api_keys_only_by_fingerprint_and_reset_clears_everything(simulator):
    client(simulator.base_url, api_key="sk-secret-value").chat.completions.create(model="sim-a", messages=MESSAGES)
    stats = simulator.stats()
    assert stats["api_keys"] == {key_fingerprint("sk-secret-value"): 1}
    assert "sk-secret-value" not in json.dumps(stats)
    simulator.reset()
    assert simulator.stats()["calls"] == 0 and simulator.stats()["models"] == {}


def test_a_client_that_gives_up_before_the_answer_is_not_billed(simulator):
    sdk = client(simulator.base_url, {"latency_first_ms": 1000})
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        sdk.chat.completions.create(model="sim-a", messages=MESSAGES, timeout=0.3)
    # Past the moment the answer would have been sent (and billed) had nobody hung up.
    time.sleep(max(0.0, 1.3 - (time.monotonic() - started)))
    stats = simulator.stats()
    assert stats["calls"] == 1 and stats["billed_calls"] == 0 and stats["completion_tokens"] == 0
    # The same request with patience is answered and billed.
    sdk.chat.completions.create(model="sim-a", messages=MESSAGES, timeout=5)
    assert simulator.stats()["billed_calls"] == 1


def test_the_in_process_transport_gives_the_same_answers_as_the_http_server(simulator):
    core = SimulatorCore()
    local = openai.OpenAI(
        api_key="sk-test",
        base_url="http://simulator.invalid/v1",
        max_retries=0,
        http_client=httpx2.Client(transport=SimulatorTransport(core)),
    )
    remote = client(simulator.base_url)
    a = local.chat.completions.create(model="sim-a", messages=MESSAGES)
    b = remote.chat.completions.create(model="sim-a", messages=MESSAGES)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.model_dump() == b.usage.model_dump()
    assert core.stats()["billed_calls"] == 1
