"""A circuit breaker per model, with its state in Redis so every process shares it.

closed: calls go through; each failure counts, a success resets the count.
open: after KEEL_BREAKER_FAILURE_THRESHOLD consecutive failures, calls skip the model for
      KEEL_BREAKER_COOLDOWN_S.
half-open: after the cool-down exactly one call (the probe) goes through, claimed with SET NX so
      concurrent callers in any process cannot both probe; its success closes the breaker, its
      failure opens it for another cool-down. A probe that never reports (its process died)
      frees the slot after KEEL_BREAKER_PROBE_TTL_S.
If Redis is unreachable the breaker stays out of the way (calls go through): losing the
breaker must not take every model down with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import structlog
from django.conf import settings
from redis.exceptions import RedisError

from apps.core.redis import get_redis

logger = structlog.get_logger(__name__)
# Consecutive failures older than this no longer count (a model that failed yesterday is not "failing").
FAILURE_MEMORY_S = 3600


def _keys(model_id: UUID | str) -> tuple[str, str, str]:
    prefix = f"keel:breaker:{model_id}"
    return f"{prefix}:failures", f"{prefix}:open", f"{prefix}:probe"


@dataclass(frozen=True)
class BreakerCheck:
    allowed: bool
    # Nothing to reset on success: no failures were counted and this caller is not the probe. The
    # gateway then skips breaker_success, a Redis round trip on every successful call otherwise.
    clean: bool


def breaker_check(model_id: UUID | str) -> BreakerCheck:
    """May a call go to this model now (closed, or this caller won the half-open probe)?"""
    failures_key, open_key, probe_key = _keys(model_id)
    try:
        redis = get_redis()
        # One round trip on the common path (every call asks this).
        is_open, failures_count = redis.mget(open_key, failures_key)
        if is_open is not None:
            return BreakerCheck(allowed=False, clean=False)
        failures = int(failures_count or 0)
        if failures < settings.KEEL_BREAKER_FAILURE_THRESHOLD:
            return BreakerCheck(allowed=True, clean=failures == 0)
        ttl_ms = int(settings.KEEL_BREAKER_PROBE_TTL_S * 1000)
        return BreakerCheck(allowed=bool(redis.set(probe_key, "1", nx=True, px=ttl_ms)), clean=False)
    except RedisError as exc:
        logger.warning("breaker_unavailable", model_id=str(model_id), error=str(exc))
        return BreakerCheck(allowed=True, clean=False)


def breaker_allow(model_id: UUID | str) -> bool:
    """True if a call may go to this model now (closed, or this caller won the half-open probe)."""
    return breaker_check(model_id).allowed


def breaker_success(model_id: UUID | str) -> None:
    try:
        get_redis().delete(*_keys(model_id))
    except RedisError as exc:
        logger.warning("breaker_unavailable", model_id=str(model_id), error=str(exc))


def breaker_failure(model_id: UUID | str) -> bool:
    """Count a failure; True when the breaker is (now) open."""
    failures_key, open_key, probe_key = _keys(model_id)
    try:
        redis = get_redis()
        pipe = redis.pipeline()
        pipe.incr(failures_key)
        pipe.expire(failures_key, FAILURE_MEMORY_S)
        failures = int(pipe.execute()[0])
        if failures < settings.KEEL_BREAKER_FAILURE_THRESHOLD:
            return False
        pipe = redis.pipeline()
        pipe.set(open_key, str(failures), px=int(settings.KEEL_BREAKER_COOLDOWN_S * 1000))
        pipe.delete(probe_key)
        pipe.execute()
        return True
    except RedisError as exc:
        logger.warning("breaker_unavailable", model_id=str(model_id), error=str(exc))
        return False


def breaker_probe_release(model_id: UUID | str) -> None:
    """Give back a probe slot whose call was never sent (refused by a budget, cancelled)."""
    try:
        get_redis().delete(_keys(model_id)[2])
    except RedisError as exc:
        logger.warning("breaker_unavailable", model_id=str(model_id), error=str(exc))


def breaker_state(model_id: UUID | str) -> str:
    """closed, open or half_open (for the admin and tests)."""
    failures_key, open_key, _ = _keys(model_id)
    redis = get_redis()
    if redis.exists(open_key):
        return "open"
    if int(redis.get(failures_key) or 0) >= settings.KEEL_BREAKER_FAILURE_THRESHOLD:
        return "half_open"
    return "closed"
