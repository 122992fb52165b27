from __future__ import annotations

import datetime as dt

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from apps.accounts.models import ApiKey, Role
from apps.accounts.services import api_key_issue, api_key_revoke
from tests.support.tenancy import problem

pytestmark = pytest.mark.django_db


def _issue_with_command(workspace_slug: str, capsys: pytest.CaptureFixture[str]) -> str:
    call_command("create_api_key", "--workspace", workspace_slug, "--name", "ci", "--role", "admin")
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_key_printed_by_create_api_key_authenticates_me(workspace, capsys):
    token = _issue_with_command(workspace.slug, capsys)
    client = APIClient()
    response = client.get("/api/v1/me/", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200
    body = response.json()
    assert body["workspace"] == {"id": str(workspace.pk), "slug": "acme", "name": workspace.name}
    assert body["role"] == "admin"
    assert body["user"] is None
    assert body["api_key"]["name"] == "ci" and body["api_key"]["role"] == "admin"
    assert ApiKey.objects.get().last_used_at is not None


def test_database_holds_no_plaintext_secret(workspace, capsys):
    token = _issue_with_command(workspace.slug, capsys)
    secret_part = token.rsplit("_", 1)[-1]
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM accounts_apikey")
        rows = cursor.fetchall()
    dumped = repr(rows)
    assert len(rows) == 1
    assert token not in dumped and secret_part not in dumped


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Bearer ",
        "Bearer keel_000000000000_wrongsecret",
        "Bearer not-a-keel-token",
    ],
    ids=["missing", "empty", "wrong", "malformed"],
)
def test_missing_or_wrong_key_gets_401_problem(workspace, header):
    api_key_issue(workspace=workspace, name="real")
    client = APIClient()
    kwargs = {"HTTP_AUTHORIZATION": header} if header else {}
    response = client.get("/api/v1/me/", **kwargs)
    problem(response, 401, "authentication_failed")
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_right_prefix_with_wrong_secret_gets_401(workspace):
    issued = api_key_issue(workspace=workspace, name="real")
    forged = issued.token[:-4] + ("AAAA" if not issued.token.endswith("AAAA") else "BBBB")
    response = APIClient().get("/api/v1/me/", HTTP_AUTHORIZATION=f"Bearer {forged}")
    problem(response, 401, "authentication_failed")


def test_revoked_key_gets_401(workspace):
    issued = api_key_issue(workspace=workspace, name="old")
    api_key_revoke(api_key=issued.api_key)
    response = APIClient().get("/api/v1/me/", HTTP_AUTHORIZATION=f"Bearer {issued.token}")
    problem(response, 401, "authentication_failed")


def test_expired_key_gets_401(workspace):
    issued = api_key_issue(workspace=workspace, name="old", expires_at=timezone.now() - dt.timedelta(seconds=1))
    response = APIClient().get("/api/v1/me/", HTTP_AUTHORIZATION=f"Bearer {issued.token}")
    problem(response, 401, "authentication_failed")


def test_create_api_key_refuses_unknown_workspace(db):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="No workspace"):
        call_command("create_api_key", "--workspace", "nope", "--name", "x")


def test_api_created_key_shows_secret_once_and_works(workspace):
    admin = APIClient()
    admin.credentials(
        HTTP_AUTHORIZATION=f"Bearer {api_key_issue(workspace=workspace, name='a', role=Role.ADMIN).token}"
    )
    created = admin.post("/api/v1/api-keys/", {"name": "robot", "role": "member"}, format="json")
    assert created.status_code == 201
    secret = created.json()["secret"]
    listed = admin.get("/api/v1/api-keys/").json()["results"]
    assert all("secret" not in item for item in listed)
    me = APIClient().get("/api/v1/me/", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert me.json()["api_key"]["name"] == "robot"
    assert admin.delete(f"/api/v1/api-keys/{created.json()['id']}/").status_code == 204
    problem(APIClient().get("/api/v1/me/", HTTP_AUTHORIZATION=f"Bearer {secret}"), 401, "authentication_failed")


def test_member_key_cannot_manage_keys(workspace):
    member = APIClient()
    member.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_issue(workspace=workspace, name='m').token}")
    problem(member.get("/api/v1/api-keys/"), 403, "permission_denied")
    problem(member.post("/api/v1/api-keys/", {"name": "x"}, format="json"), 403, "permission_denied")


def test_session_user_sees_own_workspace_in_me(workspace):
    from tests.support.tenancy import session_client

    response = session_client(workspace).get("/api/v1/me/")
    assert response.status_code == 200
    assert response.json()["workspace"]["slug"] == "acme" and response.json()["role"] == "owner"
