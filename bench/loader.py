"""Bulk loader for the scale measurements: 1,000,000 runs and 3,000,000 usage records via COPY.

Columns are taken from the Django models, so the loader follows schema changes: a field not given
by the row generator gets its model default (or NULL). Rows are spread over 30 days, several
workflows, models and statuses, like a busy workspace's history.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from django.db import connection, models
from django.utils import timezone

STATUSES = ["succeeded"] * 90 + ["failed"] * 7 + ["cancelled"] * 3


def _column_values(model: type[models.Model], row: dict[str, Any]) -> tuple[list[str], list[Any]]:
    columns, values = [], []
    for f in model._meta.concrete_fields:
        columns.append(f.column)
        if f.attname in row:
            value = row[f.attname]
        elif f.name in row:
            value = row[f.name]
        elif f.has_default():
            value = f.get_default()
        else:
            value = None
        if isinstance(f, models.JSONField) and value is not None:
            value = json.dumps(value)
        values.append(value)
    return columns, values


def copy_rows(model: type[models.Model], rows: Iterator[dict[str, Any]]) -> int:
    count = 0
    first = next(rows, None)
    if first is None:
        return 0
    columns, values = _column_values(model, first)
    table = model._meta.db_table
    sql = f'COPY "{table}" ({", ".join(chr(34) + c + chr(34) for c in columns)}) FROM STDIN'
    with connection.cursor() as cursor, cursor.connection.cursor().copy(sql) as copy:
        copy.write_row(values)
        count = 1
        for row in rows:
            copy.write_row(_column_values(model, row)[1])
            count += 1
    return count


def load_history(*, workspace_id: str, runs: int, usage_per_run: int, days: int = 30, seed: int = 7) -> dict[str, int]:
    from apps.providers.models import Model
    from apps.runs.models import Run
    from apps.usage.models import UsageRecord
    from apps.workflows.models import Workflow, WorkflowVersion

    rng = random.Random(seed)
    versions = list(WorkflowVersion.objects.filter(workflow__workspace_id=workspace_id).select_related("workflow"))
    llm_models = list(Model.objects.filter(workspace_id=workspace_id))
    assert versions and llm_models and Workflow.objects.exists()
    now = timezone.now()
    span = dt.timedelta(days=days).total_seconds()
    run_ids: list[tuple[uuid.UUID, Any, dt.datetime]] = []

    def run_rows() -> Iterator[dict[str, Any]]:
        for _ in range(runs):
            created = now - dt.timedelta(seconds=rng.random() * span)
            version = rng.choice(versions)
            run_id = uuid.uuid4()
            run_ids.append((run_id, version, created))
            status = rng.choice(STATUSES)
            yield {
                "id": run_id,
                "workspace_id": workspace_id,
                "workflow_id": version.workflow_id,
                "workflow_version_id": version.pk,
                "status": status,
                "mode": rng.choice(["sync", "async"]),
                "input": {"text": "loaded"},
                "output": {"answer": "ok"} if status == "succeeded" else None,
                "error": {"code": "provider_error", "message": "loaded", "step": "answer"}
                if status == "failed"
                else None,
                "trace_id": uuid.uuid4().hex,
                "created_at": created,
                "updated_at": created,
                "started_at": created,
                "finished_at": created + dt.timedelta(milliseconds=rng.randint(50, 5000)),
                "input_tokens": 120,
                "output_tokens": 30,
                "cost_usd": Decimal("0.0000360000"),
            }

    loaded_runs = copy_rows(Run, run_rows())

    def usage_rows() -> Iterator[dict[str, Any]]:
        for run_id, version, created in run_ids:
            for attempt in range(1, usage_per_run + 1):
                model = rng.choice(llm_models)
                cache_hit = rng.random() < 0.1
                yield {
                    "id": uuid.uuid4(),
                    "workspace_id": workspace_id,
                    "call_id": f"{run_id}-answer-1-{attempt}",
                    "model_id": model.pk,
                    "model_alias": model.alias,
                    "provider_name": "bench",
                    "status": "succeeded",
                    "attempt": attempt,
                    "cache_hit": cache_hit,
                    "input_tokens": 120,
                    "cached_input_tokens": 0,
                    "output_tokens": 30,
                    "input_price_per_million": model.input_price_per_million,
                    "cached_input_price_per_million": model.cached_input_price_per_million,
                    "output_price_per_million": model.output_price_per_million,
                    "cost_usd": Decimal("0") if cache_hit else Decimal("0.0000360000"),
                    "saved_usd": Decimal("0.0000360000") if cache_hit else Decimal("0"),
                    "latency_ms": 40,
                    "run_id": run_id,
                    "step_id": "answer",
                    "workflow_id": version.workflow_id,
                    "created_at": created,
                    "updated_at": created,
                }

    loaded_usage = copy_rows(UsageRecord, usage_rows())
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return {"runs": loaded_runs, "usage_records": loaded_usage}
