"""The cross-workspace check every object endpoint must pass (reused by every app's tests).

Usage, in a test that created objects in `other` and holds a principal of `mine`:

    assert_other_workspace_gets_404(
        clients_of(mine),                     # an API-key client and a session client of workspace A
        [("get", f"/api/v1/runs/{run.id}/"), ("post", f"/api/v1/runs/{run.id}/cancel/", {})],
    )
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rest_framework.test import APIClient

from apps.accounts.models import Role, Workspace
from apps.accounts.services import api_key_issue, membership_set
from tests.support.factories import UserFactory

Endpoint = tuple[str, str] | tuple[str, str, Any]


def key_client(workspace: Workspace, role: str = Role.ADMIN) -> APIClient:
    client = APIClient()
    token = api_key_issue(workspace=workspace, name=f"test-{role}", role=role).token
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def session_client(workspace: Workspace, role: str = Role.OWNER) -> APIClient:
    user = UserFactory()
    membership_set(user=user, workspace=workspace, role=role)
    client = APIClient()
    client.force_login(user)
    return client


def clients_of(workspace: Workspace) -> dict[str, APIClient]:
    """The strongest principals of a workspace, one per authentication method."""
    return {"api key (admin)": key_client(workspace), "session (owner)": session_client(workspace)}


def assert_other_workspace_gets_404(clients: dict[str, APIClient], endpoints: Iterable[Endpoint]) -> None:
    failures: list[str] = []
    for label, client in clients.items():
        for endpoint in endpoints:
            method, url, *rest = endpoint
            body = rest[0] if rest else None
            kwargs: dict[str, Any] = {"format": "json"} if body is not None else {}
            response = (
                getattr(client, method)(url, body, **kwargs) if body is not None else getattr(client, method)(url)
            )
            ok = (
                response.status_code == 404
                and response["Content-Type"].startswith("application/problem+json")
                and response.json().get("code") == "not_found"
            )
            if not ok:
                failures.append(f"{label} {method.upper()} {url} -> {response.status_code} {response.content[:200]!r}")
    assert not failures, "cross-workspace access not refused with 404:\n" + "\n".join(failures)


def problem(response: Any, status: int, code: str) -> dict[str, Any]:
    """Assert a problem+json answer with this status and code; return its body."""
    assert response.status_code == status, (response.status_code, response.content[:500])
    assert response["Content-Type"].startswith("application/problem+json"), response["Content-Type"]
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert body["status"] == status and body["title"] and body["detail"] and body["type"], body
    return body


__all__: Sequence[str] = [
    "assert_other_workspace_gets_404",
    "clients_of",
    "key_client",
    "problem",
    "session_client",
]
