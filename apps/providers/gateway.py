"""The gateway: the one function through which Keel calls a model.

CONTRACT (used by the run engine; keep these names and meanings):

    result = gateway_complete(
        ctx=CallContext(workspace_id=..., run_id=..., step_id="classify", workflow_id=..., api_key_id=..., user_id=...),
        model="fast",                    # a Model alias in ctx's workspace
        fallbacks=["backup"],            # tried in order after `model` has exhausted its retries
        messages=[{"role": "system", "content": "..."}, {"role": "user", "content": "..."}],
        params={"temperature": 0, "max_tokens": 200},   # passed upstream as-is (known OpenAI params)
        response_schema={...} | None,    # JSON Schema: asks for JSON output (response_format json_schema)
        cache=CachePolicy(ttl_s=3600) | None,   # None: default policy (cache iff temperature == 0)
        retries=2,                       # retries after the first attempt, per model in the chain
        timeout_s=30,                    # per attempt
        on_delta=callable | None,        # given: the call streams and each text delta is passed in order
        should_abort=callable | None,    # polled between attempts and between stream chunks
        call_key="<run id>-<step id>-<execution n>",  # prefix for call_ids: f"{call_key}-{n}", n = 1, 2, ...
        on_attempt=callable | None,      # on_attempt(call_id, model alias, provider name) just before
                                         # each request is sent
    ) -> GatewayResult                   # or raises ProviderError / CallAborted / BudgetExceeded

Every attempt (cache hits included) is booked in the usage ledger under a call_id made before the
call, so the books are exact under retries; `GatewayResult.call_ids` lists them. With `call_key`
given, call ids are `f"{call_key}-{n}"` (n counts attempts across the whole fallback chain, cache
hit included); without it they are random. `on_attempt` lets the engine note the in-flight call_id
and the model it goes to (on its StepRun) so that, after a crash, a call that was sent but never
booked can be booked as abandoned, against the model actually called (a fallback included), by
whoever resumes the run, and its budget reservation released.

IMPLEMENTATION NOTES (additions to the contract; nothing above changed):
- `retries=None` means "the provider's max_retries". `on_retry` (optional) is called when an
  attempt that already streamed deltas failed and another attempt starts: the consumer should
  discard the partial text it received.
- Retryable: 429, 408, 409, 5xx, timeouts, connection errors, malformed or cut responses. Others
  (400, 401, 403, 404, 422) skip the model's remaining retries and go on to the next model.
- Backoff before retry k (1, 2, ...): uniform(e/2, e) with e = min(BACKOFF_MAX, BACKOFF_BASE * 2**(k-1)),
  at least the Retry-After the provider sent; a Retry-After longer than KEEL_GATEWAY_RETRY_AFTER_MAX_S
  gives up on that model at once (a fallback answers sooner).
- GatewayResult: tokens are the answering attempt's; cost_usd sums every attempt; latency_ms is the
  whole call (retries and backoff included); attempts counts provider calls made.
- Ledger rows of cache hits carry zero tokens and zero cost (nothing was billed) and `saved_usd` =
  the stored answer's tokens at the model's current prices.
- A call_id longer than the ledger's 64 characters is shortened deterministically
  (sha256 of call_key, 40 hex chars, then "-n"), so the same call_key still gives the same ids.
"""

from __future__ import annotations

import email.utils
import hashlib
import itertools
import json
import random
import re
import ssl
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from uuid import UUID

import httpx2
import jsonschema
import openai
import structlog
from django.conf import settings

from apps.core.problems import BudgetExceeded
from apps.providers import breaker, clients
from apps.providers.crypto import SecretUnreadable
from apps.providers.models import Model, Provider
from apps.providers.pricing import Prices, cost_usd, worst_case_cost_usd
from apps.providers.response_cache import response_cache_get, response_cache_key, response_cache_set
from apps.providers.selectors import models_by_alias
from apps.providers.tokens import count_prompt_tokens, count_tokens
from apps.usage import services as usage_services

logger = structlog.get_logger(__name__)

__all__ = [
    "BudgetExceeded",
    "CachePolicy",
    "CallAborted",
    "CallContext",
    "GatewayResult",
    "ProviderError",
    "gateway_complete",
    "provider_list_models",
]

