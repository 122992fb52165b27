"""Every log line of a run's execution carries run_id, workspace and the starting request's request_id."""

from __future__ import annotations

import logging

import pytest

from apps.workflows.services import workflow_create
from tests.runs.helpers import wait_for_status
from tests.support.simulator import sim_model, sim_provider
from tests.support.tenancy import key_client
from tests.workflows.definitions import triage_definition

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def triage(workspace):
    provider = sim_provider(None, workspace)  # in-process: the worker and the web process reach it alike
    sim_model(provider, alias="fast")
    sim_model(provider, alias="backup")
    return workflow_create(workspace=workspace, definition=triage_definition())


@pytest.mark.integration
def test_a_workers_log_lines_for_a_run_carry_the_run_workspace_and_request_id(workspace, triage, rq_workers):
    worker = rq_workers.start("runs")
    response = key_client(workspace).post(
        "/api/v1/workflows/support-triage/runs/",
        {"input": {"ticket": "Where is my invoice?"}, "mode": "async"},
        format="json",
        HTTP_X_REQUEST_ID="req-log-context-1",
    )
    run_id = response.json()["id"]
    wait_for_status(run_id, {"succeeded", "failed"}, timeout=60)

    lines = [e for e in worker.log_events() if str(e.get("job_id", "")).startswith(f"run-{run_id}")]
    events = {e["event"] for e in lines}
    # At INFO (the workers' level here) a succeeding run logs its provider calls and its outcome.
    assert {"provider_call", "run_finished"} <= events
    for line in lines:
        assert line.get("run_id") == run_id, line
        assert line.get("workspace") == "acme", line
        assert line.get("request_id") == "req-log-context-1", line
        assert len(line.get("trace_id", "")) == 32, line


def test_a_sync_runs_log_lines_in_the_web_process_carry_the_same_context(workspace, triage, caplog):
    with caplog.at_level(logging.DEBUG):
        body = (
            key_client(workspace)
            .post(
                "/api/v1/workflows/support-triage/runs/",
                {"input": {"ticket": "Where is my invoice?"}, "mode": "sync"},
                format="json",
                HTTP_X_REQUEST_ID="req-log-context-2",
            )
            .json()
        )
    assert body["status"] == "succeeded"
    lines = [
        r.msg for r in caplog.records if isinstance(r.msg, dict) and r.name.startswith(("apps.runs", "apps.providers"))
    ]
    assert {"run_claimed", "run_started", "provider_call", "run_finished"} <= {line["event"] for line in lines}
    for line in lines:
        assert line.get("request_id") == "req-log-context-2", line
        assert line.get("run_id") == body["id"], line
        assert line.get("workspace") == "acme", line
