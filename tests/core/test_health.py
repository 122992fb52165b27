from __future__ import annotations

import json

import pytest

from tests.support.processes import manage

pytestmark = pytest.mark.django_db

# Ask the real readiness view, in a fresh process whose settings point somewhere closed.
PROBE = (
    "import json; from django.test import Client; r = Client().get('/readyz'); print(r.status_code, r.content.decode())"
)


def test_healthz_answers_200(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz_answers_200_with_every_check_ok(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {
        "database": {"status": "ok"},
        "redis": {"status": "ok"},
        "migrations": {"status": "ok"},
    }


def _probe(env: dict[str, str | None]) -> tuple[int, dict]:
    result = manage("shell", "-c", PROBE, env={"ALLOWED_HOSTS": "testserver", **env})
    assert result.returncode == 0, result.stderr[-2000:]
    status, _, body = result.stdout.strip().splitlines()[-1].partition(" ")
    return int(status), json.loads(body)


@pytest.mark.integration
def test_readyz_names_the_database_when_postgres_is_unreachable():
    status, body = _probe({"DATABASE_URL": "postgres://postgres@127.0.0.1:1/keel"})
    assert status == 503
    assert body["checks"]["database"]["status"] == "fail"
    assert body["checks"]["redis"]["status"] == "ok"


@pytest.mark.integration
def test_readyz_names_redis_when_redis_is_unreachable(django_db_setup):
    from django.db import connection

    test_db = connection.settings_dict["NAME"]
    status, body = _probe(
        {"REDIS_URL": "redis://127.0.0.1:1/0", "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{test_db}"}
    )
    assert status == 503
    assert body["checks"]["redis"]["status"] == "fail"
    assert body["checks"]["database"]["status"] == "ok"