CALL_ID_MAX = 64  # UsageRecord.call_id


@dataclass(frozen=True)
class CallContext:
    """Who the call is for: where it is booked and which budgets apply."""

    workspace_id: UUID
    run_id: UUID | None = None
    step_id: str = ""
    workflow_id: UUID | None = None
    api_key_id: UUID | None = None
    user_id: UUID | None = None
    traceparent: str | None = None


@dataclass(frozen=True)
class CachePolicy:
    enabled: bool | None = None  # None: cache iff temperature == 0
    ttl_s: int = 3600


@dataclass
class GatewayResult:
    content: str  # the text the model answered
    parsed: Any = None  # the JSON value when response_schema was given (not yet validated against it)
    model_alias: str = ""  # the model that answered (may be a fallback)
    model_name: str = ""
    provider_name: str = ""
    fallback_used: bool = False
    cache_hit: bool = False
    finish_reason: str | None = None
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = Decimal("0")  # summed over every attempt of this call, failed ones included
    saved_usd: Decimal = Decimal("0")  # what a cache hit saved
    latency_ms: int = 0
    attempts: int = 0  # provider calls made (0 on a cache hit)
    call_ids: list[str] = field(default_factory=list)
    provider_kind: str = ""  # added: "simulator" labels an answer that no real model gave


