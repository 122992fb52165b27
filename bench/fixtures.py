"""The bench workspace: an admin key (via accounts services) and, through Keel's own REST API,
simulator providers, models, a blocking budget and the workflows the scenarios run."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

# One provider per simulated latency: the knobs are the provider's config (sent to the simulator).
LATENCIES_MS = (0, 100)
STREAM_PER_TOKEN_MS = 5
PRICES = {
    "input_price_per_million": "0.15",
    "cached_input_price_per_million": "0.075",
    "output_price_per_million": "0.60",
}


@dataclass
class Fixtures:
    token: str
    workspace_id: str
    staff_email: str
    staff_password: str


def create_principal() -> Fixtures:
    import secrets

    from apps.accounts.models import Role, User
    from apps.accounts.services import api_key_issue, workspace_create

    password = secrets.token_urlsafe(16)
    staff = User.objects.create_superuser("bench@keel.local", password)
    workspace = workspace_create(slug="bench", name="Benchmarks", owner=staff)
    token = api_key_issue(workspace=workspace, name="bench", role=Role.ADMIN, created_by=staff).token
    return Fixtures(token=token, workspace_id=str(workspace.pk), staff_email=staff.email, staff_password=password)


def _post(client: httpx.Client, path: str, body: dict) -> dict:
    response = client.post(path, json=body)
    if response.status_code >= 300:
        raise RuntimeError(f"POST {path} -> {response.status_code}: {response.text[:500]}")
    return response.json()


def llm_workflow(slug: str, model: str, *, temperature: float, cache: bool = False) -> dict:
    step: dict = {
        "id": "answer",
        "type": "llm",
        "model": model,
        "prompt": "{{ input.text }}",
        "temperature": temperature,
        "max_tokens": 32,
        "retries": 0,
    }
    if cache:
        step["cache"] = {"ttl_s": 3600}
    return {
        "slug": slug,
        "name": slug,
        "input_schema": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
        "steps": [step],
        "output": {"answer": "{{ steps.answer.output }}"},
        "default_mode": "sync",
    }


def create_resources(base_url: str, token: str, simulator_url: str) -> None:
    with httpx.Client(base_url=f"{base_url}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=30) as api:
        for latency in LATENCIES_MS:
            provider = _post(
                api,
                "/providers/",
                {
                    "name": f"sim-{latency}ms",
                    "kind": "simulator",
                    "base_url": f"{simulator_url}/v1",
                    "timeout_s": 30,
                    "max_retries": 0,
                    "config": {"latency_first_ms": latency},
                },
            )
            _post(
                api, "/models/", {"provider": provider["id"], "name": "sim-model", "alias": f"sim{latency}", **PRICES}
            )
        stream_provider = _post(
            api,
            "/providers/",
            {
                "name": "sim-stream",
                "kind": "simulator",
                "base_url": f"{simulator_url}/v1",
                "timeout_s": 30,
                "max_retries": 0,
                "config": {"latency_per_token_ms": STREAM_PER_TOKEN_MS},
            },
        )
        _post(api, "/models/", {"provider": stream_provider["id"], "name": "sim-model", "alias": "simstream", **PRICES})
        _post(
            api,
            "/budgets/",
            {"scope": "workspace", "scope_id": None, "period": "month", "limit_usd": "1000000", "action": "block"},
        )
        for latency in LATENCIES_MS:
            _post(api, "/workflows/", llm_workflow(f"sync-{latency}", f"sim{latency}", temperature=0.7))
        _post(api, "/workflows/", llm_workflow("cached", "sim0", temperature=0, cache=True))
        _post(api, "/workflows/", llm_workflow("stream", "simstream", temperature=0.7))


SLOW_MS = 1500


def create_slow_workflow(base_url: str, token: str, simulator_url: str) -> None:
    """A workflow whose provider takes SLOW_MS, to hold many runs in flight for the memory measurement."""
    with httpx.Client(base_url=f"{base_url}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=30) as api:
        provider = _post(
            api,
            "/providers/",
            {
                "name": "sim-slow",
                "kind": "simulator",
                "base_url": f"{simulator_url}/v1",
                "timeout_s": 30,
                "max_retries": 0,
                "config": {"latency_first_ms": SLOW_MS},
            },
        )
        _post(api, "/models/", {"provider": provider["id"], "name": "sim-model", "alias": "simslow", **PRICES})
        _post(api, "/workflows/", llm_workflow("slow", "simslow", temperature=0.7))
