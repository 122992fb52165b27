"""Writes for runs: start (with Idempotency-Key), execute, cancel, retry, and the reaper.

Executing a run is apps/runs/engine.py; this module decides *where* it executes (a worker job, or
a thread of the web process for sync and stream runs) and recovers runs whose executor died.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import structlog
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.accounts.tenancy import Actor
from apps.core.jobs import enqueue_after_commit
from apps.core.problems import ConflictProblem, IdempotencyMismatch, ValidationProblem
from apps.providers.selectors import models_by_alias
from apps.runs import events, sql
from apps.runs.engine import Claim, Executor, error_body, run_claim, run_claim_new, run_timeout_s
from apps.runs.models import IdempotencyKey, Run, StepRun
from apps.runs.pool import Task, pool
from apps.runs.serializers import run_body
from apps.usage.services import budget_check, budget_release, usage_record
from apps.workflows.definition import input_errors
from apps.workflows.models import Workflow, WorkflowVersion
from apps.workflows.selectors import workflow_version_latest

logger = structlog.get_logger(__name__)

RUNS_QUEUE = "runs"
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
# A run job may take the run's own time limit plus this before RQ kills its work horse.
JOB_TIMEOUT_MARGIN_S = 120


def trace_from(traceparent: str | None) -> tuple[str, str]:
    """(trace_id, traceparent): the caller's W3C trace when it sent a valid one, else a new trace."""
    match = _TRACEPARENT.match((traceparent or "").strip().lower())
    if match and match[1] != "0" * 32 and match[2] != "0" * 16:
        return match[1], match[0]
    trace_id = secrets.token_hex(16)
    return trace_id, f"00-{trace_id}-{secrets.token_hex(8)}-01"


def _log_context(run: Run) -> dict[str, Any]:
    return {
        "run_id": str(run.pk),
        "workspace": run.workspace.slug,
        "trace_id": run.trace_id,
        **({"request_id": run.request_id} if run.request_id else {}),
    }


def run_enqueue(*, run: Run, job_id: str) -> None:
    """Have a worker execute the run once this transaction commits."""
    Run.objects.filter(pk=run.pk).update(job_id=job_id)
    run.job_id = job_id
    _enqueue_job(run=run, job_id=job_id)


def _enqueue_job(*, run: Run, job_id: str) -> None:
    enqueue_after_commit(
        "apps.runs.tasks.execute_run_job",
        str(run.pk),
        queue=RUNS_QUEUE,
        job_id=job_id,
        job_timeout=int(run_timeout_s(run.workflow_version.definition)) + JOB_TIMEOUT_MARGIN_S,
        log_context=_log_context(run),
    )


# --- start -------------------------------------------------------------------------------------


@dataclass
class RunStart:
    """The run a start request resolved to. `replay` is the stored first response of a repeated key;
    `repeated` says the key was seen before (the run is the first request's)."""

    run: Run
    repeated: bool = False
    replay: tuple[int, dict[str, Any]] | None = None
    response: tuple[int, dict[str, Any]] | None = None  # the response already stored for this key
    steps: list[StepRun] | None = None  # the new run's steps, as created (None for a repeat)
    claim: Claim | None = None  # the new run, created claimed by this process (`claim=True`)


def _idempotency_claim(*, workspace_id: UUID, key: str, fingerprint: str) -> tuple[IdempotencyKey, bool]:
    """(record, created). Of concurrent requests with one key, exactly one creates the record."""
    for _ in range(3):
        now = timezone.now()
        try:
            with transaction.atomic():
                record = IdempotencyKey.objects.create(
                    workspace_id=workspace_id,
                    key=key,
                    fingerprint=fingerprint,
                    expires_at=now + timedelta(seconds=settings.KEEL_IDEMPOTENCY_TTL_S),
                )
            return record, True
        except IntegrityError:
            existing = IdempotencyKey.objects.filter(workspace_id=workspace_id, key=key).first()
            if existing is None:
                continue  # purged between our insert and our read: try again
            if existing.expires_at <= now:
                IdempotencyKey.objects.filter(pk=existing.pk, expires_at__lte=now).delete()
                continue
            return existing, False
    raise ConflictProblem("The Idempotency-Key is being reused concurrently; retry the request.")


