from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.models import ApiKey, Role
from apps.accounts.services import api_key_issue, api_key_revoke
from apps.accounts.tenancy import WorkspaceScopedMixin, get_actor
from apps.core.problems import PermissionProblem


class MeView(APIView):
    """The caller: its user or key, its workspace and its role."""

    @extend_schema(
        responses=inline_serializer(
            "Me",
            {
                "user": serializers.DictField(allow_null=True),
                "api_key": serializers.DictField(allow_null=True),
                "workspace": serializers.DictField(),
                "role": serializers.CharField(),
            },
        )
    )
    def get(self, request: Request) -> Response:
        actor = get_actor(request)
        return Response(
            {
                "user": {"id": str(actor.user.pk), "email": actor.user.email} if actor.user else None,
                "api_key": {
                    "id": str(actor.api_key.pk),
                    "name": actor.api_key.name,
                    "prefix": actor.api_key.prefix,
                    "role": actor.api_key.role,
                }
                if actor.api_key
                else None,
                "workspace": {
                    "id": str(actor.workspace.pk),
                    "slug": actor.workspace.slug,
                    "name": actor.workspace.name,
                },
                "role": actor.role,
            }
        )


class ApiKeySerializer(serializers.ModelSerializer[ApiKey]):
    class Meta:
        model = ApiKey
        fields = ["id", "name", "prefix", "role", "created_at", "last_used_at", "revoked_at", "expires_at"]
        read_only_fields = fields


class ApiKeyCreateSerializer(serializers.Serializer[Any]):
    name = serializers.CharField(max_length=100)
    role = serializers.ChoiceField(choices=[Role.ADMIN, Role.MEMBER, Role.VIEWER], default=Role.MEMBER)
    expires_at = serializers.DateTimeField(required=False, allow_null=True)


class ApiKeyViewSet(
    WorkspaceScopedMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """The workspace's API keys (admins). Create shows the secret once; delete revokes."""

    scoped_model = ApiKey
    serializer_class = ApiKeySerializer
    read_role = Role.ADMIN
    write_role = Role.ADMIN

    @extend_schema(request=ApiKeyCreateSerializer, responses={201: ApiKeySerializer})
    def create(self, request: Request) -> Response:
        data = ApiKeyCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        actor = self.actor
        if not actor.can(data.validated_data["role"]):
            raise PermissionProblem("A key cannot have a higher role than its creator.")
        issued = api_key_issue(workspace=actor.workspace, created_by=actor.user, **data.validated_data)
        body = dict(ApiKeySerializer(issued.api_key).data)
        body["secret"] = issued.token
        return Response(body, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance: ApiKey) -> None:
        api_key_revoke(api_key=instance)
