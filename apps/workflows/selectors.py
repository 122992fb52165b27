"""Reads of workflows and of what definitions may refer to."""

from __future__ import annotations

from uuid import UUID

from django.db.models import OuterRef, QuerySet, Subquery

from apps.providers.models import Model
from apps.workflows.models import Workflow, WorkflowVersion


def model_aliases(*, workspace_id: UUID) -> set[str]:
    """The model aliases a definition saved in this workspace may name."""
    return set(Model.objects.filter(workspace_id=workspace_id).values_list("alias", flat=True))


def workflow_with_definition(queryset: QuerySet[Workflow]) -> QuerySet[Workflow]:
    """Workflows annotated with their latest definition (`latest_definition`) in the same query."""
    latest = WorkflowVersion.objects.filter(workflow=OuterRef("pk"), number=OuterRef("latest_version"))
    return queryset.annotate(latest_definition=Subquery(latest.values("definition")[:1]))


def workflow_version_latest(*, workflow: Workflow) -> WorkflowVersion:
    return WorkflowVersion.objects.get(workflow=workflow, number=workflow.latest_version)
