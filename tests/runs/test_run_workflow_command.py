"""`manage.py run_workflow`: the operators' and scripts' way to start a run."""

from __future__ import annotations

import json

import pytest

from apps.runs.models import Run
from tests.support.processes import manage
from tests.support.workers import worker_database_url

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_run_workflow_prints_the_finished_run_body_as_json(workspace, shout):
    result = manage(
        "run_workflow", "shout", "--workspace", "acme", "--input", '{"text": "cli"}',
        env={"DATABASE_URL": worker_database_url(), "LOG_LEVEL": "WARNING"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["status"] == "succeeded" and body["output"] == {"text": "CLI", "length": 3}
    assert Run.objects.get(pk=body["id"]).mode == "sync"


def test_run_workflow_async_prints_the_queued_run(workspace, shout):
    result = manage(
        "run_workflow", "shout", "--workspace", "acme", "--input", '{"text": "later"}', "--mode", "async",
        env={"DATABASE_URL": worker_database_url(), "LOG_LEVEL": "WARNING"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "queued"


def test_run_workflow_refuses_invalid_input_listing_the_errors(workspace, shout):
    result = manage(
        "run_workflow", "shout", "--workspace", "acme", "--input", '{"times": 0}',
        env={"DATABASE_URL": worker_database_url(), "LOG_LEVEL": "WARNING"},
    )  # fmt: skip
    assert result.returncode == 1
    assert "input.text: This field is required." in result.stderr
    assert "input.times" in result.stderr
    assert not Run.objects.exists()
