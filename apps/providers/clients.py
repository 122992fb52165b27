"""One `openai` client per provider per process, rebuilt when the provider changes.

The cache is keyed on (provider id, updated_at): editing a provider's key, base URL, timeout or
simulator knobs moves `updated_at`, so the next call in every process (web or worker) builds a
fresh client; an unchanged provider keeps its client and its connection pool.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from uuid import UUID

import httpx2
from openai import AzureOpenAI, OpenAI

from apps.providers.crypto import secret_decrypt
from apps.providers.models import Provider
from apps.providers.simulator import KNOBS_HEADER, SimulatorTransport

# The SDK insists on a key; servers that need none (a local OpenAI-compatible one, the simulator)
# get this stand-in, and a server that does need one answers 401 with a clear message.
NO_KEY = "keel-no-api-key"
IN_PROCESS_SIMULATOR_URL = "http://simulator.keel.invalid/v1"
DEFAULT_AZURE_API_VERSION = "2024-10-21"

_lock = threading.Lock()
_clients: dict[UUID, tuple[dt.datetime, OpenAI]] = {}


def client_for(provider: Provider) -> OpenAI:
    """The process's client for this provider version. Raises crypto.SecretUnreadable for an unreadable key."""
    with _lock:
        cached = _clients.get(provider.pk)
    if cached is not None and cached[0] == provider.updated_at:
        return cached[1]
    client = _build(provider)
    with _lock:
        # An older client is dropped, not closed: another thread may still be mid-request on it.
        _clients[provider.pk] = (provider.updated_at, client)
    return client


def _build(provider: Provider) -> OpenAI:
    api_key = secret_decrypt(provider.api_key_encrypted) if provider.api_key_encrypted else NO_KEY
    headers: dict[str, str] = {}
    http_client: httpx2.Client | None = None
    base_url: str | None = provider.base_url or None
    if provider.kind == Provider.Kind.SIMULATOR:
        if provider.config:
            headers[KNOBS_HEADER] = json.dumps(provider.config, sort_keys=True)
        if base_url is None:
            http_client = httpx2.Client(transport=SimulatorTransport())
            base_url = IN_PROCESS_SIMULATOR_URL
    default_headers = headers or None
    if provider.kind == Provider.Kind.AZURE_OPENAI:
        return AzureOpenAI(
            azure_endpoint=provider.base_url,
            api_key=api_key,
            api_version=str(provider.config.get("api_version") or DEFAULT_AZURE_API_VERSION),
            http_client=http_client,
            timeout=provider.timeout_s,
            max_retries=0,
            default_headers=default_headers,
        )
    return OpenAI(
        api_key=api_key,
        base_url=base_url,
        http_client=http_client,
        timeout=provider.timeout_s,
        max_retries=0,  # Keel's own loop retries (backoff, Retry-After, breaker, ledger per attempt)
        default_headers=default_headers,
    )


def clients_clear() -> None:
    """Forget every cached client (tests; a process that must re-read every provider)."""
    with _lock:
        _clients.clear()
