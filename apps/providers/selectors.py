"""Reads of providers and models: the gateway's hot path, and what other apps need to know of them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from django.db import connection

from apps.providers.models import Model, Provider

_MODEL_FIELDS = Model._meta.concrete_fields
_PROVIDER_FIELDS = Provider._meta.concrete_fields
_ROW_SQL = (
    "SELECT "
    + ", ".join([*(f"m.{f.column}" for f in _MODEL_FIELDS), *(f"p.{f.column}" for f in _PROVIDER_FIELDS)])
    + f" FROM {Model._meta.db_table} m JOIN {Provider._meta.db_table} p ON p.id = m.provider_id"
    + " WHERE m.workspace_id = %s AND m.alias IN ({aliases})"
)
_ALIAS = [f.attname for f in _MODEL_FIELDS].index("alias")
# (workspace id, alias) -> (the model's and its provider's row as last read, the Model with its provider).
# Bounded: a process serving very many workspaces starts over rather than grow without end.
_models: dict[tuple[UUID, str], tuple[tuple[Any, ...], Model]] = {}
_MAX_CACHED = 4096


def models_by_alias(*, workspace_id: UUID, aliases: Sequence[str]) -> dict[str, Model]:
    """The workspace's models with these aliases (each with its provider loaded); absent ones are left out.

    One plain query reads the model and provider rows every time, so a change made any way at
    all (admin, API, SQL) is seen by the very next call in every process; only when a row differs
    from the one this process last saw is it fetched again through the ORM. The Model instances are
    shared between the threads of the process: callers must not modify them.
    """
    wanted = list(dict.fromkeys(aliases))
    if not wanted:
        return {}
    workspace_param = workspace_id if connection.features.has_native_uuid_field else workspace_id.hex
    with connection.cursor() as cursor:
        cursor.execute(_ROW_SQL.format(aliases=", ".join(["%s"] * len(wanted))), [workspace_param, *wanted])
        rows = {row[_ALIAS]: tuple(row) for row in cursor.fetchall()}
    found: dict[str, Model] = {}
    for alias, row in rows.items():
        cached = _models.get((workspace_id, alias))
        if cached is not None and cached[0] == row:
            found[alias] = cached[1]
    stale = [alias for alias in rows if alias not in found]
    if stale:
        if len(_models) >= _MAX_CACHED:
            _models.clear()
        for model in Model.objects.for_workspace(workspace_id).select_related("provider").filter(alias__in=stale):
            # Kept under the row read above: if the ORM saw a newer version, the next call's row
            # differs from it and the model is simply fetched again.
            if model.alias in rows:
                _models[(workspace_id, model.alias)] = (rows[model.alias], model)
            found[model.alias] = model
    return found


def model_aliases(*, workspace_id: UUID) -> set[str]:
    """The model aliases a definition saved in this workspace may name."""
    return set(Model.objects.filter(workspace_id=workspace_id).values_list("alias", flat=True))


def model_aliases_by_id(*, workspace_id: UUID, ids: Sequence[Any]) -> dict[Any, str]:
    """The aliases of these models of the workspace, by id; ids not found there are left out."""
    return dict(Model.objects.for_workspace(workspace_id).filter(pk__in=ids).values_list("pk", "alias"))


def models_forget() -> None:
    """Drop this process's copies of models (tests; they are re-read on the next call anyway)."""
    _models.clear()