def run_start(
    *,
    workflow: Workflow,
    actor: Actor,
    input: Any,
    mode: str | None = None,
    metadata: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    fingerprint: str = "",
    request_id: str = "",
    traceparent: str | None = None,
    claim: bool = False,
) -> RunStart:
    """Validate the input and record a queued run; an async run is enqueued after commit.

    With `idempotency_key`: a repeat with the same fingerprint resolves to the first run (and its
    stored response, if any); a different fingerprint raises IdempotencyMismatch (422); a repeat
    while the first request still executes raises ConflictProblem (409). Sync and stream runs are
    executed by the caller once this returns: with `claim=True` such a run is recorded already
    claimed by the caller (running, with a lease: `RunStart.claim`), who must execute it at once
    (run_execute_in_thread); if the process dies first, the reaper resumes it as a stale run.
    """
    if workflow.archived:
        raise ConflictProblem(f"The workflow {workflow.slug!r} is archived; PUT a definition to restore it.")
    version = workflow_version_latest(workflow=workflow)
    definition = version.definition
    errors = input_errors(definition.get("input_schema"), input)
    if errors:
        raise ValidationProblem(
            f"The input does not match the workflow's input_schema ({len(errors)} errors).", errors=errors
        )
    mode = mode or definition.get("default_mode") or Run.Mode.SYNC
    trace_id, traceparent = trace_from(traceparent)
    # The actor's workspace is the workflow's (the caller scoped it); reusing it saves a read.
    workspace = actor.workspace if actor.workspace.pk == workflow.workspace_id else workflow.workspace
    run = Run(
        workspace=workspace,
        workflow=workflow,
        workflow_version=version,
        mode=mode,
        input=input,
        metadata=metadata or {},
        idempotency_key=idempotency_key or "",
        api_key=actor.api_key,
        user=actor.user,
        request_id=request_id,
        trace_id=trace_id,
        traceparent=traceparent,
    )
    claimed = None
    if mode == Run.Mode.ASYNC:
        run.job_id = f"run-{run.pk}"  # the primary key is made here, so the job id goes with the insert
    elif claim:
        # The claim goes with the insert: no second write before the run executes.
        claimed = run_claim_new(run=run)
    steps = _steps_build(run=run, version=version)

    def check_budget() -> None:
        # 402 before anything is recorded when a blocking budget is already full (issue #5); the
        # reservation before each call is what holds the limit for runs that pass.
        budget_check(
            workspace_id=workflow.workspace_id,
            workflow_id=workflow.pk,
            api_key_id=getattr(actor.api_key, "pk", None),
            user_id=getattr(actor.user, "pk", None),
        )

    response = None
    if not idempotency_key:
        check_budget()
        _rows_insert(run=run, steps=steps)  # one statement, committed on its own
        if mode == Run.Mode.ASYNC:
            _enqueue_job(run=run, job_id=run.job_id)
    else:
        with transaction.atomic():
            record, created = _idempotency_claim(
                workspace_id=workflow.workspace_id, key=idempotency_key, fingerprint=fingerprint
            )
            if not created:
                return _idempotent_repeat(record, fingerprint)
            check_budget()  # after the key: a repeat gets the first response, not a 402
            _rows_insert(run=run, steps=steps)
            if mode == Run.Mode.ASYNC:
                _enqueue_job(run=run, job_id=run.job_id)
            record.run = run
            if mode == Run.Mode.ASYNC:
                # The whole first response is known now: store it with the run, so a repeat never sees 409.
                response = (202, run_body(run, steps=steps))
                record.response_status, record.response_body = response[0], json.dumps(response[1])
            record.save(update_fields=["run", "response_status", "response_body", "updated_at"])
    logger.info(
        "run_created",
        run_id=str(run.pk),
        workspace=workspace.slug,
        trace_id=trace_id,
        workflow=workflow.slug,
        version=version.number,
        mode=mode,
    )
    return RunStart(run=run, response=response, steps=steps, claim=claimed)


def _idempotent_repeat(record: IdempotencyKey, fingerprint: str) -> RunStart:
    if record.fingerprint != fingerprint:
        raise IdempotencyMismatch(
            "This Idempotency-Key was used with a different request (another workflow or body); use a new key."
        )
    runs = Run.objects.select_related("workflow", "workflow_version")
    run = runs.filter(pk=record.run_id).first() if record.run_id is not None else None
    if run is not None and record.response_status is not None:
        return RunStart(run=run, repeated=True, replay=(record.response_status, json.loads(record.response_body)))
    if run is None or not run.is_finished:
        raise ConflictProblem("The first request with this Idempotency-Key is still in flight; retry shortly.")
    return RunStart(run=run, repeated=True)


