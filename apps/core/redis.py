"""The one way Keel code reaches Redis: the django-redis connection behind the default cache.

With REDIS_URL unset this is an in-process fakeredis, so throttles, the circuit breaker and
events work the same in the embedded demo as in production.
"""

from __future__ import annotations

from django.core.signals import setting_changed
from django.dispatch import receiver
from django_redis import get_redis_connection
from redis import Redis

# The client is thread-safe (each command takes a connection from its pool), so the process keeps
# one: looking it up through django-redis costs more CPU than a Redis command does, and the
# gateway, throttles and events ask for it several times per run.
_client: Redis | None = None


def get_redis() -> Redis:
    global _client
    if _client is None:
        _client = get_redis_connection("default")
    return _client


@receiver(setting_changed)
def _forget(*, setting: str, **kwargs: object) -> None:
    global _client
    if setting in ("CACHES", "REDIS_URL"):
        _client = None
