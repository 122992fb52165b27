from __future__ import annotations

import copy

import pytest

from apps.workflows.models import Workflow, WorkflowVersion
from tests.support.tenancy import assert_other_workspace_gets_404, clients_of, key_client, problem
from tests.workflows.definitions import triage_definition

pytestmark = pytest.mark.django_db


def test_a_valid_definition_is_saved_as_version_1(workspace, models):
    client = key_client(workspace)
    response = client.post("/api/v1/workflows/", triage_definition(), format="json")
    assert response.status_code == 201, response.content
    assert response["Location"] == "/api/v1/workflows/support-triage/"
    body = response.json()
    assert body["slug"] == "support-triage" and body["version"] == 1 and body["archived"] is False
    assert body["definition"] == triage_definition()
    assert set(body) == {"slug", "name", "description", "version", "definition", "archived", "created_at", "updated_at"}
    assert client.get("/api/v1/workflows/support-triage/").json() == body


def test_an_invalid_definition_gets_400_listing_every_error_and_saves_nothing(workspace, models):
    definition = triage_definition(slug="Not A Slug", default_mode="sometimes")
    definition["input_schema"] = {"type": "strnig"}
    step = definition["steps"][0]
    step["model"] = "no-such-model"
    step["prompt"] = "{{ input.ticket }} {{ steps.later.output }} {{ secrets }}"
    step["response_schema"] = {"type": "object", "required": "category"}
    step["temperature"] = 7
    definition["steps"].append({"id": "classify", "type": "transform", "template": "{{ steps.classify.output"})
    definition["steps"].append({"id": "later", "type": "transform"})

    response = key_client(workspace).post("/api/v1/workflows/", definition, format="json")

    body = problem(response, 400, "validation_error")
    errors = {(e["field"], e["message"]) for e in body["errors"]}
    fields = {field for field, _ in errors}
    assert {
        "slug",
        "default_mode",
        "input_schema.type",
        "steps.0.model",
        "steps.0.prompt",
        "steps.0.response_schema.required",
        "steps.0.temperature",
        "steps.1.id",
        "steps.1.template",
        "steps.2",
    } <= fields, errors
    prompt_messages = {message for field, message in errors if field == "steps.0.prompt"}
    assert any("'later'" in m and "before" in m for m in prompt_messages)
    assert any("'secrets'" in m for m in prompt_messages)
    assert ("steps.1.id", "duplicate step id 'classify' (also steps.0)") in errors
    assert any("exactly one of: template, value, path" in m for f, m in errors if f == "steps.2")
    assert Workflow.objects.count() == 0 and WorkflowVersion.objects.count() == 0


def test_a_slug_that_is_taken_is_refused(workspace, models):
    client = key_client(workspace)
    assert client.post("/api/v1/workflows/", triage_definition(), format="json").status_code == 201
    body = problem(client.post("/api/v1/workflows/", triage_definition(), format="json"), 400, "validation_error")
    assert body["errors"][0]["field"] == "slug"
    assert WorkflowVersion.objects.count() == 1


