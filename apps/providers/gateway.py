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
        on_attempt=callable | None,      # called with each call_id just before its request is sent
    ) -> GatewayResult                   # or raises ProviderError / CallAborted / BudgetExceeded

Every attempt (cache hits included) is booked in the usage ledger under a call_id made before the
call, so the books are exact under retries; `GatewayResult.call_ids` lists them. With `call_key`
given, call ids are `f"{call_key}-{n}"` (n counts attempts across the whole fallback chain, cache
hit included); without it they are random. `on_attempt` lets the engine note the in-flight call_id
(on its StepRun) so that, after a crash, a call that was sent but never booked can be booked as
abandoned by whoever resumes the run, and its budget reservation released.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from uuid import UUID


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


def gateway_complete(
    *,
    ctx: CallContext,
    model: str,
    messages: list[dict[str, Any]],
    fallbacks: Sequence[str] = (),
    params: dict[str, Any] | None = None,
    response_schema: dict[str, Any] | None = None,
    cache: CachePolicy | None = None,
    retries: int = 2,
    timeout_s: float | None = None,
    on_delta: Callable[[str], None] | None = None,
    should_abort: Callable[[], bool] | None = None,
    call_key: str | None = None,
    on_attempt: Callable[[str], None] | None = None,
) -> GatewayResult:
    raise NotImplementedError("the gateway is being built for issue #3")
