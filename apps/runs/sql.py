"""The run engine's hot writes as single PostgreSQL statements.

An executor's write (apps/runs/engine.py) changes the run row (conditional on the executor's
lease), usually one StepRun and a few RunEvents. Through the ORM that is BEGIN, three or four
statements and COMMIT: five or six round trips to the database, each costing the web or worker
process CPU (query compilation, the driver, the loopback socket), plus the wait. `checkpoint_write`
does it in one statement with data-modifying CTEs, committed on its own (autocommit): the step and
the events are written only if the run row was, so the write is all or nothing exactly as the
transaction was. The run row is updated first (the other parts read its result), so locks are
taken in the order the reaper takes them. `rows_insert` inserts a new run with its steps the same
way (foreign keys are checked at the end of the statement: Django makes them deferrable), and
`claim_update` claims a queued run with one conditional UPDATE that returns what executing it
needs, instead of a read and then the update.

Values are adapted by the model fields themselves (`pre_save`, `get_db_prep_save`), so the columns
get what the ORM would have written. Other databases (SQLite for the embedded demo) use the ORM.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar
from uuid import UUID

from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.models import Model
from psycopg.types.json import Jsonb

from apps.accounts.models import Workspace
from apps.core.rows import column_of
from apps.runs.models import Run, RunEvent, StepRun
from apps.workflows.models import Workflow, WorkflowVersion

M = TypeVar("M", bound=Model)


def supported() -> bool:
    return connection.vendor == "postgresql"


_INSERTS: dict[type[Model], tuple[list[Any], list[bool], str, str]] = {}


def _insert_of(model: type[Model]) -> tuple[list[Any], list[bool], str, str]:
    """A model's concrete fields, which of them are auto_now, its `INSERT ... VALUES (%s, ...)` and
    its `INSERT ... SELECT ... FROM json_populate_recordset(...)`, worked out once per process (a
    run's insert is on the path from the request to its start)."""
    cached = _INSERTS.get(model)
    if cached is None:
        quote = connection.ops.quote_name
        fields = list(model._meta.local_concrete_fields)
        table, columns = quote(model._meta.db_table), ", ".join(quote(column_of(field)) for field in fields)
        values = f"INSERT INTO {table} ({columns}) VALUES ({', '.join(['%s'] * len(fields))})"
        # Named columns, not the row's `*`: a column added by a migration while this process lives
        # keeps its default, and the statement stays valid.
        recordset = (
            f"INSERT INTO {table} ({columns}) SELECT {columns} FROM json_populate_recordset(NULL::{table}, %s::json)"
        )
        auto = [bool(getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False)) for f in fields]
        # _json_default writes a JSONField's value with the standard encoder: no other may be set.
        custom = [f.name for f in fields if getattr(f, "encoder", None) is not None]
        assert not custom, f"{model.__name__}.{custom}: a JSON encoder rows_insert does not apply"
        cached = _INSERTS[model] = (fields, auto, values, recordset)
    return cached


def _prepared(row: Model, fields: list[Any], auto: list[bool], now: datetime, db: Any) -> list[Any]:
    """The row's values as save() would send them; its auto_now fields get `now`."""
    values = []
    for field, is_auto in zip(fields, auto, strict=True):
        if is_auto:
            setattr(row, field.attname, now)
            value = now
        else:
            value = field.pre_save(row, True)
        values.append(field.get_db_prep_save(value, db))
    return values


def _json_default(value: Any) -> Any:
    if isinstance(value, Jsonb):
        return value.obj  # a JSONField's value: the JSON itself (_insert_of checks it has no encoder)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID | Decimal):
        return str(value)  # exact: PostgreSQL parses the text into the column's type
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def rows_insert(run: Run, steps: Sequence[StepRun], *, now: datetime) -> None:
    """Insert a new run and its steps in one statement, as save() would; their auto_now fields get
    `now` (one clock for the whole statement).

    The run's values are parameters; the steps go as one JSON array of records. So the statement has
    the same text and fewer than 50 parameters whatever the step count: psycopg caches its parsing
    of such a statement and PostgreSQL prepares it (a longer one is parsed again on every run).
    """
    db = connections[DEFAULT_DB_ALIAS]  # not the proxy: it is read for every value
    fields, auto, values, _ = _insert_of(Run)
    params = _prepared(run, fields, auto, now, db)
    sql = values
    if steps:
        step_fields, step_auto, _, recordset = _insert_of(StepRun)
        columns = [field.column for field in step_fields]
        records = [dict(zip(columns, _prepared(step, step_fields, step_auto, now, db), strict=True)) for step in steps]
        params.append(json.dumps(records, default=_json_default))
        sql = f"WITH r AS ({values} RETURNING 1) {recordset}"
    with db.cursor() as cursor:
        cursor.execute(sql, params)
    for row in (run, *steps):
        row._state.adding, row._state.db = False, db.alias


_EVENT_COLUMNS = ("workspace", "run", "seq", "type", "data", "created_at")
_EVENT_FIELDS: list[Any] = [RunEvent._meta.get_field(name) for name in _EVENT_COLUMNS]
# (run fields, step fields or None, number of events) -> the statement and the fields whose values
# it takes, in order. A run's checkpoints come in a handful of shapes; building the text (field
# lookups, quoting, casts) cost more CPU than adapting the values.
_CHECKPOINTS: dict[tuple[tuple[str, ...], tuple[str, ...] | None, int], tuple[str, list[Any], list[Any]]] = {}