def test_put_publishes_a_new_version_and_versions_lists_each(workspace, models):
    client = key_client(workspace)
    client.post("/api/v1/workflows/", triage_definition(), format="json")
    changed = triage_definition(name="Triage v2")
    del changed["slug"]  # PUT may leave the slug out
    response = client.put("/api/v1/workflows/support-triage/", changed, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["version"] == 2 and response.json()["name"] == "Triage v2"

    versions = client.get("/api/v1/workflows/support-triage/versions/").json()
    assert [v["version"] for v in versions["results"]] == [2, 1]
    assert versions["results"][1]["definition"]["name"] == "Support ticket triage"


def test_put_cannot_rename_and_an_invalid_put_keeps_the_current_version(workspace, models):
    client = key_client(workspace)
    client.post("/api/v1/workflows/", triage_definition(), format="json")
    problem(
        client.put("/api/v1/workflows/support-triage/", triage_definition(slug="other"), format="json"),
        400,
        "validation_error",
    )
    broken = triage_definition()
    broken["steps"][0]["model"] = "missing"
    problem(client.put("/api/v1/workflows/support-triage/", broken, format="json"), 400, "validation_error")
    assert client.get("/api/v1/workflows/support-triage/").json()["version"] == 1
    assert WorkflowVersion.objects.count() == 1


def test_delete_archives_hides_from_the_list_and_put_restores(workspace, models):
    client = key_client(workspace)
    client.post("/api/v1/workflows/", triage_definition(), format="json")
    assert client.delete("/api/v1/workflows/support-triage/").status_code == 204
    assert client.get("/api/v1/workflows/").json()["results"] == []
    listed = client.get("/api/v1/workflows/?archived=true").json()["results"]
    assert [w["slug"] for w in listed] == ["support-triage"] and listed[0]["archived"] is True
    assert client.get("/api/v1/workflows/support-triage/").json()["archived"] is True
    restored = client.put("/api/v1/workflows/support-triage/", triage_definition(), format="json").json()
    assert restored["archived"] is False and restored["version"] == 2


def test_the_definition_json_schema_is_published_and_accepts_the_design_example(workspace, models):
    from jsonschema import Draft202012Validator

    response = key_client(workspace).get("/api/v1/workflows/schema/")
    assert response.status_code == 200
    schema = response.json()
    Draft202012Validator.check_schema(schema)
    assert set(schema["$defs"]["step"]["properties"]["type"]["enum"]) >= {"llm", "transform"}
    assert list(Draft202012Validator(schema).iter_errors(triage_definition())) == []
    bad = copy.deepcopy(triage_definition())
    bad["steps"][0]["type"] = "teleport"
    assert list(Draft202012Validator(schema).iter_errors(bad))


def test_a_viewer_may_read_but_not_write_workflows(workspace, models):
    key_client(workspace).post("/api/v1/workflows/", triage_definition(), format="json")
    viewer = key_client(workspace, role="viewer")
    assert viewer.get("/api/v1/workflows/support-triage/").status_code == 200
    problem(
        viewer.put("/api/v1/workflows/support-triage/", triage_definition(), format="json"), 403, "permission_denied"
    )


def test_workflows_of_another_workspace_answer_404(workspace, other_workspace, models):
    from tests.support.simulator import sim_model, sim_provider

    provider = sim_provider(None, other_workspace)
    sim_model(provider, alias="fast")
    sim_model(provider, alias="backup")
    key_client(other_workspace).post("/api/v1/workflows/", triage_definition(), format="json")
    slug = "support-triage"
    assert_other_workspace_gets_404(
        clients_of(workspace),
        [
            ("get", f"/api/v1/workflows/{slug}/"),
            ("put", f"/api/v1/workflows/{slug}/", triage_definition()),
            ("delete", f"/api/v1/workflows/{slug}/"),
            ("get", f"/api/v1/workflows/{slug}/versions/"),
            ("post", f"/api/v1/workflows/{slug}/runs/", {"input": {"ticket": "x"}, "mode": "async"}),
        ],
    )
    theirs = Workflow.objects.get(workspace=other_workspace)
    assert theirs.archived is False and theirs.latest_version == 1
    assert key_client(workspace).get("/api/v1/workflows/").json()["results"] == []


def test_schemas_that_could_not_be_applied_are_refused_when_saved(workspace, models):
    definition = triage_definition()
    definition["input_schema"]["properties"]["ticket"]["pattern"] = "(unclosed"
    definition["steps"][0]["response_schema"]["properties"]["category"] = {"$ref": "https://example.com/s.json"}
    body = problem(key_client(workspace).post("/api/v1/workflows/", definition, format="json"), 400, "validation_error")
    fields = {e["field"] for e in body["errors"]}
    assert "input_schema.properties.ticket.pattern" in fields
    assert "steps.0.response_schema.properties.category.$ref" in fields
    assert not Workflow.objects.exists()


def test_a_definition_may_be_uploaded_as_yaml(workspace, models):
    import yaml

    client = key_client(workspace)
    response = client.post("/api/v1/workflows/", yaml.safe_dump(triage_definition()), content_type="application/yaml")
    assert response.status_code == 201, response.content
    assert response.json()["definition"] == triage_definition()
    bomb = "a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n"
    body = problem(client.post("/api/v1/workflows/", bomb, content_type="application/yaml"), 400, "validation_error")
    assert "aliases" in body["detail"]
    problem(
        client.post("/api/v1/workflows/", "slug: [unclosed", content_type="application/yaml"), 400, "validation_error"
    )
