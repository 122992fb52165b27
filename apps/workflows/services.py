"""Writes for workflows: create, publish a new version, archive; and the demo's sample workflows."""

from __future__ import annotations

import copy
from typing import Any

from django.db import IntegrityError, transaction

from apps.accounts.models import Workspace
from apps.accounts.tenancy import Actor
from apps.core.problems import ValidationProblem
from apps.providers.selectors import model_aliases
from apps.workflows.definition import definition_errors
from apps.workflows.models import Workflow, WorkflowVersion


def definition_validate(*, workspace: Workspace, definition: Any) -> dict[str, Any]:
    """The definition, or ValidationProblem listing every error (field path and message)."""
    errors = definition_errors(definition, model_aliases=model_aliases(workspace_id=workspace.pk))
    if errors:
        raise ValidationProblem(
            f"The workflow definition has {len(errors)} error{'s' if len(errors) != 1 else ''}.", errors=errors
        )
    return copy.deepcopy(definition)


def _version_create(*, workflow: Workflow, definition: dict[str, Any], actor: Actor | None) -> WorkflowVersion:
    workflow.latest_version += 1
    workflow.name = definition["name"]
    workflow.description = definition.get("description", "")
    workflow.save(update_fields=["latest_version", "name", "description", "archived", "updated_at"])
    return WorkflowVersion.objects.create(
        workspace_id=workflow.workspace_id,
        workflow=workflow,
        number=workflow.latest_version,
        definition=definition,
        created_by=actor.user if actor else None,
        created_by_key=actor.api_key if actor else None,
    )


def workflow_create(*, workspace: Workspace, definition: Any, actor: Actor | None = None) -> Workflow:
    """A new workflow at version 1. Nothing is saved unless the definition is valid and the slug free."""
    definition = definition_validate(workspace=workspace, definition=definition)
    slug = definition["slug"]
    taken = ValidationProblem(
        f"A workflow with slug {slug!r} exists in this workspace.",
        errors=[
            {"field": "slug", "message": f"{slug!r} is taken; PUT /api/v1/workflows/{slug}/ publishes a new version"}
        ],
    )
    if Workflow.objects.for_workspace(workspace).filter(slug=slug).exists():
        raise taken
    try:
        with transaction.atomic():
            workflow = Workflow.objects.create(
                workspace=workspace,
                slug=slug,
                name=definition["name"],
                created_by=actor.user if actor else None,
            )
            _version_create(workflow=workflow, definition=definition, actor=actor)
    except IntegrityError:
        raise taken from None  # a concurrent create of the same slug won
    return workflow


@transaction.atomic
def workflow_update(*, workflow: Workflow, definition: Any, actor: Actor | None = None) -> Workflow:
    """Publish `definition` as the next version (an archived workflow is restored).

    The slug cannot change: a definition without one takes the workflow's.
    """
    if isinstance(definition, dict) and "slug" not in definition:
        definition = {**definition, "slug": workflow.slug}
    definition = definition_validate(workspace=workflow.workspace, definition=definition)
    if definition["slug"] != workflow.slug:
        raise ValidationProblem(
            "A workflow's slug cannot change.",
            errors=[{"field": "slug", "message": f"must be {workflow.slug!r} (the workflow's slug)"}],
        )
    locked = Workflow.objects.select_for_update().get(pk=workflow.pk)
    locked.archived = False
    _version_create(workflow=locked, definition=definition, actor=actor)
    return locked


def workflow_archive(*, workflow: Workflow) -> Workflow:
    """Hide the workflow and refuse new runs; its versions and runs stay."""
    if not workflow.archived:
        workflow.archived = True
        workflow.save(update_fields=["archived", "updated_at"])
    return workflow


def workflow_demo_seed(*, workspace: Workspace) -> list[str]:
    """The sample workflows of the demo (apps/workflows/samples.py), created once; idempotent."""
    from apps.workflows.samples import SAMPLE_WORKFLOWS

    notes = []
    aliases = model_aliases(workspace_id=workspace.pk)
    for definition in SAMPLE_WORKFLOWS:
        if Workflow.objects.for_workspace(workspace).filter(slug=definition["slug"]).exists():
            continue
        if not {"fast", "smart", "backup"} <= aliases:
            notes.append(f"Sample workflow {definition['slug']} skipped: models fast, smart, backup are not set up")
            continue
        workflow_create(workspace=workspace, definition=definition)
        notes.append(f"Sample workflow: {definition['slug']} ({definition['name']})")
    return notes