def _checkpoint_of(
    run_names: tuple[str, ...], step_names: tuple[str, ...] | None, events: int
) -> tuple[str, list[Any], list[Any]]:
    key = (run_names, step_names, events)
    cached = _CHECKPOINTS.get(key)
    if cached is not None:
        return cached
    quote = connection.ops.quote_name
    run_fields = [Run._meta.get_field(name) for name in run_names]
    # With nothing to change the row is still updated: that is what checks (and locks) the lease.
    run_columns = [column_of(f) for f in run_fields]  # type: ignore[arg-type]
    run_set = ", ".join(f"{quote(column)} = %s" for column in run_columns) or f"{quote('id')} = {quote('id')}"
    sql = [
        f"WITH r AS (UPDATE {quote(Run._meta.db_table)} SET {run_set} "
        f"WHERE {quote('id')} = %s AND {quote('lease_token')} = %s AND {quote('status')} = %s "
        f"RETURNING {quote('cancel_requested_at')} IS NOT NULL AS cancel)"
    ]
    step_fields: list[Any] = []
    if step_names is not None:
        step_fields = [StepRun._meta.get_field(name) for name in step_names]
        step_set = ", ".join(f"{quote(f.column)} = %s" for f in step_fields)  # type: ignore[union-attr]
        sql.append(
            f", s AS (UPDATE {quote(StepRun._meta.db_table)} SET {step_set} "
            f"WHERE {quote('id')} = %s AND EXISTS (SELECT 1 FROM r) RETURNING 1)"
        )
    if events:
        columns = _EVENT_FIELDS
        casts = ", ".join(f"%s::{column.cast_db_type(connection)}" for column in columns)
        sql.append(
            f", e AS (INSERT INTO {quote(RunEvent._meta.db_table)} "
            f"({', '.join(quote(column.column) for column in columns)}) "
            f"SELECT * FROM (VALUES {', '.join([f'({casts})'] * events)}) AS v "
            "WHERE EXISTS (SELECT 1 FROM r) RETURNING 1)"
        )
    sql.append(" SELECT cancel FROM r")
    cached = _CHECKPOINTS[key] = ("".join(sql), run_fields, step_fields)
    return cached


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
    db = connections[DEFAULT_DB_ALIAS]  # the thread's connection, looked up once
    sql, run_columns, step_columns = _checkpoint_of(
        tuple(run_fields), tuple(step_fields) if step is not None else None, len(events)
    )
    params: list[Any] = [
        f.get_db_prep_save(value, db) for f, value in zip(run_columns, run_fields.values(), strict=True)
    ]
    params += [run_id, token, Run.Status.RUNNING]
    if step is not None:
        params += [f.get_db_prep_save(getattr(step, f.attname), db) for f in step_columns]
        params.append(step.pk)
    for event in events:
        params += [column.get_db_prep_save(getattr(event, column.attname), db) for column in _EVENT_FIELDS]
    with db.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return None if row is None else bool(row[0])


def claim_update(*, run_id: UUID, token: UUID, now: datetime, default_timeout_s: float) -> Run | None:
    """Claim a queued run in one statement (None when it is not queued): the conditional UPDATE
    returns the run with what executing it needs of its workflow, version and workspace, so the
    claim needs no read before it. The deadline is the definition's `limits.timeout_s` (else the
    default) from now, as engine.run_timeout_s computes it."""
    quote = connection.ops.quote_name
    sql = (
        f"UPDATE {quote(Run._meta.db_table)} AS r SET status = %s, lease_token = %s, heartbeat_at = %s, "
        "executions = r.executions + 1, started_at = COALESCE(r.started_at, %s), "
        "deadline_at = COALESCE(r.deadline_at, %s + make_interval(secs => "
        "COALESCE(NULLIF((v.definition #>> '{limits,timeout_s}')::float8, 0), %s))) "
        f"FROM {quote(WorkflowVersion._meta.db_table)} AS v, {quote(Workflow._meta.db_table)} AS w, "
        f"{quote(Workspace._meta.db_table)} AS ws "
        "WHERE r.id = %s AND r.status = %s AND v.id = r.workflow_version_id AND w.id = r.workflow_id "
        "AND ws.id = r.workspace_id "
        # The run's columns by name, not r.*: a prepared statement whose result type changes (a
        # migration adds a column while this connection lives) would fail instead of re-planning.
        f"RETURNING {', '.join(f'r.{quote(column_of(field))}' for field in Run._meta.concrete_fields)}, "
        "w.slug AS keel_workflow_slug, ws.slug AS keel_workspace_slug, "
        "v.number AS keel_version_number, v.definition::text AS keel_definition"
    )
    params: list[Any] = [Run.Status.RUNNING, token, now, now, now, default_timeout_s, run_id, Run.Status.QUEUED]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
        if row is None:
            return None
        columns = [column.name for column in cursor.description]
    values = dict(zip(columns, row, strict=True))
    names, run_values = [], []
    for field in Run._meta.concrete_fields:  # from_db takes the values in this order
        convert = getattr(field, "from_db_value", None)
        value = values[field.column]
        names.append(field.attname)
        run_values.append(convert(value, None, connection) if convert is not None else value)
    run = Run.from_db(connection.alias, names, run_values)
    run.workspace = _partial(Workspace, id=run.workspace_id, slug=values["keel_workspace_slug"])
    run.workflow = _partial(
        Workflow, id=run.workflow_id, slug=values["keel_workflow_slug"], workspace_id=run.workspace_id
    )
    run.workflow_version = _partial(
        WorkflowVersion,
        id=run.workflow_version_id,
        workflow_id=run.workflow_id,
        number=values["keel_version_number"],
        definition=json.loads(values["keel_definition"]),
    )
    return run


def _partial(model: type[M], **values: Any) -> M:
    """An instance with these fields loaded (the others deferred, read on access, as with only())."""
    fields = [field for field in model._meta.concrete_fields if field.attname in values]  # from_db's order
    return model.from_db(connection.alias, [f.attname for f in fields], [values[f.attname] for f in fields])
