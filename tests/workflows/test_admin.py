"""Workflows in the admin: the definition is edited as JSON, validated on save, each save a new version."""

from __future__ import annotations

import json

import pytest

from apps.workflows.models import Workflow, WorkflowVersion
from tests.workflows.definitions import triage_definition

pytestmark = pytest.mark.django_db

NO_VERSIONS = {
    "versions-TOTAL_FORMS": "0",
    "versions-INITIAL_FORMS": "0",
    "versions-MIN_NUM_FORMS": "0",
    "versions-MAX_NUM_FORMS": "1000",
}


def test_adding_a_workflow_in_the_admin_validates_the_definition_and_saves_version_1(admin_client, workspace, models):
    broken = triage_definition()
    broken["steps"][0]["model"] = "nope"
    response = admin_client.post(
        "/admin/workflows/workflow/add/", {"workspace": workspace.pk, "definition": json.dumps(broken), **NO_VERSIONS}
    )
    assert response.status_code == 200  # the form again, with the errors
    assert "steps.0.model: no model is aliased" in response.content.decode()
    assert not Workflow.objects.exists()

    response = admin_client.post(
        "/admin/workflows/workflow/add/",
        {"workspace": workspace.pk, "definition": json.dumps(triage_definition()), **NO_VERSIONS},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    workflow = Workflow.objects.get()
    assert workflow.slug == "support-triage" and workflow.latest_version == 1


def test_each_admin_save_publishes_a_new_version(admin_client, workspace, models):
    admin_client.post(
        "/admin/workflows/workflow/add/",
        {"workspace": workspace.pk, "definition": json.dumps(triage_definition()), **NO_VERSIONS},
    )
    workflow = Workflow.objects.get()
    page = admin_client.get(f"/admin/workflows/workflow/{workflow.pk}/change/")
    assert page.status_code == 200 and "Support ticket triage" in page.content.decode()
    changed = triage_definition(name="Triage, edited in the admin")
    response = admin_client.post(
        f"/admin/workflows/workflow/{workflow.pk}/change/",
        {
            "definition": json.dumps(changed),
            "versions-TOTAL_FORMS": "1",
            "versions-INITIAL_FORMS": "1",
            "versions-MIN_NUM_FORMS": "0",
            "versions-MAX_NUM_FORMS": "1000",
            "versions-0-id": str(WorkflowVersion.objects.get().pk),
            "versions-0-workflow": str(workflow.pk),
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    workflow.refresh_from_db()
    assert workflow.latest_version == 2 and workflow.name == "Triage, edited in the admin"
    assert list(WorkflowVersion.objects.order_by("number").values_list("number", flat=True)) == [1, 2]
