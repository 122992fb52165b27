from __future__ import annotations

import pytest
from django.test import Client

from apps.accounts.services import api_key_issue
from tests.support.tenancy import problem

pytestmark = pytest.mark.django_db


@pytest.fixture
def token(workspace):
    return api_key_issue(workspace=workspace, name="k", role="admin").token


def test_malformed_json_gets_400_problem(client, token):
    response = client.post(
        "/api/v1/api-keys/", data='{"name": ', content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
    )
    body = problem(response, 400, "validation_error")
    assert "JSON" in body["detail"]


def test_wrong_content_type_gets_415_problem(client, token):
    response = client.post(
        "/api/v1/api-keys/", data="name=x", content_type="text/plain", HTTP_AUTHORIZATION=f"Bearer {token}"
    )
    body = problem(response, 415, "unsupported_media_type")
    assert "text/plain" in body["detail"]


def test_oversized_body_gets_413_problem(client, token, settings):
    settings.KEEL_MAX_REQUEST_BYTES = 2048
    response = client.post(
        "/api/v1/api-keys/",
        data='{"name": "' + "x" * 5000 + '"}',
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    problem(response, 413, "payload_too_large")


def test_validation_errors_are_listed_by_field(client, token):
    response = client.post(
        "/api/v1/api-keys/",
        data={"name": "", "role": "emperor"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    body = problem(response, 400, "validation_error")
    assert {e["field"] for e in body["errors"]} == {"name", "role"}


@pytest.mark.parametrize("path", ["/api/v1/nothing-here/", "/no-such-page"])
def test_unknown_path_gets_404_problem(client, path):
    problem(client.get(path), 404, "not_found")


def test_wrong_method_gets_405_problem(client, token):
    response = client.put("/api/v1/me/", data={}, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}")
    problem(response, 405, "method_not_allowed")


@pytest.mark.urls("tests.core.urls_boom")
def test_exception_in_api_view_gets_500_problem_with_request_id_and_no_internals(client, caplog):
    response = client.get("/api/v1/boom/", HTTP_X_REQUEST_ID="req-boom-1")
    body = problem(response, 500, "internal_error")
    assert body["request_id"] == "req-boom-1"
    assert response["X-Request-ID"] == "req-boom-1"
    assert b"hunter2" not in response.content and b"Traceback" not in response.content
    assert any("hunter2" in r.getMessage() or r.exc_info for r in caplog.records), "the error is logged for staff"


@pytest.mark.urls("tests.core.urls_boom")
def test_exception_in_plain_view_gets_500_problem():
    client = Client(raise_request_exception=False)
    response = client.get("/plain-boom/")
    body = problem(response, 500, "internal_error")
    assert body["request_id"] == response["X-Request-ID"]
    assert b"secret internals" not in response.content


@pytest.mark.urls("tests.core.urls_boom")
@pytest.mark.parametrize("path", ["/api/v1/database-down/", "/plain-database-down/"])
def test_a_database_that_cannot_be_reached_gets_503_problem_with_retry_after(path):
    # Load (no pooled connection free in time, PostgreSQL's max_connections) or an outage: not a 500.
    response = Client(raise_request_exception=False).get(path)
    body = problem(response, 503, "service_unavailable")
    assert int(response["Retry-After"]) > 0
    assert body["request_id"] == response["X-Request-ID"]
