"""Acceptance 1: sync, async and stream runs of one workflow, with the provider over HTTP."""

from __future__ import annotations

import pytest

from apps.workflows.services import workflow_create
from tests.runs.helpers import sse_events, wait_for_status
from tests.support.simulator import sim_model, sim_provider
from tests.support.tenancy import key_client
from tests.workflows.definitions import triage_definition

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def triage_and_reply() -> dict:
    definition = triage_definition(default_mode="sync")
    definition["steps"][0]["cache"] = False  # every mode calls the model, so the stream has real deltas
    definition["steps"].append(
        {
            "id": "reply",
            "type": "llm",
            "model": "fast",
            "prompt": "Write a one-line reply to a {{ steps.classify.output.category }} ticket: {{ input.ticket }}",
            "temperature": 0,
            "max_tokens": 40,
            "cache": False,
        }
    )
    definition["output"] = {
        "category": "{{ steps.classify.output.category }}",
        "urgent": "{{ steps.classify.output.urgent }}",
        "reply": "{{ steps.reply.output }}",
    }
    return definition


def test_sync_async_and_stream_give_the_same_output_async_through_a_worker(workspace, simulator, rq_workers):
    provider = sim_provider(simulator, workspace)
    sim_model(provider, alias="fast")
    sim_model(provider, alias="backup")
    workflow_create(workspace=workspace, definition=triage_and_reply())
    client = key_client(workspace)
    url = "/api/v1/workflows/support-triage/runs/"
    payload = {"input": {"ticket": "I was charged twice this month."}}

    sync = client.post(url, {**payload, "mode": "sync"}, format="json")
    assert sync.status_code == 200, sync.content
    assert sync.json()["status"] == "succeeded"

    rq_workers.start("runs")
    accepted = client.post(url, {**payload, "mode": "async"}, format="json")
    assert accepted.status_code == 202
    assert accepted["Location"] == f"/api/v1/runs/{accepted.json()['id']}/"
    assert accepted.json()["status"] == "queued"
    wait_for_status(accepted.json()["id"], {"succeeded", "failed", "cancelled"}, timeout=60)
    done = client.get(accepted["Location"]).json()
    assert done["status"] == "succeeded" and done["mode"] == "async"

    stream = client.post(url, {**payload, "mode": "stream"}, format="json")
    assert stream.status_code == 200 and stream["Content-Type"].startswith("text/event-stream")
    events = sse_events(stream)
    names = [e["event"] for e in events]
    assert names[0] == "run.started" and names[-1] == "run.finished"
    for step in ("classify", "reply"):
        mine = [e["event"] for e in events if e["data"].get("step") == step]
        assert mine[0] == "step.started" and mine[-1] == "step.finished", mine
        assert "step.delta" in mine[1:-1], mine
    streamed_reply = "".join(
        e["data"]["delta"] for e in events if e["event"] == "step.delta" and e["data"]["step"] == "reply"
    )
    finished = events[-1]["data"]["run"]

    assert sync.json()["output"] == done["output"] == finished["output"]
    assert isinstance(finished["output"]["urgent"], bool) and finished["output"]["reply"] == streamed_reply
    assert simulator.calls("sim-fast") == 6  # two steps, three runs, no cache
