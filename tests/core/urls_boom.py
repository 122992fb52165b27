"""A URLconf for tests: Keel's URLs plus views that fail on purpose."""

from django.http import HttpRequest, HttpResponse
from django.urls import path
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.urls import urlpatterns as keel_urlpatterns


class BoomView(APIView):
    authentication_classes: list = []
    permission_classes: list = []

    def get(self, request: Request) -> Response:
        raise RuntimeError("secret internals: password=hunter2")


def plain_boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("secret internals in a plain view")


urlpatterns = [
    path("api/v1/boom/", BoomView.as_view()),
    path("plain-boom/", plain_boom),
    *keel_urlpatterns,
]

handler404 = "apps.core.problems.handler404"
handler500 = "apps.core.problems.handler500"
