from __future__ import annotations

import json
from typing import Any

import yaml
from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import permissions, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser, JSONParser
from rest_framework.request import Request
from rest_framework.response import Response

from apps.accounts.tenancy import WorkspaceScopedMixin
from apps.core.pagination import CursorPagination
from apps.workflows.definition import definition_schema
from apps.workflows.models import Workflow, WorkflowVersion
from apps.workflows.selectors import workflow_with_definition
from apps.workflows.services import workflow_archive, workflow_create, workflow_update


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without aliases: a few bytes of anchors and aliases can expand to gigabytes."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("aliases (*name) are not accepted")
        return super().compose_node(parent, index)


class YAMLParser(BaseParser):
    """Definitions may be uploaded as YAML (`Content-Type: application/yaml`)."""

    media_type = "application/yaml"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            data = yaml.load(stream.read().decode("utf-8"), Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ParseError(f"The YAML body cannot be read: {exc}") from None
        # YAML has dates and other types JSON does not: keep only JSON values (dates become text).
        return json.loads(json.dumps(data, default=str))


class WorkflowSerializer(serializers.ModelSerializer[Workflow]):
    version = serializers.IntegerField(source="latest_version", read_only=True)
    definition = serializers.JSONField(source="latest_definition", read_only=True)

    class Meta:
        model = Workflow
        fields = ["slug", "name", "description", "version", "definition", "archived", "created_at", "updated_at"]
        read_only_fields = fields


class WorkflowVersionSerializer(serializers.ModelSerializer[WorkflowVersion]):
    version = serializers.IntegerField(source="number", read_only=True)

    class Meta:
        model = WorkflowVersion
        fields = ["version", "definition", "created_at"]
        read_only_fields = fields


class VersionPagination(CursorPagination):
    ordering = "-number"


_DEFINITION = {
    "type": "object",
    "description": "A workflow definition (docs/workflows.md); its JSON Schema is GET /api/v1/workflows/schema/.",
}
DEFINITION_BODY = {"application/json": _DEFINITION, "application/yaml": _DEFINITION}


INVALID_DEFINITION = OpenApiResponse(
    description="application/problem+json (validation_error): every error of the definition in `errors`, "
    "as {field: 'steps.1.model', message}; nothing is saved"
)


class WorkflowViewSet(WorkspaceScopedMixin, viewsets.GenericViewSet):
    """Workflows of the caller's workspace, addressed by slug. PUT publishes a new version; DELETE archives."""

    scoped_model = Workflow
    serializer_class = WorkflowSerializer
    lookup_field = "slug"
    lookup_value_regex = r"[a-z0-9]+(?:-[a-z0-9]+)*"
    parser_classes = [JSONParser, YAMLParser]

    def refine_queryset(self, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.action == "list" and self.request.query_params.get("archived", "").lower() not in ("1", "true"):
            queryset = queryset.filter(archived=False)
        return workflow_with_definition(queryset)

    def _body(self, workflow: Workflow) -> dict[str, Any]:
        fresh = self.get_queryset().get(pk=workflow.pk)
        return dict(WorkflowSerializer(fresh).data)

    @extend_schema(
        parameters=[OpenApiParameter("archived", OpenApiTypes.BOOL, description="include archived workflows")]
    )
    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(WorkflowSerializer(page, many=True).data)

    def retrieve(self, request: Request, slug: str) -> Response:
        return Response(WorkflowSerializer(self.get_object()).data)

    @extend_schema(request=DEFINITION_BODY, responses={201: WorkflowSerializer, 400: INVALID_DEFINITION})
    def create(self, request: Request) -> Response:
        workflow = workflow_create(workspace=self.actor.workspace, definition=request.data, actor=self.actor)
        return Response(
            self._body(workflow),
            status=status.HTTP_201_CREATED,
            headers={"Location": f"/api/v1/workflows/{workflow.slug}/"},
        )

    @extend_schema(request=DEFINITION_BODY, responses={200: WorkflowSerializer, 400: INVALID_DEFINITION})
    def update(self, request: Request, slug: str) -> Response:
        workflow = workflow_update(workflow=self.get_object(), definition=request.data, actor=self.actor)
        return Response(self._body(workflow))

    @extend_schema(responses={204: None})
    def destroy(self, request: Request, slug: str) -> Response:
        workflow_archive(workflow=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(responses={200: WorkflowVersionSerializer(many=True)})
    @action(detail=True, methods=["get"], pagination_class=VersionPagination)
    def versions(self, request: Request, slug: str) -> Response:
        workflow = self.get_object()
        page = self.paginate_queryset(WorkflowVersion.objects.filter(workflow=workflow))
        return self.get_paginated_response(WorkflowVersionSerializer(page, many=True).data)

    @extend_schema(responses={200: OpenApiTypes.OBJECT}, auth=[])
    @action(
        detail=False,
        methods=["get"],
        url_path="schema",
        permission_classes=[permissions.AllowAny],
        authentication_classes=[],
        throttle_classes=[],
    )
    def published_schema(self, request: Request) -> Response:
        """The JSON Schema (2020-12) every workflow definition is validated against."""
        return Response(definition_schema())
