"""Keel's provider simulator: the OpenAI chat-completions wire protocol, with knobs for faults.

It is NOT a model. It answers deterministically for a given request (the text is derived from a
hash of the model name, the messages and the response format), bills tokens counted by
apps.providers.tokens, and can be told to be slow, to fail, to send garbage or to cut a stream.

One protocol core (`SimulatorCore.handle`) serves two front ends:
- `SimulatorTransport`, an in-process `httpx2` transport handed to the `openai` client when a
  Provider of kind `simulator` has no base_url (the embedded demo: no port, no process);
- `serve()`, a threaded HTTP server (`python manage.py run_simulator --host 127.0.0.1 --port N`)
  used by tests and benchmarks.

Endpoints: `POST /v1/chat/completions` (JSON, or SSE with `stream: true`; `stream_options.
include_usage` adds the final usage chunk; `response_format` `json_schema` answers JSON valid for
the schema, `json_object` answers a JSON object), `GET /v1/models`, `GET /stats`, `POST /stats/reset`.

Knobs travel with each request as one JSON header, `X-Keel-Simulator` (the gateway sends a
simulator Provider's `config` there), so the same knobs work in-process and over HTTP:

    latency_first_ms      time to first token (every reply, errors included, waits this long)
    latency_per_token_ms  time per completion token (between stream chunks; added to JSON replies)
    failure_rate          0..1: share of calls that fail with `failure_status`, decided by a
    failure_seed          ... pseudo-random draw seeded by (seed, scope, model, call number)
    failure_status        a status or a list to draw from (default [500, 503])
    status                force this error status (429, 500, 503, ...) on every call, or only
    fail_first            ... on the first N calls (then succeed)
    retry_after           `Retry-After` value sent with error replies (seconds or an HTTP date)
    malformed             true: answer 200 with a JSON body cut in half
    truncate_after        N: a stream is cut (connection dropped, no terminator) after N tokens
    invalid_json_first    N: the first N `json_schema` answers do NOT match the schema
    cached_ratio          0..1: share of prompt tokens reported as cached (`cached_tokens`)
    scope                 namespace of the call counters behind fail_first / invalid_json_first
    models                {"<model name>": {knobs}}: per-model overrides of the knobs above

Call counters are kept per (scope, model name) and cleared by `POST /stats/reset`.

Billing (what `/stats` reports as prompt/completion tokens): a call is billed exactly when its
usage reached the client intact: a JSON reply once it is written; a stream once its usage chunk
(or, without include_usage, its `[DONE]`) is written. Error replies, malformed bodies, cut streams
and calls whose client went away before the answer was sent (a timeout or a killed worker) are
not billed. Under that rule a correct gateway's ledger equals `/stats` exactly.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import select
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2

from apps.providers.tokens import count_prompt_tokens, count_tokens, pieces

KNOBS_HEADER = "X-Keel-Simulator"
SIMULATOR_NOTICE = "Keel simulator: not a real model"

_VOCAB = (
    "keel ledger budget token stream model answer request cache retry workflow step provider signal "
    "harbor river compass lantern meadow orbit pixel quartz saffron timber velvet willow amber basalt "
    "cedar delta ember fjord granite horizon island juniper kestrel lagoon marble nectar obsidian "
    "prairie quill ridge summit tundra umber valley walnut zephyr bright calm swift steady clear "
    "quiet bold gentle rapid"
).split()

_INT_KNOBS = ("fail_first", "truncate_after", "invalid_json_first")
_MS_KNOBS = ("latency_first_ms", "latency_per_token_ms")
_RATIO_KNOBS = ("failure_rate", "cached_ratio")
KNOB_NAMES = frozenset(
    {*_INT_KNOBS, *_MS_KNOBS, *_RATIO_KNOBS, "failure_seed", "failure_status", "status", "retry_after"}
    | {"malformed", "scope", "models"}
)


def validate_config(config: Any, *, prefix: str = "config") -> list[dict[str, str]]:
    """Problems with a simulator knob set, as `{"field", "message"}` (empty when it is fine)."""
    if not isinstance(config, Mapping):
        return [{"field": prefix, "message": "must be an object"}]
    errors: list[dict[str, str]] = []

    def bad(key: str, message: str) -> None:
        errors.append({"field": f"{prefix}.{key}", "message": message})

    for key, value in config.items():
        if key not in KNOB_NAMES:
            bad(key, f"unknown simulator knob; known: {', '.join(sorted(KNOB_NAMES))}")
        elif key in _INT_KNOBS and not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            bad(key, "must be an integer >= 0")
        elif key in _MS_KNOBS and not (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0):
            bad(key, "must be a number of milliseconds >= 0")
        elif key in _RATIO_KNOBS and not (
            isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1
        ):
            bad(key, "must be a number between 0 and 1")
        elif key == "status" and not _is_error_status(value):
            bad(key, "must be an HTTP error status between 400 and 599")
        elif key == "failure_status" and not (
            _is_error_status(value)
            or (isinstance(value, list) and value and all(_is_error_status(item) for item in value))
        ):
            bad(key, "must be an HTTP error status (400-599) or a non-empty list of them")
        elif key in ("retry_after", "scope", "failure_seed") and not isinstance(value, (str, int)):
            bad(key, "must be a string or an integer")
        elif key == "malformed" and not isinstance(value, bool):
            bad(key, "must be true or false")
        elif key == "models":
            if not isinstance(value, Mapping):
                bad(key, "must be an object of model name -> knobs")
            else:
                for name, knobs in value.items():
                    errors.extend(validate_config(knobs, prefix=f"{prefix}.models.{name}"))
                    if isinstance(knobs, Mapping) and "models" in knobs:
                        bad(f"models.{name}.models", "cannot be nested")
    return errors


def _is_error_status(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 400 <= value <= 599


def key_fingerprint(api_key: str) -> str:
    """How /stats names an API key it saw: never the key itself."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Billing:
    model: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int


