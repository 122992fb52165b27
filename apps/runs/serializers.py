"""The run body of DESIGN.md §6, shared by the API, the SSE events and the CLI."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.utils.encoders import JSONEncoder

from apps.core.models import MONEY
from apps.runs.models import Run, StepRun


class StepRunSerializer(serializers.ModelSerializer[StepRun]):
    id = serializers.CharField(source="step_id")
    attempts = serializers.IntegerField()
    cost_usd = serializers.DecimalField(**MONEY, coerce_to_string=True)

    class Meta:
        model = StepRun
        fields = [
            "id",
            "type",
            "status",
            "attempts",
            "model",
            "provider",
            "fallback_used",
            "cache_hit",
            "input_tokens",
            "output_tokens",
            "cost_usd",
            "latency_ms",
            "output",
            "error",
        ]
        read_only_fields = fields


class UsageSerializer(serializers.Serializer[Run]):
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cost_usd = serializers.DecimalField(**MONEY, coerce_to_string=True)
    cache_hits = serializers.IntegerField()
    saved_usd = serializers.DecimalField(**MONEY, coerce_to_string=True)


class RunSummarySerializer(serializers.ModelSerializer[Run]):
    """A run without its steps (lists)."""

    workflow: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    workflow_version: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="number", read_only=True
    )
    usage = serializers.SerializerMethodField()
    duration_ms = serializers.IntegerField(allow_null=True)
    retry_of: serializers.PrimaryKeyRelatedField[Any] = serializers.PrimaryKeyRelatedField(
        read_only=True, pk_field=serializers.UUIDField()
    )

    class Meta:
        model = Run
        fields = [
            "id",
            "workflow",
            "workflow_version",
            "status",
            "mode",
            "input",
            "output",
            "error",
            "usage",
            "created_at",
            "started_at",
            "finished_at",
            "duration_ms",
            "trace_id",
            "metadata",
            "retry_of",
        ]
        read_only_fields = fields

    @extend_schema_field(UsageSerializer)
    def get_usage(self, run: Run) -> dict[str, Any]:
        return dict(UsageSerializer(run).data)


class RunSerializer(RunSummarySerializer):
    """The full run body: the summary plus its steps in order."""

    steps = StepRunSerializer(many=True, read_only=True)

    class Meta(RunSummarySerializer.Meta):
        fields = [*RunSummarySerializer.Meta.fields[:8], "steps", *RunSummarySerializer.Meta.fields[8:]]
        read_only_fields = fields


# The run body is built on every run's end (its run.finished event and the sync answer) and on
# every GET of a run: by hand, with DRF's own field formatting, instead of through the serializers
# above (which stay the API's declared schema). tests/runs/test_run_body.py keeps the two equal.
_DATETIME = serializers.DateTimeField()
_MONEY = serializers.DecimalField(**MONEY, coerce_to_string=True)


def _datetime(value: Any) -> str | None:
    return None if value is None else _DATETIME.to_representation(value)


def step_body(step: StepRun) -> dict[str, Any]:
    """A step of the run body (StepRunSerializer's fields), as plain JSON types."""
    return {
        "id": step.step_id,
        "type": step.type,
        "status": str(step.status),
        "attempts": step.attempts,
        "model": step.model,
        "provider": step.provider,
        "fallback_used": bool(step.fallback_used),
        "cache_hit": bool(step.cache_hit),
        "input_tokens": int(step.input_tokens),
        "output_tokens": int(step.output_tokens),
        "cost_usd": _MONEY.to_representation(step.cost_usd),
        "latency_ms": int(step.latency_ms),
        "output": _json(step.output),
        "error": _json(step.error),
    }


def run_body(run: Run, *, steps: Sequence[StepRun] | None = None) -> dict[str, Any]:
    """The run body (RunSerializer's fields) as plain JSON types: it is stored in RunEvent.data and
    in idempotency replays. Needs `run.workflow` and `run.workflow_version` (select_related).

    `steps`: the run's steps in order, when the caller holds them (saves reading them again).
    """
    if steps is None:
        steps = list(run.steps.all())
    return {
        "id": str(run.pk),
        "workflow": run.workflow.slug,
        "workflow_version": run.workflow_version.number,
        "status": str(run.status),
        "mode": str(run.mode),
        "input": _json(run.input),
        "output": _json(run.output),
        "error": _json(run.error),
        "steps": [step_body(step) for step in steps],
        "usage": {
            "input_tokens": int(run.input_tokens),
            "output_tokens": int(run.output_tokens),
            "cost_usd": _MONEY.to_representation(run.cost_usd),
            "cache_hits": int(run.cache_hits),
            "saved_usd": _MONEY.to_representation(run.saved_usd),
        },
        "created_at": _datetime(run.created_at),
        "started_at": _datetime(run.started_at),
        "finished_at": _datetime(run.finished_at),
        "duration_ms": run.duration_ms,
        "trace_id": run.trace_id,
        "metadata": _json(run.metadata),
        "retry_of": None if run.retry_of_id is None else str(run.retry_of_id),
    }


def _json(value: Any) -> Any:
    """A JSON column's value as a copy of plain JSON types: the body must not share the run's objects."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return json.loads(json.dumps(value, cls=JSONEncoder))
