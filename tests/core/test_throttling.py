from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from apps.accounts.services import api_key_issue
from tests.support.tenancy import problem

pytestmark = pytest.mark.django_db


def test_key_past_its_rate_gets_429_with_retry_after(workspace, settings):
    settings.KEEL_API_THROTTLE_RATE = "3/min"
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_issue(workspace=workspace, name='k').token}")
    statuses = [client.get("/api/v1/me/").status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    response = client.get("/api/v1/me/")
    problem(response, 429, "rate_limited")
    assert 1 <= int(response["Retry-After"]) <= 61


def test_rate_is_per_key(workspace, settings):
    settings.KEEL_API_THROTTLE_RATE = "2/min"
    first, second = APIClient(), APIClient()
    first.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_issue(workspace=workspace, name='a').token}")
    second.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_issue(workspace=workspace, name='b').token}")
    for _ in range(2):
        assert first.get("/api/v1/me/").status_code == 200
    assert first.get("/api/v1/me/").status_code == 429
    assert second.get("/api/v1/me/").status_code == 200
