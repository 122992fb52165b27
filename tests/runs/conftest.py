from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from apps.accounts.models import Workspace
from apps.workflows.models import Workflow
from apps.workflows.services import workflow_create
from tests.support.processes import PYTHON, free_port, running, wait_http
from tests.support.simulator import simulator, simulator_server  # noqa: F401 - fixtures for this package
from tests.support.workers import rq_workers, worker_database_url  # noqa: F401 - fixtures for this package


def transform_definition(slug: str = "shout", **overrides: Any) -> dict[str, Any]:
    """Three local steps (no provider): upper-case, count, and a JSON-path pick."""
    definition: dict[str, Any] = {
        "slug": slug,
        "name": "Shout",
        "input_schema": {
            "type": "object",
            "required": ["text"],
            "properties": {"text": {"type": "string", "minLength": 1}, "times": {"type": "integer", "minimum": 1}},
            "additionalProperties": False,
        },
        "steps": [
            {"id": "upper", "type": "transform", "template": "{{ input.text | upper }}"},
            {"id": "stats", "type": "transform", "value": {"length": "{{ steps.upper.output | length }}"}},
            {"id": "pick", "type": "transform", "path": "$.steps.stats.output.length"},
        ],
        "output": {"text": "{{ steps.upper.output }}", "length": "{{ steps.pick.output }}"},
    }
    definition.update(overrides)
    return definition


@pytest.fixture
def shout(workspace: Workspace) -> Workflow:
    return workflow_create(workspace=workspace, definition=transform_definition())


@pytest.fixture
def web_server(transactional_db: None, tmp_path: Path) -> Iterator[str]:
    """gunicorn (gthread, two processes) serving the test database, as in production; yields its base URL."""
    port = free_port()
    argv = [
        PYTHON, "-m", "gunicorn", "config.wsgi:application", "--bind", f"127.0.0.1:{port}",
        "--workers", "2", "--worker-class", "gthread", "--threads", "16", "--timeout", "60",
    ]  # fmt: skip
    env = {"DEBUG": "1", "DATABASE_URL": worker_database_url(), "REDIS_URL": settings.REDIS_URL, "LOG_LEVEL": "WARNING"}
    with running(argv, env=env, log=tmp_path / "gunicorn.log") as proc:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60, proc=proc)
        yield f"http://127.0.0.1:{port}"
