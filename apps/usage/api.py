"""Budgets and the usage summary over REST (`/api/v1/budgets/`, `/api/v1/usage/summary/`)."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from typing import Any

from django.utils import dateparse, timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    inline_serializer,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.models import Role
from apps.accounts.tenancy import WorkspaceScopedMixin, get_actor
from apps.core.models import MONEY
from apps.core.problems import ValidationProblem
from apps.usage.models import Budget, BudgetWindow
from apps.usage.selectors import GROUP_BYS, UsageTotals, budget_current_windows, usage_summary
from apps.usage.services import budget_create, budget_delete, budget_update

QUANTUM = Decimal("0.0000000001")


def money(value: Decimal) -> str:
    """Money as the API writes it everywhere: a decimal string with all ten places."""
    return format(Decimal(value).quantize(QUANTUM), "f")


# --- Budgets ---------------------------------------------------------------------------------------


class BudgetWindowSerializer(serializers.Serializer[BudgetWindow]):
    start = serializers.DateTimeField()
    end = serializers.DateTimeField(allow_null=True, help_text="When the window resets; null for a `total` budget.")
    spent_usd = serializers.SerializerMethodField()
    reserved_usd = serializers.SerializerMethodField(help_text="Held by calls in flight (their worst case).")
    remaining_usd = serializers.SerializerMethodField(help_text="limit - spent - reserved, never below 0.")

    def get_spent_usd(self, window: BudgetWindow) -> str:
        return money(window.spent)

    def get_reserved_usd(self, window: BudgetWindow) -> str:
        return money(window.reserved)

    def get_remaining_usd(self, window: BudgetWindow) -> str:
        return money(window.remaining)


class BudgetSerializer(serializers.ModelSerializer[Budget]):
    window = serializers.SerializerMethodField()

    class Meta:
        model = Budget
        fields = [
            "id",
            "scope",
            "scope_id",
            "period",
            "limit_usd",
            "action",
            "alert_threshold_pct",
            "window",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    @extend_schema_field(BudgetWindowSerializer)
    def get_window(self, budget: Budget) -> dict[str, Any]:
        windows: dict[Any, BudgetWindow] = self.context.get("windows") or {}
        window = windows.get(budget.pk) or budget_current_windows(budgets=[budget])[budget.pk]
        return dict(BudgetWindowSerializer(window).data)


class BudgetCreateSerializer(serializers.Serializer[Any]):
    scope = serializers.ChoiceField(choices=Budget.Scope.choices)
    scope_id = serializers.UUIDField(
        required=False, allow_null=True, default=None, help_text="Null for `workspace`; else the id in your workspace."
    )
    period = serializers.ChoiceField(choices=Budget.Period.choices, help_text="UTC calendar day or month, or total.")
    limit_usd = serializers.DecimalField(**MONEY, min_value=Decimal("0"))
    action = serializers.ChoiceField(choices=Budget.Action.choices, default=Budget.Action.BLOCK)
    alert_threshold_pct = serializers.IntegerField(min_value=1, max_value=100, required=False, allow_null=True)


class BudgetUpdateSerializer(serializers.Serializer[Any]):
    """Limit, action and alert threshold may change; scope and period are fixed for a budget's life."""

    FIXED = ("scope", "scope_id", "period")

    limit_usd = serializers.DecimalField(**MONEY, min_value=Decimal("0"), required=False)
    action = serializers.ChoiceField(choices=Budget.Action.choices, required=False)
    alert_threshold_pct = serializers.IntegerField(min_value=1, max_value=100, required=False, allow_null=True)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        fixed = [name for name in self.FIXED if name in self.initial_data]
        if fixed:
            raise serializers.ValidationError(
                {name: "Cannot be changed; delete this budget and create another." for name in fixed}
            )
        return attrs


