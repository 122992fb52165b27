"""Staff views of budgets and of the usage ledger; both stay fast on millions of ledger rows."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any, cast

from django import forms
from django.contrib import admin, messages
from django.core.paginator import Paginator
from django.db.models import OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Now
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html

from apps.core.problems import ValidationProblem
from apps.usage.models import Budget, BudgetEvent, BudgetWindow, UsageHourly, UsageRecord
from apps.usage.selectors import usage_ledger_totals, usage_rollup_totals
from apps.usage.services import budget_create, budget_update, budget_validate, budget_window_reset

ZERO = Decimal("0")


# --- Budgets ---------------------------------------------------------------------------------------


class BudgetForm(forms.ModelForm):  # type: ignore[type-arg]
    class Meta:
        model = Budget
        fields = ["workspace", "scope", "scope_id", "period", "limit_usd", "action", "alert_threshold_pct"]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        workspace = data.get("workspace") or getattr(self.instance, "workspace", None)
        if workspace is None or self.errors:
            return data
        try:
            budget_validate(
                workspace=workspace,
                scope=data.get("scope") or self.instance.scope,
                scope_id=data.get("scope_id", self.instance.scope_id),
                limit_usd=data.get("limit_usd", ZERO),
                alert_threshold_pct=data.get("alert_threshold_pct"),
            )
        except ValidationProblem as problem:
            for error in problem.errors or []:
                self.add_error(error["field"] if error["field"] in self.fields else None, error["message"])
        return data


class BudgetWindowInline(admin.TabularInline):  # type: ignore[type-arg]
    model = BudgetWindow
    extra = 0
    can_delete = False
    ordering = ["-start"]
    fields = ["start", "end", "limit_usd", "spent", "reserved"]
    readonly_fields = ["start", "end", "limit_usd", "spent", "reserved"]
    verbose_name_plural = "Windows (latest 31)"

    def get_queryset(self, request: HttpRequest) -> QuerySet[BudgetWindow]:
        queryset = super().get_queryset(request)
        # A daily budget gathers a window a day; the page shows the latest month of them.
        latest = BudgetWindow.objects.filter(budget=OuterRef("budget")).order_by("-start").values("pk")[:31]
        return queryset.filter(pk__in=Subquery(latest))

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _current(field: str) -> Subquery:
    window = BudgetWindow.objects.filter(budget=OuterRef("pk")).filter(Q(end__isnull=True) | Q(end__gt=Now()))
    return Subquery(window.order_by("-start").values(field)[:1])


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    form = BudgetForm
    list_display = ["__str__", "workspace", "scope", "period", "action", "limit_usd", "usage_bar", "reserved", "resets"]
    list_filter = ["scope", "period", "action", "workspace"]
    list_select_related = ["workspace"]
    search_fields = ["workspace__slug", "=scope_id"]
    inlines = [BudgetWindowInline]
    actions = ["reset_window"]
    show_full_result_count = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Budget]:
        return (
            super()
            .get_queryset(request)
            .annotate(
                w_spent=_current("spent"),
                w_reserved=_current("reserved"),
                w_limit=_current("limit_usd"),
                w_end=_current("end"),
            )
        )

    def get_readonly_fields(self, request: HttpRequest, obj: Budget | None = None) -> list[str]:
        # Windows are cut by scope and period: changing them would rewrite what past windows mean.
        return ["workspace", "scope", "scope_id", "period"] if obj is not None else []

    @admin.display(description="Spent / limit (current window)")
    def usage_bar(self, budget: Budget) -> str:
        spent = getattr(budget, "w_spent", None) or ZERO
        limit = getattr(budget, "w_limit", None) or budget.limit_usd
        pct = 100 if limit <= 0 else min(100, int(spent * 100 / limit))
        colour = "#ba2121" if pct >= 100 else "#e0a800" if pct >= (budget.alert_threshold_pct or 80) else "#417690"
        return format_html(
            '<div style="width:140px;background:#eee;border-radius:3px" title="{}%">'
            '<div style="width:{}%;background:{};height:10px;border-radius:3px"></div></div>'
            "<small>${} / ${}</small>",
            pct,
            pct,
            colour,
            f"{spent.normalize():f}",
            f"{Decimal(limit).normalize():f}",
        )

    @admin.display(description="Reserved (in flight)")
    def reserved(self, budget: Budget) -> str:
        return f"${(getattr(budget, 'w_reserved', None) or ZERO).normalize():f}"

    @admin.display(description="Window resets")
    def resets(self, budget: Budget) -> str:
        end = getattr(budget, "w_end", None)
        if budget.period == Budget.Period.TOTAL:
            return "never"
        return f"{end:%Y-%m-%d %H:%M} UTC" if end else "next call opens it"

    def save_model(self, request: HttpRequest, obj: Budget, form: forms.ModelForm, change: bool) -> None:  # type: ignore[type-arg]
        data = form.cleaned_data
        if change:
            saved = budget_update(
                budget=obj,
                limit_usd=data["limit_usd"],
                action=data["action"],
                alert_threshold_pct=data.get("alert_threshold_pct"),
            )
        else:
            saved = budget_create(
                workspace=data["workspace"],
                scope=data["scope"],
                scope_id=data.get("scope_id"),
                period=data["period"],
                limit_usd=data["limit_usd"],
                action=data["action"],
                alert_threshold_pct=data.get("alert_threshold_pct"),
            )
        obj.pk, obj.created_at, obj.updated_at = saved.pk, saved.created_at, saved.updated_at
        obj._state.adding = False

    @admin.action(description="Reset the current window (start a fresh, empty one now)")
    def reset_window(self, request: HttpRequest, queryset: QuerySet[Budget]) -> None:
        for budget in queryset:
            window = budget_window_reset(budget=budget)
            self.log_change(
                request, budget, f"Reset the current window: a new one starts {window.start:%Y-%m-%d %H:%M:%S} UTC."
            )
        self.message_user(request, f"Reset {len(queryset)} budget window(s).", messages.SUCCESS)


@admin.register(BudgetEvent)
class BudgetEventAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["created_at", "kind", "budget", "spent", "reserved", "limit_usd", "call_id"]
    list_filter = ["kind"]
    list_select_related = ["window__budget__workspace"]
    readonly_fields = ["window", "kind", "call_id", "spent", "reserved", "limit_usd", "created_at"]
    show_full_result_count = False

    @admin.display(description="Budget")
    def budget(self, event: BudgetEvent) -> Budget:
        return event.window.budget

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# --- Usage ledger ----------------------------------------------------------------------------------


class CappedCountPaginator(Paginator):
    """Counts up to CAP rows instead of all of them: a full COUNT(*) over millions is seconds."""

    CAP = 10_000

    @cached_property
    def count(self) -> int:
        rows = cast(QuerySet[Any], self.object_list)
        return int(rows.order_by()[: self.CAP + 1].count())


def _utc_today() -> dt.datetime:
    return dt.datetime.combine(timezone.now().astimezone(dt.UTC).date(), dt.time(), dt.UTC)


class CreatedFilter(admin.SimpleListFilter):
    """Whole UTC days only, so the totals can come from the hourly rollup (no date_hierarchy: its
    drill-down scans the ledger for distinct dates)."""

    title = "date (UTC)"
    parameter_name = "created"
    RANGES = {"today": 1, "7d": 7, "30d": 30}

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("today", "Today"), ("7d", "Past 7 days"), ("30d", "Past 30 days"), ("month", "This month")]

    @classmethod
    def bounds(cls, value: str | None) -> tuple[dt.datetime, dt.datetime] | None:
        end = _utc_today() + dt.timedelta(days=1)
        if value in cls.RANGES:
            return end - dt.timedelta(days=cls.RANGES[value]), end
        if value == "month":
            return _utc_today().replace(day=1), end
        return None

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        bounds = self.bounds(self.value())
        return queryset.filter(created_at__gte=bounds[0], created_at__lt=bounds[1]) if bounds else queryset


# The changelist parameters the hourly rollup can answer totals for, and the bucket field each maps to.
ROLLUP_FILTERS = {
    "workspace__id__exact": "workspace_id",
    "model__id__exact": "model_id",
    "status__exact": "status",
    "cache_hit__exact": "cache_hit",
}
IGNORED_PARAMS = {"o", "p", "created", "_changelist_filters"}


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """The ledger, read-only: it is never updated. Totals of the filtered set appear above the list."""

    list_display = [
        "created_at",
        "workspace",
        "model_alias",
        "status",
        "cache_hit",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "saved_usd",
        "latency_ms",
        "call_id",
    ]
    list_filter = [CreatedFilter, "status", "cache_hit", "workspace", "model"]
    list_select_related = ["workspace"]
    search_fields = ["=call_id"]
    ordering = ["-created_at"]
    show_full_result_count = False
    paginator = CappedCountPaginator
    list_per_page = 100

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        response = super().changelist_view(request, extra_context)
        context = getattr(response, "context_data", None)
        if context and "cl" in context:
            context["usage_totals"] = self._totals(request, context["cl"])
        return response

    def _totals(self, request: HttpRequest, changelist: Any) -> dict[str, Any]:
        """From the rollup when every active filter is one it holds, else from the filtered ledger rows."""
        params = {k: v for k, v in request.GET.items() if k not in IGNORED_PARAMS}
        if all(k in ROLLUP_FILTERS for k in params):
            buckets = UsageHourly.objects.filter(**{ROLLUP_FILTERS[k]: v for k, v in params.items()})
            bounds = CreatedFilter.bounds(request.GET.get(CreatedFilter.parameter_name))
            if bounds is not None:
                buckets = buckets.filter(hour__gte=bounds[0], hour__lt=bounds[1])
            totals = usage_rollup_totals(buckets)
            totals["source"] = "hourly rollup"
        else:
            totals = usage_ledger_totals(changelist.queryset)
            totals["source"] = "ledger"
        return totals
