"""Helpers shared by the runs tests: SSE parsing and bounded waits."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from apps.runs.models import Run


def parse_sse(text: str) -> list[dict[str, Any]]:
    """A text/event-stream body as [{"id", "event", "data"}] (comments and retry lines skipped)."""
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":") or ":" not in line:
                continue
            name, _, value = line.partition(":")
            fields[name] = value.strip()
        if "event" in fields:
            events.append({"id": int(fields["id"]), "event": fields["event"], "data": json.loads(fields["data"])})
    return events


def sse_events(response: Any) -> list[dict[str, Any]]:
    """The events of a Django test-client streaming response (reads it to the end)."""
    return parse_sse(b"".join(response.streaming_content).decode())


def wait_for(predicate: Callable[[], Any], *, timeout: float, every: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def wait_for_status(run_id: Any, statuses: set[str], *, timeout: float) -> Run:
    def finished() -> Run | None:
        run = Run.objects.get(pk=run_id)
        return run if run.status in statuses else None

    return wait_for(finished, timeout=timeout, what=f"run {run_id} to reach {statuses}")
