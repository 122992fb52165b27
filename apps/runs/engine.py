"""The run engine: claims a run, then executes its steps in order, checkpointing each one.

Durability, in one place:
- `run_claim` is a conditional update (`WHERE status = 'queued'`) that hands the run a fresh lease
  token; a second delivery of the same job, or a stale executor, finds nothing to claim.
- While the run executes, the process's heartbeat thread (apps/runs/heartbeat.py) stamps its
  `heartbeat_at` every KEEL_RUN_HEARTBEAT_S; the reaper (services.runs_reap) takes over runs whose
  heartbeat is older than KEEL_RUN_STALE_S.
- Every write after the claim (step checkpoints, events, totals, the final status) is one
  transaction that starts with an UPDATE of the run row *conditional on this executor's lease
  token*, which also locks the row; if the reaper has taken the run over, the write raises
  LeaseLost and this executor stops without touching it.
- Holding the lease, the executor numbers the run's events itself and writes them with the
  checkpoint they belong to (`last_event_seq` is saved in the same UPDATE, so whoever writes next,
  the reaper or a resumed execution, continues the sequence).
- Before each provider request the gateway reports its call id and the model it goes to
  (`on_attempt`); both are committed on the StepRun before the request is sent, so whoever recovers
  a crash can book a call that never returned, against the model it was sent to. A step's start
  (status, execution count, `step.started`) is written with that first call id, or with the step's
  result when it makes no call: one transaction instead of two.
- Each finished step is committed before anything else happens, except the last one, which is
  committed with the run's end (nothing external happens between the two).
- A resumed run skips steps already `succeeded` and reuses their outputs (no new provider call).
- An execution that cannot reach the database stops and leaves the run running for the reaper, as
  if its process had died: a run is failed only for what is wrong with the run itself.
- Cancellation and the run timeout are checked between steps (every write reports a pending
  cancel request) and, through `should_abort`, between the chunks of a streamed model answer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import structlog
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.core.db import database_unavailable
from apps.providers.gateway import CallAborted
from apps.runs import events, sql
from apps.runs.heartbeat import Lease, heartbeats
from apps.runs.models import Run, RunEvent, StepRun
from apps.runs.serializers import run_body, step_body
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
# What a step checkpoint writes (everything that changes while a step executes).
STEP_FIELDS = [
    "status",
    "executions",
    "input",
    "output",
    "error",
    "model",
    "provider",
    "fallback_used",
    "cache_hit",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "saved_usd",
    "latency_ms",
    "call_ids",
    "started_at",
    "finished_at",
    "updated_at",
]


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
    if sql.supported():
        token, now = uuid4(), timezone.now()
        claimed_run = sql.claim_update(
            run_id=run_id, token=token, now=now, default_timeout_s=settings.KEEL_RUN_DEFAULT_TIMEOUT_S
        )
        return None if claimed_run is None else Claim(run=claimed_run, token=token)
    run = Run.objects.select_related("workflow", "workflow_version", "workspace").filter(pk=run_id).first()
    if run is None or run.status != Run.Status.QUEUED:
        return None
    now = timezone.now()
    token = uuid4()
    started_at = run.started_at or now
    deadline_at = run.deadline_at or now + timedelta(seconds=run_timeout_s(run.workflow_version.definition))
    # Conditional on what was read: any other writer between the read and this update (a claim, a
    # cancel, the reaper) changes the status or one of these, and then this claim does nothing.
    claimed = Run.objects.filter(
        pk=run_id, status=Run.Status.QUEUED, executions=run.executions, last_event_seq=run.last_event_seq
    ).update(
        status=Run.Status.RUNNING,
        lease_token=token,
        heartbeat_at=now,
        executions=run.executions + 1,
        started_at=started_at,
        deadline_at=deadline_at,
    )
    if claimed != 1:
        return None
    run.status, run.lease_token, run.heartbeat_at = Run.Status.RUNNING, token, now
    run.executions, run.started_at, run.deadline_at = run.executions + 1, started_at, deadline_at
    return Claim(run=run, token=token)


def run_claim_new(*, run: Run) -> Claim:
    """Claim a run not yet saved (its insert records it running, with this lease): for the sync and
    stream runs a web process executes itself, whose claim would otherwise be a second write."""
    now = timezone.now()
    run.status, run.lease_token, run.heartbeat_at, run.executions = Run.Status.RUNNING, uuid4(), now, 1
    run.started_at = now
    run.deadline_at = now + timedelta(seconds=run_timeout_s(run.workflow_version.definition))
    return Claim(run=run, token=run.lease_token)


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
        self.template_context: Mapping[str, Any] = template_context
        # A sync run's caller reads the finished body; anyone following its events gets the answer
        # as one delta, and a cancel takes effect when the current provider call returns.
        self.wants_deltas = run.mode != Run.Mode.SYNC

    def call_key(self, call: int) -> str:
        # Stable per run, step, execution and call: ledger ids are `{call_key}-{attempt}` (<= 64 chars).
        return f"{self.run_id}-{self._step.index}-{self._executor.run.executions}-{call}"

    def on_delta(self, text: str, *, answer: int = 1) -> None:
        self._executor.delta(self._step, text, answer)

    def on_attempt(self, call_id: str, model: str, provider: str) -> None:
        self._executor.note_call(self._step, call_id, model=model, provider=provider)

    def should_abort(self) -> bool:
        return self._executor.should_abort()

    def remaining_s(self) -> float | None:
        deadline = self._executor.run.deadline_at
        return None if deadline is None else max(0.0, (deadline - timezone.now()).total_seconds())


class Executor:
    """Executes one claimed run. Not shared between threads; the heartbeat thread only stamps.

    `steps` are the run's StepRun rows when the caller has them (it just created them).
    """

    def __init__(self, claim: Claim, *, steps: Sequence[StepRun] | None = None) -> None:
        self.run = claim.run
        self.token = claim.token
        self.definition: dict[str, Any] = self.run.workflow_version.definition
        limit = (self.definition.get("limits") or {}).get("max_cost_usd")
        self.max_cost = Decimal(str(limit)) if limit is not None else None
        self.lease: Lease | None = None
        self.abort_reason: str | None = None
        self.body: dict[str, Any] | None = None  # the run body of run.finished, once written
        self.seq = self.run.last_event_seq  # the last event number written; ours to continue
        self.steps: list[StepRun] = list(steps) if steps is not None else []
        self._steps_given = steps is not None
        self._events: list[tuple[str, dict[str, Any]]] = []  # to be written with the next write
        self._unsaved: StepRun | None = None  # a step changed in memory, to be saved with the next write
        self._totals_changed = False  # the run's totals, to be saved with the next write
        self._cancel_requested = self.run.cancel_requested_at is not None
        self._last_abort_check = time.monotonic()  # the claim has just read the run's state
        self._current: StepRun | None = None
        self._deltas: list[str] = []
        self._delta_answer = 1
        self._delta_flushed_at = 0.0
        self._delta_sent_any = False

    # --- the run --------------------------------------------------------------------------------

    def execute(self) -> None:
        self.lease = heartbeats.hold(run_id=self.run.pk, token=self.token)
        try:
            self._execute()
        except LeaseLost:
            logger.warning("run_lease_lost", detail="another executor owns the run now; stopping")
        except Exception as exc:  # noqa: BLE001 - a bug must fail this run, not leave it running
            if database_unavailable(exc):
                # Nothing is wrong with the run: this execution could not get a connection (the
                # pool had none in time, PostgreSQL refused one). Failing the run would lose it
                # whenever the next write got through; leave it running instead: its heartbeat stops
                # with this execution and the reaper resumes it, as after a crash.
                logger.warning("run_interrupted", reason="database_unavailable", error=str(exc))
                return
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
        if not self._steps_given:
            self.steps = list(StepRun.objects.filter(run=run))
        steps = {step.step_id: step for step in self.steps}
        context: dict[str, Any] = {"input": run.input, "steps": {}, "run": self._run_context()}
        # Per-run lines at INFO are the outcome (run_finished) and each provider call; the rest are DEBUG
        # because every JSON line costs the web process CPU on every run (docs/operations.md, Logs).
        logger.debug("run_started", execution=run.executions, workflow=run.workflow.slug)
        # Written with the first write of this execution (a step's start, or the end).
        self._event(
            events.RUN_STARTED,
            {
                "status": Run.Status.RUNNING,
                "execution": run.executions,
                "workflow": run.workflow.slug,
                "workflow_version": run.workflow_version.number,
            },
        )
        specs = self.definition["steps"]
        for position, spec in enumerate(specs):
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
                self._stop(self.abort_reason or self._check(read=True) or "cancelled", step)
                return
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
            if position < len(specs) - 1:
                # A checkpoint: committed before the next step can call anything.
                self._write()

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

    def _check(self, *, read: bool = False) -> str | None:
        """Why the run must stop now (cancelled, timeout, lease_lost).

        Between steps this needs no read: the last write (or the claim) said whether a cancel was
        pending, and the heartbeat says whether the lease is still ours. `read=True` reads the row.
        """
        if read:
            row = Run.objects.filter(pk=self.run.pk).values("lease_token", "status", "cancel_requested_at").first()
            if row is None or row["lease_token"] != self.token or row["status"] != Run.Status.RUNNING:
                return "lease_lost"
            if row["cancel_requested_at"] is not None:
                self._cancel_requested = True
        elif self.lease is not None and self.lease.lost:
            return "lease_lost"
        if self._cancel_requested:
            return "cancelled"
        if self._past_deadline():
            return "timeout"
        return None

    def _past_deadline(self) -> bool:
        return self.run.deadline_at is not None and timezone.now() >= self.run.deadline_at

    def should_abort(self) -> bool:
        if self.abort_reason is not None:
            return True
        # What is known without a read first: the lease, a cancel seen by the last write, the deadline.
        self.abort_reason = self._check()
        if self.abort_reason is not None:
            return True
        now = time.monotonic()
        if now - self._last_abort_check < ABORT_CHECK_S:
            return False
        self._last_abort_check = now
        self.abort_reason = self._check(read=True)
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
    def _leased(self, **fields: Any) -> Iterator[bool]:
        """A transaction that first updates the run row (`fields`, else the heartbeat) on condition
        that this executor still holds the lease; yields whether a cancel request is pending."""
        fields = fields or {"heartbeat_at": timezone.now()}
        with transaction.atomic():
            mine = Run.objects.filter(pk=self.run.pk, lease_token=self.token, status=Run.Status.RUNNING)
            cancel_pending = False
            if not mine.filter(cancel_requested_at__isnull=True).update(**fields):
                # Rarely taken: either a cancel is pending (the write still goes through) or the run
                # is no longer ours.
                if not mine.update(**fields):
                    raise LeaseLost
                cancel_pending = True
            yield cancel_pending

    def _event(self, type: str, data: dict[str, Any]) -> None:
        self._events.append((type, data))

    def _write(self, **run_fields: Any) -> None:
        """Commit what is pending (the unsaved step, the events) and `run_fields`, under the lease."""
        pk, workspace_id = self.run.pk, self.run.workspace_id
        rows = [
            RunEvent(
                workspace_id=workspace_id, run_id=pk, seq=self.seq + n, type=type, data={"run_id": str(pk), **data}
            )
            for n, (type, data) in enumerate(self._events, start=1)
        ]
        if rows:
            run_fields["last_event_seq"] = self.seq + len(rows)
        if self._totals_changed:
            run = self.run
            run_fields.update(
                input_tokens=run.input_tokens,
                output_tokens=run.output_tokens,
                cost_usd=run.cost_usd,
                saved_usd=run.saved_usd,
                cache_hits=run.cache_hits,
            )
        if sql.supported():
            now = timezone.now()
            for row in rows:
                row.created_at = now
            if self._unsaved is not None:
                self._unsaved.updated_at = now
            cancel_pending = sql.checkpoint_write(
                run_id=pk,
                token=self.token,
                run_fields=run_fields,
                step=self._unsaved,
                step_fields=STEP_FIELDS,
                events=rows,
            )
            if cancel_pending is None:
                raise LeaseLost
        else:
            with self._leased(**run_fields) as cancel_pending:
                if self._unsaved is not None:
                    self._unsaved.save(update_fields=STEP_FIELDS)
                if rows:
                    RunEvent.objects.bulk_create(rows)
        if rows:
            transaction.on_commit(lambda: events.wake(pk))
        self.seq += len(rows)
        self._events.clear()
        self._unsaved = None
        self._totals_changed = False
        self._cancel_requested = self._cancel_requested or cancel_pending
        self._last_abort_check = time.monotonic()

    def _step_start(self, step: StepRun) -> None:
        """Start the step in memory; its start is written with its first call id or with its result."""
        step.status = StepRun.Status.RUNNING
        step.executions += 1
        step.started_at = timezone.now()
        step.finished_at = None
        step.error = None
        self._event(events.STEP_STARTED, {"step": step.step_id, "type": step.type, "index": step.index})
        self._unsaved = step
        self._current = step
        self._delta_answer = 1
        self._delta_flushed_at = time.monotonic()
        self._delta_sent_any = False
        logger.debug("step_started", step=step.step_id, type=step.type, execution=step.executions)

    def note_call(self, step: StepRun, call_id: str, *, model: str, provider: str) -> None:
        """Commit the call id, and the model being called, before the request goes out (we are
        outside any transaction here). The step's model is then the one its last call went to, which
        the reaper books a cut call against; the step's end records the model that answered."""
        if call_id in step.call_ids:
            return
        before = step.model, step.provider
        step.call_ids = [*step.call_ids, call_id]
        step.model, step.provider = model, provider
        if self._unsaved is not None:
            self._write()  # the step's start and this call id, in one transaction
            if self._cancel_requested:
                # Cancelled before the request was sent: send nothing (the gateway releases its hold),
                # and the step's end (written next) names no call and no model it never called.
                step.call_ids = [c for c in step.call_ids if c != call_id]
                step.model, step.provider = before
                self.abort_reason = "cancelled"
                raise CallAborted("the run was cancelled before the call was sent")
        else:
            StepRun.objects.filter(pk=step.pk).update(call_ids=step.call_ids, model=model, provider=provider)

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
        """Record the step's end in memory, with its events; the next write commits it."""
        self._flush_deltas(step, write=False)
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
        self._unsaved = step  # its whole row goes with the next write
        self._totals()
        self._event(events.STEP_FINISHED, {"step": step.step_id, **step_body(step)})
        self._current = None
        # A step that did not succeed is worth a line at INFO; a succeeding one is in run_finished.
        log = logger.debug if status == StepRun.Status.SUCCEEDED else logger.info
        log("step_finished", step=step.step_id, status=status, cost_usd=str(step.cost_usd))

    def _totals(self) -> None:
        """The run's totals from its steps, all of which this executor holds (no other writer has them)."""
        run = self.run
        run.input_tokens = sum(step.input_tokens for step in self.steps)
        run.output_tokens = sum(step.output_tokens for step in self.steps)
        run.cost_usd = sum((step.cost_usd for step in self.steps), Decimal("0"))
        run.saved_usd = sum((step.saved_usd for step in self.steps), Decimal("0"))
        run.cache_hits = sum(1 for step in self.steps if step.cache_hit)
        self._totals_changed = True

    def _finish(self, status: str, *, output: Any = None, error: dict[str, Any] | None = None) -> None:
        run = self.run
        self._totals()
        run.status, run.output, run.error, run.finished_at = status, output, error, timezone.now()
        body = run_body(run, steps=self.steps)
        self._event(events.RUN_FINISHED, {"status": status, "run": body})
        self._write(status=status, output=output, error=error, finished_at=run.finished_at)
        self.body = body
        logger.info("run_finished", status=status, error_code=(error or {}).get("code"), cost_usd=str(run.cost_usd))

    # --- streamed text ----------------------------------------------------------------------------

    def delta(self, step: StepRun, text: str, answer: int) -> None:
        if not text:
            return
        if answer != self._delta_answer:
            self._flush_deltas(step, write=False)
            self._delta_answer = answer
        self._deltas.append(text)
        now = time.monotonic()
        # A reader in this process (a stream) gets the first text at once; readers elsewhere poll
        # every 0.25 s, so for them text is batched, and a short answer is written with the step's end.
        eager = not self._delta_sent_any and (self.run.mode == Run.Mode.STREAM or events.has_listeners(self.run.pk))
        if eager or now - self._delta_flushed_at >= DELTA_FLUSH_S or sum(map(len, self._deltas)) >= DELTA_MAX_CHARS:
            self._flush_deltas(step, write=True)

    def _flush_deltas(self, step: StepRun, *, write: bool) -> None:
        if self._deltas:
            text, self._deltas = "".join(self._deltas), []
            self._event(events.STEP_DELTA, {"step": step.step_id, "delta": text, "answer": self._delta_answer})
            self._delta_sent_any = True
        if write and self._events:
            self._delta_flushed_at = time.monotonic()
            self._write()


def _errors(failure: StepFailed) -> dict[str, Any]:
    return {"errors": failure.errors} if failure.errors else {}
