from __future__ import annotations

import uuid
from decimal import Decimal

from django.db import models

from apps.core.models import MONEY, WorkspaceOwnedModel


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

    # Not indexed alone: it leads usage_ws_created_idx (each index is written by every call's booking).
    workspace = models.ForeignKey("accounts.Workspace", on_delete=models.CASCADE, related_name="+", db_index=False)
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
    # Mostly empty (calls of runs started with an API key), indexed where set: what a delete checks.
    user = models.ForeignKey(
        "accounts.User", null=True, blank=True, on_delete=models.RESTRICT, related_name="+", db_index=False
    )

    class Meta:
        indexes = [
            models.Index(fields=["workspace", "created_at"], name="usage_ws_created_idx"),
            models.Index(fields=["run_id"], name="usage_run_idx"),
            models.Index(fields=["user"], name="usage_user_idx", condition=models.Q(user__isnull=False)),
        ]

    def __str__(self) -> str:
        return f"{self.call_id} {self.model_alias} {self.status} ${self.cost_usd}"


# The nil UUID stands for "none" in rollup dimensions: a NULL would make each such row distinct to
# the unique constraint, and the rollup's upsert (ON CONFLICT) could then never find it again.
NIL_UUID = uuid.UUID(int=0)


class UsageHourly(models.Model):
    """The ledger summed per workspace, hour (UTC) and dimension, maintained in the same transaction
    as each ledger insert (usage_record), so it is always exactly the sum of the ledger's rows.

    Reports read this instead of millions of ledger rows; `usage_rollup_rebuild` recomputes it from
    the ledger for rows written by other means (bulk loads). NIL_UUID means "no workflow / no key".
    """

    id = models.BigAutoField(primary_key=True)
    workspace = models.ForeignKey("accounts.Workspace", on_delete=models.CASCADE, related_name="+")
    hour = models.DateTimeField()
    workflow_id = models.UUIDField(default=NIL_UUID)
    model_id = models.UUIDField()
    api_key_id = models.UUIDField(default=NIL_UUID)
    status = models.CharField(max_length=16, choices=UsageRecord.Status.choices)
    cache_hit = models.BooleanField(default=False)

    calls = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    cached_input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(**MONEY, default=Decimal("0"))
    saved_usd = models.DecimalField(**MONEY, default=Decimal("0"))

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["workspace", "hour", "workflow_id", "model_id", "api_key_id", "status", "cache_hit"],
                name="usage_hourly_bucket_uniq",
            )
        ]

    def __str__(self) -> str:
        return f"{self.workspace_id} {self.hour:%Y-%m-%d %H}h {self.calls} calls ${self.cost_usd}"


class Budget(WorkspaceOwnedModel):
    """A spending limit on a scope of a workspace, per calendar period in UTC.

    `block` budgets refuse a call whose worst-case cost does not fit; `warn` budgets never refuse but
    record a BudgetEvent. The period's running totals live in BudgetWindow rows.
    """

    class Scope(models.TextChoices):
        WORKSPACE = "workspace", "Workspace"
        WORKFLOW = "workflow", "Workflow"
        API_KEY = "api_key", "API key"
        USER = "user", "User"

    class Period(models.TextChoices):
        DAY = "day", "Day (UTC)"
        MONTH = "month", "Month (UTC)"
        TOTAL = "total", "Total"

    class Action(models.TextChoices):
        BLOCK = "block", "Block"
        WARN = "warn", "Warn"

    scope = models.CharField(max_length=16, choices=Scope.choices)
    scope_id = models.UUIDField(null=True, blank=True)
    period = models.CharField(max_length=8, choices=Period.choices)
    limit_usd = models.DecimalField(**MONEY)
    action = models.CharField(max_length=8, choices=Action.choices, default=Action.BLOCK)
    alert_threshold_pct = models.PositiveSmallIntegerField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["workspace", "scope", "scope_id"], name="budget_ws_scope_idx")]
        constraints = [
            models.CheckConstraint(
                condition=(models.Q(scope="workspace", scope_id__isnull=True))
                | (~models.Q(scope="workspace") & models.Q(scope_id__isnull=False)),
                name="budget_scope_id_matches_scope",
            ),
            models.CheckConstraint(condition=models.Q(limit_usd__gte=0), name="budget_limit_not_negative"),
            models.CheckConstraint(
                condition=models.Q(alert_threshold_pct__isnull=True)
                | models.Q(alert_threshold_pct__gte=1, alert_threshold_pct__lte=100),
                name="budget_alert_threshold_pct_range",
            ),
        ]

    def __str__(self) -> str:
        target = self.scope if self.scope_id is None else f"{self.scope} {self.scope_id}"
        return f"{self.get_period_display()} {self.action} budget ${self.limit_usd} on {target}"


