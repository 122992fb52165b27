from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import django_filters
from django.conf import settings
from django.db.models import QuerySet
from django.http import HttpResponseBase
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.tenancy import WorkspaceScopedMixin, get_actor
from apps.core.db import connection_release
from apps.core.problems import ValidationProblem
from apps.runs.models import Run
from apps.runs.serializers import RunSerializer, RunSummarySerializer, run_body
from apps.runs.services import (
    idempotency_response_store,
    run_cancel,
    run_execute_in_thread,
    run_retry,
    run_start,
)
from apps.runs.streaming import EventStreamRenderer, run_event_stream, sse_response
from apps.workflows.selectors import workflow_get


def _problem(what: str) -> OpenApiResponse:
    return OpenApiResponse(description=f"application/problem+json: {what}")


_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
MAX_METADATA_BYTES = 16_384


def _location(run: Run) -> str:
    return f"/api/v1/runs/{run.pk}/"


def _run_for_body(run: Run) -> Run:
    return Run.objects.select_related("workflow", "workflow_version").prefetch_related("steps").get(pk=run.pk)


class RunStartSerializer(serializers.Serializer[Any]):
    input = serializers.JSONField(help_text="The run input, validated against the workflow's input_schema.")
    mode = serializers.ChoiceField(choices=Run.Mode.choices, required=False)
    wait_s = serializers.FloatField(
        required=False,
        min_value=0,
        max_value=settings.KEEL_RUN_MAX_WAIT_S,
        help_text="mode=sync: answer 202 if the run has not finished after this many seconds.",
    )
    metadata = serializers.JSONField(required=False)

    def validate_metadata(self, value: Any) -> Any:
        if not isinstance(value, dict):
            raise serializers.ValidationError("must be a JSON object")
        if len(json.dumps(value)) > MAX_METADATA_BYTES:
            raise serializers.ValidationError(f"must be at most {MAX_METADATA_BYTES} bytes as JSON")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(self.initial_data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError({name: "unknown field" for name in unknown})
        return attrs


def _fingerprint(slug: str, body: Any) -> str:
    canonical = json.dumps({"workflow": slug, "body": body}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class WorkflowRunsView(APIView):
    """Start a run of a workflow's latest version."""

    renderer_classes = [JSONRenderer, EventStreamRenderer]

    @extend_schema(
        operation_id="workflows_runs_create",
        request=RunStartSerializer,
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                description="Same key and body within 24 h: the first response; different body: 422; "
                "first still in flight: 409.",
            )
        ],
        responses={
            200: OpenApiResponse(
                RunSerializer, description="sync: the finished run (also when it failed); stream: text/event-stream"
            ),
            202: OpenApiResponse(RunSerializer, description="async, or sync past wait_s; Location: the run"),
            400: _problem("validation_error, every input error listed as input.<path>"),
            402: _problem("budget_exceeded, a blocking budget has no room"),
            404: _problem("not_found, no such workflow in the workspace"),
            409: _problem("conflict, the workflow is archived or the Idempotency-Key's first request is in flight"),
            422: _problem("idempotency_mismatch, the key was used with a different request"),
        },
    )
    def post(self, request: Request, slug: str) -> HttpResponseBase:
        actor = get_actor(request)
        workflow = workflow_get(workspace_id=actor.workspace.pk, slug=slug)
        if not isinstance(request.data, dict):
            raise ValidationProblem(
                "The body is a JSON object.", errors=[{"field": None, "message": "expected an object"}]
            )
        data = RunStartSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        key = request.headers.get("Idempotency-Key")
        if key is not None and not _IDEMPOTENCY_KEY.match(key):
            raise ValidationProblem(
                "The Idempotency-Key header is not valid.",
                errors=[{"field": "Idempotency-Key", "message": "1 to 255 visible ASCII characters"}],
            )
        started = run_start(
            workflow=workflow,
            actor=actor,
            input=data.validated_data["input"],
            mode=data.validated_data.get("mode"),
            metadata=data.validated_data.get("metadata"),
            idempotency_key=key,
            fingerprint=_fingerprint(slug, request.data),
            request_id=getattr(request, "request_id", "") or "",
            traceparent=request.headers.get("traceparent"),
            claim=True,  # a sync or stream run executes here, now
        )
        run = started.run
        if started.replay is not None:
            code, replayed = started.replay
            return Response(replayed, status=code, headers={"Location": _location(run), "Idempotent-Replayed": "true"})
        if started.repeated:
            if run.mode == Run.Mode.STREAM:
                return sse_response(run_event_stream(run.pk))
            return Response(
                run_body(_run_for_body(run)), headers={"Location": _location(run), "Idempotent-Replayed": "true"}
            )

        if run.mode == Run.Mode.ASYNC:
            accepted = started.response[1] if started.response else run_body(run, steps=started.steps)
            return Response(accepted, status=status.HTTP_202_ACCEPTED, headers={"Location": _location(run)})
        # The run thread needs a connection while this thread waits and needs none (apps/core/db.py).
        connection_release()
        handle = run_execute_in_thread(started=started)
        if run.mode == Run.Mode.STREAM:
            return sse_response(run_event_stream(run.pk))
        finished = handle.wait(data.validated_data.get("wait_s", settings.KEEL_RUN_DEFAULT_WAIT_S))
        # The executor hands back the body it wrote with run.finished: the run as committed.
        body = handle.result if finished else None
        if body is None:
            fresh = _run_for_body(run)
            body = run_body(fresh)
            if not (finished and fresh.is_finished):
                return Response(body, status=status.HTTP_202_ACCEPTED, headers={"Location": _location(run)})
        idempotency_response_store(run=run, status=200, body=body)
        return Response(body, status=status.HTTP_200_OK, headers={"Location": _location(run)})


