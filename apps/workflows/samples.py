"""Sample workflows the demo workspace starts with (seeded by `make run` via workflow_demo_seed).

They use the model aliases the demo's simulator provider defines: `fast`, `smart` and `backup`.
"""

from __future__ import annotations

from typing import Any

SUMMARISER: dict[str, Any] = {
    "slug": "summarise",
    "name": "Summariser",
    "description": "Summarises a text in two or three sentences.",
    "input_schema": {
        "type": "object",
        "required": ["text"],
        "properties": {"text": {"type": "string", "minLength": 1, "maxLength": 50000}},
        "additionalProperties": False,
    },
    "steps": [
        {
            "id": "summary",
            "type": "llm",
            "model": "fast",
            "fallbacks": ["backup"],
            "system": "You write short, faithful summaries.",
            "prompt": "Summarise this text in two or three sentences:\n\n{{ input.text }}",
            "temperature": 0,
            "max_tokens": 200,
        }
    ],
    "output": {"summary": "{{ steps.summary.output }}"},
    "limits": {"max_cost_usd": "0.05", "timeout_s": 60},
    "default_mode": "sync",
}

SUPPORT_TRIAGE: dict[str, Any] = {
    "slug": "support-triage",
    "name": "Support ticket triage",
    "description": "Classifies a support ticket and says whether it is urgent.",
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
            "prompt": "Ticket:\n{{ input.ticket }}\n\nAnswer with the category and whether it is urgent.",
            "temperature": 0,
            "max_tokens": 200,
            "response_schema": {
                "type": "object",
                "required": ["category", "urgent"],
                "properties": {
                    "category": {"enum": ["billing", "bug", "other"]},
                    "urgent": {"type": "boolean"},
                },
            },
            "retries": 2,
            "timeout_s": 30,
        }
    ],
    "output": {"category": "{{ steps.classify.output.category }}", "urgent": "{{ steps.classify.output.urgent }}"},
    "limits": {"max_cost_usd": "0.05", "timeout_s": 120},
    "default_mode": "sync",
}

DRAFT_CRITIQUE: dict[str, Any] = {
    "slug": "draft-critique",
    "name": "Draft, then critique",
    "description": "Drafts a short answer, has a second model critique it, returns both.",
    "input_schema": {
        "type": "object",
        "required": ["question"],
        "properties": {"question": {"type": "string", "minLength": 1, "maxLength": 5000}},
    },
    "steps": [
        {
            "id": "draft",
            "type": "llm",
            "model": "fast",
            "prompt": "Answer briefly:\n{{ input.question }}",
            "temperature": 0,
            "max_tokens": 300,
        },
        {
            "id": "critique",
            "type": "llm",
            "model": "smart",
            "fallbacks": ["backup"],
            "system": "You are a careful reviewer.",
            "prompt": "Question: {{ input.question }}\n\nDraft answer:\n{{ steps.draft.output }}\n\n"
            "List the draft's mistakes or omissions, briefly.",
            "temperature": 0,
            "max_tokens": 300,
        },
        {
            "id": "result",
            "type": "transform",
            "value": {"draft": "{{ steps.draft.output }}", "critique": "{{ steps.critique.output }}"},
        },
    ],
    "limits": {"max_cost_usd": "0.10", "timeout_s": 180},
    "default_mode": "async",
}

SAMPLE_WORKFLOWS = [SUMMARISER, SUPPORT_TRIAGE, DRAFT_CRITIQUE]