def idempotency_response_store(*, run: Run, status: int, body: dict[str, Any]) -> None:
    """Remember the first response to the run's Idempotency-Key (no-op without one)."""
    if run.idempotency_key:
        IdempotencyKey.objects.filter(run=run, response_status__isnull=True).update(
            response_status=status, response_body=json.dumps(body), updated_at=timezone.now()
        )


def _steps_build(*, run: Run, version: WorkflowVersion, reuse: dict[str, StepRun] | None = None) -> list[StepRun]:
    rows = []
    for index, spec in enumerate(version.definition["steps"]):
        previous = (reuse or {}).get(spec["id"])
        step = StepRun(workspace_id=run.workspace_id, run=run, step_id=spec["id"], index=index, type=spec["type"])
        if previous is not None:
            # Reused as is: the output, and where it came from; its cost was billed to the first run.
            step.status = StepRun.Status.SUCCEEDED
            step.input, step.output = previous.input, previous.output
            step.model, step.provider = previous.model, previous.provider
            step.fallback_used = previous.fallback_used
            step.reused_from_id = previous.reused_from_id or previous.pk
            step.started_at = step.finished_at = timezone.now()
        rows.append(step)
    return rows


def _rows_insert(*, run: Run, steps: list[StepRun]) -> None:
    """Insert a new run and its steps: one statement on PostgreSQL (apps/runs/sql.py). A run
    created claimed was started now: it is created at the same instant."""
    if sql.supported():
        sql.rows_insert(run, steps, now=run.started_at or timezone.now())
    else:
        with transaction.atomic():
            run.save(force_insert=True)
            if run.started_at is not None:
                run.created_at = run.started_at
                Run.objects.filter(pk=run.pk).update(created_at=run.created_at)
            StepRun.objects.bulk_create(steps)


# --- execute -----------------------------------------------------------------------------------


def run_execute(
    *, run_id: UUID | str, claim: Claim | None = None, steps: list[StepRun] | None = None
) -> dict[str, Any] | None:
    """Claim and execute the run; does nothing when it is not queued (a duplicate delivery).

    Safe to call from any number of workers or threads at once: one claims, the others return.
    `claim` and `steps`: a run run_start has just recorded claimed, and its step rows (its caller
    executes it without reading them again). Returns the finished run's body when this call
    executed it to its end (else None).
    """
    if claim is None:
        claim = run_claim(run_id=UUID(str(run_id)))
    if claim is None:
        logger.info("run_not_claimed", run_id=str(run_id), detail="not queued: finished, running elsewhere or gone")
        return None
    with structlog.contextvars.bound_contextvars(**_log_context(claim.run)):
        logger.debug("run_claimed", execution=claim.run.executions)
        executor = Executor(claim, steps=steps)
        executor.execute()
        return executor.body


def run_execute_in_thread(*, started: RunStart) -> Task:
    """Execute a run just started here on one of this process's run threads (apps/runs/pool.py);
    `wait()` on the result. If the process dies meanwhile, the reaper resumes the run on a worker."""
    run, claim, steps = started.run, started.claim, started.steps
    return pool.submit(lambda: run_execute(run_id=run.pk, claim=claim, steps=steps))


# --- cancel and retry --------------------------------------------------------------------------


def run_cancel(*, run: Run) -> Run:
    """Cancel: a queued run at once; a running one at its next check (between steps or stream
    chunks). Raises ConflictProblem for a finished run. Returns the run as it is now."""
    now = timezone.now()
    with transaction.atomic():
        locked = Run.objects.select_for_update().get(pk=run.pk)
        if locked.is_finished:
            raise ConflictProblem(f"The run has already finished ({locked.status}); there is nothing to cancel.")
        if locked.cancel_requested_at is None:
            locked.cancel_requested_at = now
            locked.save(update_fields=["cancel_requested_at", "updated_at"])
        if locked.status == Run.Status.QUEUED:
            error = error_body("cancelled", "The run was cancelled before it started.")
            Run.objects.filter(pk=run.pk).update(status=Run.Status.CANCELLED, finished_at=now, error=error)
            StepRun.objects.filter(run=run, status=StepRun.Status.PENDING).update(status=StepRun.Status.CANCELLED)
            fresh = Run.objects.select_related("workflow", "workflow_version").get(pk=run.pk)
            events.event_append(
                run_id=run.pk,
                workspace_id=run.workspace_id,
                type=events.RUN_FINISHED,
                data={"run_id": str(run.pk), "status": fresh.status, "run": run_body(fresh)},
            )
    logger.info("run_cancel_requested", run_id=str(run.pk))
    return Run.objects.select_related("workflow", "workflow_version").get(pk=run.pk)