class RunFilter(django_filters.FilterSet):
    workflow = django_filters.CharFilter(field_name="workflow__slug", help_text="workflow slug")
    status = django_filters.ChoiceFilter(choices=Run.Status.choices)
    created_after = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Run
        fields = ["workflow", "status", "created_after", "created_before"]


class RunViewSet(WorkspaceScopedMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Runs of the caller's workspace: list, detail, live events, cancel, retry."""

    scoped_model = Run
    serializer_class = RunSerializer
    filterset_class = RunFilter

    def refine_queryset(self, queryset: QuerySet[Any]) -> QuerySet[Any]:
        queryset = queryset.select_related("workflow", "workflow_version")
        return queryset if self.action == "list" else queryset.prefetch_related("steps")

    def get_serializer_class(self) -> type[serializers.BaseSerializer[Any]]:
        return RunSummarySerializer if self.action == "list" else RunSerializer

    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """A run with its steps and usage."""
        # run_body is RunSerializer's output built without DRF's per-field machinery (polled often).
        return Response(run_body(self.get_object()))

    @extend_schema(
        parameters=[
            OpenApiParameter("Last-Event-ID", OpenApiTypes.INT, OpenApiParameter.HEADER, description="replay after"),
            OpenApiParameter("last_event_id", OpenApiTypes.INT, description="the same, for clients without headers"),
        ],
        responses={(200, "text/event-stream"): OpenApiTypes.STR},
    )
    @action(detail=True, methods=["get"], renderer_classes=[EventStreamRenderer, JSONRenderer])
    def events(self, request: Request, pk: str) -> HttpResponseBase:
        """Server-Sent Events: run.started, step.started, step.delta, step.finished, run.finished (then the
        stream ends). Each has an `id:`; send `Last-Event-ID` to continue after it."""
        run = self.get_object()
        raw = request.headers.get("Last-Event-ID") or request.query_params.get("last_event_id") or "0"
        if not raw.isdigit():
            raise ValidationProblem(
                "Last-Event-ID is an event id.", errors=[{"field": "Last-Event-ID", "message": "a whole number"}]
            )
        return sse_response(run_event_stream(run.pk, after_seq=int(raw)))

    @extend_schema(
        request=None, responses={200: RunSerializer, 202: RunSerializer, 409: _problem("conflict, already finished")}
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        """Cancel: 200 with the cancelled run, 202 while a running run is stopping, 409 once finished."""
        run = run_cancel(run=self.get_object())
        code = status.HTTP_200_OK if run.is_finished else status.HTTP_202_ACCEPTED
        return Response(run_body(_run_for_body(run)), status=code)

    @extend_schema(
        request=None, responses={202: RunSerializer, 409: _problem("conflict, the run is not failed or cancelled")}
    )
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str) -> Response:
        """A new run (async) of the same version and input, reusing the succeeded steps' outputs."""
        retry = run_retry(run=self.get_object(), actor=self.actor, request_id=getattr(request, "request_id", ""))
        return Response(
            run_body(_run_for_body(retry)), status=status.HTTP_202_ACCEPTED, headers={"Location": _location(retry)}
        )
