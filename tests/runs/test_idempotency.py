"""Acceptance 4: Idempotency-Key on POST /workflows/{slug}/runs/ (workspace-scoped, 24 h)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest
from django.utils import timezone

from apps.accounts.services import api_key_issue
from apps.runs.models import IdempotencyKey, Run
from apps.runs.services import runs_reap
from apps.workflows.services import workflow_create
from tests.runs.conftest import transform_definition
from tests.support.tenancy import key_client, problem

URL = "/api/v1/workflows/shout/runs/"


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_fifty_concurrent_posts_with_one_key_create_exactly_one_run_and_a_different_body_gets_422(
    web_server, workspace, shout
):
    token = api_key_issue(workspace=workspace, name="concurrent").token
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "order-42"}
    body = {"input": {"text": "exactly once"}, "mode": "async"}
    start = threading.Barrier(50)

    def post(_: int) -> httpx.Response:
        start.wait(timeout=30)
        return httpx.post(f"{web_server}{URL}", json=body, headers=headers, timeout=60)

    with ThreadPoolExecutor(max_workers=50) as pool:
        responses = list(pool.map(post, range(50)))

    assert Run.objects.count() == 1
    run = Run.objects.get()
    assert {r.status_code for r in responses} <= {202, 409}, [
        r.text for r in responses if r.status_code not in (202, 409)
    ]
    accepted = [r for r in responses if r.status_code == 202]
    assert accepted, "the first request is answered"
    assert {r.json()["id"] for r in accepted} == {str(run.pk)}
    assert all(r.headers["Location"] == f"/api/v1/runs/{run.pk}/" for r in accepted)
    assert len({r.content for r in accepted}) == 1  # the same first response, byte for byte

    replay = httpx.post(f"{web_server}{URL}", json=body, headers=headers, timeout=30)
    assert replay.status_code == 202 and replay.content == accepted[0].content

    other = httpx.post(
        f"{web_server}{URL}", json={**body, "input": {"text": "something else"}}, headers=headers, timeout=30
    )
    assert other.status_code == 422 and other.json()["code"] == "idempotency_mismatch"
    assert other.headers["Content-Type"].startswith("application/problem+json")
    assert Run.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_repeated_sync_request_gets_the_first_response_and_runs_nothing_new(workspace, shout):
    client = key_client(workspace)
    first = client.post(URL, {"input": {"text": "hi"}, "mode": "sync"}, format="json", HTTP_IDEMPOTENCY_KEY="k1")
    again = client.post(URL, {"input": {"text": "hi"}, "mode": "sync"}, format="json", HTTP_IDEMPOTENCY_KEY="k1")
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert Run.objects.count() == 1


@pytest.mark.django_db
def test_a_repeat_while_the_first_is_in_flight_gets_409(workspace, shout):
    client = key_client(workspace)
    body = {"input": {"text": "hi"}, "mode": "sync"}
    # The first request's run exists and is executing; it has no response yet.
    first = client.post(URL, {**body, "mode": "async"}, format="json", HTTP_IDEMPOTENCY_KEY="k2")
    IdempotencyKey.objects.filter(key="k2").update(response_status=None, response_body="")
    Run.objects.filter(pk=first.json()["id"]).update(status="running")
    problem(client.post(URL, {**body, "mode": "async"}, format="json", HTTP_IDEMPOTENCY_KEY="k2"), 409, "conflict")


@pytest.mark.django_db
def test_keys_are_scoped_to_the_workspace(workspace, other_workspace, shout):
    workflow_create(workspace=other_workspace, definition=transform_definition())
    body = {"input": {"text": "hi"}, "mode": "async"}
    mine = key_client(workspace).post(URL, body, format="json", HTTP_IDEMPOTENCY_KEY="shared")
    theirs = key_client(other_workspace).post(URL, body, format="json", HTTP_IDEMPOTENCY_KEY="shared")
    assert mine.status_code == theirs.status_code == 202
    assert mine.json()["id"] != theirs.json()["id"]


@pytest.mark.django_db
def test_a_key_is_forgotten_after_24_hours(workspace, shout):
    client = key_client(workspace)
    body = {"input": {"text": "hi"}, "mode": "async"}
    first = client.post(URL, body, format="json", HTTP_IDEMPOTENCY_KEY="old")
    IdempotencyKey.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    second = client.post(URL, {**body, "input": {"text": "new"}}, format="json", HTTP_IDEMPOTENCY_KEY="old")
    assert second.status_code == 202 and second.json()["id"] != first.json()["id"]
    IdempotencyKey.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert runs_reap().idempotency_keys_purged == 1 and not IdempotencyKey.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "naïve"])
def test_a_malformed_idempotency_key_gets_400(workspace, shout, key):
    response = key_client(workspace).post(
        URL, {"input": {"text": "hi"}, "mode": "async"}, format="json", HTTP_IDEMPOTENCY_KEY=key
    )
    assert problem(response, 400, "validation_error")["errors"][0]["field"] == "Idempotency-Key"
    assert Run.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_a_repeat_while_a_slow_sync_run_executes_gets_409_then_the_finished_run(workspace):
    from tests.runs.helpers import wait_for_status
    from tests.support.simulator import sim_model, sim_provider, slow

    sim_model(sim_provider(None, workspace, config=slow(1.5)), alias="fast")
    step = {"id": "answer", "type": "llm", "model": "fast", "prompt": "{{ input.q }}", "max_tokens": 10}
    workflow_create(workspace=workspace, definition={"slug": "slow", "name": "Slow", "steps": [step]})
    client = key_client(workspace)
    body = {"input": {"q": "?"}, "mode": "sync", "wait_s": 0}

    first = client.post("/api/v1/workflows/slow/runs/", body, format="json", HTTP_IDEMPOTENCY_KEY="slow-1")
    assert first.status_code == 202  # still running after wait_s
    problem(
        client.post("/api/v1/workflows/slow/runs/", body, format="json", HTTP_IDEMPOTENCY_KEY="slow-1"), 409, "conflict"
    )
    wait_for_status(first.json()["id"], set(Run.TERMINAL), timeout=30)
    after = client.post("/api/v1/workflows/slow/runs/", body, format="json", HTTP_IDEMPOTENCY_KEY="slow-1")
    assert after.status_code == 200 and after.json()["id"] == first.json()["id"]
    assert after.json()["status"] == "succeeded" and Run.objects.count() == 1
