"""The floor of the stack (bench/floor) is what docs/benchmarks.md says it is: Keel's API defaults in
front, one chat completion through the SDK where it says so, and nothing stored. The report compares
Keel with it, so a floor that skipped authentication or the call would flatter nothing but itself."""

from __future__ import annotations

import pytest
from django.test import Client

from apps.runs.models import Run
from apps.usage.models import UsageRecord
from bench.floor import urls as floor_urls
from tests.support.tenancy import key_client

pytestmark = pytest.mark.django_db


@pytest.fixture
def floor(settings, simulator, monkeypatch):
    settings.ROOT_URLCONF = "bench.floor.urls"
    monkeypatch.setenv(floor_urls.SIMULATOR_URL_ENV, simulator.url)
    monkeypatch.setattr(floor_urls, "_client", None)  # a client for this test's simulator
    return simulator


def test_the_floor_api_authenticates_like_keels_api(floor, workspace):
    anonymous = Client().post("/floor/api", {"text": "hi"}, content_type="application/json")
    assert anonymous.status_code == 401
    assert anonymous["Content-Type"] == "application/problem+json"
    bad_key = Client().post(
        "/floor/api", {"text": "hi"}, content_type="application/json", HTTP_AUTHORIZATION="Bearer keel_nope_x"
    )
    assert bad_key.status_code == 401

    answer = key_client(workspace).post("/floor/api", {"text": "hi"}, format="json")

    assert answer.status_code == 200 and answer.json() == {"status": "succeeded", "output": "hi"}
    assert "app;dur=" in answer["Server-Timing"]  # what the report reads, from Keel's own middleware
    assert floor.calls() == 0


def test_the_floor_completion_endpoints_each_make_one_call_and_store_nothing(floor, workspace):
    plain = Client().post("/floor/sdk", {"text": "tides", "latency_ms": 0}, content_type="application/json")
    assert plain.status_code == 200 and floor.calls() == 1
    authed = key_client(workspace).post("/floor/api-sdk", {"text": "tides"}, format="json")
    assert authed.status_code == 200 and floor.calls() == 2

    for body in (plain.json(), authed.json()):
        assert body["status"] == "succeeded" and body["output"]
        assert body["input_tokens"] > 0 and body["output_tokens"] > 0
    assert floor.stats()["completion_tokens"] == plain.json()["output_tokens"] + authed.json()["output_tokens"]
    assert Run.objects.count() == 0 and UsageRecord.objects.count() == 0


def test_the_floor_without_a_call_answers_without_one(floor):
    answer = Client().post("/floor/django", {"text": "hi"}, content_type="application/json")

    assert answer.status_code == 200 and answer.json() == {"status": "succeeded", "output": "hi"}
    assert floor.calls() == 0
