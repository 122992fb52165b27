"""Server-Sent Events for runs: the event log from a sequence number on, until `run.finished`.

The same tail serves `mode=stream` starts and `GET /runs/{id}/events/` (with `Last-Event-ID`).
It reads the database, so any process may serve any run; a reader in the process executing the
run is woken at each event, others poll every POLL_S.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any
from uuid import UUID

from django.conf import settings
from django.http import StreamingHttpResponse
from rest_framework.renderers import BaseRenderer
from rest_framework.utils.encoders import JSONEncoder

from apps.core.db import connection_release
from apps.runs.events import RUN_FINISHED, event_listener
from apps.runs.models import RunEvent

POLL_S = 0.25
KEEPALIVE_S = 15.0
BATCH = 500


class EventStreamRenderer(BaseRenderer):
    """Lets DRF accept `Accept: text/event-stream`; errors still go out as problem+json bodies."""

    media_type = "text/event-stream"
    format = "sse"
    charset = None

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        return b"" if data is None else json.dumps(data, cls=JSONEncoder).encode()


def sse_event(event: RunEvent) -> bytes:
    data = json.dumps(event.data, separators=(",", ":"), default=str)
    return f"id: {event.seq}\nevent: {event.type}\ndata: {data}\n\n".encode()


def event_tail(
    run_id: UUID, *, after_seq: int = 0, wake: threading.Event | None = None, max_s: float | None = None
) -> Iterator[bytes]:
    deadline = time.monotonic() + (settings.KEEL_SSE_MAX_S if max_s is None else max_s)
    last, last_sent = after_seq, time.monotonic()
    yield b"retry: 2000\n\n"
    while True:
        if wake is not None:
            wake.clear()
        batch = list(RunEvent.objects.filter(run_id=run_id, seq__gt=last).order_by("seq")[:BATCH])
        for event in batch:
            yield sse_event(event)
            last, last_sent = event.seq, time.monotonic()
            if event.type == RUN_FINISHED:
                return
        if len(batch) == BATCH:
            continue
        now = time.monotonic()
        if now >= deadline:
            return  # the client reconnects with Last-Event-ID
        if now - last_sent >= KEEPALIVE_S:
            yield b": keepalive\n\n"
            last_sent = now
        connection_release()  # an idle stream holds no pooled connection (apps/core/db.py)
        if wake is not None:
            wake.wait(POLL_S * 4)
        else:
            time.sleep(POLL_S)


def run_event_stream(run_id: UUID, *, after_seq: int = 0) -> Iterator[bytes]:
    with event_listener(run_id) as wake:
        yield from event_tail(run_id, after_seq=after_seq, wake=wake)


def sse_response(stream: Iterator[bytes], *, status: int = 200) -> StreamingHttpResponse:
    response = StreamingHttpResponse(stream, status=status, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass events through as they come
    return response
