"""Acceptance 9: the demo seeded by `make run` uses an in-process simulator provider, labelled as a
simulator in the admin and the API."""

from __future__ import annotations

import io
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.test import Client
from rest_framework.test import APIClient

from apps.core.demo import demo_seed
from apps.providers.gateway import CallContext, gateway_complete
from apps.providers.models import Model, Provider
from apps.usage.models import UsageRecord
from tests.support.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_the_demo_workspace_gets_an_in_process_simulator_with_fast_smart_and_backup():
    result = demo_seed()
    provider = Provider.objects.get(name="Keel simulator")
    assert provider.workspace.slug == result.workspace_slug == "demo"
    assert provider.kind == Provider.Kind.SIMULATOR and provider.base_url == ""
    models = {m.alias: m for m in Model.objects.filter(provider=provider)}
    assert set(models) == {"fast", "smart", "backup"}
    assert models["fast"].input_price_per_million < models["smart"].input_price_per_million
    assert all(m.output_price_per_million > m.input_price_per_million > 0 for m in models.values())
    assert any("simulator" in note and "not a real model" in note for note in result.notes)


def test_seeding_again_adds_nothing_and_keeps_staff_edits():
    demo_seed()
    Model.objects.filter(alias="fast").update(output_price_per_million=Decimal("9.99"))
    demo_seed()
    assert Provider.objects.filter(name="Keel simulator").count() == 1
    assert Model.objects.count() == 3
    assert Model.objects.get(alias="fast").output_price_per_million == Decimal("9.99")


def test_the_api_and_the_admin_label_the_demo_provider_as_a_simulator():
    result = demo_seed()
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {result.api_key}")
    [provider] = api.get("/api/v1/providers/").json()["results"]
    assert provider["is_simulator"] is True and provider["kind_label"] == "Simulator (not a real model)"
    assert provider["base_url"] == ""
    assert all(m["is_simulator"] for m in api.get("/api/v1/models/").json()["results"])

    staff = Client()
    staff.force_login(UserFactory(is_staff=True, is_superuser=True))
    page = staff.get("/admin/providers/provider/").content.decode()
    assert "Simulator (not a real model)" in page and "in-process simulator" in page
    assert (
        "Simulator (not a real model)" in staff.get("/admin/providers/model/?provider__kind=simulator").content.decode()
    )


def test_the_demo_models_answer_in_process_through_the_openai_sdk_and_are_booked():
    result = demo_seed()
    provider = Provider.objects.get(name="Keel simulator")
    deltas: list[str] = []
    answer = gateway_complete(
        ctx=CallContext(workspace_id=provider.workspace_id),
        model="fast",
        messages=[{"role": "user", "content": "Hello demo"}],
        on_delta=deltas.append,
    )
    assert answer.provider_kind == "simulator" and answer.provider_name == "Keel simulator"
    assert "".join(deltas) == answer.content and answer.cost_usd > 0
    assert answer.latency_ms >= 250  # the demo's simulated time to first token
    row = UsageRecord.objects.get(call_id=answer.call_ids[0])
    assert row.workspace.slug == result.workspace_slug and row.output_tokens == answer.output_tokens


def test_the_seed_command_says_the_demo_provider_is_a_simulator():
    out = io.StringIO()
    call_command("seed_demo", stdout=out)
    assert "Keel simulator" in out.getvalue() and "not a real model" in out.getvalue()
