"""The run engine: claims a run, then executes its steps in order, checkpointing each one.

Durability, in one place:
- `run_claim` is a conditional update (`WHERE status = 'queued'`) that hands the run a fresh lease
  token; a second delivery of the same job, or a stale executor, finds nothing to claim.
- While the run executes, the process's heartbeat thread (apps/runs/heartbeat.py) stamps its
  `heartbeat_at` every KEEL_RUN_HEARTBEAT_S; the reaper (services.runs_reap) takes over runs whose
  heartbeat is older than KEEL_RUN_STALE_S.
- Every write after the claim (step checkpoints, totals, the final status) happens in a
  transaction that first locks the run row *with this executor's lease token*; if the reaper has
  taken the run over, the write raises LeaseLost and this executor stops without touching it.
- Before each provider request the gateway reports its call id (`on_attempt`); it is committed on
  the StepRun at once, so whoever recovers a crash can book a call that never returned.
- A resumed run skips steps already `succeeded` and reuses their outputs (no new provider call).
- Cancellation and the run timeout are checked between steps and, through `should_abort`, between
  the chunks of a streamed model answer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import structlog
from django.conf import settings
from django.db import models, transaction
from django.db.models import Count, F, Q, Sum, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from apps.providers.gateway import CallAborted
from apps.runs import events
from apps.runs.heartbeat import heartbeats
from apps.runs.models import Run, StepRun
from apps.runs.serializers import StepRunSerializer, run_body
from apps.workflows.steps import step_type
from apps.workflows.steps.base import StepFailed, StepResult, Usage
from apps.workflows.templating import TemplateProblem, render_value

logger = structlog.get_logger(__name__)

# Streamed text is written as one step.delta event per this many seconds (or per DELTA_MAX_CHARS),
# not one per token: a long answer would otherwise be thousands of rows.
DELTA_FLUSH_S = 0.05
DELTA_MAX_CHARS = 2048
# How often should_abort() may read the run row while a model answer streams.
ABORT_CHECK_S = 0.5


class LeaseLost(Exception):
    """The run is no longer this executor's (the reaper resumed it elsewhere, or it finished)."""


def run_timeout_s(definition: dict[str, Any]) -> float:
    limits = definition.get("limits") or {}
    return float(limits.get("timeout_s") or settings.KEEL_RUN_DEFAULT_TIMEOUT_S)


def error_body(code: str, message: str, step: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"code": code, "message": message, "step": step, **extra}


@dataclass
class Claim:
    run: Run
    token: UUID


def run_claim(*, run_id: UUID) -> Claim | None:
    """Move a queued run to running with a fresh lease, or None when it is not (or no longer) queued."""
    run = Run.objects.select_related("workflow_version").filter(pk=run_id).first()
    if run is None or run.status != Run.Status.QUEUED:
        return None
    now = timezone.now()
    deadline = now + timedelta(seconds=run_timeout_s(run.workflow_version.definition))
    token = uuid4()
    claimed = Run.objects.filter(pk=run_id, status=Run.Status.QUEUED).update(
        status=Run.Status.RUNNING,
        lease_token=token,
        heartbeat_at=now,
        executions=F("executions") + 1,
        started_at=Coalesce("started_at", Value(now, output_field=models.DateTimeField())),
        deadline_at=Coalesce("deadline_at", Value(deadline, output_field=models.DateTimeField())),
    )
    if claimed != 1:
        return None
    run = Run.objects.select_related("workflow", "workflow_version", "workspace").get(pk=run_id)
    return Claim(run=run, token=token)


