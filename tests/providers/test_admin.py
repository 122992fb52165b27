"""Staff manage providers and models in the admin: write-only keys, a simulator labelled as such,
editable prices, and a "test connection" action that makes a tiny real call."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.test import Client

from apps.providers.models import Model, Provider
from apps.providers.services import provider_create
from apps.usage.models import UsageRecord
from tests.support.factories import UserFactory
from tests.support.simulator import always, sim_model, sim_provider

pytestmark = pytest.mark.django_db

SECRET = "sk-admin-typed-secret-987"


@pytest.fixture
def staff() -> Client:
    client = Client()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def test_a_key_typed_in_the_admin_is_stored_encrypted_and_never_shown_again(staff, workspace):
    response = staff.post(
        "/admin/providers/provider/add/",
        {
            "workspace": workspace.pk,
            "name": "OpenAI",
            "kind": "openai",
            "base_url": "",
            "api_key": SECRET,
            "timeout_s": "30",
            "max_retries": "2",
            "config": "{}",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    provider = Provider.objects.get(name="OpenAI")
    assert provider.has_api_key and SECRET not in provider.api_key_encrypted

    page = staff.get(f"/admin/providers/provider/{provider.pk}/change/").content.decode()
    assert SECRET not in page and provider.api_key_encrypted not in page
    assert "set (encrypted at rest)" in page

    # Saving the form again with the key field empty keeps the key.
    kept = staff.post(
        f"/admin/providers/provider/{provider.pk}/change/",
        {
            "workspace": workspace.pk,
            "name": "OpenAI",
            "kind": "openai",
            "base_url": "",
            "api_key": "",
            "timeout_s": "45",
            "max_retries": "2",
            "config": "{}",
        },
    )
    assert kept.status_code == 302
    provider.refresh_from_db()
    assert provider.has_api_key and provider.timeout_s == 45


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"config": '{"failure_rate": 5}'}, "config.failure_rate: must be a number between 0 and 1"),
        # A longer attempt could outlive its budget hold (KEEL_BUDGET_RESERVATION_TTL_S); the API refuses it too.
        ({"timeout_s": "100000"}, "must be at most 3600 seconds"),
    ],
    ids=["simulator-config", "timeout-over-an-hour"],
)
def test_an_invalid_provider_shows_form_errors_instead_of_saving(staff, workspace, change, error):
    form = {
        "workspace": workspace.pk,
        "name": "Sim",
        "kind": "simulator",
        "base_url": "",
        "timeout_s": "30",
        "max_retries": "2",
        "config": "{}",
    }
    response = staff.post("/admin/providers/provider/add/", {**form, **change})
    assert response.status_code == 200
    assert error in response.content.decode()
    assert not Provider.objects.exists()


def test_the_changelist_labels_a_simulator_as_not_a_real_model(staff, workspace):
    sim_provider(None, workspace, name="Keel simulator")
    page = staff.get("/admin/providers/provider/").content.decode()
    assert "Simulator (not a real model)" in page and "in-process simulator" in page


def test_prices_are_editable_from_the_model_changelist(staff, workspace):
    model = sim_model(sim_provider(None, workspace), alias="fast")
    response = staff.post(
        "/admin/providers/model/",
        {
            "form-TOTAL_FORMS": "1",
            "form-INITIAL_FORMS": "1",
            "form-0-id": str(model.pk),
            "form-0-input_price_per_million": "0.2",
            "form-0-cached_input_price_per_million": "0.1",
            "form-0-output_price_per_million": "0.8",
            "_save": "Save",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    model.refresh_from_db()
    assert model.output_price_per_million == Decimal("0.8")


def test_a_model_whose_provider_is_in_another_workspace_is_refused(staff, workspace, other_workspace):
    theirs = sim_provider(None, other_workspace)
    response = staff.post(
        "/admin/providers/model/add/",
        {
            "workspace": workspace.pk,
            "provider": theirs.pk,
            "name": "m",
            "alias": "x",
            "input_price_per_million": "0",
            "cached_input_price_per_million": "0",
            "output_price_per_million": "0",
            "context_window": "1000",
            "max_output_tokens": "100",
        },
    )
    assert response.status_code == 200 and "no such provider in this workspace" in response.content.decode()
    assert not Model.objects.exists()


@pytest.mark.integration
def test_test_connection_makes_a_tiny_real_call_and_books_it(staff, workspace, simulator):
    good = sim_provider(simulator, workspace, name="Good")
    sim_model(good, alias="fast")
    bad = sim_provider(simulator, workspace, name="Bad", config=always(503))
    sim_model(bad, alias="broken")
    response = staff.post(
        "/admin/providers/provider/",
        {"action": "test_connection", "_selected_action": [str(good.pk), str(bad.pk)]},
        follow=True,
    )
    page = response.content.decode()
    assert "Good: works in" in page and "sim-fast answered" in page
    assert "Bad: failed in" in page and "503" in page
    assert simulator.calls("sim-fast") == 1 and simulator.calls("sim-broken") == 1
    assert UsageRecord.objects.filter(model_alias="fast", status="succeeded", step_id="test-connection").count() == 1


@pytest.mark.integration
def test_test_connection_without_models_lists_the_providers_models(staff, workspace, simulator):
    provider_create(workspace=workspace, name="Bare", kind="simulator", base_url=simulator.base_url)
    response = staff.post(
        "/admin/providers/provider/",
        {"action": "test_connection", "_selected_action": [str(Provider.objects.get().pk)]},
        follow=True,
    )
    assert "Bare: works in" in response.content.decode()