class ProviderError(Exception):
    """Every model in the chain failed. `code` is stable (provider_error, provider_timeout,
    provider_unavailable, provider_rate_limited, provider_bad_response, model_not_found ...)."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "provider_error",
        status: int | None = None,
        attempts: int = 0,
        cost_usd: Decimal = Decimal("0"),
        call_ids: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.attempts = attempts
        self.cost_usd = cost_usd
        self.call_ids = list(call_ids)


class CallAborted(Exception):
    """`should_abort` returned True (the run was cancelled) before or during the call."""


# Set by the gateway itself; every other parameter a step passes goes upstream in the body as-is.
_CONTROL_PARAMS = {"self", "messages", "model", "stream", "stream_options", "response_format"}
_CHAT_PATH = "/chat/completions"
# Server-sent events: lines end with CRLF, LF or CR; a blank line ends an event.
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
_RETRYABLE_STATUS = {408, 409, 429}


@dataclass
class _Attempt:
    """What one provider call came to. Built by `_send`, which never raises for provider trouble."""

    ok: bool
    content: str = ""
    finish_reason: str | None = None
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    usage_reported: bool = False
    http_status: int | None = None
    code: str = ""
    message: str = ""
    retryable: bool = False
    retry_after_s: float | None = None
    streamed_any: bool = False
    aborted: bool = False
    callback_error: BaseException | None = None


class _CallIds:
    def __init__(self, call_key: str | None) -> None:
        self.call_key = call_key
        self.n = 0
        self.issued: list[str] = []

    def next(self) -> str:
        self.n += 1
        if self.call_key is None:
            call_id = uuid.uuid4().hex
        else:
            call_id = f"{self.call_key}-{self.n}"
            if len(call_id) > CALL_ID_MAX:
                call_id = f"{hashlib.sha256(self.call_key.encode()).hexdigest()[:40]}-{self.n}"
        self.issued.append(call_id)
        return call_id


def gateway_complete(
    *,
    ctx: CallContext,
    model: str,
    messages: list[dict[str, Any]],
    fallbacks: Sequence[str] = (),
    params: dict[str, Any] | None = None,
    response_schema: dict[str, Any] | None = None,
    cache: CachePolicy | None = None,
    retries: int | None = 2,
    timeout_s: float | None = None,
    on_delta: Callable[[str], None] | None = None,
    should_abort: Callable[[], bool] | None = None,
    call_key: str | None = None,
    on_attempt: Callable[[str, str, str], None] | None = None,
    on_retry: Callable[[], None] | None = None,
) -> GatewayResult:
    started = time.monotonic()
    params = dict(params or {})
    chain = _resolve_chain(ctx.workspace_id, [model, *fallbacks])
    policy = cache or CachePolicy()
    use_cache = policy.enabled if policy.enabled is not None else params.get("temperature") == 0
    ids = _CallIds(call_key)
    prompt_estimate = count_prompt_tokens(messages)
    total_cost = Decimal("0")
    attempts = 0
    failures: list[str] = []
    last: _Attempt | None = None
    partial_delivered = False

    def aborted() -> bool:
        return bool(should_abort and should_abort())

    for position, candidate in enumerate(chain):
        provider = candidate.provider
        prices = Prices.of(candidate)
        cache_key = None
        if use_cache:
            cache_key = response_cache_key(
                workspace_id=ctx.workspace_id,
                provider_id=provider.pk,
                model_name=candidate.name,
                messages=messages,
                params=params,
                response_schema=response_schema,
            )
            hit = response_cache_get(cache_key)
            if hit is not None:
                if partial_delivered and on_retry is not None:
                    on_retry()
                return _serve_hit(
                    ctx, candidate, hit, ids, on_delta, position, total_cost, attempts, started, response_schema
                )
        check = breaker.breaker_check(candidate.pk)
        if not check.allowed:
            logger.info("provider_call_skipped", model=candidate.alias, reason="circuit_open")
            failures.append(f"{candidate.alias}: circuit open (skipped during cool-down)")
            last = _Attempt(ok=False, code="provider_unavailable", message="circuit open")
            continue
        model_retries = provider.max_retries if retries is None else max(0, retries)
        timeout = timeout_s if timeout_s is not None else provider.timeout_s
        try:
            client = clients.client_for(provider)
        except SecretUnreadable:
            breaker.breaker_probe_release(candidate.pk)
            failures.append(f"{candidate.alias}: the provider's API key cannot be decrypted with KEEL_ENCRYPTION_KEYS")
            last = _Attempt(ok=False, code="provider_error", message="unreadable API key")
            continue
        except Exception as exc:  # noqa: BLE001 - a provider misconfigured in a way the SDK rejects
            breaker.breaker_probe_release(candidate.pk)
            failures.append(f"{candidate.alias}: the provider cannot be used as configured ({exc})")
            last = _Attempt(ok=False, code="provider_error", message="misconfigured provider")
            continue
        stream = on_delta is not None and candidate.supports_streaming
        max_out = _max_output(params, candidate)
        for try_number in range(model_retries + 1):
            try:
                if aborted():
                    raise CallAborted("the call was cancelled before its next attempt")
                call_id = ids.next()
                holds = usage_services.budget_reserve(
                    call_id=call_id,
                    amount=worst_case_cost_usd(prices=prices, prompt_tokens=prompt_estimate, max_output_tokens=max_out),
                    workspace_id=ctx.workspace_id,
                    workflow_id=ctx.workflow_id,
                    api_key_id=ctx.api_key_id,
                    user_id=ctx.user_id,
                )
            except BaseException:
                # Nothing was sent: a half-open probe slot this call may hold goes back at once.
                breaker.breaker_probe_release(candidate.pk)
                raise
            try:
                if on_attempt is not None:
                    on_attempt(call_id, candidate.alias, provider.name)
            except BaseException:
                usage_services.budget_release(call_id=call_id)
                breaker.breaker_probe_release(candidate.pk)
                raise
            if partial_delivered and on_retry is not None:
                on_retry()
            partial_delivered = False
            attempts += 1
            attempt_started = time.monotonic()
            outcome = _send(
                client,
                candidate,
                messages=messages,
                params=params,
                response_schema=response_schema,
                timeout=timeout,
                traceparent=ctx.traceparent,
                on_delta=on_delta if stream else None,
                should_abort=should_abort,
            )
            latency_ms = int((time.monotonic() - attempt_started) * 1000)
            if outcome.ok and not outcome.usage_reported:
                # An OpenAI-compatible server that reports no usage: book our own count rather than nothing.
                outcome.input_tokens = prompt_estimate
                outcome.output_tokens = count_tokens(outcome.content)
                logger.warning("provider_usage_missing", model=candidate.alias, call_id=call_id)
            cost = cost_usd(
                prices=prices,
                input_tokens=outcome.input_tokens,
                cached_input_tokens=outcome.cached_input_tokens,
                output_tokens=outcome.output_tokens,
            )
            total_cost += cost
            _book(ctx, candidate, call_id, ids.n, outcome, cost, latency_ms, settle_budget=holds)
            if outcome.callback_error is not None or outcome.aborted:
                breaker.breaker_probe_release(candidate.pk)  # the model's health was not the question
                if outcome.callback_error is not None:
                    raise outcome.callback_error
                raise CallAborted("the call was cancelled while the model was answering")
            if outcome.ok:
                if not check.clean:
                    breaker.breaker_success(candidate.pk)
                if stream is False and on_delta is not None and outcome.content:
                    on_delta(outcome.content)  # a model that cannot stream still feeds the stream, once
                parsed = _parse_json(outcome.content) if response_schema is not None else None
                if cache_key is not None and _cacheable(outcome, parsed, response_schema):
                    response_cache_set(cache_key, _cache_entry(outcome), ttl_s=policy.ttl_s)
                return GatewayResult(
                    content=outcome.content,
                    parsed=parsed,
                    model_alias=candidate.alias,
                    model_name=candidate.name,
                    provider_name=provider.name,
                    provider_kind=provider.kind,
                    fallback_used=position > 0,
                    finish_reason=outcome.finish_reason,
                    input_tokens=outcome.input_tokens,
                    cached_input_tokens=outcome.cached_input_tokens,
                    output_tokens=outcome.output_tokens,
                    cost_usd=total_cost,
                    latency_ms=int((time.monotonic() - started) * 1000),
                    attempts=attempts,
                    call_ids=list(ids.issued),
                )
            last = outcome
            partial_delivered = outcome.streamed_any
            opened = False
            if _counts_against_model(outcome):
                opened = breaker.breaker_failure(candidate.pk)
                check = breaker.BreakerCheck(allowed=True, clean=False)  # a later success resets this count
            if try_number == model_retries:
                failures.append(f"{candidate.alias}: {outcome.message} (after {try_number + 1} attempt(s))")
                break
            if not outcome.retryable or opened:
                why = "circuit opened" if opened and outcome.retryable else "not retryable"
                failures.append(f"{candidate.alias}: {outcome.message} ({why}, after {try_number + 1} attempt(s))")
                break
            delay = _backoff_delay(try_number + 1, outcome.retry_after_s)
            if delay is None:
                failures.append(
                    f"{candidate.alias}: {outcome.message} (Retry-After {outcome.retry_after_s:.0f}s is longer than "
                    f"KEEL_GATEWAY_RETRY_AFTER_MAX_S, after {try_number + 1} attempt(s))"
                )
                break
            _sleep(delay, aborted)

    assert last is not None  # the chain is never empty
    raise ProviderError(
        "Every model failed: " + "; ".join(failures),
        code=last.code or "provider_error",
        status=last.http_status,
        attempts=attempts,
        cost_usd=total_cost,
        call_ids=ids.issued,
    )


def _resolve_chain(workspace_id: UUID, aliases: list[str]) -> list[Model]:
    ordered = list(dict.fromkeys(aliases))
    found = models_by_alias(workspace_id=workspace_id, aliases=ordered)
    missing = [alias for alias in ordered if alias not in found]
    if missing:
        raise ProviderError(
            f"No model with alias {', '.join(repr(a) for a in missing)} in this workspace.", code="model_not_found"
        )
    return [found[alias] for alias in ordered]


def _max_output(params: dict[str, Any], model: Model) -> int:
    for key in ("max_completion_tokens", "max_tokens"):
        value = params.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return model.max_output_tokens


def _response_format(model: Model, schema: dict[str, Any] | None) -> dict[str, Any] | None:
    if schema is None:
        return None
    if model.supports_json_schema:
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": schema, "strict": False}}
    return {"type": "json_object"}


def _send(
    client: openai.OpenAI,
    model: Model,
    *,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    response_schema: dict[str, Any] | None,
    timeout: float,
    traceparent: str | None,
    on_delta: Callable[[str], None] | None,
    should_abort: Callable[[], bool] | None,
) -> _Attempt:
    """One request through the SDK. Every provider-side failure comes back as a failed _Attempt.

    The request goes through the SDK's generic `post` (its client: headers, auth, Azure deployment
    URLs, timeout, status errors) with the JSON body built here; the answer comes back as decoded
    JSON (`cast_to=object`), a stream as the SDK's streaming HTTP response, read by _sse_data. The
    typed `chat.completions.create` would send the same bytes but walk the body against its
    TypedDicts and build pydantic models of every answer and stream chunk, which cost more CPU than
    the rest of the call's bookkeeping (measured: 1.6 vs 1.0 ms per call, 8.6 vs 2.1 ms per
    32-token stream).
    """
    body: dict[str, Any] = {k: v for k, v in params.items() if k not in _CONTROL_PARAMS}
    body["model"] = model.name
    body["messages"] = messages
    response_format = _response_format(model, response_schema)
    if response_format is not None:
        body["response_format"] = response_format
    options: dict[str, Any] = {"timeout": timeout}
    if traceparent:
        options["headers"] = {"traceparent": traceparent}
    attempt = _Attempt(ok=False)
    in_stream = False
    try:
        if on_delta is None:
            # `options` is the SDK's RequestOptions TypedDict, built here as a plain dict.
            answer = client.post(_CHAT_PATH, cast_to=object, body=body, options=options)  # type: ignore[call-overload]
            return _from_completion(answer)
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        response = client.post(  # type: ignore[call-overload]
            _CHAT_PATH, cast_to=httpx2.Response, body=body, options=options, stream=True
        )
        in_stream = True
        parts: list[str] = []
        try:
            for data in _sse_data(response.iter_bytes()):
                if data.startswith(b"[DONE]"):
                    break
                chunk = json.loads(data)
                if not isinstance(chunk, dict):
                    raise ValueError("a stream chunk is not a JSON object")
                error = chunk.get("error")
                if error:  # an error event inside the stream
                    message = error.get("message") if isinstance(error, dict) else None
                    if not message or not isinstance(message, str):
                        message = "An error occurred during streaming"
                    return _failed(
                        attempt, "provider_unavailable", f"the provider reported an error: {message}", retryable=True
                    )
                usage = chunk.get("usage")
                if usage is not None:
                    _take_usage(attempt, usage)
                for choice in chunk.get("choices") or []:
                    if choice.get("index", 0) != 0:
                        continue
                    delta = choice.get("delta")
                    piece = delta.get("content") if isinstance(delta, dict) else None
                    if piece:
                        if not isinstance(piece, str):
                            raise ValueError("a delta's content is not text")
                        parts.append(piece)
                        attempt.streamed_any = True
                        try:
                            on_delta(piece)
                        except BaseException as exc:  # noqa: BLE001 - the caller's error: book the attempt, re-raise
                            attempt.callback_error = exc
                            return _failed(attempt, "aborted", "the stream consumer stopped the call", parts)
                    if choice.get("finish_reason"):
                        attempt.finish_reason = choice["finish_reason"]
                if should_abort is not None and should_abort():
                    attempt.aborted = True
                    return _failed(attempt, "aborted", "the call was cancelled mid-stream", parts)
        finally:
            response.close()
        attempt.content = "".join(parts)
        if attempt.finish_reason is None:
            return _failed(
                attempt,
                "provider_bad_response",
                "the stream ended before the model finished (no finish_reason): a truncated stream",
                parts,
                retryable=True,
            )
        attempt.ok = True
        return attempt
    except (openai.APITimeoutError, httpx2.TimeoutException):
        where = "while streaming" if in_stream else f"after {timeout:g}s"
        return _failed(attempt, "provider_timeout", f"the provider did not answer in time ({where})", retryable=True)
    except (openai.APIConnectionError, httpx2.RequestError, ssl.SSLError) as exc:
        # The SDK wraps transport errors until the response is handed over; a stream read afterwards
        # raises them as they are.
        cause = exc.__cause__ if isinstance(exc, openai.APIConnectionError) and exc.__cause__ else exc
        if in_stream:
            return _failed(
                attempt,
                "provider_bad_response",
                f"the stream was cut before its end ({type(cause).__name__}: {cause})",
                retryable=True,
            )
        return _failed(
            attempt,
            "provider_unavailable",
            f"could not connect to {client.base_url} ({type(cause).__name__}: {cause})",
            retryable=True,
        )
    except openai.APIStatusError as exc:
        return _from_status_error(attempt, exc, client.api_key)
    except openai.APIError as exc:  # anything else the SDK reports about the exchange
        return _failed(
            attempt, "provider_unavailable", f"the provider reported an error: {exc.message}", retryable=True
        )
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        # JSONDecodeError and bodies of the wrong shape: not what the protocol promises.
        return _failed(
            attempt,
            "provider_bad_response",
            f"malformed response from the provider ({type(exc).__name__}: {str(exc)[:200]})",
            retryable=True,
        )
    except Exception as exc:  # noqa: BLE001 - nothing a provider sends may escape as an unhandled error
        logger.exception("provider_call_crashed", model=model.alias)
        return _failed(attempt, "provider_error", f"unexpected failure ({type(exc).__name__}: {exc})", retryable=True)


def _sse_data(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The data of each server-sent event of a byte stream (its `data:` lines joined by newlines).

    Read here rather than by the SDK's Stream, which builds an object per line and per event (about
    15% of a streamed call's CPU). As the SDK and the SSE spec do: other fields and comments are
    skipped, and an event the stream ends in the middle of is never dispatched.
    """
    pending = b""
    data: list[bytes] = []
    for chunk in itertools.chain(chunks, (None,)):
        if chunk is not None:
            pending += chunk
            # A CR that ends the chunk may be the first half of a CRLF: keep it with the next chunk.
            held = b"\r" if pending.endswith(b"\r") else b""
            lines = _LINE_BREAK.split(pending[: len(pending) - len(held)])
            pending = lines.pop() + held
        elif pending.endswith(b"\r"):  # the end: a CR held back ends its line after all
            lines = _LINE_BREAK.split(pending)[:-1]
        else:
            return
        for line in lines:
            if not line:
                if data:
                    yield b"\n".join(data)
                    data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)


