"""The HTTP provider simulator for tests: one real `manage.py run_simulator` process per test session.

Use it from any test package (pytest only collects fixtures it can see, so import them into your
package's conftest.py):

    # tests/<app>/conftest.py
    from tests.support.simulator import simulator, simulator_server  # noqa: F401

    def test_something(simulator, workspace):
        provider = sim_provider(simulator, workspace)                 # kind simulator, base_url -> the process
        sim_model(provider, alias="fast")                             # upstream name "sim-fast"
        sim_model(provider, alias="backup", name="sim-backup")
        ... gateway_complete(ctx=CallContext(workspace_id=workspace.pk), model="fast", ...)
        assert simulator.calls("sim-fast") == 1                       # what the simulator saw
        assert simulator.stats()["completion_tokens"] == ...          # what it billed

`simulator` (function-scoped) clears the simulator's books and call counters before each test, so
`stats()` and the fail-first counters only see the current test. The process itself is
session-scoped (started once per pytest process; each xdist worker has its own).

Fault knobs are a simulator Provider's `config` (see apps/providers/simulator.py for all of them).
The gateway sends them with every request, and rebuilds its client whenever the provider is saved,
so `sim_configure` changes a provider's behaviour for every process (web and RQ workers) at once.
Builders for what the run-engine tests need:

    slow(2.5)                 every answer takes 2.5 s (to kill or cancel a worker mid-call)
    always(500)               every call fails with this status; heal with sim_configure(provider, {})
    fail_first(1, status=429, retry_after="1")
                              the first N calls (per model) fail, then calls succeed (429-then-success)
    invalid_json_first(1)     the first N json_schema answers do NOT match the schema (repair attempts)
    truncate_after(3)         streams are cut after 3 tokens;  malformed(): a 200 with a broken JSON body
    failing(0.3, seed=7)      30% of calls fail with 500/503, the same calls for the same seed

Knobs can be given per upstream model: `{"models": {"sim-fast": always(500)}}`.

Billing: the simulator bills a call exactly when the usage reached the client intact. Errors,
malformed bodies, cut streams and calls the client abandoned before the answer was sent (timeout,
killed worker) are not billed, so the gateway's ledger must equal `stats()` exactly.
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from apps.accounts.models import Workspace
from apps.providers.models import Model, Provider
from apps.providers.services import model_create, provider_create, provider_update
from tests.support.processes import PYTHON, free_port, running, wait_http

# Prices with at most 4 decimals per million, so every cost is exact at the ledger's 1e-10.
PRICES = {
    "input_price_per_million": Decimal("0.15"),
    "cached_input_price_per_million": Decimal("0.075"),
    "output_price_per_million": Decimal("0.60"),
}


@dataclasses.dataclass
class Simulator:
    """A running simulator process: where it listens and what it has seen and billed."""

    url: str  # http://127.0.0.1:<port>
    proc: subprocess.Popen[bytes]

    @property
    def base_url(self) -> str:
        """What a Provider's base_url should be (the OpenAI SDK appends /chat/completions)."""
        return f"{self.url}/v1"

    def stats(self) -> dict[str, Any]:
        """`GET /stats`: calls, errors, billed_calls, prompt/cached/completion tokens, traced_calls; the same
        per upstream model name in `models`; `api_keys`: calls per key fingerprint (never the key)."""
        response = httpx.get(f"{self.url}/stats", timeout=10)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def model_stats(self, model_name: str) -> dict[str, int]:
        names = (
            "calls",
            "errors",
            "billed_calls",
            "prompt_tokens",
            "cached_tokens",
            "completion_tokens",
            "traced_calls",
        )
        return self.stats()["models"].get(model_name, dict.fromkeys(names, 0))

    def calls(self, model_name: str | None = None) -> int:
        """Requests the simulator received (failed ones included), in total or for one upstream model."""
        return int(self.stats()["calls"] if model_name is None else self.model_stats(model_name)["calls"])

    def reset(self) -> None:
        httpx.post(f"{self.url}/stats/reset", timeout=10).raise_for_status()


@pytest.fixture(scope="session")
def simulator_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    port = free_port()
    log = tmp_path_factory.mktemp("simulator") / "simulator.log"
    argv = [PYTHON, "manage.py", "run_simulator", "--host", "127.0.0.1", "--port", str(port)]
    with running(argv, log=log) as proc:
        wait_http(f"http://127.0.0.1:{port}/stats", timeout=60, proc=proc)
        yield Simulator(url=f"http://127.0.0.1:{port}", proc=proc)


@pytest.fixture
def simulator(simulator_server: Simulator) -> Simulator:
    if simulator_server.proc.poll() is not None:
        raise RuntimeError(f"the simulator process exited with {simulator_server.proc.returncode}")
    simulator_server.reset()
    return simulator_server


def sim_provider(
    simulator: Simulator | None,
    workspace: Workspace,
    *,
    name: str = "Simulator",
    config: dict[str, Any] | None = None,
    api_key: str | None = None,
    timeout_s: float = 10.0,
    max_retries: int = 2,
) -> Provider:
    """A simulator Provider: over HTTP to `simulator`, or in-process when `simulator` is None."""
    return provider_create(
        workspace=workspace,
        name=name,
        kind=Provider.Kind.SIMULATOR,
        base_url=simulator.base_url if simulator is not None else "",
        api_key=api_key,
        timeout_s=timeout_s,
        max_retries=max_retries,
        config=config or {},
    )


def sim_model(provider: Provider, *, alias: str, name: str | None = None, **fields: Any) -> Model:
    """A Model on `provider`; upstream name defaults to f"sim-{alias}", prices to PRICES."""
    return model_create(
        workspace=provider.workspace,
        provider=provider,
        name=name or f"sim-{alias}",
        alias=alias,
        **{**PRICES, **fields},
    )


def sim_configure(provider: Provider, config: dict[str, Any]) -> Provider:
    """Replace a simulator provider's knobs (through the service, so every process rebuilds its client)."""
    return provider_update(provider=provider, config=config)


def slow(seconds: float, *, per_token_ms: float = 0) -> dict[str, Any]:
    return {"latency_first_ms": int(seconds * 1000), "latency_per_token_ms": per_token_ms}


def always(status: int, *, retry_after: str | None = None) -> dict[str, Any]:
    return {"status": status, **({"retry_after": retry_after} if retry_after is not None else {})}


def fail_first(n: int, *, status: int = 500, retry_after: str | None = None) -> dict[str, Any]:
    return {"fail_first": n, **always(status, retry_after=retry_after)}


def failing(rate: float, *, seed: int | str = 0, statuses: list[int] | None = None) -> dict[str, Any]:
    return {"failure_rate": rate, "failure_seed": seed, "failure_status": statuses or [500, 503]}


def invalid_json_first(n: int) -> dict[str, Any]:
    return {"invalid_json_first": n}


def truncate_after(tokens: int) -> dict[str, Any]:
    return {"truncate_after": tokens}


def malformed() -> dict[str, Any]:
    return {"malformed": True}


__all__ = [
    "PRICES",
    "Simulator",
    "always",
    "fail_first",
    "failing",
    "free_port",
    "invalid_json_first",
    "malformed",
    "sim_configure",
    "sim_model",
    "sim_provider",
    "simulator",
    "simulator_server",
    "slow",
    "truncate_after",
]
