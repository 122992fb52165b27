"""Acceptance 2: a worker killed in the middle of step 2 of 3; a new worker finishes the run."""

from __future__ import annotations

import time

import pytest
from django.conf import settings

from apps.runs.models import Run, RunEvent, StepRun
from apps.usage.models import UsageRecord
from apps.workflows.services import workflow_create
from tests.runs.helpers import wait_for, wait_for_status
from tests.support.simulator import always, sim_model, sim_provider, slow
from tests.support.tenancy import key_client
from tests.support.workers import HEARTBEAT_S, INTERVAL_S, QUICK_RECOVERY_ENV, STALE_S
from tests.workflows.definitions import llm_chain_definition

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def three_slow_steps() -> dict:
    steps = [
        ("one", "one", "Outline {{ input.topic }}"),
        ("two", "two", "Expand: {{ steps.one.output }}"),
        ("three", "three", "Shorten: {{ steps.two.output }}"),
    ]
    return llm_chain_definition("three-steps", steps, limits={"timeout_s": 120})


def test_a_run_whose_worker_is_killed_during_step_2_is_finished_by_a_new_worker(workspace, simulator, rq_workers):
    provider = sim_provider(simulator, workspace, config=slow(1.5))
    for alias in ("one", "two", "three"):
        sim_model(provider, alias=alias)
    workflow_create(workspace=workspace, definition=three_slow_steps())
    first = rq_workers.start("runs", env=QUICK_RECOVERY_ENV)

    response = key_client(workspace).post(
        "/api/v1/workflows/three-steps/runs/", {"input": {"topic": "tides"}, "mode": "async"}, format="json"
    )
    run_id = response.json()["id"]
    # Step 2's request has reached the provider (so it is really in flight) when the machine is lost.
    wait_for(lambda: simulator.calls("sim-two") == 1, timeout=30, what="step 2's call to reach the simulator")
    in_flight = StepRun.objects.get(run_id=run_id, step_id="two")
    assert in_flight.status == "running" and len(in_flight.call_ids) == 1
    first.kill()
    killed_at = time.monotonic()
    assert Run.objects.get(pk=run_id).status == "running"  # nobody has noticed yet

    booted = time.monotonic()
    rq_workers.start("runs", env=QUICK_RECOVERY_ENV)
    boot_s = time.monotonic() - booted
    resumed = wait_for(
        lambda: RunEvent.objects.filter(run_id=run_id, type="run.started", data__execution=2).first(),
        timeout=60,
        what="the run to be resumed",
    )
    resumed_after = time.monotonic() - killed_at
    run = wait_for_status(run_id, {"succeeded", "failed", "cancelled"}, timeout=60)

    # Within the documented bound: stale after STALE_S since the last beat, found by the next reap.
    bound = STALE_S + INTERVAL_S + HEARTBEAT_S + boot_s + 3.0  # + picking up two jobs on a loaded machine
    assert resumed_after <= bound, (resumed_after, bound)
    assert resumed is not None
    assert run.status == "succeeded", (run.error, first.log_text()[-2000:])
    assert run.executions == 2
    steps = {s.step_id: s for s in StepRun.objects.filter(run_id=run_id)}
    assert {s.status for s in steps.values()} == {"succeeded"}
    assert (steps["one"].executions, steps["two"].executions, steps["three"].executions) == (1, 2, 1)

    # Step 1 was not called again; step 2 was called twice (the cut call and the new one).
    assert simulator.calls("sim-one") == 1
    assert simulator.calls("sim-two") == 2
    assert simulator.calls("sim-three") == 1

    # The ledger has every provider call exactly once: the cut call booked once, as abandoned.
    ledger = list(UsageRecord.objects.filter(run_id=run_id).order_by("created_at"))
    assert len(ledger) == simulator.calls() == 4
    assert len({row.call_id for row in ledger}) == 4
    abandoned = [row for row in ledger if row.error_code == "abandoned"]
    assert [row.call_id for row in abandoned] == in_flight.call_ids
    assert abandoned[0].status == "failed" and abandoned[0].input_tokens == abandoned[0].output_tokens == 0
    assert abandoned[0].cost_usd == 0 and abandoned[0].step_id == "two"
    stats = simulator.stats()
    assert sum(r.input_tokens for r in ledger) == stats["prompt_tokens"]
    assert sum(r.output_tokens for r in ledger) == stats["completion_tokens"]
    assert run.cost_usd == sum(r.cost_usd for r in ledger)
    assert settings.KEEL_RUN_MAX_EXECUTIONS >= 2