def _failed(
    attempt: _Attempt, code: str, message: str, parts: list[str] | None = None, *, retryable: bool = False
) -> _Attempt:
    attempt.ok = False
    attempt.code = code
    attempt.message = message
    attempt.retryable = retryable
    if parts is not None:
        attempt.content = "".join(parts)
    return attempt


def _take_usage(attempt: _Attempt, usage: Any) -> None:
    """Read a `usage` object (decoded JSON); a value of the wrong type raises (a malformed body)."""
    if not isinstance(usage, dict):
        raise TypeError("usage is not a JSON object")
    details = usage.get("prompt_tokens_details")
    attempt.input_tokens = int(usage.get("prompt_tokens") or 0)
    attempt.output_tokens = int(usage.get("completion_tokens") or 0)
    attempt.cached_input_tokens = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
    attempt.usage_reported = True


def _from_completion(completion: Any) -> _Attempt:
    """A chat.completion body (decoded JSON; text when the server did not answer JSON)."""
    attempt = _Attempt(ok=False)
    if not isinstance(completion, dict):
        return _failed(
            attempt, "provider_bad_response", "malformed response from the provider (not a JSON object)", retryable=True
        )
    if completion.get("usage") is not None:
        _take_usage(attempt, completion["usage"])
    choices = completion.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, dict) else None
    if not isinstance(message, dict):
        return _failed(
            attempt, "provider_bad_response", "malformed response from the provider (no choices)", retryable=True
        )
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise TypeError("the message's content is not text")
    attempt.content = content or ""
    attempt.finish_reason = first.get("finish_reason") if isinstance(first, dict) else None
    attempt.ok = True
    return attempt


