"""Hot-path reads by key: a fixed SELECT built once per process, its rows made into model instances.

A queryset is compiled into SQL on every evaluation; for a lookup with a join that is most of the
CPU the lookup costs (measured on the API-key lookup every API request makes: about 1 ms of
compilation against 0.1 ms for the statement itself). A `RowReader` builds its statement once,
sends it through Django's connection (so it works on SQLite too, and shows in Django's query
logging) and turns each row into instances exactly as the ORM would: the same converters per
column, `Model.from_db`, and each joined row put in the instance's cache of that foreign key, as
`select_related` does.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field, ForeignKey, Model

M = TypeVar("M", bound=Model)

Converters = list[list[tuple[Any, Any]]]
_converters_of: dict[tuple[str, tuple[Any, ...], str | None], Converters] = {}


def column_of(field: Field[Any, Any]) -> str:
    """The column of a concrete field (Django types it optional: a non-concrete field has none)."""
    if field.column is None:
        raise ValueError(f"{field!r} has no column")
    return field.column


def column_converters(db: BaseDatabaseWrapper, fields: Sequence[Field], alias: str | None = None) -> Converters:
    """For each field's column, the (converter, column) pairs the ORM applies to a value read from
    `db` (none on PostgreSQL for most types); worked out once per field list. `alias` is the table
    alias the columns are read under (default: the table's name)."""
    key = (db.vendor, tuple(fields), alias)
    found = _converters_of.get(key)
    if found is None:
        found = [
            [(c, col) for c in (*db.ops.get_db_converters(col), *col.get_db_converters(db))]
            for col in (f.get_col(alias or f.model._meta.db_table) for f in fields)
        ]
        _converters_of[key] = found
    return found


def convert_row(db: BaseDatabaseWrapper, values: list[Any], converters: Converters) -> list[Any]:
    """`values` (one row's columns, in the converters' order) as the ORM would hand them over; in place."""
    for i, pairs in enumerate(converters):
        for convert, col in pairs:
            values[i] = convert(values[i], col, db)
    return values


class _Part:
    """One model's columns in the row: from `start`, in concrete-field order (what from_db takes)."""

    def __init__(self, model: type[Model], alias: str, start: int) -> None:
        self.model = model
        self.alias = alias
        self.fields: tuple[Field, ...] = tuple(model._meta.concrete_fields)
        self.attnames = [field.attname for field in self.fields]
        self.start, self.end = start, start + len(self.fields)
        self.columns = [f"{alias}.{connection.ops.quote_name(column_of(field))}" for field in self.fields]

    def instance(self, db: BaseDatabaseWrapper, row: Sequence[Any]) -> Model:
        values = convert_row(db, list(row[self.start : self.end]), column_converters(db, self.fields, self.alias))
        return self.model.from_db(db.alias, self.attnames, values)


class RowReader(Generic[M]):
    """`SELECT <model's columns>[, <joined models' columns>] FROM <model> t0 [JOIN ...] WHERE <where>`.

    `where` is SQL over the alias `t0` (and `t1`, `t2`... for the joins, in order) with `%s`
    placeholders; pass values through `param()` so they are adapted as the ORM would adapt them.
    `join` names forward foreign keys of the model (not null) whose rows come with it.
    """

    def __init__(self, model: type[M], *, where: str, join: Sequence[str] = (), limit: int | None = None) -> None:
        self.model = model
        self._where, self._join, self._limit = where, tuple(join), limit
        self._built: tuple[str, list[_Part], list[ForeignKey]] | None = None
        self._lock = threading.Lock()

    def _build(self) -> tuple[str, list[_Part], list[ForeignKey]]:
        with self._lock:
            if self._built is None:
                quote = connection.ops.quote_name
                parts = [_Part(self.model, "t0", 0)]
                fks: list[ForeignKey] = []
                joins = []
                for n, name in enumerate(self._join, start=1):
                    fk = self.model._meta.get_field(name)
                    assert isinstance(fk, ForeignKey) and not fk.null, name
                    target = fk.related_model
                    assert isinstance(target, type)
                    parts.append(_Part(target, f"t{n}", parts[-1].end))
                    fks.append(fk)
                    joins.append(
                        f" JOIN {quote(target._meta.db_table)} t{n} "
                        f"ON t{n}.{quote(column_of(fk.target_field))} = t0.{quote(column_of(fk))}"
                    )
                sql = (
                    f"SELECT {', '.join(c for part in parts for c in part.columns)} "
                    f"FROM {quote(self.model._meta.db_table)} t0{''.join(joins)} WHERE {self._where}"
                    + (f" LIMIT {int(self._limit)}" if self._limit else "")
                )
                self._built = (sql, parts, fks)
            return self._built

    def all(self, params: Sequence[Any]) -> list[M]:
        sql, parts, fks = self._built or self._build()
        db = connections[DEFAULT_DB_ALIAS]  # the thread's connection, looked up once
        with db.cursor() as cursor:
            cursor.execute(sql, list(params))
            rows = cursor.fetchall()
        found = []
        for row in rows:
            obj = parts[0].instance(db, row)
            for fk, part in zip(fks, parts[1:], strict=True):
                fk.set_cached_value(obj, part.instance(db, row))  # as select_related leaves it
            found.append(obj)
        return found  # type: ignore[return-value]

    def first(self, params: Sequence[Any]) -> M | None:
        found = self.all(params)
        return found[0] if found else None

    def param(self, field: str, value: Any) -> Any:
        """`value` adapted for a comparison with the model's `field` (e.g. a UUID on SQLite)."""
        return self.model._meta.get_field(field).get_db_prep_value(value, connection)  # type: ignore[union-attr]
