"""Fixtures for the usage tests: a model to book calls against, budgets, and a ledger writer."""

from __future__ import annotations

import itertools
from decimal import Decimal
from typing import Any

import pytest

from apps.accounts.models import Workspace
from apps.providers.models import Model, Provider
from apps.usage.models import Budget, UsageRecord
from apps.usage.services import budget_create, usage_record

_calls = itertools.count(1)


def make_model(workspace: Workspace, alias: str = "fast") -> Model:
    provider, _ = Provider.objects.get_or_create(
        workspace=workspace, name="sim", defaults={"kind": Provider.Kind.SIMULATOR}
    )
    return Model.objects.create(
        workspace=workspace,
        provider=provider,
        name=f"sim-{alias}",
        alias=alias,
        input_price_per_million=Decimal("0.15"),
        cached_input_price_per_million=Decimal("0.075"),
        output_price_per_million=Decimal("0.60"),
    )


def book(model: Model, *, cost: Decimal | str = "0", call_id: str | None = None, **fields: Any) -> UsageRecord:
    """Write one ledger row through the service, as the gateway does."""
    defaults: dict[str, Any] = {
        "workspace_id": model.workspace_id,
        "model": model,
        "model_alias": model.alias,
        "provider_name": "sim",
        "status": UsageRecord.Status.SUCCEEDED,
        "input_tokens": 10,
        "output_tokens": 5,
        "input_price_per_million": model.input_price_per_million,
        "cached_input_price_per_million": model.cached_input_price_per_million,
        "output_price_per_million": model.output_price_per_million,
        "cost_usd": Decimal(cost),
    }
    defaults.update(fields)
    return usage_record(call_id=call_id or f"call-{next(_calls)}", **defaults)


def make_budget(workspace: Workspace, limit: str = "1", **fields: Any) -> Budget:
    fields.setdefault("scope", Budget.Scope.WORKSPACE)
    fields.setdefault("period", Budget.Period.MONTH)
    return budget_create(workspace=workspace, limit_usd=Decimal(limit), **fields)


@pytest.fixture
def model(workspace: Workspace) -> Model:
    return make_model(workspace)


# The HTTP simulator and real RQ workers, for the integration tests of this package.
from tests.support.simulator import simulator, simulator_server  # noqa: E402, F401
from tests.support.workers import rq_workers  # noqa: E402, F401
