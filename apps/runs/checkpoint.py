"""An executor's write as one PostgreSQL statement: the run row under the lease, a step, events.

The engine's writes (apps/runs/engine.py) each change the run row (conditional on the executor's
lease), usually one StepRun and a few RunEvents. Through the ORM that is BEGIN, three or four
statements and COMMIT: five or six round trips to the database, each costing the web or worker
process CPU (query compilation, the driver, the loopback socket), plus the wait. Here it is one
statement with data-modifying CTEs, committed on its own (autocommit): the step and the events
are written only if the run row was, so the write is all or nothing exactly as the transaction
was. The run row is updated first (the other parts read its result), so locks are taken in the
order the reaper takes them.

Values are adapted by the model fields themselves (`get_db_prep_save`), so the columns get what
`save()` would have written. Other databases (SQLite for the embedded demo) use the ORM path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from django.db import connection
from django.db.models import Model

from apps.runs.models import Run, RunEvent, StepRun


def checkpoint_supported() -> bool:
    return connection.vendor == "postgresql"


def _assignments(model: type[Model], values: dict[str, Any], params: list[Any]) -> str:
    quote = connection.ops.quote_name
    parts = []
    for name, value in values.items():
        field = model._meta.get_field(name)
        parts.append(f"{quote(field.column)} = %s")  # type: ignore[union-attr]
        params.append(field.get_db_prep_save(value, connection))  # type: ignore[union-attr]
    return ", ".join(parts)


def checkpoint_write(
    *,
    run_id: UUID,
    token: UUID,
    run_fields: dict[str, Any],
    step: StepRun | None = None,
    step_fields: Sequence[str] = (),
    events: Sequence[RunEvent] = (),
) -> bool | None:
    """Write it all if the run is still this lease's: True when a cancel request is pending, False
    when not; None (nothing written) when the lease is lost."""
    quote = connection.ops.quote_name
    params: list[Any] = []
    # With nothing to change the row is still updated: that is what checks (and locks) the lease.
    run_set = _assignments(Run, run_fields, params) if run_fields else f"{quote('id')} = {quote('id')}"
    pk, lease = Run._meta.pk, Run._meta.get_field("lease_token")
    assert pk is not None
    params += [
        pk.get_db_prep_value(run_id, connection),
        lease.get_db_prep_value(token, connection),  # type: ignore[union-attr]
        Run.Status.RUNNING,
    ]
    sql = [
        f"WITH r AS (UPDATE {quote(Run._meta.db_table)} SET {run_set} "
        f"WHERE {quote(pk.column)} = %s AND {quote('lease_token')} = %s AND {quote('status')} = %s "
        f"RETURNING {quote('cancel_requested_at')} IS NOT NULL AS cancel)"
    ]
    if step is not None:
        step_set = _assignments(StepRun, {name: getattr(step, name) for name in step_fields}, params)
        params.append(StepRun._meta.pk.get_db_prep_value(step.pk, connection))  # type: ignore[union-attr]
        sql.append(
            f", s AS (UPDATE {quote(StepRun._meta.db_table)} SET {step_set} "
            f"WHERE {quote('id')} = %s AND EXISTS (SELECT 1 FROM r) RETURNING 1)"
        )
    if events:
        names = ["workspace", "run", "seq", "type", "data", "created_at"]
        columns = [RunEvent._meta.get_field(name) for name in names]
        casts = ", ".join(f"%s::{column.cast_db_type(connection)}" for column in columns)  # type: ignore[union-attr]
        values = []
        for event in events:
            values.append(f"({casts})")
            for column in columns:
                params.append(column.get_db_prep_save(getattr(event, column.attname), connection))  # type: ignore[union-attr]
        sql.append(
            f", e AS (INSERT INTO {quote(RunEvent._meta.db_table)} "
            f"({', '.join(quote(column.column) for column in columns)}) "  # type: ignore[union-attr]
            f"SELECT * FROM (VALUES {', '.join(values)}) AS v WHERE EXISTS (SELECT 1 FROM r) RETURNING 1)"
        )
    sql.append(" SELECT cancel FROM r")
    with connection.cursor() as cursor:
        cursor.execute("".join(sql), params)
        row = cursor.fetchone()
    return None if row is None else bool(row[0])
