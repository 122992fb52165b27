"""Staff management of providers and models. Every write goes through providers.services.

The API key field is write-only: it is never rendered back (not even masked), and leaving it empty
keeps the stored key. "Test connection" makes a tiny real call and reports what happened.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from apps.providers.models import Model, Provider
from apps.providers.services import (
    MODEL_FIELDS,
    PROVIDER_FIELDS,
    model_create,
    model_problems,
    model_update,
    provider_create,
    provider_problems,
    provider_test_connection,
    provider_update,
)


def _add_problems(form: forms.ModelForm, problems: list[dict[str, str]]) -> None:
    for problem in problems:
        name = problem["field"].split(".", 1)[0]
        message = problem["message"] if name == problem["field"] else f"{problem['field']}: {problem['message']}"
        form.add_error(name if name in form.fields else None, message)


class ProviderForm(forms.ModelForm):
    # A bare host typed here is most likely an HTTPS endpoint.
    base_url = forms.URLField(
        required=False,
        max_length=500,
        assume_scheme="https",
        help_text="Empty: OpenAI's API, or an in-process simulator.",
    )
    api_key = forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only: never shown again. Leave empty to keep the current key.",
    )
    remove_api_key = forms.BooleanField(required=False, help_text="Remove the stored key.")

    class Meta:
        model = Provider
        fields = ["workspace", "name", "kind", "base_url", "timeout_s", "max_retries", "config"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if not self.errors:
            candidate = Provider(pk=self.instance.pk, **{f: cleaned.get(f) for f in ("workspace", *PROVIDER_FIELDS)})
            candidate.base_url = candidate.base_url or ""
            candidate.config = candidate.config if candidate.config is not None else {}
            _add_problems(self, provider_problems(candidate))
        return cleaned


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    form = ProviderForm
    list_display = [
        "name",
        "workspace",
        "kind_label",
        "endpoint",
        "has_api_key",
        "timeout_s",
        "max_retries",
        "updated_at",
    ]
    list_filter = ["kind", "workspace"]
    search_fields = ["name", "base_url", "workspace__slug"]
    list_select_related = ["workspace"]
    readonly_fields = ["key_status", "created_at", "updated_at"]
    fields = [
        "workspace",
        "name",
        "kind",
        "base_url",
        "api_key",
        "remove_api_key",
        "key_status",
        "timeout_s",
        "max_retries",
        "config",
        "created_at",
        "updated_at",
    ]
    actions = ["test_connection"]

    @admin.display(description="Kind", ordering="kind")
    def kind_label(self, obj: Provider) -> str:
        return obj.get_kind_display()

    @admin.display(description="Endpoint")
    def endpoint(self, obj: Provider) -> str:
        if obj.is_simulator and not obj.base_url:
            return "in-process simulator"
        return obj.base_url or "api.openai.com"

    @admin.display(description="API key", boolean=True)
    def has_api_key(self, obj: Provider) -> bool:
        return obj.has_api_key

    @admin.display(description="Stored key")
    def key_status(self, obj: Provider) -> str:
        return "set (encrypted at rest)" if obj.has_api_key else "none"

    def save_model(self, request: HttpRequest, obj: Provider, form: ProviderForm, change: bool) -> None:
        typed = form.cleaned_data.get("api_key") or None
        api_key = "" if form.cleaned_data.get("remove_api_key") else typed
        if change:
            fields = {name: form.cleaned_data[name] for name in form.changed_data if name in PROVIDER_FIELDS}
            saved = provider_update(provider=obj, api_key=api_key, **fields)
        else:
            fields = {name: form.cleaned_data[name] for name in PROVIDER_FIELDS if name in form.cleaned_data}
            saved = provider_create(workspace=form.cleaned_data["workspace"], api_key=api_key, **fields)
        # The admin goes on with `obj` (log entry, redirect): give it what the service saved.
        obj.pk, obj.api_key_encrypted = saved.pk, saved.api_key_encrypted
        obj.created_at, obj.updated_at = saved.created_at, saved.updated_at

    @admin.action(description="Test connection (a tiny real call)")
    def test_connection(self, request: HttpRequest, queryset: QuerySet[Provider]) -> None:
        for provider in queryset[:20]:
            outcome = provider_test_connection(provider=provider, user_id=getattr(request.user, "pk", None))
            level = messages.SUCCESS if outcome.ok else messages.ERROR
            verdict = "works" if outcome.ok else "failed"
            self.message_user(
                request, f"{provider.name}: {verdict} in {outcome.latency_ms} ms: {outcome.message}", level=level
            )


class ModelAdminForm(forms.ModelForm):
    class Meta:
        model = Model
        fields = ["workspace", "provider", *[f for f in MODEL_FIELDS if f != "provider"]]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if not self.errors and cleaned.get("provider") is not None:
            values = {f: cleaned[f] for f in ("workspace", *MODEL_FIELDS) if f in cleaned}
            _add_problems(self, model_problems(Model(pk=self.instance.pk, **values)))
        return cleaned


@admin.register(Model)
class ModelAdmin(admin.ModelAdmin):
    form = ModelAdminForm
    list_display = [
        "alias",
        "name",
        "provider",
        "workspace",
        "input_price_per_million",
        "cached_input_price_per_million",
        "output_price_per_million",
        "context_window",
    ]
    list_editable = ["input_price_per_million", "cached_input_price_per_million", "output_price_per_million"]
    list_filter = ["provider__kind", "workspace"]
    search_fields = ["alias", "name", "provider__name"]
    list_select_related = ["provider", "workspace"]
    autocomplete_fields = ["provider"]

    def save_model(self, request: HttpRequest, obj: Model, form: forms.ModelForm, change: bool) -> None:
        if change:
            fields = {name: form.cleaned_data[name] for name in form.changed_data if name in MODEL_FIELDS}
            saved = model_update(model=obj, **fields)
        else:
            fields = {name: form.cleaned_data[name] for name in MODEL_FIELDS if name in form.cleaned_data}
            fields.pop("provider")
            saved = model_create(
                workspace=form.cleaned_data["workspace"],
                provider=form.cleaned_data["provider"],
                **fields,
            )
        obj.pk, obj.created_at, obj.updated_at = saved.pk, saved.created_at, saved.updated_at