def run_retry(*, run: Run, actor: Actor, request_id: str = "") -> Run:
    """A new async run of the same version and input, linked by `retry_of`, that reuses the
    succeeded steps' outputs (no new provider calls for them). Only failed or cancelled runs."""
    if run.status not in (Run.Status.FAILED, Run.Status.CANCELLED):
        raise ConflictProblem(f"Only a failed or cancelled run can be retried; this one is {run.status}.")
    succeeded = {step.step_id: step for step in run.steps.filter(status=StepRun.Status.SUCCEEDED)}
    trace_id, traceparent = trace_from(None)
    with transaction.atomic():
        retry = Run.objects.create(
            workspace_id=run.workspace_id,
            workflow=run.workflow,
            workflow_version=run.workflow_version,
            mode=Run.Mode.ASYNC,
            input=run.input,
            metadata=run.metadata,
            api_key=actor.api_key,
            user=actor.user,
            retry_of=run,
            request_id=request_id,
            trace_id=trace_id,
            traceparent=traceparent,
        )
        StepRun.objects.bulk_create(_steps_build(run=retry, version=run.workflow_version, reuse=succeeded))
        run_enqueue(run=retry, job_id=f"run-{retry.pk}")
    logger.info("run_retried", run_id=str(retry.pk), retry_of=str(run.pk), reused_steps=sorted(succeeded))
    return Run.objects.select_related("workflow", "workflow_version").get(pk=retry.pk)


# --- the reaper --------------------------------------------------------------------------------


@dataclass
class ReapReport:
    resumed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    abandoned_calls: list[str] = field(default_factory=list)
    idempotency_keys_purged: int = 0


def runs_reap(*, now: Any = None, limit: int = 200) -> ReapReport:
    """Recover runs whose executor died. Safe to run anywhere, any number of times, concurrently.

    - running with a heartbeat older than KEEL_RUN_STALE_S: calls its last step had started but
      never booked are booked once as failed (`abandoned`) and their budget holds released; then
      the run is queued again and enqueued (its succeeded steps are reused), or failed with
      `worker_lost` once it has been executed KEEL_RUN_MAX_EXECUTIONS times, or with `run_timeout`
      past its deadline.
    - queued for longer than KEEL_RUN_STALE_S without a live job (the enqueue was lost, or the web
      process died before executing a sync run): enqueued again.
    - expired Idempotency-Keys are purged.
    """
    now = now or timezone.now()
    report = ReapReport()
    cutoff = now - timedelta(seconds=settings.KEEL_RUN_STALE_S)
    stale = Run.objects.filter(status=Run.Status.RUNNING, heartbeat_at__lt=cutoff).values_list("pk", flat=True)
    for run_id in list(stale[:limit]):
        _reap_stale(run_id=run_id, cutoff=cutoff, now=now, report=report)
    waiting = Run.objects.filter(status=Run.Status.QUEUED, created_at__lt=cutoff, updated_at__lt=cutoff)
    for run_id in list(waiting.values_list("pk", flat=True)[:limit]):
        _requeue_if_lost(run_id=run_id, cutoff=cutoff, report=report)
    report.idempotency_keys_purged, _ = IdempotencyKey.objects.filter(expires_at__lte=now).delete()
    if report.resumed or report.failed or report.requeued:
        logger.info(
            "runs_reaped",
            resumed=report.resumed,
            failed=report.failed,
            requeued=report.requeued,
            abandoned_calls=report.abandoned_calls,
        )
    return report