def _from_status_error(attempt: _Attempt, exc: openai.APIStatusError, api_key: str) -> _Attempt:
    status = exc.status_code
    detail = _error_detail(exc)
    if api_key and api_key in detail:
        detail = detail.replace(api_key, "[redacted]")
    attempt.http_status = status
    if status == 429:
        attempt.retry_after_s = _retry_after(exc.response.headers)
        return _failed(attempt, "provider_rate_limited", f"rate limited (429): {detail}", retryable=True)
    if status >= 500:
        return _failed(attempt, "provider_unavailable", f"provider error ({status}): {detail}", retryable=True)
    if status in _RETRYABLE_STATUS:
        attempt.retry_after_s = _retry_after(exc.response.headers)
        return _failed(attempt, "provider_error", f"provider error ({status}): {detail}", retryable=True)
    if status in (401, 403):
        return _failed(attempt, "provider_auth_failed", f"the provider refused the API key ({status}): {detail}")
    if status == 404:
        return _failed(attempt, "model_not_found", f"the provider does not know this model (404): {detail}")
    return _failed(attempt, "provider_error", f"the provider refused the request ({status}): {detail}")


def _error_detail(exc: openai.APIStatusError) -> str:
    # The SDK hands over the body's `error` object (or the whole body); prefer its own message.
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error")
        inner: dict[str, Any] = error if isinstance(error, dict) else body
        message = inner.get("message")
        if isinstance(message, str) and message:
            return message[:300]
    return str(exc.message)[:300]