class _StepContext:
    """What a step type sees while it executes (apps.workflows.steps.base.StepContext)."""

    def __init__(self, executor: Executor, step: StepRun, template_context: dict[str, Any]) -> None:
        run = executor.run
        self._executor = executor
        self._step = step
        self.workspace_id = run.workspace_id
        self.run_id = run.pk
        self.workflow_id = run.workflow_id
        self.api_key_id = run.api_key_id
        self.user_id = run.user_id
        self.traceparent = run.traceparent or None
        self.template_context = template_context

    def call_key(self, call: int) -> str:
        # Stable per run, step, execution and call: ledger ids are `{call_key}-{attempt}` (<= 64 chars).
        return f"{self.run_id}-{self._step.index}-{self._executor.run.executions}-{call}"

    def on_delta(self, text: str, *, answer: int = 1) -> None:
        self._executor.delta(self._step, text, answer)

    def on_attempt(self, call_id: str) -> None:
        self._executor.note_call(self._step, call_id)

    def should_abort(self) -> bool:
        return self._executor.should_abort()

    def remaining_s(self) -> float | None:
        deadline = self._executor.run.deadline_at
        return None if deadline is None else max(0.0, (deadline - timezone.now()).total_seconds())


class Executor:
    """Executes one claimed run. Not shared between threads; the heartbeat thread only stamps."""

    lease: Any = None

    def __init__(self, claim: Claim) -> None:
        self.run = claim.run
        self.token = claim.token
        self.definition: dict[str, Any] = self.run.workflow_version.definition
        limit = (self.definition.get("limits") or {}).get("max_cost_usd")
        self.max_cost = Decimal(str(limit)) if limit is not None else None
        self.abort_reason: str | None = None
        self._last_abort_check = 0.0
        self._current: StepRun | None = None
        self._deltas: list[str] = []
        self._delta_answer = 1
        self._delta_flushed_at = 0.0

    # --- the run --------------------------------------------------------------------------------

    def execute(self) -> None:
        self.lease = heartbeats.hold(run_id=self.run.pk, token=self.token)
        try:
            self._execute()
        except LeaseLost:
            logger.warning("run_lease_lost", detail="another executor owns the run now; stopping")
        except Exception:  # noqa: BLE001 - a bug must fail this run, not leave it running
            logger.exception("run_engine_error")
            step = self._current
            try:
                if step is not None and step.status == StepRun.Status.RUNNING:
                    self._step_finish(
                        step,
                        status=StepRun.Status.FAILED,
                        error=error_body("internal_error", "An unexpected error stopped the step.", step.step_id),
                    )
                self._finish(
                    Run.Status.FAILED,
                    error=error_body(
                        "internal_error",
                        "An unexpected error stopped the run; the logs carry its run_id.",
                        step.step_id if step else None,
                    ),
                )
            except LeaseLost:
                pass
        finally:
            heartbeats.release(self.lease)

    def _execute(self) -> None:
        run = self.run
        steps = {step.step_id: step for step in StepRun.objects.filter(run=run)}
        context: dict[str, Any] = {"input": run.input, "steps": {}, "run": self._run_context()}
        logger.info("run_started", execution=run.executions, workflow=run.workflow.slug)
        self._emit(
            events.RUN_STARTED,
            {
                "status": Run.Status.RUNNING,
                "execution": run.executions,
                "workflow": run.workflow.slug,
                "workflow_version": run.workflow_version.number,
            },
        )
        for spec in self.definition["steps"]:
            step = steps[spec["id"]]
            if step.status == StepRun.Status.SUCCEEDED:
                context["steps"][step.step_id] = {"output": step.output}
                continue
            reason = self._check()
            if reason is not None:
                self._stop(reason, step)
                return
            self._step_start(step)
            try:
                result = step_type(spec["type"]).execute(spec, _StepContext(self, step, context))
            except StepFailed as failure:
                self._flush_deltas(step)
                if self._past_deadline():
                    # The step failed because the run's time ran out (its call was cut short): say so.
                    self._stop("timeout", step, usage=failure.usage, input=failure.input)
                    return
                self._step_finish(
                    step,
                    status=StepRun.Status.FAILED,
                    usage=failure.usage,
                    input=failure.input,
                    error=error_body(failure.code, failure.message, step.step_id, **_errors(failure)),
                )
                self._finish(
                    Run.Status.FAILED,
                    error=error_body(failure.code, failure.message, step.step_id, **_errors(failure)),
                )
                return
            except CallAborted:
                self._flush_deltas(step)
                self._stop(self.abort_reason or self._check() or "cancelled", step)
                return
            self._flush_deltas(step)
            self._step_finish(step, status=StepRun.Status.SUCCEEDED, result=result)
            context["steps"][step.step_id] = {"output": result.output}
            if self.max_cost is not None and self.run.cost_usd > self.max_cost:
                self._finish(
                    Run.Status.FAILED,
                    error=error_body(
                        "cost_limit_exceeded",
                        f"The run has cost {self.run.cost_usd} USD, over its limit of {self.max_cost} USD.",
                        step.step_id,
                    ),
                )
                return

        try:
            if "output" in self.definition:
                output = render_value(self.definition["output"], context)
            else:
                output = context["steps"][self.definition["steps"][-1]["id"]]["output"]
        except TemplateProblem as exc:
            self._finish(Run.Status.FAILED, error=error_body("template_error", f"The output template failed: {exc}"))
            return
        self._finish(Run.Status.SUCCEEDED, output=output)

    def _run_context(self) -> dict[str, Any]:
        run = self.run
        return {
            "id": str(run.pk),
            "workflow": run.workflow.slug,
            "version": run.workflow_version.number,
            "mode": run.mode,
            "metadata": run.metadata,
            "trace_id": run.trace_id,
            "created_at": run.created_at.isoformat(),
        }

    # --- checks -----------------------------------------------------------------------------------

    def _check(self) -> str | None:
        """Why the run must stop now (cancelled, timeout, lease_lost), reading the run row fresh."""
        row = Run.objects.filter(pk=self.run.pk).values("lease_token", "status", "cancel_requested_at").first()
        if row is None or row["lease_token"] != self.token or row["status"] != Run.Status.RUNNING:
            return "lease_lost"
        if row["cancel_requested_at"] is not None:
            return "cancelled"
        if self._past_deadline():
            return "timeout"
        return None

    def _past_deadline(self) -> bool:
        return self.run.deadline_at is not None and timezone.now() >= self.run.deadline_at

    def should_abort(self) -> bool:
        if self.abort_reason is not None:
            return True
        if self.lease.lost:
            self.abort_reason = "lease_lost"
            return True
        now = time.monotonic()
        if now - self._last_abort_check < ABORT_CHECK_S:
            return False
        self._last_abort_check = now
        self.abort_reason = self._check()
        return self.abort_reason is not None

    def _stop(
        self, reason: str, step: StepRun, *, usage: Usage | None = None, input: dict[str, Any] | None = None
    ) -> None:
        if reason == "lease_lost":
            raise LeaseLost
        if reason == "timeout":
            limit = run_timeout_s(self.definition)
            error = error_body("run_timeout", f"The run exceeded its time limit of {limit:g} s.", step.step_id)
            if step.status == StepRun.Status.RUNNING:
                self._step_finish(step, status=StepRun.Status.FAILED, error=error, usage=usage, input=input)
            self._finish(Run.Status.FAILED, error=error)
            return
        error = error_body("cancelled", "The run was cancelled on request.", step.step_id)
        if step.status == StepRun.Status.RUNNING:
            self._step_finish(step, status=StepRun.Status.CANCELLED, error=error, usage=usage, input=input)
        logger.info("run_cancelled", step=step.step_id)
        self._finish(Run.Status.CANCELLED, error=error)

    # --- writes, each under the lease -------------------------------------------------------------

    @contextmanager
    def _leased(self) -> Iterator[None]:
        with transaction.atomic():
            held = list(
                Run.objects.select_for_update()
                .filter(pk=self.run.pk, lease_token=self.token, status=Run.Status.RUNNING)
                .values_list("pk", flat=True)
            )
            if not held:
                raise LeaseLost
            yield

    def _emit(self, type: str, data: dict[str, Any]) -> None:
        events.event_append(
            run_id=self.run.pk, workspace_id=self.run.workspace_id, type=type, data={"run_id": str(self.run.pk), **data}
        )

    def _step_start(self, step: StepRun) -> None:
        now = timezone.now()
        with self._leased():
            step.status = StepRun.Status.RUNNING
            step.executions += 1
            step.started_at = now
            step.finished_at = None
            step.error = None
            step.save(update_fields=["status", "executions", "started_at", "finished_at", "error", "updated_at"])
            self._emit(events.STEP_STARTED, {"step": step.step_id, "type": step.type, "index": step.index})
        self._current = step
        self._delta_answer = 1
        logger.info("step_started", step=step.step_id, type=step.type, execution=step.executions)

    def note_call(self, step: StepRun, call_id: str) -> None:
        """Commit the call id before the request goes out (we are outside any transaction here)."""
        if call_id not in step.call_ids:
            step.call_ids = [*step.call_ids, call_id]
            StepRun.objects.filter(pk=step.pk).update(call_ids=step.call_ids)

    def _step_finish(
        self,
        step: StepRun,
        *,
        status: str,
        result: StepResult | None = None,
        usage: Usage | None = None,
        input: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> None:
        usage = result.usage if result is not None else (usage or Usage())
        step.status = status
        step.finished_at = timezone.now()
        step.error = error
        if result is not None:
            step.output = result.output
            input = result.input
        if input:
            step.input = input
        if usage.model:
            step.model, step.provider = usage.model, usage.provider
        step.fallback_used = usage.fallback_used
        step.cache_hit = usage.cache_hit
        # Summed over executions: a step re-run after a crash keeps what its first execution cost.
        step.input_tokens += usage.input_tokens
        step.output_tokens += usage.output_tokens
        step.cost_usd += usage.cost_usd
        step.saved_usd += usage.saved_usd
        step.latency_ms = usage.latency_ms
        step.call_ids = [*step.call_ids, *[c for c in usage.call_ids if c not in step.call_ids]]
        with self._leased():
            step.save()
            self._totals()
            self._emit(events.STEP_FINISHED, {"step": step.step_id, **StepRunSerializer(step).data, "id": step.step_id})
        self._current = None
        logger.info("step_finished", step=step.step_id, status=status, cost_usd=str(step.cost_usd))

    def _totals(self) -> None:
        totals = StepRun.objects.filter(run=self.run).aggregate(
            input_tokens=Coalesce(Sum("input_tokens"), 0),
            output_tokens=Coalesce(Sum("output_tokens"), 0),
            cost_usd=Coalesce(Sum("cost_usd"), Decimal("0"), output_field=models.DecimalField()),
            saved_usd=Coalesce(Sum("saved_usd"), Decimal("0"), output_field=models.DecimalField()),
            cache_hits=Count("pk", filter=Q(cache_hit=True)),
        )
        Run.objects.filter(pk=self.run.pk).update(**totals)
        for name, value in totals.items():
            setattr(self.run, name, value)

    def _finish(self, status: str, *, output: Any = None, error: dict[str, Any] | None = None) -> None:
        with self._leased():
            now = timezone.now()
            Run.objects.filter(pk=self.run.pk).update(status=status, output=output, error=error, finished_at=now)
            self._totals()
            run = Run.objects.select_related("workflow", "workflow_version").get(pk=self.run.pk)
            self._emit(events.RUN_FINISHED, {"status": status, "run": run_body(run)})
        self.run.status, self.run.output, self.run.error, self.run.finished_at = status, output, error, now
        logger.info(
            "run_finished", status=status, error_code=(error or {}).get("code"), cost_usd=str(self.run.cost_usd)
        )

    # --- streamed text ----------------------------------------------------------------------------

    def delta(self, step: StepRun, text: str, answer: int) -> None:
        if not text:
            return
        if answer != self._delta_answer:
            self._flush_deltas(step)
            self._delta_answer = answer
        self._deltas.append(text)
        now = time.monotonic()
        if now - self._delta_flushed_at >= DELTA_FLUSH_S or sum(map(len, self._deltas)) >= DELTA_MAX_CHARS:
            self._flush_deltas(step)

    def _flush_deltas(self, step: StepRun) -> None:
        if not self._deltas:
            return
        text, self._deltas = "".join(self._deltas), []
        self._delta_flushed_at = time.monotonic()
        self._emit(events.STEP_DELTA, {"step": step.step_id, "delta": text, "answer": self._delta_answer})


def _errors(failure: StepFailed) -> dict[str, Any]:
    return {"errors": failure.errors} if failure.errors else {}
