"""Runs of a workflow of local steps only (no provider): modes, validation, failures, events."""

from __future__ import annotations

import pytest

from apps.runs.models import Run, RunEvent, StepRun
from apps.workflows.services import workflow_create
from tests.runs.conftest import transform_definition
from tests.runs.helpers import sse_events
from tests.support.tenancy import key_client, problem

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_sync_run_answers_200_with_the_finished_run_body(workspace, shout):
    response = key_client(workspace).post(
        "/api/v1/workflows/shout/runs/", {"input": {"text": "hello"}, "mode": "sync"}, format="json"
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "succeeded" and body["mode"] == "sync"
    assert body["output"] == {"text": "HELLO", "length": 5}
    assert body["workflow"] == "shout" and body["workflow_version"] == 1
    assert [s["id"] for s in body["steps"]] == ["upper", "stats", "pick"]
    assert all(s["status"] == "succeeded" for s in body["steps"])
    assert body["steps"][1]["output"] == {"length": 5}
    assert body["usage"] == {
        "input_tokens": 0,
        "output_tokens": 0,
        "cost_usd": "0.0000000000",
        "cache_hits": 0,
        "saved_usd": "0.0000000000",
    }
    assert body["error"] is None and body["duration_ms"] >= 0 and len(body["trace_id"]) == 32
    assert set(body) == {
        "id", "workflow", "workflow_version", "status", "mode", "input", "output", "error", "steps", "usage",
        "created_at", "started_at", "finished_at", "duration_ms", "trace_id", "metadata", "retry_of",
    }  # fmt: skip
    assert key_client(workspace).get(f"/api/v1/runs/{body['id']}/").json() == body


def test_invalid_input_gets_400_listing_every_schema_error_and_records_nothing(workspace, shout):
    response = key_client(workspace).post(
        "/api/v1/workflows/shout/runs/", {"input": {"times": 0, "colour": "red"}, "mode": "sync"}, format="json"
    )
    body = problem(response, 400, "validation_error")
    fields = {(e["field"], e["message"]) for e in body["errors"]}
    assert ("input.text", "This field is required.") in fields
    assert any(f == "input.times" and "minimum" in m for f, m in fields)
    assert any(f == "input" and "'colour' was unexpected" in m for f, m in fields)
    assert Run.objects.count() == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"mode": "sync"}, "input"),
        ({"input": {"text": "x"}, "mode": "sometimes"}, "mode"),
        ({"input": {"text": "x"}, "wait_s": -1}, "wait_s"),
        ({"input": {"text": "x"}, "metadata": [1]}, "metadata"),
        ({"input": {"text": "x"}, "inputs": {}}, "inputs"),
        ({"input": "text"}, "input"),
    ],
)
def test_a_malformed_start_request_gets_400_naming_the_field(workspace, shout, body, field):
    response = key_client(workspace).post("/api/v1/workflows/shout/runs/", body, format="json")
    assert field in {e["field"] for e in problem(response, 400, "validation_error")["errors"]}
    assert Run.objects.count() == 0


def test_a_template_error_at_run_time_fails_the_run_with_its_code_and_step_not_a_500(workspace):
    definition = transform_definition()
    definition["steps"][1] = {"id": "stats", "type": "transform", "template": "{{ input.text.no_such_thing }}"}
    workflow_create(workspace=workspace, definition=definition)

    response = key_client(workspace).post(
        "/api/v1/workflows/shout/runs/", {"input": {"text": "hello"}, "mode": "sync"}, format="json"
    )

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "failed"
    assert body["error"]["code"] == "template_error" and body["error"]["step"] == "stats"
    assert "no_such_thing" in body["error"]["message"]
    assert [s["status"] for s in body["steps"]] == ["succeeded", "failed", "pending"]
    assert body["steps"][1]["error"]["code"] == "template_error"


def test_an_output_template_error_fails_the_run(workspace):
    workflow_create(workspace=workspace, definition=transform_definition(output="{{ input.missing }}"))
    body = (
        key_client(workspace)
        .post("/api/v1/workflows/shout/runs/", {"input": {"text": "a"}, "mode": "sync"}, format="json")
        .json()
    )
    assert body["status"] == "failed" and body["error"]["code"] == "template_error" and body["error"]["step"] is None


def test_a_stream_run_sends_its_events_in_order_each_with_an_id(workspace, shout):
    response = key_client(workspace).post(
        "/api/v1/workflows/shout/runs/", {"input": {"text": "hey"}, "mode": "stream"}, format="json"
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/event-stream")
    events = sse_events(response)
    names = [e["event"] for e in events]
    assert names == [
        "run.started",
        "step.started", "step.finished",
        "step.started", "step.finished",
        "step.started", "step.finished",
        "run.finished",
    ]  # fmt: skip
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    run_id = events[0]["data"]["run_id"]
    assert all(e["data"]["run_id"] == run_id for e in events)
    assert events[-1]["data"]["run"]["output"] == {"text": "HEY", "length": 3}
    assert events[-1]["data"]["run"]["status"] == "succeeded"


def test_the_events_endpoint_replays_after_last_event_id_and_ends_after_run_finished(workspace, shout):
    client = key_client(workspace)
    run_id = client.post(
        "/api/v1/workflows/shout/runs/", {"input": {"text": "hey"}, "mode": "sync"}, format="json"
    ).json()["id"]
    everything = sse_events(client.get(f"/api/v1/runs/{run_id}/events/"))
    assert everything[-1]["event"] == "run.finished"
    rest = sse_events(client.get(f"/api/v1/runs/{run_id}/events/", HTTP_LAST_EVENT_ID="5"))
    assert [e["id"] for e in rest] == [e["id"] for e in everything if e["id"] > 5]
    assert rest == everything[5:]
    problem(client.get(f"/api/v1/runs/{run_id}/events/", HTTP_LAST_EVENT_ID="five"), 400, "validation_error")


def test_sync_past_wait_s_answers_202_with_location_and_the_run_still_finishes(workspace, shout):
    # wait_s=0: the answer cannot wait for the run, which goes on in the background.
    response = key_client(workspace).post(
        "/api/v1/workflows/shout/runs/", {"input": {"text": "later"}, "mode": "sync", "wait_s": 0}, format="json"
    )
    assert response.status_code in (200, 202)
    run_id = response.json()["id"]
    if response.status_code == 202:
        assert response["Location"] == f"/api/v1/runs/{run_id}/"
    events = sse_events(key_client(workspace).get(f"/api/v1/runs/{run_id}/events/"))
    assert events[-1]["data"]["run"]["status"] == "succeeded"


def test_runs_of_an_archived_workflow_are_refused_with_409(workspace, shout):
    client = key_client(workspace)
    client.delete("/api/v1/workflows/shout/")
    problem(client.post("/api/v1/workflows/shout/runs/", {"input": {"text": "x"}}, format="json"), 409, "conflict")


def test_each_run_records_its_steps_once_and_its_event_log(workspace, shout):
    body = (
        key_client(workspace)
        .post("/api/v1/workflows/shout/runs/", {"input": {"text": "x"}, "mode": "sync"}, format="json")
        .json()
    )
    assert StepRun.objects.filter(run_id=body["id"]).count() == 3
    assert RunEvent.objects.filter(run_id=body["id"], type="run.finished").count() == 1
