from __future__ import annotations

import pytest
from django.conf import settings

from apps.accounts.models import Workspace
from apps.core.redis import get_redis
from tests.support.factories import WorkspaceFactory


@pytest.fixture(autouse=True)
def _clean_redis() -> None:
    """Each test starts with an empty Redis database (cache, throttles, breaker state)."""
    if settings.REDIS_URL and not settings.REDIS_URL.rstrip("/").split("/")[-1].isdigit():
        raise RuntimeError("REDIS_URL for tests must name a database number (redis://127.0.0.1:6379/15)")
    get_redis().flushdb()


@pytest.fixture
def workspace(db: None) -> Workspace:
    return WorkspaceFactory(slug="acme")


@pytest.fixture
def other_workspace(db: None) -> Workspace:
    return WorkspaceFactory(slug="globex")