def _retry_after(headers: Any) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `Retry-After` as seconds or an HTTP date."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    return parse_retry_after(headers.get("retry-after"))


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _backoff_delay(retry_number: int, retry_after: float | None) -> float | None:
    """Seconds to wait before retry `retry_number` (1-based), or None to give up on this model."""
    if retry_after is not None and retry_after > settings.KEEL_GATEWAY_RETRY_AFTER_MAX_S:
        return None
    ceiling = min(settings.KEEL_GATEWAY_BACKOFF_MAX_S, settings.KEEL_GATEWAY_BACKOFF_BASE_S * 2 ** (retry_number - 1))
    delay = random.uniform(ceiling / 2, ceiling) if ceiling > 0 else 0.0
    return max(delay, retry_after or 0.0)


def _sleep(seconds: float, aborted: Callable[[], bool]) -> None:
    # In slices, so a cancelled run stops waiting within a tenth of a second.
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        if aborted():
            raise CallAborted("the call was cancelled while waiting to retry")
        time.sleep(min(remaining, 0.1))


def _counts_against_model(outcome: _Attempt) -> bool:
    # A request the provider refused as bad (400, 422) says nothing about the model's health.
    return outcome.retryable or outcome.code in ("provider_auth_failed", "model_not_found")


def _book(
    ctx: CallContext,
    model: Model,
    call_id: str,
    n: int,
    outcome: _Attempt,
    cost: Decimal,
    latency_ms: int,
    *,
    settle_budget: int,
) -> None:
    prices = Prices.of(model)
    http_status = outcome.http_status if outcome.http_status is not None else (200 if outcome.ok else None)
    # One transaction: the ledger row, its rollup, and the attempt's budget hold (when it took one)
    # settled at the booked cost, or released when the attempt failed without a cost. Without a
    # hold the booking is a single statement.
    usage_services.usage_record(
        call_id=call_id,
        settle_budget=settle_budget,
        workspace_id=ctx.workspace_id,
        model=model,
        model_alias=model.alias,
        provider_name=model.provider.name,
        status="succeeded" if outcome.ok else "failed",
        error_code="" if outcome.ok else outcome.code,
        http_status=http_status,
        attempt=n,
        cache_hit=False,
        input_tokens=outcome.input_tokens,
        cached_input_tokens=outcome.cached_input_tokens,
        output_tokens=outcome.output_tokens,
        input_price_per_million=prices.input,
        cached_input_price_per_million=prices.cached_input,
        output_price_per_million=prices.output,
        cost_usd=cost,
        latency_ms=latency_ms,
        run_id=ctx.run_id,
        step_id=ctx.step_id,
        workflow_id=ctx.workflow_id,
        api_key_id=ctx.api_key_id,
        user_id=ctx.user_id,
    )
    log = logger.info if outcome.ok else logger.warning
    log(
        "provider_call",
        call_id=call_id,
        model=model.alias,
        model_name=model.name,
        provider=model.provider.name,
        status="succeeded" if outcome.ok else "failed",
        http_status=http_status,
        error_code=outcome.code or None,
        error=outcome.message or None,
        latency_ms=latency_ms,
        input_tokens=outcome.input_tokens,
        output_tokens=outcome.output_tokens,
        cost_usd=str(cost),
    )


