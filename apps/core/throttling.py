"""Per-principal rate limit: a fixed window counter in Redis (one INCR per request).

DRF's SimpleRateThrottle keeps a list of timestamps per client and rewrites it on every request;
a counter is one round trip and cannot lose increments under concurrency.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from django.conf import settings
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from apps.core.redis import get_redis

if TYPE_CHECKING:
    from rest_framework.views import APIView

_PERIODS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600, "d": 86400, "day": 86400}


def parse_rate(rate: str) -> tuple[int, int]:
    count, _, period = rate.partition("/")
    return int(count), _PERIODS[period]


class PrincipalRateThrottle(BaseThrottle):
    """Limits each API key (or signed-in user, or anonymous address) to KEEL_API_THROTTLE_RATE."""

    def __init__(self) -> None:
        self.wait_seconds = 0.0

    def principal(self, request: Request) -> str:
        api_key = getattr(request, "auth", None)
        key_id = getattr(api_key, "pk", None)
        if key_id is not None:
            return f"key:{key_id}"
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            return f"user:{user.pk}"
        return f"addr:{self.get_ident(request)}"

    def allow_request(self, request: Request, view: APIView) -> bool:
        limit, period = parse_rate(settings.KEEL_API_THROTTLE_RATE)
        now = time.time()
        window = int(now // period)
        key = f"keel:throttle:{self.principal(request)}:{window}"
        pipe = get_redis().pipeline()
        pipe.incr(key)
        pipe.expire(key, period + 1)
        count = pipe.execute()[0]
        if count <= limit:
            return True
        self.wait_seconds = (window + 1) * period - now
        return False

    def wait(self) -> float:
        return self.wait_seconds