class BudgetWindow(models.Model):
    """One budget's running totals for one period window [start, end) (end is null for `total`).

    `limit_usd` is a copy of the budget's limit (kept in step by budget_update) so the reservation
    is a single-table conditional UPDATE: a join in its WHERE would not be re-checked against the
    latest row version under concurrency, and two racing reservations could both pass.
    """

    id = models.BigAutoField(primary_key=True)
    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="windows")
    start = models.DateTimeField()
    end = models.DateTimeField(null=True, blank=True)
    limit_usd = models.DecimalField(**MONEY)
    spent = models.DecimalField(**MONEY, default=Decimal("0"))
    reserved = models.DecimalField(**MONEY, default=Decimal("0"))
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["budget", "start"], name="budget_window_budget_start_uniq"),
            # A bookkeeping bug must fail loudly rather than leave a negative reservation behind.
            models.CheckConstraint(condition=models.Q(reserved__gte=0), name="budget_window_reserved_not_negative"),
            models.CheckConstraint(condition=models.Q(spent__gte=0), name="budget_window_spent_not_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.budget_id} from {self.start:%Y-%m-%d %H:%M}: ${self.spent} spent, ${self.reserved} reserved"

    @property
    def remaining(self) -> Decimal:
        return max(Decimal("0"), self.limit_usd - self.spent - self.reserved)


class BudgetReservation(models.Model):
    """What one call (call_id) holds in one window; makes settle and release idempotent and lets a
    crashed worker's reservation be found and released (budget_release_stale)."""

    class State(models.TextChoices):
        HELD = "held", "Held"
        SETTLED = "settled", "Settled"
        RELEASED = "released", "Released"

    id = models.BigAutoField(primary_key=True)
    call_id = models.CharField(max_length=64)
    window = models.ForeignKey(BudgetWindow, on_delete=models.CASCADE, related_name="reservations")
    amount = models.DecimalField(**MONEY)
    actual = models.DecimalField(**MONEY, null=True, blank=True)
    state = models.CharField(max_length=8, choices=State.choices, default=State.HELD)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["call_id", "window"], name="budget_reservation_call_window_uniq"),
        ]
        indexes = [
            # The stale sweep only looks at what is still held: a small partial index.
            models.Index(fields=["created_at"], name="budget_resv_held_created_idx", condition=models.Q(state="held")),
        ]

    def __str__(self) -> str:
        return f"{self.call_id} {self.state} ${self.amount}"


class BudgetEvent(models.Model):
    """A budget crossing worth telling someone about; at most one per window and kind.

    Where the `budget.threshold` webhook will come from (services.budget_event_notify).
    """

    class Kind(models.TextChoices):
        THRESHOLD_REACHED = "threshold_reached", "Alert threshold reached"
        LIMIT_EXCEEDED = "limit_exceeded", "Warn budget exceeded"

    id = models.BigAutoField(primary_key=True)
    window = models.ForeignKey(BudgetWindow, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=24, choices=Kind.choices)
    call_id = models.CharField(max_length=64, blank=True, default="")
    spent = models.DecimalField(**MONEY)
    reserved = models.DecimalField(**MONEY)
    limit_usd = models.DecimalField(**MONEY)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["window", "kind"], name="budget_event_window_kind_uniq")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} at ${self.spent}/${self.limit_usd}"
