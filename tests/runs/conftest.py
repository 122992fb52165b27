from __future__ import annotations

from typing import Any

import pytest

from apps.accounts.models import Workspace
from apps.workflows.models import Workflow
from apps.workflows.services import workflow_create
from tests.support.simulator import simulator, simulator_server  # noqa: F401 - fixtures for this package
from tests.support.workers import rq_workers  # noqa: F401 - fixture for this package


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