@dataclass
class Frame:
    """One piece of a streamed reply, sent `delay_s` after the previous one."""

    delay_s: float
    data: bytes
    bills: bool = False  # the usage has been delivered once this frame is out


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    delay_s: float = 0.0  # before a non-streamed body
    frames: list[Frame] | None = None  # a streamed (SSE) reply
    cut: bool = False  # the stream stops after its frames without a terminator
    billing: Billing | None = None


def _json_reply(status: int, payload: Any, headers: Mapping[str, str] | None = None, delay_s: float = 0) -> Reply:
    return Reply(
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
        body=json.dumps(payload).encode(),
        delay_s=delay_s,
    )


_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "permission_denied"),
    404: ("invalid_request_error", "not_found"),
    429: ("requests", "rate_limit_exceeded"),
    503: ("server_error", "service_unavailable"),
}


def error_body(status: int, message: str, *, param: str | None = None) -> dict[str, Any]:
    """An error body shaped like OpenAI's."""
    kind, code = _ERROR_TYPES.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass
class _Counts:
    calls: int = 0
    errors: int = 0
    billed_calls: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    traced_calls: int = 0  # calls that carried a W3C `traceparent` header

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _State:
    totals: _Counts = field(default_factory=_Counts)
    models: dict[str, _Counts] = field(default_factory=dict)
    api_keys: dict[str, int] = field(default_factory=dict)
    counters: dict[tuple[str, str, str], int] = field(default_factory=dict)
    requests: int = 0


