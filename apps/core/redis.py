"""The one way Keel code reaches Redis: the django-redis connection behind the default cache.

With REDIS_URL unset this is an in-process fakeredis, so throttles, the circuit breaker and
events work the same in the embedded demo as in production.
"""

from __future__ import annotations

from django_redis import get_redis_connection
from redis import Redis


def get_redis() -> Redis:
    return get_redis_connection("default")
