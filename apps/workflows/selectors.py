"""Reads of workflows and their versions."""

from __future__ import annotations

import threading
from collections import OrderedDict
from uuid import UUID

from django.db.models import OuterRef, QuerySet, Subquery
from django.http import Http404

from apps.core.rows import RowReader
from apps.workflows.models import Workflow, WorkflowVersion

_BY_SLUG = RowReader(Workflow, where="t0.workspace_id = %s AND t0.slug = %s", limit=1)


def workflow_get(*, workspace_id: UUID, slug: str) -> Workflow:
    """The workspace's workflow with this slug (Http404 if none): a statement built once, as every
    run start looks its workflow up."""
    workflow = _BY_SLUG.first([_BY_SLUG.param("workspace", workspace_id), slug])
    if workflow is None:
        raise Http404("No such workflow in this workspace.")
    return workflow


def workflow_with_definition(queryset: QuerySet[Workflow]) -> QuerySet[Workflow]:
    """Workflows annotated with their latest definition (`latest_definition`) in the same query."""
    latest = WorkflowVersion.objects.filter(workflow=OuterRef("pk"), number=OuterRef("latest_version"))
    return queryset.annotate(latest_definition=Subquery(latest.values("definition")[:1]))


# Versions never change once saved (a new definition is a new number), so the latest version of a
# workflow, looked up on every run start, is kept per process by (workflow, number): a stale entry
# cannot exist, only an unused one. Bounded; least recently used first out.
_VERSIONS: OrderedDict[tuple[UUID, int], WorkflowVersion] = OrderedDict()
_VERSIONS_MAX = 512
_versions_lock = threading.Lock()


def workflow_version_latest(*, workflow: Workflow) -> WorkflowVersion:
    """The workflow's latest version. Shared between callers in this process: never modify it."""
    key = (workflow.pk, workflow.latest_version)
    with _versions_lock:
        version = _VERSIONS.get(key)
        if version is not None:
            _VERSIONS.move_to_end(key)
            return version
    version = WorkflowVersion.objects.get(workflow=workflow, number=workflow.latest_version)
    with _versions_lock:
        _VERSIONS[key] = version
        while len(_VERSIONS) > _VERSIONS_MAX:
            _VERSIONS.popitem(last=False)
    return version
