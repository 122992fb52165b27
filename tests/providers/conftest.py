from __future__ import annotations

import pytest

from tests.support.simulator import simulator, simulator_server  # noqa: F401 - fixtures for this package


@pytest.fixture
def no_backoff(settings: pytest.FixtureRequest) -> None:
    """Retries without real sleeps (a Retry-After the simulator sends is still honoured)."""
    settings.KEEL_GATEWAY_BACKOFF_BASE_S = 0.0  # type: ignore[attr-defined]
