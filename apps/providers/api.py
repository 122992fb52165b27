"""`/api/v1/providers/` and `/api/v1/models/`: what a workspace may call. Members read, admins write.

A provider's `api_key` is write-only: accepted on POST/PATCH, never returned (`has_api_key` says
whether one is set). `is_simulator` and `kind_label` mark a simulator as not a real model.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from apps.accounts.models import Role
from apps.accounts.tenancy import WorkspaceScopedMixin, get_actor
from apps.core.models import MONEY
from apps.providers.models import Model, Provider
from apps.providers.services import (
    PROVIDER_TIMEOUT_MAX_S,
    model_create,
    model_update,
    provider_create,
    provider_update,
)

MAX_TOKENS = 2_147_483_647  # the columns' range


class ProviderSerializer(serializers.ModelSerializer[Provider]):
    kind_label = serializers.CharField(source="get_kind_display", read_only=True)
    is_simulator = serializers.BooleanField(read_only=True)
    has_api_key = serializers.BooleanField(read_only=True)

    class Meta:
        model = Provider
        fields = [
            "id",
            "name",
            "kind",
            "kind_label",
            "is_simulator",
            "base_url",
            "has_api_key",
            "timeout_s",
            "max_retries",
            "config",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class ProviderWriteSerializer(serializers.Serializer[Any]):
    name = serializers.CharField(max_length=100)
    kind = serializers.ChoiceField(choices=Provider.Kind.choices)
    base_url = serializers.URLField(max_length=500, allow_blank=True, required=False, default="")
    api_key = serializers.CharField(
        write_only=True,
        required=False,
        allow_blank=True,
        allow_null=True,
        trim_whitespace=True,
        max_length=1000,
        help_text='Write-only. Omit or null to keep the current key; "" removes it.',
    )
    timeout_s = serializers.FloatField(min_value=0.1, max_value=PROVIDER_TIMEOUT_MAX_S, required=False, default=60.0)
    max_retries = serializers.IntegerField(min_value=0, max_value=10, required=False, default=2)
    config = serializers.JSONField(
        required=False,
        default=dict,
        help_text="Kind-specific settings: simulator knobs (apps/providers/simulator.py), Azure `api_version`.",
    )


class ModelSerializer(serializers.ModelSerializer[Model]):
    provider = serializers.UUIDField(source="provider_id", read_only=True)
    provider_name = serializers.CharField(source="provider.name", read_only=True)
    is_simulator = serializers.BooleanField(source="provider.is_simulator", read_only=True)

    class Meta:
        model = Model
        fields = [
            "id",
            "provider",
            "provider_name",
            "is_simulator",
            "name",
            "alias",
            "input_price_per_million",
            "cached_input_price_per_million",
            "output_price_per_million",
            "context_window",
            "max_output_tokens",
            "supports_json_schema",
            "supports_streaming",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


def _price(label: str) -> serializers.DecimalField:
    return serializers.DecimalField(
        **MONEY,
        min_value=Decimal(0),
        required=False,
        help_text=f"USD per million {label} tokens",
    )


class ModelWriteSerializer(serializers.Serializer[Any]):
    provider = serializers.PrimaryKeyRelatedField(queryset=Provider.objects.none())
    name = serializers.CharField(max_length=200, help_text="The model name sent upstream.")
    alias = serializers.SlugField(max_length=100, help_text="What workflows call it; unique in the workspace.")
    input_price_per_million = _price("input")
    cached_input_price_per_million = _price("cached input")
    output_price_per_million = _price("output")
    context_window = serializers.IntegerField(min_value=1, max_value=MAX_TOKENS, required=False)
    max_output_tokens = serializers.IntegerField(min_value=1, max_value=MAX_TOKENS, required=False)
    supports_json_schema = serializers.BooleanField(required=False)
    supports_streaming = serializers.BooleanField(required=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Only the caller's providers exist for this field: another workspace's id is "does not exist".
        request = self.context.get("request")
        if request is not None:
            field = self.fields["provider"]
            field.queryset = Provider.objects.for_workspace(get_actor(request).workspace)  # type: ignore[attr-defined]


class ProviderViewSet(
    WorkspaceScopedMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,  # type: ignore[type-arg]
):
    """The workspace's model providers. The API key is write-only."""

    scoped_model = Provider
    serializer_class = ProviderSerializer
    read_role = Role.MEMBER
    write_role = Role.ADMIN
    http_method_names = ["get", "post", "patch", "head", "options"]
    filterset_fields = ["kind"]

    @extend_schema(request=ProviderWriteSerializer, responses={201: ProviderSerializer})
    def create(self, request: Request) -> Response:
        data = ProviderWriteSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        provider = provider_create(workspace=self.actor.workspace, **data.validated_data)
        return Response(ProviderSerializer(provider).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=ProviderWriteSerializer, responses={200: ProviderSerializer})
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        provider = self.get_object()
        data = ProviderWriteSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        changes = dict(data.validated_data)
        api_key = changes.pop("api_key", None)
        provider = provider_update(provider=provider, api_key=api_key, **changes)
        return Response(ProviderSerializer(provider).data)


class ModelViewSet(
    WorkspaceScopedMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,  # type: ignore[type-arg]
):
    """The models a workspace's workflows may call by alias, with their prices."""

    scoped_model = Model
    serializer_class = ModelSerializer
    read_role = Role.MEMBER
    write_role = Role.ADMIN
    http_method_names = ["get", "post", "patch", "head", "options"]
    filterset_fields = ["provider", "alias"]

    def refine_queryset(self, queryset: Any) -> Any:
        return queryset.select_related("provider")

    @extend_schema(request=ModelWriteSerializer, responses={201: ModelSerializer})
    def create(self, request: Request) -> Response:
        data = ModelWriteSerializer(data=request.data, context={"request": request})
        data.is_valid(raise_exception=True)
        model = model_create(workspace=self.actor.workspace, **data.validated_data)
        return Response(ModelSerializer(model).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=ModelWriteSerializer, responses={200: ModelSerializer})
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        model = self.get_object()
        data = ModelWriteSerializer(data=request.data, partial=True, context={"request": request})
        data.is_valid(raise_exception=True)
        model = model_update(model=model, **data.validated_data)
        return Response(ModelSerializer(model).data)
