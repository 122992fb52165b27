from __future__ import annotations

import pytest

from apps.accounts.services import api_key_issue
from tests.support.tenancy import assert_other_workspace_gets_404, clients_of, key_client

pytestmark = pytest.mark.django_db


def test_api_keys_of_another_workspace_answer_404(workspace, other_workspace):
    theirs = api_key_issue(workspace=other_workspace, name="theirs").api_key
    assert_other_workspace_gets_404(
        clients_of(workspace),
        [("get", f"/api/v1/api-keys/{theirs.pk}/"), ("delete", f"/api/v1/api-keys/{theirs.pk}/")],
    )
    theirs.refresh_from_db()
    assert theirs.revoked_at is None


def test_lists_show_only_own_workspace(workspace, other_workspace):
    api_key_issue(workspace=other_workspace, name="theirs")
    mine = key_client(workspace)
    names = {item["name"] for item in mine.get("/api/v1/api-keys/").json()["results"]}
    assert "theirs" not in names and names == {"test-admin"}


def test_the_helper_fails_when_an_endpoint_leaks(workspace, other_workspace):
    # The helper must be able to fail: /me/ answers 200 for anyone authenticated.
    with pytest.raises(AssertionError, match="not refused"):
        assert_other_workspace_gets_404(clients_of(workspace), [("get", "/api/v1/me/")])


def test_session_user_cannot_pick_a_workspace_they_do_not_belong_to(workspace, other_workspace):
    from tests.support.tenancy import problem, session_client

    client = session_client(workspace)
    problem(client.get("/api/v1/me/", HTTP_KEEL_WORKSPACE=other_workspace.slug), 403, "permission_denied")
