from __future__ import annotations

from decimal import Decimal

from django.db import models

from apps.core.models import WorkspaceOwnedModel

MONEY = {"max_digits": 18, "decimal_places": 10}


class UsageRecord(WorkspaceOwnedModel):
    """The ledger: one row per provider call attempt (cache hits included), never updated or deleted.

    `call_id` is made before the call and is unique, so a repeated write of the same attempt (a
    retried job, a resumed run) can never count twice. Prices are copied from the model at call
    time: later price edits do not rewrite history. `input_tokens` is the whole prompt as the
    provider reports it; `cached_input_tokens` is the part of it billed at the cached price.
    Run and workflow are plain ids: the ledger outlives and does not depend on the runs app.
    """

    class Status(models.TextChoices):
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    call_id = models.CharField(max_length=64, unique=True)
    model = models.ForeignKey("providers.Model", on_delete=models.RESTRICT, related_name="+")
    model_alias = models.CharField(max_length=100)
    provider_name = models.CharField(max_length=100)
    status = models.CharField(max_length=16, choices=Status.choices)
    error_code = models.CharField(max_length=64, blank=True, default="")
    http_status = models.PositiveSmallIntegerField(null=True, blank=True)
    attempt = models.PositiveSmallIntegerField(default=1)
    cache_hit = models.BooleanField(default=False)

    input_tokens = models.PositiveIntegerField(default=0)
    cached_input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    input_price_per_million = models.DecimalField(**MONEY)
    cached_input_price_per_million = models.DecimalField(**MONEY)
    output_price_per_million = models.DecimalField(**MONEY)
    cost_usd = models.DecimalField(**MONEY, default=Decimal("0"))
    saved_usd = models.DecimalField(**MONEY, default=Decimal("0"))
    latency_ms = models.PositiveIntegerField(default=0)

    run_id = models.UUIDField(null=True, blank=True)
    step_id = models.CharField(max_length=100, blank=True, default="")
    workflow_id = models.UUIDField(null=True, blank=True)
    api_key = models.ForeignKey("accounts.ApiKey", null=True, blank=True, on_delete=models.RESTRICT, related_name="+")
    user = models.ForeignKey("accounts.User", null=True, blank=True, on_delete=models.RESTRICT, related_name="+")

    class Meta:
        indexes = [
            models.Index(fields=["workspace", "created_at"], name="usage_ws_created_idx"),
            models.Index(fields=["run_id"], name="usage_run_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.call_id} {self.model_alias} {self.status} ${self.cost_usd}"
