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


def _connect_to_a_database_that_is_down() -> None:
    """Raise what Django raises when PostgreSQL cannot be reached: connect to a port nobody serves."""
    from django.db import connection
    from django.db.backends.postgresql.base import DatabaseWrapper

    from tests.support.processes import free_port

    down = DatabaseWrapper({**connection.settings_dict, "PORT": str(free_port()), "OPTIONS": {}}, alias="down")
    try:
        down.ensure_connection()
    finally:
        down.close()


class DatabaseDownView(APIView):
    authentication_classes: list = []
    permission_classes: list = []

    def get(self, request: Request) -> Response:
        _connect_to_a_database_that_is_down()
        return Response({})


def plain_database_down(request: HttpRequest) -> HttpResponse:
    _connect_to_a_database_that_is_down()
    return HttpResponse()


urlpatterns = [
    path("api/v1/boom/", BoomView.as_view()),
    path("plain-boom/", plain_boom),
    path("api/v1/database-down/", DatabaseDownView.as_view()),
    path("plain-database-down/", plain_database_down),
    *keel_urlpatterns,
]

handler404 = "apps.core.problems.handler404"
handler500 = "apps.core.problems.handler500"
