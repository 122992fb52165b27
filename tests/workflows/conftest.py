from __future__ import annotations

import pytest

from apps.accounts.models import Workspace
from apps.providers.models import Provider
from tests.support.simulator import sim_model, sim_provider


@pytest.fixture
def models(workspace: Workspace) -> Provider:
    """The model aliases definitions use (in-process simulator; these tests make no calls)."""
    provider = sim_provider(None, workspace)
    for alias in ("fast", "smart", "backup"):
        sim_model(provider, alias=alias)
    return provider
