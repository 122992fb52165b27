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


def llm_chain_definition(slug: str, steps: list[tuple[str, str, str]], **overrides: Any) -> dict[str, Any]:
    """A workflow of `llm` steps in a row, each `(id, model alias, prompt)`, on input `{"topic"}`; its
    output is the last step's."""
    definition: dict[str, Any] = {
        "slug": slug,
        "name": f"{len(steps)} model calls",
        "input_schema": {"type": "object", "required": ["topic"], "properties": {"topic": {"type": "string"}}},
        "steps": [
            {"id": step_id, "type": "llm", "model": model, "prompt": prompt, "max_tokens": 30}
            for step_id, model, prompt in steps
        ],
        "output": f"{{{{ steps.{steps[-1][0]}.output }}}}",
    }
    definition.update(overrides)
    return definition
