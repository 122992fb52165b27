"""Staff review of runs: steps inline, filters, cost and tokens; retry and cancel through the services.

Changelists must stay fast on millions of runs: no full count (show_full_result_count), filters on
indexed columns, related rows joined (list_select_related), a date filter instead of a date
hierarchy (which would scan every row for its year and month links).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from apps.accounts.models import Role
from apps.accounts.tenancy import Actor
from apps.core.problems import ConflictProblem
from apps.runs.models import Run, StepRun
from apps.runs.services import run_cancel, run_retry


class StepRunInline(admin.TabularInline):
    model = StepRun
    extra = 0
    can_delete = False
    fields = readonly_fields = (
        "index",
        "step_id",
        "type",
        "status",
        "executions",
        "model",
        "provider",
        "fallback_used",
        "cache_hit",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "latency_ms",
        "error",
        "output",
    )
    ordering = ["index"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "workflow",
        "workspace",
        "status",
        "mode",
        "cost_usd",
        "tokens",
        "duration",
        "error_code",
        "created_at",
    ]
    list_filter = ["status", "mode", "workflow", ("created_at", admin.DateFieldListFilter), "workspace"]
    list_select_related = ["workflow", "workspace"]
    show_full_result_count = False
    search_fields = ["=id", "=idempotency_key", "=trace_id"]
    ordering = ["-created_at"]
    inlines = [StepRunInline]
    actions = ["retry_runs", "cancel_runs"]
    fieldsets = [
        (None, {"fields": ["id", "workspace", "workflow", "workflow_version", "status", "mode", "retry_of"]}),
        ("Data", {"fields": ["input", "output", "error", "metadata"]}),
        ("Usage", {"fields": ["input_tokens", "output_tokens", "cost_usd", "cache_hits", "saved_usd"]}),
        (
            "Timing",
            {"fields": ["created_at", "started_at", "finished_at", "duration", "heartbeat_at", "executions"]},
        ),
        ("Origin", {"fields": ["api_key", "user", "idempotency_key", "request_id", "trace_id", "job_id"]}),
        ("Review", {"fields": ["rating", "review_note", "reviewed_by", "reviewed_at"]}),
    ]
    readonly_fields = [
        "id",
        "workspace",
        "workflow",
        "workflow_version",
        "status",
        "mode",
        "retry_of",
        "input",
        "output",
        "error",
        "metadata",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "cache_hits",
        "saved_usd",
        "created_at",
        "started_at",
        "finished_at",
        "duration",
        "heartbeat_at",
        "executions",
        "api_key",
        "user",
        "idempotency_key",
        "request_id",
        "trace_id",
        "job_id",
        "reviewed_by",
        "reviewed_at",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # runs are started through the API, the web UI or `run_workflow`

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # history: runs are what the ledger and reviews refer to

    @admin.display(description="tokens")
    def tokens(self, run: Run) -> int:
        return run.input_tokens + run.output_tokens

    @admin.display(description="duration")
    def duration(self, run: Run) -> str:
        return "" if run.duration_ms is None else f"{run.duration_ms / 1000:.2f} s"

    @admin.display(description="error")
    def error_code(self, run: Run) -> str:
        return (run.error or {}).get("code", "") if run.status != Run.Status.SUCCEEDED else ""

    def save_model(self, request: HttpRequest, obj: Run, form: Any, change: bool) -> None:
        from django.utils import timezone

        # Only the review fields are editable; stamp who reviewed.
        if {"rating", "review_note"} & set(form.changed_data):
            obj.reviewed_by, obj.reviewed_at = request.user, timezone.now()  # type: ignore[assignment]
        obj.save(update_fields=["rating", "review_note", "reviewed_by", "reviewed_at", "updated_at"])

    def _actor(self, request: HttpRequest, run: Run) -> Actor:
        return Actor(workspace=run.workspace, role=Role.OWNER, user=request.user)  # type: ignore[arg-type]

    @admin.action(description="Retry selected failed or cancelled runs")
    def retry_runs(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        done = 0
        for run in queryset.select_related("workspace", "workflow", "workflow_version"):
            try:
                run_retry(run=run, actor=self._actor(request, run))
                done += 1
            except ConflictProblem as exc:
                self.message_user(request, f"{run.pk}: {exc.detail_text}", messages.WARNING)
        self.message_user(request, f"{done} run(s) retried.")

    @admin.action(description="Cancel selected runs")
    def cancel_runs(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        done = 0
        for run in queryset:
            try:
                run_cancel(run=run)
                done += 1
            except ConflictProblem as exc:
                self.message_user(request, f"{run.pk}: {exc.detail_text}", messages.WARNING)
        self.message_user(request, f"{done} run(s) cancelled (running ones stop at their next check).")
