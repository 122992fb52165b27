"""The demo's sample workflows: seeded once, and each runs end to end on the in-process simulator."""

from __future__ import annotations

import pytest

from apps.providers.services import providers_demo_seed
from apps.runs.models import Run
from apps.workflows.models import Workflow
from apps.workflows.services import workflow_demo_seed
from tests.support.tenancy import key_client

pytestmark = pytest.mark.django_db(transaction=True)

INPUTS = {
    "summarise": {"text": "Tides are caused by the moon's gravity pulling on the oceans."},
    "support-triage": {"ticket": "I was charged twice for my subscription this month."},
    "draft-critique": {"question": "Why is the sky blue?"},
}


def test_the_samples_are_seeded_once_and_each_runs_end_to_end(workspace):
    providers_demo_seed(workspace=workspace)
    notes = workflow_demo_seed(workspace=workspace)
    assert len(notes) == 3 and all(note.startswith("Sample workflow: ") for note in notes)
    assert workflow_demo_seed(workspace=workspace) == []  # idempotent
    assert set(Workflow.objects.filter(workspace=workspace).values_list("slug", flat=True)) == set(INPUTS)

    client = key_client(workspace)
    for slug, value in INPUTS.items():
        response = client.post(f"/api/v1/workflows/{slug}/runs/", {"input": value, "mode": "sync"}, format="json")
        assert response.status_code == 200, response.content
        body = response.json()
        assert body["status"] == "succeeded", (slug, body["error"])
        assert body["usage"]["input_tokens"] > 0 and body["usage"]["cost_usd"] != "0.0000000000"
    triage = Run.objects.get(workflow__slug="support-triage").output
    assert triage["category"] in {"billing", "bug", "other"} and isinstance(triage["urgent"], bool)
    draft = Run.objects.get(workflow__slug="draft-critique").output
    assert set(draft) == {"draft", "critique"} and all(draft.values())


def test_without_the_demo_models_the_samples_are_skipped_with_a_note(workspace):
    notes = workflow_demo_seed(workspace=workspace)
    assert len(notes) == 3 and all("skipped" in note for note in notes)
    assert not Workflow.objects.exists()
