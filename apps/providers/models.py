from __future__ import annotations

from decimal import Decimal

from django.db import models

from apps.core.models import MONEY, WorkspaceOwnedModel


class Provider(WorkspaceOwnedModel):
    """An upstream that speaks the OpenAI chat-completions protocol.

    The API key is stored only as a Fernet token (`api_key_encrypted`); see providers.crypto.
    All providers belong to a workspace in this version (no global providers yet).
    """

    class Kind(models.TextChoices):
        OPENAI = "openai", "OpenAI"
        OPENAI_COMPATIBLE = "openai_compatible", "OpenAI-compatible"
        AZURE_OPENAI = "azure_openai", "Azure OpenAI"
        SIMULATOR = "simulator", "Simulator (not a real model)"

    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=32, choices=Kind.choices)
    base_url = models.URLField(max_length=500, blank=True)
    api_key_encrypted = models.TextField(blank=True, default="")
    timeout_s = models.FloatField(default=60.0)
    max_retries = models.PositiveSmallIntegerField(default=2)
    config = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workspace", "name"], name="provider_ws_name_uniq")]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_kind_display()})"

    @property
    def is_simulator(self) -> bool:
        return self.kind == self.Kind.SIMULATOR

    @property
    def has_api_key(self) -> bool:
        return bool(self.api_key_encrypted)


class Model(WorkspaceOwnedModel):
    """A model a workflow may call by `alias`; `name` is what is sent upstream. Prices in USD per 1M tokens."""

    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="models")
    name = models.CharField(max_length=200)
    alias = models.SlugField(max_length=100)
    input_price_per_million = models.DecimalField(**MONEY, default=Decimal("0"))
    cached_input_price_per_million = models.DecimalField(**MONEY, default=Decimal("0"))
    output_price_per_million = models.DecimalField(**MONEY, default=Decimal("0"))
    context_window = models.PositiveIntegerField(default=128_000)
    max_output_tokens = models.PositiveIntegerField(default=4096)
    supports_json_schema = models.BooleanField(default=True)
    supports_streaming = models.BooleanField(default=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workspace", "alias"], name="model_ws_alias_uniq")]

    def __str__(self) -> str:
        return f"{self.alias} → {self.name}"
