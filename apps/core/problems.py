"""Every error Keel answers is `application/problem+json` (RFC 9457) with a stable `code`.

Services raise `Problem` subclasses; the DRF exception handler and Django's error handlers turn
those, DRF's own exceptions and anything unexpected into one body shape:
`{type, title, status, detail, code[, errors][, request_id]}`.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import structlog
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions as drf
from rest_framework.response import Response

from apps.core.db import RETRY_AFTER_S, database_unavailable

logger = structlog.get_logger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"

TITLES: dict[str, str] = {
    "validation_error": "The request is not valid.",
    "authentication_failed": "Authentication failed.",
    "permission_denied": "You may not do this.",
    "not_found": "Not found.",
    "method_not_allowed": "Method not allowed.",
    "not_acceptable": "Cannot answer in an acceptable format.",
    "conflict": "Conflict with the current state.",
    "payload_too_large": "The request body is too large.",
    "unsupported_media_type": "Unsupported content type.",
    "idempotency_mismatch": "The idempotency key was used with a different request.",
    "budget_exceeded": "A budget has no room for this.",
    "rate_limited": "Too many requests.",
    "service_unavailable": "The service is unavailable.",
    "internal_error": "Internal server error.",
}


# Too much load for the database connections there are (KEEL_DB_POOL_MAX_SIZE, PostgreSQL's
# max_connections), or the database is down: nothing the client did, and it passes.
DATABASE_UNAVAILABLE_DETAIL = "No database connection is free for this request now; retry after Retry-After seconds."


def problem_type(code: str) -> str:
    return f"urn:keel:problem:{code}"


class Problem(drf.APIException):
    """A failure with a stable code; raise from services, answered by the exception handler."""

    status_code = 400
    code = "validation_error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.detail_text = detail or TITLES.get(self.code, "Error.")
        self.errors = errors
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})
        super().__init__(self.detail_text)


class ValidationProblem(Problem):
    status_code, code = 400, "validation_error"


class PermissionProblem(Problem):
    status_code, code = 403, "permission_denied"


class NotFoundProblem(Problem):
    status_code, code = 404, "not_found"


class ConflictProblem(Problem):
    status_code, code = 409, "conflict"


class IdempotencyMismatch(Problem):
    status_code, code = 422, "idempotency_mismatch"


class BudgetExceeded(Problem):
    status_code, code = 402, "budget_exceeded"


class ServiceUnavailable(Problem):
    status_code, code = 503, "service_unavailable"


def problem_body(
    status: int,
    code: str,
    *,
    detail: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    request_id: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": problem_type(code),
        "title": TITLES.get(code, "Error."),
        "status": status,
        "detail": detail or TITLES.get(code, "Error."),
        "code": code,
    }
    if errors is not None:
        body["errors"] = errors
    if request_id:
        body["request_id"] = request_id
    if extra:
        body.update(extra)
    return body


def problem_response(
    status: int,
    code: str,
    *,
    detail: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    request: HttpRequest | None = None,
    headers: Mapping[str, str] | None = None,
) -> JsonResponse:
    """A plain Django response, for middleware and Django's own error handlers."""
    request_id = getattr(request, "request_id", None) if request is not None else None
    response = JsonResponse(
        problem_body(status, code, detail=detail, errors=errors, request_id=request_id),
        status=status,
        content_type=PROBLEM_CONTENT_TYPE,
    )
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def flatten_errors(detail: Any, prefix: str = "") -> list[dict[str, Any]]:
    """DRF's nested error structure as a flat list of `{"field": "a.b.0", "message": ...}`."""
    if isinstance(detail, Mapping):
        flat: list[dict[str, Any]] = []
        for key, value in detail.items():
            name = "" if key in ("non_field_errors", "__all__") else str(key)
            flat.extend(flatten_errors(value, f"{prefix}.{name}".strip(".") if name else prefix))
        return flat
    if isinstance(detail, list):
        if all(not isinstance(item, (Mapping, list)) for item in detail):
            return [{"field": prefix or None, "message": str(item)} for item in detail]
        flat = []
        for index, item in enumerate(detail):
            if item:
                flat.extend(flatten_errors(item, f"{prefix}.{index}" if prefix else str(index)))
        return flat
    return [{"field": prefix or None, "message": str(detail)}]


