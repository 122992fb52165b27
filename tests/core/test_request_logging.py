from __future__ import annotations

import logging

import pytest

from apps.accounts.services import api_key_issue

pytestmark = pytest.mark.django_db


def _request_ids(caplog: pytest.LogCaptureFixture) -> list[str | None]:
    events = [r.msg for r in caplog.records if isinstance(r.msg, dict)]
    assert events, "structlog events were logged"
    return [event.get("request_id") for event in events]


def test_every_log_line_of_a_request_carries_its_request_id(client, workspace, caplog):
    token = api_key_issue(workspace=workspace, name="k").token
    with caplog.at_level(logging.DEBUG):
        response = client.get("/api/v1/me/", HTTP_AUTHORIZATION=f"Bearer {token}")
    request_id = response["X-Request-ID"]
    assert len(request_id) == 32
    ids = _request_ids(caplog)
    assert len(ids) >= 2  # request_started (DEBUG) and request_finished at least
    assert set(ids) == {request_id}


def test_well_formed_incoming_request_id_is_kept(client, caplog):
    with caplog.at_level(logging.INFO):
        response = client.get("/healthz", HTTP_X_REQUEST_ID="lb-7f3a.b_c-1")
    assert response["X-Request-ID"] == "lb-7f3a.b_c-1"
    assert set(_request_ids(caplog)) == {"lb-7f3a.b_c-1"}


@pytest.mark.parametrize("incoming", ["has space", "x" * 129, "semi;colon", ""])
def test_malformed_incoming_request_id_is_replaced(client, incoming):
    response = client.get("/healthz", HTTP_X_REQUEST_ID=incoming)
    assert response["X-Request-ID"] != incoming
    assert len(response["X-Request-ID"]) == 32


def test_response_reports_server_time(client):
    response = client.get("/healthz")
    name, _, duration = response["Server-Timing"].partition(";dur=")
    assert name == "app" and float(duration) >= 0
