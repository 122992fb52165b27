"""GET/POST/PATCH /api/v1/providers/ and /api/v1/models/: fields, roles, validation, tenancy."""

from __future__ import annotations

import pytest

from apps.accounts.models import Role
from apps.providers.models import Model, Provider
from tests.support.simulator import sim_model, sim_provider
from tests.support.tenancy import assert_other_workspace_gets_404, clients_of, key_client, problem

pytestmark = pytest.mark.django_db

PROVIDER_FIELDS = {
    "id",
    "name",
    "kind",
    "kind_label",
    "is_simulator",
    "base_url",
    "has_api_key",
    "timeout_s",
    "max_retries",
    "config",
    "created_at",
    "updated_at",
}


def test_an_admin_creates_a_provider_and_a_model_and_members_can_read_them(workspace):
    admin = key_client(workspace, Role.ADMIN)
    created = admin.post(
        "/api/v1/providers/",
        {"name": "Local vLLM", "kind": "openai_compatible", "base_url": "http://127.0.0.1:9/v1", "api_key": "k-1"},
        format="json",
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert set(body) == PROVIDER_FIELDS
    assert body["has_api_key"] is True and body["is_simulator"] is False and body["kind_label"] == "OpenAI-compatible"
    assert (body["timeout_s"], body["max_retries"], body["config"]) == (60.0, 2, {})

    model = admin.post(
        "/api/v1/models/",
        {
            "provider": body["id"],
            "name": "llama-3.1-8b",
            "alias": "fast",
            "input_price_per_million": "0.15",
            "output_price_per_million": "0.6",
            "context_window": 8192,
            "max_output_tokens": 2048,
        },
        format="json",
    )
    assert model.status_code == 201, model.content
    assert model.json()["input_price_per_million"] == "0.1500000000"
    assert model.json()["cached_input_price_per_million"] == "0.0000000000"
    assert model.json()["provider"] == body["id"] and model.json()["alias"] == "fast"

    member = key_client(workspace, Role.MEMBER)
    assert [p["name"] for p in member.get("/api/v1/providers/").json()["results"]] == ["Local vLLM"]
    assert member.get(f"/api/v1/models/{model.json()['id']}/").json()["output_price_per_million"] == "0.6000000000"
    assert [m["alias"] for m in member.get("/api/v1/models/?alias=fast").json()["results"]] == ["fast"]


def test_members_and_viewers_cannot_write_and_viewers_cannot_read(workspace):
    provider = sim_provider(None, workspace)
    member = key_client(workspace, Role.MEMBER)
    problem(
        member.post("/api/v1/providers/", {"name": "x", "kind": "simulator"}, format="json"), 403, "permission_denied"
    )
    problem(
        member.patch(f"/api/v1/providers/{provider.pk}/", {"timeout_s": 5}, format="json"), 403, "permission_denied"
    )
    viewer = key_client(workspace, Role.VIEWER)
    problem(viewer.get("/api/v1/providers/"), 403, "permission_denied")
    problem(viewer.get("/api/v1/models/"), 403, "permission_denied")


def test_patch_changes_only_what_is_sent_and_can_replace_or_remove_the_key(workspace):
    admin = key_client(workspace)
    created = admin.post(
        "/api/v1/providers/", {"name": "OpenAI", "kind": "openai", "api_key": "sk-first"}, format="json"
    ).json()
    renamed = admin.patch(f"/api/v1/providers/{created['id']}/", {"timeout_s": 12.5}, format="json").json()
    assert renamed["timeout_s"] == 12.5 and renamed["has_api_key"] is True and renamed["name"] == "OpenAI"
    before = Provider.objects.get(pk=created["id"]).api_key_encrypted
    admin.patch(f"/api/v1/providers/{created['id']}/", {"api_key": "sk-second"}, format="json")
    assert Provider.objects.get(pk=created["id"]).api_key_encrypted != before
    removed = admin.patch(f"/api/v1/providers/{created['id']}/", {"api_key": ""}, format="json").json()
    assert removed["has_api_key"] is False


def test_invalid_providers_are_refused_with_400_naming_each_field_and_nothing_is_saved(workspace):
    admin = key_client(workspace)
    body = problem(
        admin.post(
            "/api/v1/providers/",
            {"name": "", "kind": "carrier-pigeon", "timeout_s": -1, "base_url": "not a url"},
            format="json",
        ),
        400,
        "validation_error",
    )
    assert {e["field"] for e in body["errors"]} >= {"name", "kind", "timeout_s", "base_url"}
    body = problem(
        admin.post("/api/v1/providers/", {"name": "Compat", "kind": "openai_compatible"}, format="json"),
        400,
        "validation_error",
    )
    assert [e["field"] for e in body["errors"]] == ["base_url"]
    body = problem(
        admin.post(
            "/api/v1/providers/",
            {"name": "Sim", "kind": "simulator", "config": {"failure_rate": 2, "warp_speed": True}},
            format="json",
        ),
        400,
        "validation_error",
    )
    assert {e["field"] for e in body["errors"]} == {"config.failure_rate", "config.warp_speed"}
    sim_provider(None, workspace, name="Taken")
    body = problem(
        admin.post("/api/v1/providers/", {"name": "Taken", "kind": "simulator"}, format="json"), 400, "validation_error"
    )
    assert [e["field"] for e in body["errors"]] == ["name"]
    assert Provider.objects.for_workspace(workspace).count() == 1


def test_invalid_models_are_refused_with_400_naming_each_field(workspace, other_workspace):
    admin = key_client(workspace)
    mine = sim_provider(None, workspace)
    sim_model(mine, alias="fast")
    theirs = sim_provider(None, other_workspace)
    body = problem(
        admin.post(
            "/api/v1/models/",
            {"provider": str(theirs.pk), "name": "m", "alias": "x"},
            format="json",
        ),
        400,
        "validation_error",
    )
    assert [e["field"] for e in body["errors"]] == ["provider"]
    body = problem(
        admin.post(
            "/api/v1/models/",
            {"provider": str(mine.pk), "name": "m", "alias": "fast", "input_price_per_million": "-1"},
            format="json",
        ),
        400,
        "validation_error",
    )
    assert [e["field"] for e in body["errors"]] == ["input_price_per_million"]
    body = problem(
        admin.post("/api/v1/models/", {"provider": str(mine.pk), "name": "m", "alias": "fast"}, format="json"),
        400,
        "validation_error",
    )
    assert [e["field"] for e in body["errors"]] == ["alias"]
    body = problem(
        admin.post(
            "/api/v1/models/",
            {"provider": str(mine.pk), "name": "m", "alias": "big", "context_window": 100, "max_output_tokens": 200},
            format="json",
        ),
        400,
        "validation_error",
    )
    assert [e["field"] for e in body["errors"]] == ["max_output_tokens"]
    body = problem(
        admin.post(
            "/api/v1/models/",
            {
                "provider": str(mine.pk),
                "name": "m",
                "alias": "huge",
                "context_window": 10**12,
                "output_price_per_million": "1e9",
            },
            format="json",
        ),
        400,
        "validation_error",
    )
    assert {e["field"] for e in body["errors"]} == {"context_window", "output_price_per_million"}
    assert Model.objects.for_workspace(workspace).count() == 1


def test_editing_a_price_applies_to_later_calls_only(workspace):
    model = sim_model(sim_provider(None, workspace), alias="fast")
    admin = key_client(workspace)
    changed = admin.patch(f"/api/v1/models/{model.pk}/", {"output_price_per_million": "1.25"}, format="json")
    assert changed.status_code == 200 and changed.json()["output_price_per_million"] == "1.2500000000"
    assert changed.json()["input_price_per_million"] == "0.1500000000"


def test_providers_and_models_of_another_workspace_answer_404(workspace, other_workspace):
    provider = sim_provider(None, other_workspace)
    model = sim_model(provider, alias="fast")
    assert_other_workspace_gets_404(
        clients_of(workspace),
        [
            ("get", f"/api/v1/providers/{provider.pk}/"),
            ("patch", f"/api/v1/providers/{provider.pk}/", {"timeout_s": 1}),
            ("get", f"/api/v1/models/{model.pk}/"),
            ("patch", f"/api/v1/models/{model.pk}/", {"alias": "stolen"}),
        ],
    )
    model.refresh_from_db()
    assert model.alias == "fast"
    assert key_client(workspace).get("/api/v1/models/").json()["results"] == []


def test_the_openapi_schema_describes_the_write_only_key_and_the_simulator_label(workspace):
    schema = key_client(workspace).get("/api/schema/?format=json").json()
    request_fields = schema["components"]["schemas"]["ProviderWriteRequest"]["properties"]
    response_fields = schema["components"]["schemas"]["Provider"]["properties"]
    assert "api_key" in request_fields and "api_key" not in response_fields
    assert {"has_api_key", "is_simulator", "kind_label"} <= set(response_fields)
