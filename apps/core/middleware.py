"""Request-level middleware: the request id every log line and response carries, and the body
size limit enforced before any view reads the body."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from apps.core.problems import problem_response

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class RequestIdMiddleware:
    """Keeps a well-formed incoming `X-Request-ID`, else makes one; echoes it on every response.

    Being outermost, it also reports the server's time for the request as `Server-Timing: app;dur=`
    (milliseconds), which benchmarks and browser dev tools read.

    The chosen id is written back into the request headers so that django-structlog's own
    middleware (which binds `request_id` to every log line) binds this same value.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        incoming = request.META.get("HTTP_X_REQUEST_ID", "")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        request.META["HTTP_X_REQUEST_ID"] = request_id
        request.request_id = request_id  # type: ignore[attr-defined]
        response = self.get_response(request)
        response["X-Request-ID"] = request_id
        response["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.2f}"
        return response


class RequestSizeLimitMiddleware:
    """413 for a declared body larger than KEEL_MAX_REQUEST_BYTES, before anything reads it.

    Bodies without a Content-Length (chunked) are caught by Django's DATA_UPLOAD_MAX_MEMORY_SIZE,
    which raises RequestDataTooBig; the problem handler maps that to the same 413.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        declared = request.META.get("CONTENT_LENGTH") or "0"
        try:
            length = int(declared)
        except ValueError:
            return problem_response(400, "validation_error", detail="Content-Length is not a number.")
        if length > settings.KEEL_MAX_REQUEST_BYTES:
            return problem_response(
                413,
                "payload_too_large",
                detail=f"The request body is {length} bytes; the limit is {settings.KEEL_MAX_REQUEST_BYTES}.",
            )
        return self.get_response(request)
