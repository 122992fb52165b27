from __future__ import annotations

from decimal import Decimal

from django.db import models

from apps.core.models import MONEY, WorkspaceOwnedModel, WorkspaceQuerySet


class Run(WorkspaceOwnedModel):
    """One execution of a workflow version on one input.

    Who executes it is decided by a conditional update: `claim` moves it from queued to running and
    sets a fresh `lease_token`; every later write by that executor is conditional on the token, so
    an executor the reaper gave up on (its heartbeat stopped) cannot overwrite the one that resumed.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    class Mode(models.TextChoices):
        SYNC = "sync", "Sync"
        ASYNC = "async", "Async"
        STREAM = "stream", "Stream"

    TERMINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    # Not indexed alone: it leads the (workspace, ...) indexes below. Every index is written by each
    # run's insert and by its updates that change an indexed column (its start and end).
    workspace = models.ForeignKey("accounts.Workspace", on_delete=models.CASCADE, related_name="+", db_index=False)
    workflow = models.ForeignKey("workflows.Workflow", on_delete=models.PROTECT, related_name="+")
    workflow_version = models.ForeignKey("workflows.WorkflowVersion", on_delete=models.PROTECT, related_name="+")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    mode = models.CharField(max_length=16, choices=Mode.choices)
    input = models.JSONField(default=dict)
    output = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)  # {"code", "message", "step"}
    metadata = models.JSONField(default=dict, blank=True)
    idempotency_key = models.CharField(max_length=255, blank=True, default="")
    api_key = models.ForeignKey("accounts.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # Mostly empty references, indexed where set (see Meta): what deleting the target looks up.
    user = models.ForeignKey(
        "accounts.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_index=False
    )
    retry_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="retries", db_index=False
    )

    request_id = models.CharField(max_length=128, blank=True, default="")
    trace_id = models.CharField(max_length=32)
    traceparent = models.CharField(max_length=55, blank=True, default="")

    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    deadline_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    lease_token = models.UUIDField(null=True, blank=True)
    executions = models.PositiveSmallIntegerField(default=0)  # claims so far: 1 + resumptions
    job_id = models.CharField(max_length=100, blank=True, default="")
    last_event_seq = models.PositiveIntegerField(default=0)

    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    cost_usd = models.DecimalField(**MONEY, default=Decimal("0"))
    cache_hits = models.PositiveIntegerField(default=0)
    saved_usd = models.DecimalField(**MONEY, default=Decimal("0"))

    rating = models.PositiveSmallIntegerField(null=True, blank=True)
    review_note = models.TextField(blank=True, default="")
    reviewed_by = models.ForeignKey(
        "accounts.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_index=False
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["workspace", "-created_at"], name="run_ws_created_idx"),
            models.Index(fields=["workspace", "status", "-created_at"], name="run_ws_status_created_idx"),
            models.Index(fields=["workspace", "workflow", "-created_at"], name="run_ws_workflow_created_idx"),
            models.Index(fields=["status", "-created_at"], name="run_status_created_idx"),
            # The reaper's two scans touch only live runs.
            models.Index(
                fields=["heartbeat_at"], name="run_running_heartbeat_idx", condition=models.Q(status="running")
            ),
            models.Index(fields=["created_at"], name="run_queued_created_idx", condition=models.Q(status="queued")),
            models.Index(fields=["user"], name="run_user_idx", condition=models.Q(user__isnull=False)),
            models.Index(fields=["retry_of"], name="run_retry_of_idx", condition=models.Q(retry_of__isnull=False)),
            models.Index(
                fields=["reviewed_by"], name="run_reviewed_by_idx", condition=models.Q(reviewed_by__isnull=False)
            ),
        ]

    def __str__(self) -> str:
        return f"run {self.pk} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in self.TERMINAL

    @property
    def duration_ms(self) -> int | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return int((self.finished_at - self.started_at).total_seconds() * 1000)


class StepRun(WorkspaceOwnedModel):
    """A step of a run: created pending with the run, checkpointed when it finishes.

    `call_ids` lists the ledger ids of every provider call the step made or started (noted just
    before each request), so whoever recovers a crashed run can book a call that never returned.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    # Steps are read through their run: no index of their own on created_at, and the unique
    # (run, step_id) index serves lookups by run.
    created_at = models.DateTimeField(auto_now_add=True)
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="steps", db_index=False)
    step_id = models.CharField(max_length=64)
    index = models.PositiveSmallIntegerField()
    type = models.CharField(max_length=32)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    executions = models.PositiveSmallIntegerField(default=0)
    input = models.JSONField(null=True, blank=True)
    output = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    model = models.CharField(max_length=100, blank=True, default="")
    provider = models.CharField(max_length=100, blank=True, default="")
    fallback_used = models.BooleanField(default=False)
    cache_hit = models.BooleanField(default=False)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(**MONEY, default=Decimal("0"))
    saved_usd = models.DecimalField(**MONEY, default=Decimal("0"))
    latency_ms = models.PositiveIntegerField(default=0)
    call_ids = models.JSONField(default=list, blank=True)
    reused_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_index=False
    )
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "step_id"], name="steprun_run_step_uniq")]
        indexes = [
            models.Index(
                fields=["reused_from"], name="steprun_reused_from_idx", condition=models.Q(reused_from__isnull=False)
            )
        ]
        ordering = ["index"]

    def __str__(self) -> str:
        return f"{self.step_id} ({self.status})"

    @property
    def attempts(self) -> int:
        """Provider calls booked for this step (retries, fallbacks, repair, cache hit); 1 for a local step."""
        return len(self.call_ids) if self.call_ids else (1 if self.executions else 0)


class RunEvent(models.Model):
    """The append-only progress log of a run: what SSE streams and `Last-Event-ID` replays."""

    workspace = models.ForeignKey("accounts.Workspace", on_delete=models.CASCADE, related_name="+")
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="events", db_index=False)  # see Meta
    seq = models.PositiveIntegerField()
    type = models.CharField(max_length=32)
    data = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    objects = WorkspaceQuerySet.as_manager()

    class Meta:
        # Its index serves every lookup by run: no separate index on run.
        constraints = [models.UniqueConstraint(fields=["run", "seq"], name="runevent_run_seq_uniq")]

    def __str__(self) -> str:
        return f"{self.run_id} #{self.seq} {self.type}"


class IdempotencyKey(WorkspaceOwnedModel):
    """A client's `Idempotency-Key` for starting a run: the request's fingerprint and first response.

    Unique per workspace, so of concurrent requests with one key exactly one inserts the row and
    creates the run; the others find it. Kept until `expires_at` (24 hours), then purged.
    """

    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64)
    run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    # JSON text, not a JSONField: jsonb reorders keys, and a replay must be the first response exactly.
    response_body = models.TextField(blank=True, default="")
    expires_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workspace", "key"], name="idempotencykey_ws_key_uniq")]
        indexes = [models.Index(fields=["expires_at"], name="idempotencykey_expires_idx")]

    def __str__(self) -> str:
        return f"{self.key} -> {self.run_id}"
