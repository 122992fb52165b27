"""`llm`: one chat completion through the gateway (retries, fallbacks, cache, budgets, ledger).

With `response_schema` the model is asked for JSON; the answer is validated against the schema
and, when it does not match, the model gets exactly one repair call that shows it the validation
errors. A second invalid answer fails the step with code `invalid_response` and those errors.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from jsonschema import Draft202012Validator

from apps.core.problems import BudgetExceeded
from apps.providers.gateway import CachePolicy, CallContext, GatewayResult, ProviderError, gateway_complete
from apps.workflows.steps import register
from apps.workflows.steps.base import CheckContext, Issue, StepContext, StepFailed, StepResult, StepType, Usage
from apps.workflows.templating import TemplateProblem, render_text

# Passed upstream as-is when present in the step.
PARAMS = ("temperature", "max_tokens", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty")
MAX_REPAIR_ERRORS = 20


@register
class LlmStep(StepType):
    type = "llm"
    description = "A chat completion by a model of the workspace, called by its alias."
    required = ("model", "prompt")
    properties = {
        "model": {"type": "string", "minLength": 1, "maxLength": 100},
        "fallbacks": {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 5},
        "system": {"type": "string", "maxLength": 100_000},
        "prompt": {"type": "string", "minLength": 1, "maxLength": 200_000},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "stop": {
            "oneOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}, "maxItems": 4},
            ]
        },
        "seed": {"type": "integer"},
        "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
        "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
        "response_schema": {"type": "object"},
        "cache": {
            "oneOf": [
                {"type": "boolean"},
                {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "enabled": {"type": "boolean"},
                        "ttl_s": {"type": "integer", "minimum": 1, "maximum": 30 * 86400},
                    },
                },
            ]
        },
        "retries": {"type": "integer", "minimum": 0, "maximum": 10},
        "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
    }

    def templates(self, step: Mapping[str, Any]) -> list[tuple[str, str]]:
        return [(name, step[name]) for name in ("system", "prompt") if isinstance(step.get(name), str)]

    def check(self, step: Mapping[str, Any], ctx: CheckContext) -> list[Issue]:
        issues = []
        if isinstance(step.get("model"), str) and step["model"] not in ctx.model_aliases:
            issues.append(Issue(f"{ctx.path}.model", f"no model is aliased {step['model']!r} in this workspace"))
        for position, alias in enumerate(step.get("fallbacks") or []):
            if isinstance(alias, str) and alias not in ctx.model_aliases:
                issues.append(
                    Issue(f"{ctx.path}.fallbacks.{position}", f"no model is aliased {alias!r} in this workspace")
                )
        return issues

    def execute(self, step: Mapping[str, Any], ctx: StepContext) -> StepResult:
        try:
            messages = []
            if step.get("system"):
                messages.append({"role": "system", "content": render_text(step["system"], ctx.template_context)})
            messages.append({"role": "user", "content": render_text(step["prompt"], ctx.template_context)})
        except TemplateProblem as exc:
            raise StepFailed("template_error", f"The prompt template failed: {exc}") from None
        params = {name: step[name] for name in PARAMS if name in step}
        schema = step.get("response_schema")
        rendered = {"model": step["model"], "messages": messages, "params": params}
        usage = Usage()

        first = self._call(step, ctx, messages, params, call=1, usage=usage, rendered=rendered)
        if schema is None:
            return StepResult(output=first.content, input=rendered, usage=usage)
        value, errors = _validated(first, schema)
        if not errors:
            return StepResult(output=value, input=rendered, usage=usage)

        repair = [
            *messages,
            {"role": "assistant", "content": first.content},
            {"role": "user", "content": _repair_prompt(errors)},
        ]
        second = self._call(step, ctx, repair, params, call=2, usage=usage, rendered=rendered)
        value, errors = _validated(second, schema)
        if errors:
            raise StepFailed(
                "invalid_response",
                "The model's answer does not match response_schema, also after one repair attempt: "
                + "; ".join(errors[:5]),
                errors=errors,
                input=rendered,
                usage=usage,
            )
        return StepResult(output=value, input=rendered, usage=usage)

    def _call(
        self,
        step: Mapping[str, Any],
        ctx: StepContext,
        messages: list[dict[str, Any]],
        params: dict[str, Any],
        *,
        call: int,
        usage: Usage,
        rendered: dict[str, Any],
    ) -> GatewayResult:
        timeout = step.get("timeout_s")
        remaining = ctx.remaining_s()
        if remaining is not None:
            # An attempt may not outlive the run: the run's timeout caps the step's.
            timeout = min(float(timeout), remaining) if timeout else remaining
        streamed: list[bool] = []
        # Deltas carry an answer number: a new one (the repair call, or a retry after a stream broke
        # off) tells stream readers to discard the text of the previous one.
        answer = [usage.answers]

        def on_delta(text: str) -> None:
            if not streamed:
                streamed.append(True)
                usage.answers += 1
                answer[0] = usage.answers
            ctx.on_delta(text, answer=answer[0])

        def on_retry() -> None:
            streamed.clear()

        try:
            result = gateway_complete(
                ctx=CallContext(
                    workspace_id=ctx.workspace_id,
                    run_id=ctx.run_id,
                    step_id=step["id"],
                    workflow_id=ctx.workflow_id,
                    api_key_id=ctx.api_key_id,
                    user_id=ctx.user_id,
                    traceparent=ctx.traceparent,
                ),
                model=step["model"],
                fallbacks=list(step.get("fallbacks") or []),
                messages=messages,
                params=params,
                response_schema=step.get("response_schema"),
                cache=_cache_policy(step.get("cache")),
                retries=step.get("retries"),  # None: the provider's max_retries
                timeout_s=timeout,
                on_delta=on_delta if ctx.wants_deltas else None,
                should_abort=ctx.should_abort,
                call_key=ctx.call_key(call),
                on_attempt=ctx.on_attempt,
                on_retry=on_retry,
            )
        except ProviderError as exc:
            usage.cost_usd += exc.cost_usd
            usage.call_ids.extend(exc.call_ids)
            raise StepFailed(exc.code, str(exc), input=rendered, usage=usage) from None
        except BudgetExceeded as exc:
            raise StepFailed("budget_exceeded", exc.detail_text, input=rendered, usage=usage) from None
        usage.model = result.model_alias
        usage.provider = result.provider_name
        usage.fallback_used = usage.fallback_used or result.fallback_used
        usage.cache_hit = result.cache_hit
        if not result.cache_hit:  # a cache hit bills no tokens (the ledger books it at zero)
            usage.input_tokens += result.input_tokens
            usage.output_tokens += result.output_tokens
        usage.cost_usd += result.cost_usd
        usage.saved_usd += result.saved_usd
        usage.latency_ms += result.latency_ms
        usage.call_ids.extend(result.call_ids)
        if not streamed and result.content:
            # Whatever the gateway did not stream still reaches stream readers, once.
            on_delta(result.content)
        return result


def _cache_policy(value: Any) -> CachePolicy | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return CachePolicy(enabled=value)
    return CachePolicy(enabled=value.get("enabled"), ttl_s=int(value.get("ttl_s", 3600)))


def _validated(result: GatewayResult, schema: dict[str, Any]) -> tuple[Any, list[str]]:
    value = result.parsed
    if value is None:
        try:
            value = json.loads(result.content)
        except ValueError as exc:
            return None, [f"the answer is not JSON ({exc})"]
    try:
        errors = sorted(
            Draft202012Validator(schema).iter_errors(value), key=lambda e: [str(p) for p in e.absolute_path]
        )
    except Exception as exc:  # noqa: BLE001 - checked when saved; never let a schema crash the run
        return value, [f"response_schema cannot be applied: {exc}"]
    messages = [f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}" for e in errors]
    return value, messages[:MAX_REPAIR_ERRORS]


def _repair_prompt(errors: list[str]) -> str:
    listed = "\n".join(f"- {error}" for error in errors)
    return (
        "Your answer does not match the required JSON schema. The validation errors are:\n"
        f"{listed}\n"
        "Answer again with only the corrected JSON, valid for the schema."
    )
