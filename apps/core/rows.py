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
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from django.db import connection
from django.db.models import Field, ForeignKey, Model

M = TypeVar("M", bound=Model)

_Converter = Callable[[Any, Any, Any], Any]


class _Part:
    """One model's columns in the row: from `start`, in concrete-field order (what from_db takes)."""

    def __init__(self, model: type[Model], alias: str, start: int) -> None:
        self.model = model
        self.alias = alias
        self.fields: list[Field] = list(model._meta.concrete_fields)
        self.attnames = [field.attname for field in self.fields]
        self.start, self.end = start, start + len(self.fields)
        self.columns = [f"{alias}.{connection.ops.quote_name(field.column)}" for field in self.fields]
        self._converters: list[tuple[int, list[_Converter], Any]] | None = None

    def instance(self, row: Sequence[Any]) -> Model:
        values = list(row[self.start : self.end])
        if self._converters is None:
            converters = []
            for n, field in enumerate(self.fields):
                column = field.get_col(self.alias)
                found = connection.ops.get_db_converters(column) + column.get_db_converters(connection)
                if found:
                    converters.append((n, found, column))
            self._converters = converters  # per process: a process talks to one kind of database
        for n, found, column in self._converters:
            value = values[n]
            for convert in found:
                value = convert(value, column, connection)
            values[n] = value
        return self.model.from_db(connection.alias, self.attnames, values)


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
                        f"ON t{n}.{quote(fk.target_field.column)} = t0.{quote(fk.column)}"
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
        with connection.cursor() as cursor:
            cursor.execute(sql, list(params))
            rows = cursor.fetchall()
        found = []
        for row in rows:
            obj = parts[0].instance(row)
            for fk, part in zip(fks, parts[1:], strict=True):
                fk.set_cached_value(obj, part.instance(row))  # as select_related leaves it
            found.append(obj)
        return found  # type: ignore[return-value]

    def first(self, params: Sequence[Any]) -> M | None:
        found = self.all(params)
        return found[0] if found else None

    def param(self, field: str, value: Any) -> Any:
        """`value` adapted for a comparison with the model's `field` (e.g. a UUID on SQLite)."""
        return self.model._meta.get_field(field).get_db_prep_value(value, connection)  # type: ignore[union-attr]