def _reap_stale(*, run_id: UUID, cutoff: Any, now: Any, report: ReapReport) -> None:
    with transaction.atomic():
        run = (
            Run.objects.select_for_update(skip_locked=True)
            .select_related("workspace", "workflow", "workflow_version")
            .filter(pk=run_id, status=Run.Status.RUNNING, heartbeat_at__lt=cutoff)
            .first()
        )
        if run is None:
            return  # it beat again, finished, or another reaper has it
        with structlog.contextvars.bound_contextvars(**_log_context(run)):
            specs = {spec["id"]: spec for spec in run.workflow_version.definition["steps"]}
            interrupted = list(run.steps.filter(status=StepRun.Status.RUNNING))
            for step in interrupted:
                report.abandoned_calls.extend(_book_abandoned_calls(run=run, step=step, spec=specs[step.step_id]))
            past_deadline = run.deadline_at is not None and run.deadline_at <= now
            if past_deadline or run.executions >= settings.KEEL_RUN_MAX_EXECUTIONS:
                if past_deadline:
                    error = error_body("run_timeout", "The run exceeded its time limit while its worker was lost.")
                else:
                    error = error_body(
                        "worker_lost",
                        f"The run's worker stopped responding {run.executions} times; it was not resumed again.",
                    )
                if interrupted:
                    error["step"] = interrupted[0].step_id
                for step in interrupted:
                    step.status, step.error, step.finished_at = StepRun.Status.FAILED, error, now
                    step.save(update_fields=["status", "error", "finished_at", "updated_at"])
                Run.objects.filter(pk=run.pk).update(
                    status=Run.Status.FAILED, error=error, finished_at=now, lease_token=None
                )
                fresh = Run.objects.select_related("workflow", "workflow_version").get(pk=run.pk)
                events.event_append(
                    run_id=run.pk,
                    workspace_id=run.workspace_id,
                    type=events.RUN_FINISHED,
                    data={"run_id": str(run.pk), "status": fresh.status, "run": run_body(fresh)},
                )
                report.failed.append(str(run.pk))
                logger.warning("run_reaped_failed", error_code=error["code"])
                return
            for step in interrupted:
                step.status = StepRun.Status.PENDING
                step.save(update_fields=["status", "updated_at"])
            Run.objects.filter(pk=run.pk).update(
                status=Run.Status.QUEUED, lease_token=None, heartbeat_at=None, updated_at=timezone.now()
            )
            run_enqueue(run=run, job_id=f"run-{run.pk}-{run.executions + 1}")
            report.resumed.append(str(run.pk))
            logger.warning("run_reaped_resumed", execution=run.executions, interrupted=[s.step_id for s in interrupted])


def _book_abandoned_calls(*, run: Run, step: StepRun, spec: dict[str, Any]) -> list[str]:
    """Book each call the step started but nobody booked: once, failed, zero tokens, against the
    model it was sent to; release its budget hold. Idempotent: usage_record keeps the first row.

    Calls of a step go out one after another and each is booked before the next is noted, so only
    the last can be unbooked, and the step's `model` is the one that call went to (`note_call`).
    Without that model (a row written before Keel recorded it, or the model has since been deleted)
    the step's main model is used."""
    if not step.call_ids:
        return []
    aliases = [alias for alias in (step.model, spec.get("model")) if alias]
    found = models_by_alias(workspace_id=run.workspace_id, aliases=aliases)
    model = next((found[alias] for alias in aliases if alias in found), None)
    if model is None:
        logger.error("abandoned_calls_unbooked", step=step.step_id, call_ids=step.call_ids, reason="model is gone")
        return []
    booked = []
    for call_id in step.call_ids:
        record = usage_record(
            call_id=call_id,
            workspace_id=run.workspace_id,
            model=model,
            model_alias=model.alias,
            provider_name=model.provider.name,
            status="failed",
            error_code="abandoned",
            attempt=int(call_id.rsplit("-", 1)[-1]) if call_id.rsplit("-", 1)[-1].isdigit() else 1,
            input_price_per_million=model.input_price_per_million,
            cached_input_price_per_million=model.cached_input_price_per_million,
            output_price_per_million=model.output_price_per_million,
            cost_usd=Decimal("0"),
            run_id=run.pk,
            step_id=step.step_id,
            workflow_id=run.workflow_id,
            api_key_id=run.api_key_id,
            user_id=run.user_id,
        )
        if record.error_code == "abandoned":
            budget_release(call_id=call_id)
            booked.append(call_id)
    return booked


def _requeue_if_lost(*, run_id: UUID, cutoff: Any, report: ReapReport) -> None:
    from apps.runs.tasks import job_is_live

    with transaction.atomic():
        run = (
            Run.objects.select_for_update(skip_locked=True)
            .select_related("workspace", "workflow_version")
            .filter(pk=run_id, status=Run.Status.QUEUED, updated_at__lt=cutoff)
            .first()
        )
        if run is None or (run.job_id and job_is_live(run.job_id)):
            return
        run_enqueue(run=run, job_id=f"run-{run.pk}-q{int(timezone.now().timestamp())}")
        Run.objects.filter(pk=run.pk).update(updated_at=timezone.now())
        report.requeued.append(str(run.pk))