def _parse_json(content: str) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return None


def _cacheable(outcome: _Attempt, parsed: Any, schema: dict[str, Any] | None) -> bool:
    if schema is None:
        return True
    # Never pin an answer that fails the schema: the next identical call deserves a fresh try.
    if parsed is None:
        return False
    try:
        jsonschema.validate(parsed, schema)
    except jsonschema.exceptions.SchemaError:
        return False
    except jsonschema.ValidationError:
        return False
    return True


def _cache_entry(outcome: _Attempt) -> dict[str, Any]:
    return {
        "content": outcome.content,
        "finish_reason": outcome.finish_reason,
        "input_tokens": outcome.input_tokens,
        "cached_input_tokens": outcome.cached_input_tokens,
        "output_tokens": outcome.output_tokens,
    }


def _serve_hit(
    ctx: CallContext,
    model: Model,
    hit: dict[str, Any],
    ids: _CallIds,
    on_delta: Callable[[str], None] | None,
    position: int,
    cost_so_far: Decimal,
    attempts: int,
    started: float,
    response_schema: dict[str, Any] | None,
) -> GatewayResult:
    prices = Prices.of(model)
    input_tokens = int(hit.get("input_tokens", 0))
    cached_tokens = int(hit.get("cached_input_tokens", 0))
    output_tokens = int(hit.get("output_tokens", 0))
    saved = cost_usd(
        prices=prices, input_tokens=input_tokens, cached_input_tokens=cached_tokens, output_tokens=output_tokens
    )
    call_id = ids.next()
    latency_ms = int((time.monotonic() - started) * 1000)
    usage_services.usage_record(
        call_id=call_id,
        workspace_id=ctx.workspace_id,
        model=model,
        model_alias=model.alias,
        provider_name=model.provider.name,
        status="succeeded",
        attempt=0,
        cache_hit=True,
        input_price_per_million=prices.input,
        cached_input_price_per_million=prices.cached_input,
        output_price_per_million=prices.output,
        cost_usd=Decimal("0"),
        saved_usd=saved,
        latency_ms=latency_ms,
        run_id=ctx.run_id,
        step_id=ctx.step_id,
        workflow_id=ctx.workflow_id,
        api_key_id=ctx.api_key_id,
        user_id=ctx.user_id,
    )
    logger.info("provider_call", call_id=call_id, model=model.alias, status="cache_hit", saved_usd=str(saved))
    content = str(hit.get("content", ""))
    if on_delta is not None and content:
        on_delta(content)
    return GatewayResult(
        content=content,
        parsed=_parse_json(content) if response_schema is not None else None,
        model_alias=model.alias,
        model_name=model.name,
        provider_name=model.provider.name,
        provider_kind=model.provider.kind,
        fallback_used=position > 0,
        cache_hit=True,
        finish_reason=hit.get("finish_reason"),
        input_tokens=input_tokens,
        cached_input_tokens=cached_tokens,
        output_tokens=output_tokens,
        cost_usd=cost_so_far,
        saved_usd=saved,
        latency_ms=latency_ms,
        attempts=attempts,
        call_ids=list(ids.issued),
    )


def provider_list_models(*, provider: Provider) -> list[str]:
    """The provider's model list: a free connectivity check (the admin's test without a model)."""
    try:
        client = clients.client_for(provider)
        return [m.id for m in client.models.list()]
    except SecretUnreadable:
        raise ProviderError("the provider's API key cannot be decrypted", code="provider_error") from None
    except openai.APIStatusError as exc:
        attempt = _from_status_error(_Attempt(ok=False), exc, "")
        raise ProviderError(attempt.message, code=attempt.code, status=exc.status_code) from None
    except openai.APIConnectionError as exc:
        raise ProviderError(f"could not connect: {exc.__cause__ or exc}", code="provider_unavailable") from None
    except (ValueError, TypeError) as exc:
        raise ProviderError(f"malformed response ({exc})", code="provider_bad_response") from None