class SimulatorCore:
    """The protocol, the knobs and the books. Thread-safe; one instance per serving process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = _State()

    # --- books ------------------------------------------------------------------------------------
    def reset(self) -> None:
        with self._lock:
            self._state = _State()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            state = self._state
            return {
                "simulator": SIMULATOR_NOTICE,
                **state.totals.as_dict(),
                "models": {name: counts.as_dict() for name, counts in sorted(state.models.items())},
                "api_keys": dict(state.api_keys),
            }

    def bill(self, billing: Billing) -> None:
        with self._lock:
            for counts in (self._state.totals, self._model_counts(billing.model)):
                counts.billed_calls += 1
                counts.prompt_tokens += billing.prompt_tokens
                counts.cached_tokens += billing.cached_tokens
                counts.completion_tokens += billing.completion_tokens

    def _model_counts(self, model: str) -> _Counts:
        return self._state.models.setdefault(model, _Counts())

    def _count_call(self, model: str, api_key: str | None, scope: str, traced: bool) -> tuple[int, int]:
        with self._lock:
            self._state.requests += 1
            for counts in (self._state.totals, self._model_counts(model)):
                counts.calls += 1
                counts.traced_calls += int(traced)
            if api_key:
                fingerprint = key_fingerprint(api_key)
                self._state.api_keys[fingerprint] = self._state.api_keys.get(fingerprint, 0) + 1
            key = (scope, model, "calls")
            self._state.counters[key] = self._state.counters.get(key, 0) + 1
            return self._state.counters[key], self._state.requests

    def _next_json_call(self, model: str, scope: str) -> int:
        with self._lock:
            key = (scope, model, "json")
            self._state.counters[key] = self._state.counters.get(key, 0) + 1
            return self._state.counters[key]

    def _count_error(self, model: str) -> None:
        with self._lock:
            self._state.totals.errors += 1
            self._model_counts(model).errors += 1

    # --- protocol ---------------------------------------------------------------------------------
    def handle(self, *, method: str, path: str, headers: Any, body: bytes) -> Reply:
        """`headers`: any case-insensitive lookup with .get (httpx2.Headers, the HTTP server's Message)."""
        path = path.rstrip("/") or "/"
        if method == "GET" and path == "/stats":
            return _json_reply(200, self.stats())
        if method == "POST" and path == "/stats/reset":
            self.reset()
            return _json_reply(200, self.stats())
        if method == "GET" and path in ("/v1/models", "/models"):
            return _json_reply(200, {"object": "list", "data": []})
        if path not in ("/v1/chat/completions", "/chat/completions"):
            return _json_reply(404, error_body(404, f"The simulator has no {method} {path}."))
        if method != "POST":
            return _json_reply(405, error_body(405, "Use POST for chat completions."))
        return self._chat(headers, body)

    def _chat(self, headers: Any, body: bytes) -> Reply:
        try:
            request = json.loads(body or b"null")
        except ValueError:
            return _json_reply(400, error_body(400, "The request body is not valid JSON."))
        problem = _request_problem(request)
        if problem is not None:
            return _json_reply(400, error_body(400, problem[1], param=problem[0]))
        try:
            knobs = _knobs(headers.get(KNOBS_HEADER), request["model"])
        except ValueError as exc:
            return _json_reply(400, error_body(400, f"{KNOBS_HEADER}: {exc}"))

        model: str = request["model"]
        auth = headers.get("Authorization") or headers.get("authorization") or ""
        api_key = auth[7:] if auth.lower().startswith("bearer ") else None
        scope = str(knobs.get("scope", ""))
        traced = bool(headers.get("traceparent"))
        call_number, request_number = self._count_call(model, api_key, scope, traced)
        first_delay = float(knobs.get("latency_first_ms", 0)) / 1000
        per_token = float(knobs.get("latency_per_token_ms", 0)) / 1000
        reply_headers = {"x-request-id": f"sim-{request_number}", "x-keel-simulator": "1"}

        status = _failure_status(knobs, model, scope, call_number)
        if status is not None:
            self._count_error(model)
            if "retry_after" in knobs:
                reply_headers["Retry-After"] = str(knobs["retry_after"])
            message = f"The simulator failed call {call_number} to {model} on purpose (status {status})."
            return _json_reply(status, error_body(status, message), reply_headers, first_delay)

        schema = _json_schema_of(request.get("response_format"))
        wants_json = isinstance(request.get("response_format"), Mapping) and request["response_format"].get("type") in (
            "json_schema",
            "json_object",
        )
        seed = _request_seed(request)
        if wants_json:
            invalid = schema is not None and self._next_json_call(model, scope) <= int(
                knobs.get("invalid_json_first", 0)
            )
            content = _json_answer(schema, seed, invalid=invalid)
            finish_reason = "stop"
        else:
            content, finish_reason = _prose_answer(seed, _max_tokens(request))

        prompt_tokens = count_prompt_tokens(request["messages"])
        cached_tokens = int(prompt_tokens * float(knobs.get("cached_ratio", 0)))
        completion_tokens = count_tokens(content)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens},
        }
        billing = Billing(model, prompt_tokens, cached_tokens, completion_tokens)
        completion_id = f"chatcmpl-sim-{hashlib.sha256(seed).hexdigest()[:24]}"
        created = int(time.time())

        if knobs.get("malformed"):
            self._count_error(model)
            whole = json.dumps({"id": completion_id, "object": "chat.completion", "choices": []})
            return Reply(
                status=200,
                headers={"Content-Type": "application/json", **reply_headers},
                body=whole[: len(whole) // 2].encode(),
                delay_s=first_delay,
            )

        if not request.get("stream"):
            payload = {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "system_fingerprint": "keel-simulator",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "refusal": None},
                        "logprobs": None,
                        "finish_reason": finish_reason,
                    }
                ],
                "usage": usage,
            }
            reply = _json_reply(200, payload, reply_headers, first_delay + per_token * completion_tokens)
            reply.billing = billing
            return reply

        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            event = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "keel-simulator",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                **extra,
            }
            if include_usage:
                event.setdefault("usage", None)
            return f"data: {json.dumps(event)}\n\n".encode()

        frames = [Frame(first_delay, chunk({"role": "assistant", "content": ""}))]
        truncate_after = knobs.get("truncate_after")
        for index, piece in enumerate(pieces(content)):
            if truncate_after is not None and index >= int(truncate_after):
                self._count_error(model)
                return Reply(200, {"Content-Type": "text/event-stream", **reply_headers}, frames=frames, cut=True)
            frames.append(Frame(per_token if index else 0.0, chunk({"content": piece})))
        frames.append(Frame(0.0, chunk({}, finish_reason)))
        if include_usage:
            usage_event = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage,
            }
            frames.append(Frame(0.0, f"data: {json.dumps(usage_event)}\n\n".encode(), bills=True))
        frames.append(Frame(0.0, b"data: [DONE]\n\n", bills=not include_usage))
        return Reply(
            200,
            {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **reply_headers},
            frames=frames,
            billing=billing,
        )


