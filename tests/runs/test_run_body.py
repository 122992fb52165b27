"""The run body built by hand (run_body, and what the engine writes with run.finished) is exactly
what the API's declared RunSerializer says, for runs in every state."""

from __future__ import annotations

import json

import pytest
from rest_framework.utils.encoders import JSONEncoder

from apps.accounts.models import Role
from apps.accounts.tenancy import Actor
from apps.runs.models import Run, RunEvent
from apps.runs.serializers import RunSerializer, run_body
from apps.runs.services import run_cancel, run_execute, run_retry, run_start
from apps.workflows.services import workflow_create
from tests.runs.conftest import transform_definition
from tests.support.simulator import sim_model, sim_provider
from tests.workflows.definitions import triage_definition

pytestmark = pytest.mark.django_db(transaction=True)


def declared(run_id) -> dict:
    run = Run.objects.select_related("workflow", "workflow_version").prefetch_related("steps").get(pk=run_id)
    return json.loads(json.dumps(RunSerializer(run).data, cls=JSONEncoder))


def built(run_id) -> dict:
    return run_body(Run.objects.select_related("workflow", "workflow_version").get(pk=run_id))


def written(run_id) -> dict:
    """The body the executor built in memory and wrote with run.finished (also the sync answer)."""
    return RunEvent.objects.get(run_id=run_id, type="run.finished").data["run"]


def test_run_body_equals_the_serializer_for_queued_succeeded_failed_cancelled_cached_and_retried_runs(workspace):
    owner = Actor(workspace=workspace, role=Role.OWNER)
    provider = sim_provider(None, workspace)
    sim_model(provider, alias="fast")
    sim_model(provider, alias="backup")
    triage = workflow_create(workspace=workspace, definition=triage_definition())
    shout = workflow_create(workspace=workspace, definition=transform_definition())
    broken = workflow_create(
        workspace=workspace,
        definition=transform_definition(
            slug="broken",
            steps=[{"id": "upper", "type": "transform", "template": "{{ input.text.nope }}"}],
            output=None,
        ),
    )

    def start(workflow, payload, **kwargs):
        return run_start(workflow=workflow, actor=owner, input=payload, **kwargs).run

    queued = start(shout, {"text": "hi"}, mode="async", metadata={"order": 7, "tags": ["a", "b"]})
    cancelled = run_cancel(run=start(shout, {"text": "later"}, mode="async"))
    succeeded = start(shout, {"text": "hello"}, metadata={"nested": {"z": 1, "a": [1.5, None]}})
    run_execute(run_id=succeeded.pk)
    paid = start(triage, {"ticket": "Where is my invoice?"})
    run_execute(run_id=paid.pk)
    cached = start(triage, {"ticket": "Where is my invoice?"})  # temperature 0: a cache hit
    run_execute(run_id=cached.pk)
    failed = start(broken, {"text": "x"})
    run_execute(run_id=failed.pk)
    retried = run_retry(run=Run.objects.get(pk=failed.pk), actor=owner)

    runs = {
        "queued": queued,
        "cancelled": cancelled,
        "succeeded": succeeded,
        "paid": paid,
        "cached": cached,
        "failed": failed,
        "retried": retried,
    }
    for name, run in runs.items():
        assert built(run.pk) == declared(run.pk), name
    for name in ("succeeded", "paid", "cached", "failed"):
        assert written(runs[name].pk) == declared(runs[name].pk), name

    # The cases are what they claim to be.
    assert Run.objects.get(pk=paid.pk).cost_usd > 0
    assert declared(cached.pk)["usage"]["cache_hits"] == 1 and declared(cached.pk)["usage"]["saved_usd"] != "0E-10"
    assert declared(failed.pk)["error"]["code"] == "template_error"
    assert declared(retried.pk)["retry_of"] == str(failed.pk)
    assert declared(cancelled.pk)["status"] == "cancelled" and declared(queued.pk)["started_at"] is None
