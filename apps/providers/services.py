"""Writes for providers and models: creation and edits (one validation for API, admin and demo),
key rotation, the admin's connection test, and the demo's simulator provider.

A provider's API key is accepted in plaintext here and stored only encrypted (providers.crypto).
It is never returned, never logged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from uuid import UUID

import structlog
from django.db import IntegrityError, transaction

from apps.accounts.models import Workspace
from apps.core.problems import ValidationProblem
from apps.providers.crypto import SecretUnreadable, secret_encrypt, secret_rotate
from apps.providers.models import Model, Provider
from apps.providers.simulator import validate_config

logger = structlog.get_logger(__name__)

# An attempt's budget hold outlives the attempt only if KEEL_BUDGET_RESERVATION_TTL_S (default 2 h) is
# longer than this: the same ceiling as the API's, so the admin cannot set a longer one either.
PROVIDER_TIMEOUT_MAX_S = 3600.0
PROVIDER_FIELDS = ("name", "kind", "base_url", "timeout_s", "max_retries", "config")
MODEL_FIELDS = (
    "provider",
    "name",
    "alias",
    "input_price_per_million",
    "cached_input_price_per_million",
    "output_price_per_million",
    "context_window",
    "max_output_tokens",
    "supports_json_schema",
    "supports_streaming",
)
_PRICES = ("input_price_per_million", "cached_input_price_per_million", "output_price_per_million")


def provider_problems(provider: Provider) -> list[dict[str, str]]:
    """What is wrong with an (unsaved) provider, as `{"field", "message"}`; empty when valid."""
    errors: list[dict[str, str]] = []
    if provider.kind not in Provider.Kind.values:
        errors.append({"field": "kind", "message": f"must be one of {', '.join(Provider.Kind.values)}"})
    if provider.kind in (Provider.Kind.OPENAI_COMPATIBLE, Provider.Kind.AZURE_OPENAI) and not provider.base_url:
        errors.append({"field": "base_url", "message": f"is required for a provider of kind {provider.kind}"})
    if not isinstance(provider.config, dict):
        errors.append({"field": "config", "message": "must be an object"})
    elif provider.kind == Provider.Kind.SIMULATOR:
        errors.extend(validate_config(provider.config))
    elif provider.kind == Provider.Kind.AZURE_OPENAI and not isinstance(provider.config.get("api_version", ""), str):
        errors.append({"field": "config.api_version", "message": "must be a string such as 2024-10-21"})
    if not provider.timeout_s or provider.timeout_s <= 0:
        errors.append({"field": "timeout_s", "message": "must be greater than 0"})
    elif provider.timeout_s > PROVIDER_TIMEOUT_MAX_S:
        errors.append({"field": "timeout_s", "message": f"must be at most {PROVIDER_TIMEOUT_MAX_S:.0f} seconds"})
    if (
        provider.name
        and Provider.objects.for_workspace(provider.workspace_id)
        .filter(name=provider.name)
        .exclude(pk=provider.pk)
        .exists()
    ):
        errors.append({"field": "name", "message": "a provider with this name already exists in the workspace"})
    return errors


ALIAS_TAKEN = "a model with this alias already exists in the workspace"


def _save(row: Provider | Model, *, field: str, message: str) -> None:
    """Save; a unique constraint lost to a concurrent writer (after our check passed) is the same 400."""
    try:
        with transaction.atomic():
            row.save()
    except IntegrityError:
        raise ValidationProblem(errors=[{"field": field, "message": message}]) from None


def _set_api_key(provider: Provider, api_key: str | None) -> None:
    # None leaves the key as it is; "" removes it.
    if api_key is None:
        return
    provider.api_key_encrypted = secret_encrypt(api_key) if api_key else ""


@transaction.atomic
def provider_create(
    *,
    workspace: Workspace,
    name: str,
    kind: str,
    base_url: str = "",
    api_key: str | None = None,
    timeout_s: float = 60.0,
    max_retries: int = 2,
    config: dict[str, Any] | None = None,
) -> Provider:
    provider = Provider(
        workspace=workspace,
        name=name,
        kind=kind,
        base_url=base_url or "",
        timeout_s=timeout_s,
        max_retries=max_retries,
        config=config if config is not None else {},
    )
    errors = provider_problems(provider)
    if errors:
        raise ValidationProblem(errors=errors)
    _set_api_key(provider, api_key)
    _save(provider, field="name", message="a provider with this name already exists in the workspace")
    logger.info("provider_created", provider=provider.name, kind=provider.kind, has_api_key=provider.has_api_key)
    return provider


@transaction.atomic
def provider_update(*, provider: Provider, api_key: str | None = None, **changes: Any) -> Provider:
    """Change the given fields (any of PROVIDER_FIELDS) and, when `api_key` is not None, the key.

    Saving moves `updated_at`, which is what makes every process rebuild its client for this
    provider (the gateway keys its client cache on (id, updated_at)).
    """
    unknown = set(changes) - set(PROVIDER_FIELDS)
    if unknown:
        raise TypeError(f"provider_update got unknown fields: {', '.join(sorted(unknown))}")
    provider = Provider.objects.select_for_update().get(pk=provider.pk)
    for name, value in changes.items():
        setattr(provider, name, value if value is not None or name != "base_url" else "")
    errors = provider_problems(provider)
    if errors:
        raise ValidationProblem(errors=errors)
    _set_api_key(provider, api_key)
    _save(provider, field="name", message="a provider with this name already exists in the workspace")
    logger.info(
        "provider_updated",
        provider=provider.name,
        fields=sorted([*changes, *(["api_key"] if api_key is not None else [])]),
    )
    return provider


@dataclass
class RotationResult:
    rotated: int = 0
    unreadable: list[str] = field(default_factory=list)  # "workspace/provider" names no key decrypts


def provider_rotate_keys() -> RotationResult:
    """Re-encrypt every stored provider key under the first KEEL_ENCRYPTION_KEYS key.

    Each row is rotated in its own short transaction under a row lock, so a concurrent edit of the
    key is never overwritten with the old value. Safe to repeat: rotating a current token again
    just re-encrypts it. Rows no configured key can read are left untouched and reported.
    """
    result = RotationResult()
    ids = list(Provider.objects.exclude(api_key_encrypted="").values_list("pk", flat=True))
    for pk in ids:
        with transaction.atomic():
            provider = Provider.objects.select_for_update().select_related("workspace").filter(pk=pk).first()
            if provider is None or not provider.api_key_encrypted:
                continue
            try:
                provider.api_key_encrypted = secret_rotate(provider.api_key_encrypted)
            except SecretUnreadable:
                result.unreadable.append(f"{provider.workspace.slug}/{provider.name}")
                continue
            provider.save(update_fields=["api_key_encrypted", "updated_at"])
            result.rotated += 1
    logger.info("provider_keys_rotated", rotated=result.rotated, unreadable=len(result.unreadable))
    return result


def model_problems(model: Model) -> list[dict[str, str]]:
    """What is wrong with an (unsaved) model, as `{"field", "message"}`; empty when valid."""
    errors: list[dict[str, str]] = []
    if model.provider_id is not None and model.provider.workspace_id != model.workspace_id:
        errors.append({"field": "provider", "message": "no such provider in this workspace"})
    for price in _PRICES:
        value = getattr(model, price)
        if value is None or Decimal(value) < 0:
            errors.append({"field": price, "message": "must be a decimal number >= 0"})
    if model.max_output_tokens and model.context_window and model.max_output_tokens > model.context_window:
        errors.append({"field": "max_output_tokens", "message": "cannot exceed context_window"})
    if (
        model.alias
        and Model.objects.for_workspace(model.workspace_id).filter(alias=model.alias).exclude(pk=model.pk).exists()
    ):
        errors.append({"field": "alias", "message": ALIAS_TAKEN})
    return errors


@transaction.atomic
def model_create(*, workspace: Workspace, provider: Provider, name: str, alias: str, **fields: Any) -> Model:
    unknown = set(fields) - set(MODEL_FIELDS)
    if unknown:
        raise TypeError(f"model_create got unknown fields: {', '.join(sorted(unknown))}")
    model = Model(workspace=workspace, provider=provider, name=name, alias=alias, **fields)
    errors = model_problems(model)
    if errors:
        raise ValidationProblem(errors=errors)
    _save(model, field="alias", message=ALIAS_TAKEN)
    return model


@transaction.atomic
def model_update(*, model: Model, **changes: Any) -> Model:
    """Change the given fields. New prices apply to calls from now on; the ledger keeps the old ones."""
    unknown = set(changes) - set(MODEL_FIELDS)
    if unknown:
        raise TypeError(f"model_update got unknown fields: {', '.join(sorted(unknown))}")
    model = Model.objects.select_for_update().select_related("provider").get(pk=model.pk)
    for name, value in changes.items():
        setattr(model, name, value)
    errors = model_problems(model)
    if errors:
        raise ValidationProblem(errors=errors)
    _save(model, field="alias", message=ALIAS_TAKEN)
    return model


@dataclass(frozen=True)
class ConnectionTest:
    ok: bool
    message: str
    latency_ms: int = 0


def provider_test_connection(*, provider: Provider, user_id: UUID | None = None) -> ConnectionTest:
    """Make a tiny real call: a one-token chat completion to the provider's first model (booked in
    the ledger like any call, so the books stay exact), or, with no model yet, a model listing."""
    from apps.providers import gateway  # the gateway imports these services' models; keep the cycle lazy

    started = time.monotonic()
    model = Model.objects.filter(provider=provider).order_by("alias").first()
    try:
        if model is None:
            gateway.provider_list_models(provider=provider)
            detail = "listed the provider's models (add a model to test a completion)"
        else:
            result = gateway.gateway_complete(
                ctx=gateway.CallContext(workspace_id=provider.workspace_id, step_id="test-connection", user_id=user_id),
                model=model.alias,
                messages=[{"role": "user", "content": "ping"}],
                params={"max_tokens": 1},
                cache=gateway.CachePolicy(enabled=False),
                retries=0,
            )
            detail = f"{model.name} answered ({result.input_tokens}+{result.output_tokens} tokens, ${result.cost_usd})"
    except gateway.ProviderError as exc:
        return ConnectionTest(ok=False, message=str(exc), latency_ms=int((time.monotonic() - started) * 1000))
    return ConnectionTest(ok=True, message=detail, latency_ms=int((time.monotonic() - started) * 1000))


DEMO_PROVIDER = "Keel simulator"
# Realistic list prices (USD per million tokens: input, cached input, output) for the demo's models.
DEMO_MODELS = (
    ("fast", "sim-fast", Decimal("0.15"), Decimal("0.075"), Decimal("0.60"), 128_000, 16_384),
    ("smart", "sim-smart", Decimal("2.50"), Decimal("1.25"), Decimal("10.00"), 128_000, 16_384),
    ("backup", "sim-backup", Decimal("0.50"), Decimal("0.25"), Decimal("1.50"), 64_000, 8_192),
)
DEMO_SIMULATOR_CONFIG = {"latency_first_ms": 250, "latency_per_token_ms": 15}


@transaction.atomic
def providers_demo_seed(*, workspace: Workspace) -> list[str]:
    """The demo's in-process simulator provider and its models `fast`, `smart`, `backup`.

    Idempotent: what exists (possibly edited by staff) is left as it is; only what is missing is added.
    """
    provider = Provider.objects.for_workspace(workspace).filter(name=DEMO_PROVIDER).first()
    if provider is None:
        provider = provider_create(
            workspace=workspace,
            name=DEMO_PROVIDER,
            kind=Provider.Kind.SIMULATOR,
            base_url="",  # no URL: served in-process, no port and no process needed
            timeout_s=30.0,
            max_retries=2,
            config=dict(DEMO_SIMULATOR_CONFIG),
        )
    added: list[str] = []
    for alias, name, price_in, price_cached, price_out, context, max_out in DEMO_MODELS:
        if Model.objects.for_workspace(workspace).filter(alias=alias).exists():
            continue
        model_create(
            workspace=workspace,
            provider=provider,
            name=name,
            alias=alias,
            input_price_per_million=price_in,
            cached_input_price_per_million=price_cached,
            output_price_per_million=price_out,
            context_window=context,
            max_output_tokens=max_out,
        )
        added.append(alias)
    aliases = ", ".join(alias for alias, *_ in DEMO_MODELS)
    return [
        f"Provider '{DEMO_PROVIDER}' (simulator, in-process; not a real model): models {aliases}"
        + (f" (added {', '.join(added)})" if added else "")
    ]
