"""Definition builders shared by the workflows and runs tests."""

from __future__ import annotations

from typing import Any


def triage_definition(**overrides: Any) -> dict[str, Any]:
    definition: dict[str, Any] = {
        "slug": "support-triage",
        "name": "Support ticket triage",
        "input_schema": {
            "type": "object",
            "required": ["ticket"],
            "properties": {"ticket": {"type": "string", "minLength": 1, "maxLength": 20000}},
        },
        "steps": [
            {
                "id": "classify",
                "type": "llm",
                "model": "fast",
                "fallbacks": ["backup"],
                "system": "You triage support tickets.",
                "prompt": "Ticket: {{ input.ticket }}",
                "temperature": 0,
                "max_tokens": 200,
                "response_schema": {
                    "type": "object",
                    "required": ["category", "urgent"],
                    "properties": {"category": {"enum": ["billing", "bug", "other"]}, "urgent": {"type": "boolean"}},
                },
                "cache": {"ttl_s": 3600},
                "retries": 2,
                "timeout_s": 30,
            }
        ],
        "output": {"category": "{{ steps.classify.output.category }}", "urgent": "{{ steps.classify.output.urgent }}"},
        "limits": {"max_cost_usd": "0.05", "timeout_s": 120},
        "default_mode": "async",
    }
    definition.update(overrides)
    return definition
