"""The floor's endpoints (see bench/floor/__init__.py). Served only by the bench's own server."""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from openai import OpenAI
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core import views as core_views

SIMULATOR_URL_ENV = "KEEL_BENCH_FLOOR_SIMULATOR_URL"
KNOBS_HEADER = "X-Keel-Simulator"

_lock = threading.Lock()
_client: OpenAI | None = None


def _openai() -> OpenAI:
    global _client
    with _lock:
        if _client is None:
            _client = OpenAI(api_key="bench", base_url=f"{os.environ[SIMULATOR_URL_ENV]}/v1", timeout=30, max_retries=0)
        return _client


def _complete(body: dict[str, Any]) -> dict[str, Any]:
    """The chat completion a one-step `llm` run of the bench sends, and what a caller would want of it."""
    latency = int(body.get("latency_ms") or 0)
    completion = _openai().chat.completions.create(
        model="sim-model",
        messages=[{"role": "user", "content": str(body.get("text", ""))}],
        max_tokens=32,
        temperature=0.7,
        extra_headers={KNOBS_HEADER: json.dumps({"latency_first_ms": latency} if latency else {})},
    )
    usage = completion.usage
    return {
        "output": completion.choices[0].message.content,
        "input_tokens": usage.prompt_tokens if usage else 0,
        "output_tokens": usage.completion_tokens if usage else 0,
    }


@csrf_exempt
def django_only(request: HttpRequest) -> JsonResponse:
    body = json.loads(request.body or b"{}")
    return JsonResponse({"status": "succeeded", "output": str(body.get("text", ""))})


@csrf_exempt
def django_sdk(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "succeeded", **_complete(json.loads(request.body or b"{}"))})


class ApiOnly(APIView):
    """Keel's REST_FRAMEWORK defaults apply: the same authentication, permission and throttle as runs."""

    def post(self, request: Request) -> Response:
        return Response({"status": "succeeded", "output": str(request.data.get("text", ""))})


class ApiSdk(APIView):
    def post(self, request: Request) -> Response:
        return Response({"status": "succeeded", **_complete(request.data)})


urlpatterns = [
    path("healthz", core_views.healthz),
    path("floor/django", django_only),
    path("floor/sdk", django_sdk),
    path("floor/api", ApiOnly.as_view()),
    path("floor/api-sdk", ApiSdk.as_view()),
]