def test_a_call_cut_on_the_fallback_model_is_booked_against_the_fallback(workspace, simulator, rq_workers):
    """The ledger says which model a cut call went to: the step's main model failed, and the worker
    died while its fallback, on another provider, was answering."""
    sim_model(sim_provider(simulator, workspace, name="Primary", config=always(500)), alias="fast")
    sim_model(sim_provider(simulator, workspace, name="Secondary", config=slow(1.5)), alias="backup")
    definition = llm_chain_definition("fallback", [("answer", "fast", "Answer {{ input.topic }}")])
    definition["steps"][0].update(fallbacks=["backup"], retries=0)
    workflow_create(workspace=workspace, definition=definition)
    first = rq_workers.start("runs", env=QUICK_RECOVERY_ENV)

    response = key_client(workspace).post(
        "/api/v1/workflows/fallback/runs/", {"input": {"topic": "tides"}, "mode": "async"}, format="json"
    )
    run_id = response.json()["id"]
    wait_for(lambda: simulator.calls("sim-backup") == 1, timeout=30, what="the fallback's call to reach the simulator")
    in_flight = StepRun.objects.get(run_id=run_id)
    # While it waits, the step shows the model being called.
    assert (in_flight.status, in_flight.model, in_flight.provider) == ("running", "backup", "Secondary")
    assert len(in_flight.call_ids) == 2  # the main model's failed call, then the fallback's
    first.kill()

    rq_workers.start("runs", env=QUICK_RECOVERY_ENV)
    run = wait_for_status(run_id, {"succeeded", "failed", "cancelled"}, timeout=90)

    assert run.status == "succeeded" and run.executions == 2, run.error
    ledger = list(UsageRecord.objects.filter(run_id=run_id).order_by("created_at"))
    assert len(ledger) == simulator.calls() == 4  # fast fails, backup is cut; fast fails, backup answers
    cut = [row for row in ledger if row.error_code == "abandoned"]
    assert [row.call_id for row in cut] == in_flight.call_ids[-1:]
    assert (cut[0].model_alias, cut[0].provider_name, cut[0].cost_usd) == ("backup", "Secondary", 0)
    assert [(row.model_alias, row.status) for row in ledger if row.error_code != "abandoned"] == [
        ("fast", "failed"),
        ("fast", "failed"),
        ("backup", "succeeded"),
    ]
    assert sum(r.output_tokens for r in ledger) == simulator.stats()["completion_tokens"]


def test_a_step_slower_than_the_stale_threshold_keeps_its_run_alive_by_heartbeating(workspace, simulator, rq_workers):
    # One call takes longer than STALE_S; the reaper runs every second meanwhile and must leave the run alone.
    provider = sim_provider(simulator, workspace, config=slow(STALE_S + 2))
    sim_model(provider, alias="one")
    definition = three_slow_steps()
    definition["steps"] = definition["steps"][:1]
    definition["output"] = "{{ steps.one.output }}"
    workflow_create(workspace=workspace, definition=definition)
    workers = [
        rq_workers.start("runs", env=QUICK_RECOVERY_ENV),
        rq_workers.start("runs", env=QUICK_RECOVERY_ENV),
    ]  # one is free
    run_id = (
        key_client(workspace)
        .post("/api/v1/workflows/three-steps/runs/", {"input": {"topic": "tides"}, "mode": "async"}, format="json")
        .json()["id"]
    )
    run = wait_for_status(run_id, {"succeeded", "failed", "cancelled"}, timeout=60)
    logs = "".join(worker.log_text() for worker in workers)
    assert run.status == "succeeded" and run.executions == 1
    assert simulator.calls("sim-one") == 1
    assert logs.count("Job OK (periodic-reap-runs") >= STALE_S, "the reaper ran while the step was slow"
    assert "run_reaped" not in logs
