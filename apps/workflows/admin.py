"""Staff editing of workflows: the definition is edited as JSON, validated on save, and every save
publishes a new immutable version (through workflows.services, like the API)."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest

from apps.accounts.models import Role
from apps.accounts.tenancy import Actor
from apps.core.problems import ValidationProblem
from apps.providers.selectors import model_aliases
from apps.workflows.definition import definition_errors
from apps.workflows.models import Workflow, WorkflowVersion
from apps.workflows.selectors import workflow_version_latest
from apps.workflows.services import workflow_create, workflow_update


class WorkflowForm(forms.ModelForm):
    definition = forms.JSONField(
        widget=forms.Textarea(attrs={"rows": 32, "cols": 110, "style": "font-family: monospace"}),
        help_text="The workflow definition (JSON Schema at /api/v1/workflows/schema/). "
        "Saving publishes it as a new version.",
    )

    class Meta:
        model = Workflow
        fields = ["workspace"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A UUID primary key is set before the first save: "adding" is what tells a new workflow apart.
        if not self.instance._state.adding:
            self.fields["workspace"].disabled = True
            self.initial["definition"] = workflow_version_latest(workflow=self.instance).definition

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        adding = self.instance._state.adding
        workspace = cleaned.get("workspace") or (None if adding else self.instance.workspace)
        definition = cleaned.get("definition")
        if workspace is None or "definition" not in cleaned:
            return cleaned
        if not adding and isinstance(definition, dict):
            definition.setdefault("slug", self.instance.slug)
            if definition["slug"] != self.instance.slug:
                self.add_error("definition", f"slug: must stay {self.instance.slug!r}")
        elif (
            isinstance(definition, dict)
            and Workflow.objects.filter(workspace=workspace, slug=definition.get("slug")).exists()
        ):
            self.add_error("definition", f"slug: {definition.get('slug')!r} is taken in this workspace")
        for error in definition_errors(definition, model_aliases=model_aliases(workspace_id=workspace.pk)):
            self.add_error("definition", f"{error['field']}: {error['message']}")
        return cleaned


class WorkflowVersionInline(admin.TabularInline):
    model = WorkflowVersion
    extra = 0
    can_delete = False
    fields = readonly_fields = ("number", "created_at", "created_by", "created_by_key", "definition_excerpt")
    ordering = ["-number"]
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="definition")
    def definition_excerpt(self, version: WorkflowVersion) -> str:
        text = json.dumps(version.definition)
        return text if len(text) < 200 else f"{text[:200]}…"


@admin.register(Workflow)
class WorkflowAdmin(admin.ModelAdmin):
    form = WorkflowForm
    list_display = ["slug", "name", "workspace", "latest_version", "archived", "updated_at"]
    list_filter = ["archived", "workspace"]
    search_fields = ["slug", "name"]
    list_select_related = ["workspace"]
    show_full_result_count = False
    inlines = [WorkflowVersionInline]
    actions = ["archive"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return ["slug", "name", "latest_version", "archived", "created_at", "updated_at"] if obj else []

    def get_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return (*self.get_readonly_fields(request, obj), "workspace", "definition")

    def save_model(self, request: HttpRequest, obj: Workflow, form: WorkflowForm, change: bool) -> None:
        workspace = obj.workspace
        actor = Actor(workspace=workspace, role=Role.OWNER, user=request.user)  # type: ignore[arg-type]
        definition = form.cleaned_data["definition"]
        try:
            if change:
                saved = workflow_update(workflow=obj, definition=definition, actor=actor)
            else:
                saved = workflow_create(workspace=workspace, definition=definition, actor=actor)
        except ValidationProblem as exc:  # a race with another save; the form checks already ran
            raise ValueError(exc.detail_text) from exc
        # The admin goes on with `obj` (log entry, redirect): make it the saved row.
        for field in Workflow._meta.concrete_fields:
            setattr(obj, field.attname, getattr(saved, field.attname))
        obj._state.adding = False
        obj._state.db = saved._state.db

    @admin.action(description="Archive selected workflows")
    def archive(self, request: HttpRequest, queryset: Any) -> None:
        from apps.workflows.services import workflow_archive

        for workflow in queryset:
            workflow_archive(workflow=workflow)
