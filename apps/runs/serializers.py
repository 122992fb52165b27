"""The run body of DESIGN.md §6, shared by the API, the SSE events and the CLI."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.utils.encoders import JSONEncoder

from apps.runs.models import Run, StepRun

MONEY = {"max_digits": 18, "decimal_places": 10, "coerce_to_string": True}


class StepRunSerializer(serializers.ModelSerializer[StepRun]):
    id = serializers.CharField(source="step_id")
    attempts = serializers.IntegerField()
    cost_usd = serializers.DecimalField(**MONEY)

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
    cost_usd = serializers.DecimalField(**MONEY)
    cache_hits = serializers.IntegerField()
    saved_usd = serializers.DecimalField(**MONEY)


class RunSummarySerializer(serializers.ModelSerializer[Run]):
    """A run without its steps (lists)."""

    workflow = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    workflow_version = serializers.SlugRelatedField(slug_field="number", read_only=True)
    usage = serializers.SerializerMethodField()
    duration_ms = serializers.IntegerField(allow_null=True)
    retry_of = serializers.PrimaryKeyRelatedField(read_only=True, pk_field=serializers.UUIDField())

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


def run_body(run: Run, *, steps: Sequence[StepRun] | None = None) -> dict[str, Any]:
    """The run body as plain JSON types (it is stored in RunEvent.data and in idempotency replays).

    `steps`: the run's steps in order, when the caller holds them (saves reading them again).
    """
    if steps is None:
        data = dict(RunSerializer(run).data)
    else:
        summary = dict(RunSummarySerializer(run).data)
        data = {name: summary[name] for name in RunSummarySerializer.Meta.fields[:8]}
        data["steps"] = StepRunSerializer(steps, many=True).data
        data.update((name, summary[name]) for name in RunSummarySerializer.Meta.fields[8:])
    return json.loads(json.dumps(data, cls=JSONEncoder))