def _request_problem(request: Any) -> tuple[str, str] | None:
    if not isinstance(request, Mapping):
        return "body", "The request body must be a JSON object."
    if not isinstance(request.get("model"), str) or not request["model"]:
        return "model", "`model` is required."
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages", "`messages` must be a non-empty array."
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            return f"messages[{index}]", "Each message needs a `role`."
    response_format = request.get("response_format")
    if response_format is not None and (
        not isinstance(response_format, Mapping)
        or response_format.get("type") not in ("text", "json_object", "json_schema")
    ):
        return "response_format", "`response_format.type` must be text, json_object or json_schema."
    return None


def _knobs(raw: str | None, model: str) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        knobs = json.loads(raw)
    except ValueError:
        raise ValueError("not valid JSON") from None
    errors = validate_config(knobs)
    if errors:
        raise ValueError("; ".join(f"{e['field']}: {e['message']}" for e in errors))
    merged = {key: value for key, value in knobs.items() if key != "models"}
    merged.update((knobs.get("models") or {}).get(model, {}))
    return merged


def _failure_status(knobs: Mapping[str, Any], model: str, scope: str, call_number: int) -> int | None:
    if "fail_first" in knobs:
        return int(knobs.get("status", 500)) if call_number <= int(knobs["fail_first"]) else None
    if "status" in knobs:
        return int(knobs["status"])
    rate = float(knobs.get("failure_rate", 0))
    if rate > 0:
        draw = random.Random(f"{knobs.get('failure_seed', 0)}:{scope}:{model}:{call_number}")
        if draw.random() < rate:
            statuses = knobs.get("failure_status", [500, 503])
            return int(draw.choice(statuses) if isinstance(statuses, list) else statuses)
    return None