def _respond(
    status: int,
    code: str,
    context: Mapping[str, Any],
    *,
    detail: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Response:
    request = context.get("request")
    request_id = getattr(request, "request_id", None) if request is not None else None
    body = problem_body(status, code, detail=detail, errors=errors, request_id=request_id, extra=extra)
    return Response(body, status=status, headers=dict(headers or {}), content_type=PROBLEM_CONTENT_TYPE)


def exception_handler(exc: Exception, context: Mapping[str, Any]) -> Response:
    """DRF's EXCEPTION_HANDLER: every exception raised in an API view becomes problem+json."""
    if isinstance(exc, Problem):
        return _respond(
            exc.status_code,
            exc.code,
            context,
            detail=exc.detail_text,
            errors=exc.errors,
            headers=exc.headers,
            extra=exc.extra,
        )
    if isinstance(exc, drf.ValidationError):
        errors = flatten_errors(exc.detail)
        summary = "; ".join(f"{e['field']}: {e['message']}" if e["field"] else e["message"] for e in errors[:5])
        return _respond(400, "validation_error", context, detail=summary or None, errors=errors)
    if isinstance(exc, drf.ParseError):
        return _respond(400, "validation_error", context, detail=str(exc.detail), errors=[])
    if isinstance(exc, (drf.NotAuthenticated, drf.AuthenticationFailed)):
        return _respond(
            401,
            "authentication_failed",
            context,
            detail=str(exc.detail),
            headers={"WWW-Authenticate": 'Bearer realm="api"'},
        )
    if isinstance(exc, (drf.PermissionDenied, DjangoPermissionDenied)):
        detail = str(exc.detail) if isinstance(exc, drf.APIException) else None
        return _respond(403, "permission_denied", context, detail=detail)
    if isinstance(exc, (drf.NotFound, Http404)):
        return _respond(404, "not_found", context)
    if isinstance(exc, drf.MethodNotAllowed):
        return _respond(405, "method_not_allowed", context, detail=str(exc.detail))
    if isinstance(exc, drf.NotAcceptable):
        return _respond(406, "not_acceptable", context, detail=str(exc.detail))
    if isinstance(exc, drf.UnsupportedMediaType):
        return _respond(415, "unsupported_media_type", context, detail=f"{exc.detail} Send application/json.")
    if isinstance(exc, RequestDataTooBig):
        return _respond(413, "payload_too_large", context, detail="The request body is larger than the limit.")
    if isinstance(exc, drf.Throttled):
        wait = max(1, int(exc.wait or 1))  # type: ignore[attr-defined]  # set by DRF, not in its stubs
        return _respond(
            429,
            "rate_limited",
            context,
            detail=f"Rate limit reached; retry in {wait} s.",
            headers={"Retry-After": str(wait)},
        )
    if isinstance(exc, drf.APIException):
        return _respond(exc.status_code, str(exc.default_code), context, detail=str(exc.detail))
    if database_unavailable(exc):
        logger.warning("database_unavailable", view=type(context.get("view")).__name__, error=str(exc))
        return _respond(
            503,
            "service_unavailable",
            context,
            detail=DATABASE_UNAVAILABLE_DETAIL,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    logger.exception("unhandled_exception", view=type(context.get("view")).__name__)
    return _respond(500, "internal_error", context, detail="An unexpected error occurred; quote the request_id.")


# Django-level handlers, for paths that no API view answers (config/urls.py wires them).
def handler400(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return problem_response(400, "validation_error", request=request, detail=str(exception or "") or None)


def handler403(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return problem_response(403, "permission_denied", request=request)


def handler404(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return problem_response(404, "not_found", request=request, detail=f"No resource at {request.path}.")


def handler500(request: HttpRequest) -> JsonResponse:
    # Django calls this while handling the exception, so it is still the current one.
    if database_unavailable(sys.exc_info()[1] or Exception()):
        return problem_response(
            503,
            "service_unavailable",
            request=request,
            detail=DATABASE_UNAVAILABLE_DETAIL,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    return problem_response(
        500, "internal_error", request=request, detail="An unexpected error occurred; quote the request_id."
    )
