"""The exact-match response cache (Redis, through django-redis).

Key: a hash of (workspace, provider, upstream model name, messages, parameters, response schema),
so an answer is never served to another workspace, another model, or a different request.
A lookup or store that fails (Redis down) is a miss, never an error: the call goes to the model.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any
from uuid import UUID

import structlog
from django.core.cache import cache
from redis.exceptions import RedisError

logger = structlog.get_logger(__name__)


def response_cache_key(
    *,
    workspace_id: UUID,
    provider_id: UUID,
    model_name: str,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    response_schema: dict[str, Any] | None,
) -> str:
    basis = {
        "workspace": str(workspace_id),
        "provider": str(provider_id),
        "model": model_name,
        "messages": messages,
        "params": params,
        "response_schema": response_schema,
    }
    digest = hashlib.sha256(json.dumps(basis, sort_keys=True, default=str).encode()).hexdigest()
    return f"gateway:response:{digest}"


def response_cache_get(key: str) -> dict[str, Any] | None:
    try:
        value = cache.get(key)
    except RedisError as exc:
        logger.warning("response_cache_unavailable", error=str(exc))
        return None
    return value if isinstance(value, dict) else None


def response_cache_set(key: str, value: dict[str, Any], *, ttl_s: int) -> None:
    if ttl_s <= 0:
        return
    try:
        cache.set(key, value, timeout=ttl_s)
    except RedisError as exc:
        logger.warning("response_cache_unavailable", error=str(exc))