def _max_tokens(request: Mapping[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        value = request.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _request_seed(request: Mapping[str, Any]) -> bytes:
    basis = {
        "model": request["model"],
        "messages": request["messages"],
        "response_format": request.get("response_format"),
    }
    return hashlib.sha256(json.dumps(basis, sort_keys=True, default=str).encode()).digest()


def _rng(seed: bytes) -> random.Random:
    return random.Random(int.from_bytes(seed[:8], "big"))


def _prose_answer(seed: bytes, max_tokens: int | None) -> tuple[str, str]:
    rng = _rng(seed)
    words = [rng.choice(_VOCAB) for _ in range(12 + rng.randrange(28))]
    text = " ".join([words[0].capitalize(), *words[1:]]) + "."
    if max_tokens is not None:
        cut = list(pieces(text))
        if len(cut) > max_tokens:
            return "".join(cut[:max_tokens]), "length"
    return text, "stop"


def _json_schema_of(response_format: Any) -> dict[str, Any] | None:
    if isinstance(response_format, Mapping) and response_format.get("type") == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        return dict(schema) if isinstance(schema, Mapping) else {}
    return None


def _json_answer(schema: dict[str, Any] | None, seed: bytes, *, invalid: bool) -> str:
    rng = _rng(seed)
    if schema is None:  # json_object: any object
        return json.dumps({"answer": _prose_answer(seed, 12)[0]})
    value = sample_schema(schema, rng, root=schema)
    if invalid:
        value = _violate(schema, value, root=schema)
    return json.dumps(value)


def _resolve(schema: Any, root: Mapping[str, Any]) -> Any:
    ref = schema.get("$ref") if isinstance(schema, Mapping) else None
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, Mapping) else {}
        return _resolve(target, root)
    return schema


def sample_schema(schema: Any, rng: random.Random, *, root: Mapping[str, Any], depth: int = 0) -> Any:
    """A value valid for a (practical subset of) JSON Schema, drawn from `rng`.

    Covers type, enum, const, properties/required, items/minItems/maxItems, minLength/maxLength,
    minimum/maximum (exclusive too), anyOf/oneOf/allOf (first branch) and local $refs. `pattern`
    and `multipleOf` are not honoured.
    """
    schema = _resolve(schema, root)
    if not isinstance(schema, Mapping) or depth > 8:
        return None if depth > 8 else "value"
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return rng.choice(schema["enum"])
    for combinator in ("anyOf", "oneOf", "allOf"):
        branches = schema.get(combinator)
        if isinstance(branches, list) and branches:
            base = {k: v for k, v in schema.items() if k != combinator}
            branch = _resolve(branches[0], root)
            return sample_schema(
                {**base, **(branch if isinstance(branch, Mapping) else {})}, rng, root=root, depth=depth
            )
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        properties = schema.get("properties") or {}
        value = {name: sample_schema(sub, rng, root=root, depth=depth + 1) for name, sub in properties.items()}
        for name in schema.get("required") or []:
            value.setdefault(name, "value")
        return value
    if kind == "array":
        low = int(schema.get("minItems", 1))
        high = int(schema.get("maxItems", max(low, 3)))
        count = min(max(low, 2), high)
        return [sample_schema(schema.get("items", {}), rng, root=root, depth=depth + 1) for _ in range(count)]
    if kind in ("integer", "number"):
        return _sample_number(schema, rng, integer=kind == "integer")
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return _sample_string(schema, rng)


def _sample_string(schema: Mapping[str, Any], rng: random.Random) -> str:
    fmt = schema.get("format")
    if fmt == "date-time":
        return "2026-01-01T00:00:00Z"
    if fmt == "date":
        return "2026-01-01"
    if fmt == "email":
        return "someone@example.com"
    if fmt in ("uri", "url"):
        return "https://example.com/"
    if fmt == "uuid":
        return "00000000-0000-4000-8000-000000000000"
    low = int(schema.get("minLength", 1))
    high = int(schema.get("maxLength", max(low, 40)))
    text = " ".join(rng.choice(_VOCAB) for _ in range(1 + rng.randrange(5)))
    while len(text) < low:
        text += " " + rng.choice(_VOCAB)
    return text[:high].strip().ljust(low, "x")


def _sample_number(schema: Mapping[str, Any], rng: random.Random, *, integer: bool) -> int | float:
    raw_low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
    raw_high = schema.get("maximum", schema.get("exclusiveMaximum", raw_low + 100))
    low = math.ceil(raw_low + (1 if "minimum" not in schema and "exclusiveMinimum" in schema else 0))
    high = math.floor(raw_high - (1 if "maximum" not in schema and "exclusiveMaximum" in schema else 0))
    if high < low:  # a range narrower than one: only a fraction fits
        return (raw_low + raw_high) / 2
    number = rng.randint(low, high)
    return number if integer else float(number)


def _violate(schema: Mapping[str, Any], value: Any, *, root: Mapping[str, Any]) -> Any:
    """A JSON value that does not validate against `schema` (for testing repair attempts)."""
    schema = _resolve(schema, root)
    required = schema.get("required") if isinstance(schema, Mapping) else None
    if isinstance(value, dict) and required:
        return {k: v for k, v in value.items() if k != required[0]}
    if isinstance(value, str):
        return 12345
    return "this answer does not match the schema"


# --- front end 1: an in-process httpx2 transport ------------------------------------------------------

_default_core: SimulatorCore | None = None
_default_core_lock = threading.Lock()


def default_core() -> SimulatorCore:
    """The process's own simulator (behind every in-process transport)."""
    global _default_core
    with _default_core_lock:
        if _default_core is None:
            _default_core = SimulatorCore()
        return _default_core


def _read_timeout(request: httpx2.Request) -> float | None:
    timeout = request.extensions.get("timeout") or {}
    value = timeout.get("read") if isinstance(timeout, Mapping) else None
    return float(value) if value is not None else None


def _sleep_within(seconds: float, timeout: float | None, request: httpx2.Request) -> None:
    """Wait like a network read would: past the read timeout, raise the same error httpx2 would."""
    if seconds <= 0:
        return
    if timeout is not None and seconds > timeout:
        time.sleep(timeout)
        raise httpx2.ReadTimeout("The read operation timed out", request=request)
    time.sleep(seconds)


class _FrameStream(httpx2.SyncByteStream):
    def __init__(self, core: SimulatorCore, reply: Reply, request: httpx2.Request) -> None:
        self.core, self.reply, self.request = core, reply, request

    def __iter__(self) -> Iterator[bytes]:
        timeout = _read_timeout(self.request)
        for frame in self.reply.frames or []:
            _sleep_within(frame.delay_s, timeout, self.request)
            if frame.bills and self.reply.billing is not None:
                self.core.bill(self.reply.billing)
            yield frame.data
        if self.reply.cut:
            # What httpx2 raises when a server drops a chunked response mid-way.
            raise httpx2.RemoteProtocolError(
                "peer closed connection without sending complete message body (incomplete chunked read)",
                request=self.request,
            )


class SimulatorTransport(httpx2.BaseTransport):
    """The simulator inside this process, as an httpx2 transport for the `openai` client."""

    def __init__(self, core: SimulatorCore | None = None) -> None:
        self.core = core or default_core()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        body = request.read()
        reply = self.core.handle(method=request.method, path=request.url.path, headers=request.headers, body=body)
        if reply.frames is not None:
            return httpx2.Response(
                reply.status, headers=reply.headers, stream=_FrameStream(self.core, reply, request), request=request
            )
        _sleep_within(reply.delay_s, _read_timeout(request), request)
        if reply.billing is not None:
            self.core.bill(reply.billing)
        return httpx2.Response(reply.status, headers=reply.headers, content=reply.body, request=request)


# --- front end 2: a threaded HTTP server --------------------------------------------------------------


class _ClientGone(Exception):
    pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "KeelSimulator/1"
    core: SimulatorCore  # set on the subclass made by make_server

    def setup(self) -> None:
        super().setup()
        # Headers, body and each SSE frame are separate writes: without NODELAY, Nagle's algorithm
        # meets the client's delayed ACK and every reply stalls ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        pass  # one line per call would drown benchmark output; /stats is the record

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's naming
        self._serve()

    def do_POST(self) -> None:  # noqa: N802
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        reply = self.core.handle(method=self.command, path=self.path.split("?", 1)[0], headers=self.headers, body=body)
        try:
            if reply.frames is None:
                self._wait(reply.delay_s)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)
                self.wfile.flush()
                if reply.billing is not None:
                    self.core.bill(reply.billing)
                return
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            for frame in reply.frames:
                self._wait(frame.delay_s)
                self.wfile.write(b"%x\r\n%s\r\n" % (len(frame.data), frame.data))
                self.wfile.flush()
                if frame.bills and reply.billing is not None:
                    self.core.bill(reply.billing)
            if reply.cut:
                # Drop the connection mid-body: the client sees an incomplete chunked read.
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (_ClientGone, BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _wait(self, seconds: float) -> None:
        """Sleep, but notice a client that hangs up meanwhile (it timed out, or its worker died)."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self.connection], [], [], remaining)
            if not readable:
                return
            try:
                peeked = self.connection.recv(1, socket.MSG_PEEK)
            except OSError:
                raise _ClientGone from None
            if not peeked:
                raise _ClientGone
            time.sleep(max(0.0, deadline - time.monotonic()))  # a pipelined request: just wait
            return


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


def make_server(host: str, port: int, core: SimulatorCore | None = None) -> ThreadingHTTPServer:
    handler = type("SimulatorHandler", (_Handler,), {"core": core or SimulatorCore()})
    return _Server((host, port), handler)