class BudgetViewSet(
    WorkspaceScopedMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """The workspace's budgets with their current window. Everyone in the workspace reads; admins write."""

    scoped_model = Budget
    serializer_class = BudgetSerializer
    write_role = Role.ADMIN
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_serializer_context(self) -> dict[str, Any]:
        return {**super().get_serializer_context(), "windows": getattr(self, "_windows", None)}

    def paginate_queryset(self, queryset: Any) -> list[Any] | None:
        page = super().paginate_queryset(queryset)
        if page is not None:  # one query for the page's windows instead of one per budget
            self._windows = budget_current_windows(budgets=page)
        return page

    def _answer(self, budget: Budget, code: int = status.HTTP_200_OK) -> Response:
        return Response(BudgetSerializer(budget).data, status=code)

    @extend_schema(request=BudgetCreateSerializer, responses={201: BudgetSerializer})
    def create(self, request: Request) -> Response:
        data = BudgetCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        budget = budget_create(workspace=self.actor.workspace, **data.validated_data)
        return self._answer(budget, status.HTTP_201_CREATED)

    @extend_schema(request=BudgetUpdateSerializer, responses={200: BudgetSerializer})
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        budget = self.get_object()
        data = BudgetUpdateSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        return self._answer(budget_update(budget=budget, **data.validated_data))

    def perform_destroy(self, instance: Budget) -> None:
        budget_delete(budget=instance)


# --- Usage summary ---------------------------------------------------------------------------------


_OFFSET_AFTER_SPACE = re.compile(r" (\d{2}:?\d{2})$")


def _parse_instant(raw: str, *, end_of_day: bool) -> dt.datetime | None:
    """An ISO 8601 date or date-time (naive means UTC), or None. A bare date is the start of that
    UTC day, or, for `to` (end_of_day), its end: `to=2026-11-30` includes the 30th."""
    value = _OFFSET_AFTER_SPACE.sub(r"+\1", raw.strip())  # an unencoded "+02:00" arrives as " 02:00"
    try:
        day = dateparse.parse_date(value)
        if day is not None:
            start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
            return start + dt.timedelta(days=1) if end_of_day else start
        instant = dateparse.parse_datetime(value)
    except ValueError:
        return None
    if instant is None:
        return None
    return instant.replace(tzinfo=dt.UTC) if timezone.is_naive(instant) else instant.astimezone(dt.UTC)


def _summary_row(totals: UsageTotals) -> dict[str, Any]:
    return {
        "calls": totals.calls,
        "input_tokens": totals.input_tokens,
        "output_tokens": totals.output_tokens,
        "cost_usd": money(totals.cost_usd),
        "cache_hits": totals.cache_hits,
        "saved_usd": money(totals.saved_usd),
    }


_TOTALS_FIELDS: dict[str, serializers.Field[Any, Any, Any, Any]] = {
    "calls": serializers.IntegerField(),
    "input_tokens": serializers.IntegerField(),
    "output_tokens": serializers.IntegerField(),
    "cost_usd": serializers.CharField(help_text="Decimal string, USD."),
    "cache_hits": serializers.IntegerField(),
    "saved_usd": serializers.CharField(help_text="What cache hits saved, USD."),
}


def _end_of_today() -> dt.datetime:
    return dt.datetime.combine(timezone.now().astimezone(dt.UTC).date(), dt.time(), dt.UTC) + dt.timedelta(days=1)


class UsageSummaryView(APIView):
    """Calls, tokens, cost, cache hits and savings of the caller's workspace, grouped, exact to the ledger."""

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "from",
                OpenApiTypes.STR,
                description="ISO 8601 date or date-time (UTC if no offset), inclusive. Default: 30 days before `to`.",
            ),
            OpenApiParameter(
                "to",
                OpenApiTypes.STR,
                description="ISO 8601 date-time, exclusive; a bare date includes that whole UTC day. "
                "Default: the end of today (UTC).",
            ),
            OpenApiParameter("group_by", OpenApiTypes.STR, enum=list(GROUP_BYS), description="Default: day."),
        ],
        responses={
            400: OpenApiResponse(description="problem+json (validation_error) naming each bad parameter"),
            200: inline_serializer(
                "UsageSummary",
                {
                    "from": serializers.DateTimeField(),
                    "to": serializers.DateTimeField(),
                    "group_by": serializers.ChoiceField(choices=GROUP_BYS),
                    "rows": inline_serializer(
                        "UsageSummaryRow",
                        {
                            "key": serializers.CharField(
                                allow_null=True,
                                help_text="UTC date (day), model alias (model), workflow or API key id; "
                                "null for calls made without a workflow or key.",
                            ),
                            **_TOTALS_FIELDS,
                        },
                        many=True,
                    ),
                    "totals": inline_serializer("UsageSummaryTotals", _TOTALS_FIELDS),
                },
            ),
        },
    )
    def get(self, request: Request) -> Response:
        params = request.query_params
        errors: list[dict[str, str]] = []
        group_by = params.get("group_by") or "day"
        if group_by not in GROUP_BYS:
            errors.append({"field": "group_by", "message": f"Must be one of: {', '.join(GROUP_BYS)}."})
        end: dt.datetime | None = _end_of_today()
        if params.get("to"):
            end = _parse_instant(params["to"], end_of_day=True)
            if end is None:
                errors.append({"field": "to", "message": "Not an ISO 8601 date or date-time."})
        start = end - dt.timedelta(days=30) if end is not None else None
        if params.get("from"):
            start = _parse_instant(params["from"], end_of_day=False)
            if start is None:
                errors.append({"field": "from", "message": "Not an ISO 8601 date or date-time."})
        if start is not None and end is not None and start >= end:
            errors.append({"field": "from", "message": "Must be before `to`."})
        if errors:
            raise ValidationProblem("; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors)
        assert start is not None and end is not None
        summary = usage_summary(workspace=get_actor(request).workspace, start=start, end=end, group_by=group_by)
        return Response(
            {
                "from": start.isoformat().replace("+00:00", "Z"),
                "to": end.isoformat().replace("+00:00", "Z"),
                "group_by": group_by,
                "rows": [{"key": key, **_summary_row(totals)} for key, totals in summary.rows],
                "totals": _summary_row(summary.totals),
            }
        )
