"""The runs list and detail, and acceptance 9: every runs endpoint refuses another workspace with 404."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.accounts.models import Role
from apps.accounts.tenancy import Actor
from apps.runs.models import Run
from apps.runs.services import run_start
from apps.workflows.services import workflow_create
from tests.runs.conftest import transform_definition
from tests.support.tenancy import assert_other_workspace_gets_404, clients_of, key_client, problem

pytestmark = pytest.mark.django_db


def start(workflow, text: str = "x") -> Run:
    actor = Actor(workspace=workflow.workspace, role=Role.OWNER)
    return run_start(workflow=workflow, actor=actor, input={"text": text}, mode="async").run


def test_every_runs_endpoint_answers_404_for_another_workspaces_run(workspace, other_workspace):
    theirs = start(workflow_create(workspace=other_workspace, definition=transform_definition()))
    Run.objects.filter(pk=theirs.pk).update(status="failed")
    assert_other_workspace_gets_404(
        clients_of(workspace),
        [
            ("get", f"/api/v1/runs/{theirs.pk}/"),
            ("get", f"/api/v1/runs/{theirs.pk}/events/"),
            ("post", f"/api/v1/runs/{theirs.pk}/cancel/", {}),
            ("post", f"/api/v1/runs/{theirs.pk}/retry/", {}),
            ("post", "/api/v1/workflows/shout/runs/", {"input": {"text": "x"}, "mode": "async"}),
        ],
    )
    assert key_client(workspace).get("/api/v1/runs/").json()["results"] == []
    assert Run.objects.count() == 1 and Run.objects.get().status == "failed"


def test_the_list_is_newest_first_paginated_by_cursor_without_steps(workspace, shout):
    runs = [start(shout, str(n)) for n in range(5)]
    client = key_client(workspace)
    page = client.get("/api/v1/runs/?page_size=2").json()
    assert [r["id"] for r in page["results"]] == [str(r.pk) for r in reversed(runs)][:2]
    assert "steps" not in page["results"][0] and page["results"][0]["usage"]["cost_usd"] == "0.0000000000"
    seen = [r["id"] for r in page["results"]]
    while page["next"]:
        page = client.get(page["next"]).json()
        seen += [r["id"] for r in page["results"]]
    assert seen == [str(r.pk) for r in reversed(runs)]


def test_the_list_filters_by_workflow_status_and_creation_time(workspace, shout):
    other = workflow_create(workspace=workspace, definition=transform_definition(slug="other"))
    old, failed, mine = start(shout, "old"), start(shout, "failed"), start(other, "other")
    Run.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=3))
    Run.objects.filter(pk=failed.pk).update(status="failed")
    client = key_client(workspace)

    def ids(query: str) -> set[str]:
        response = client.get(f"/api/v1/runs/?{query}")
        assert response.status_code == 200, response.content
        return {r["id"] for r in response.json()["results"]}

    assert ids("workflow=other") == {str(mine.pk)}
    assert ids("status=failed") == {str(failed.pk)}
    cutoff = (timezone.now() - timedelta(days=1)).isoformat().replace("+00:00", "Z")
    assert ids(f"created_before={cutoff}") == {str(old.pk)}
    assert ids(f"created_after={cutoff}&workflow=shout") == {str(failed.pk)}


@pytest.mark.parametrize(("query", "field"), [("status=lost", "status"), ("created_after=yesterday", "created_after")])
def test_a_bad_filter_gets_400_naming_it(workspace, shout, query, field):
    body = problem(key_client(workspace).get(f"/api/v1/runs/?{query}"), 400, "validation_error")
    assert field in {e["field"] for e in body["errors"]}


def test_a_viewer_may_read_runs_but_not_start_cancel_or_retry_them(workspace, shout):
    run = start(shout)
    viewer = key_client(workspace, role=Role.VIEWER)
    assert viewer.get(f"/api/v1/runs/{run.pk}/").status_code == 200
    problem(
        viewer.post("/api/v1/workflows/shout/runs/", {"input": {"text": "x"}}, format="json"), 403, "permission_denied"
    )
    problem(viewer.post(f"/api/v1/runs/{run.pk}/cancel/"), 403, "permission_denied")
    problem(viewer.post(f"/api/v1/runs/{run.pk}/retry/"), 403, "permission_denied")
    assert Run.objects.get(pk=run.pk).status == "queued"


def test_an_unknown_run_id_answers_404(workspace):
    problem(key_client(workspace).get("/api/v1/runs/00000000-0000-0000-0000-000000000000/"), 404, "not_found")
    problem(key_client(workspace).get("/api/v1/runs/not-a-uuid/"), 404, "not_found")
