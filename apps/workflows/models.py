from __future__ import annotations

from typing import Any

from django.db import models

from apps.core.models import WorkspaceOwnedModel


class Workflow(WorkspaceOwnedModel):
    """A named workflow of a workspace. Its definition lives in immutable numbered versions."""

    slug = models.SlugField(max_length=64)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True, default="")
    archived = models.BooleanField(default=False)
    latest_version = models.PositiveIntegerField(default=0)
    created_by = models.ForeignKey("accounts.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workspace", "slug"], name="workflow_ws_slug_uniq")]
        indexes = [models.Index(fields=["workspace", "-created_at"], name="workflow_ws_created_idx")]

    def __str__(self) -> str:
        return self.slug


class WorkflowVersion(WorkspaceOwnedModel):
    """One saved definition. Never edited: runs point at the exact version they ran."""

    workflow = models.ForeignKey(Workflow, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    definition = models.JSONField()
    created_by = models.ForeignKey("accounts.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_by_key = models.ForeignKey(
        "accounts.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workflow", "number"], name="workflowversion_number_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.workflow.slug} v{self.number}"

    @property
    def steps(self) -> list[dict[str, Any]]:
        return list(self.definition.get("steps", []))
