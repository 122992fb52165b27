"""`/api/v1/budgets/`: admins write, everyone in the workspace reads, other workspaces see nothing."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from apps.accounts.models import Role
from apps.accounts.services import api_key_issue
from apps.usage.models import Budget, BudgetWindow
from apps.usage.services import budget_reserve, budget_settle
from tests.support.tenancy import assert_other_workspace_gets_404, clients_of, key_client, problem, session_client
from tests.usage.conftest import make_budget

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin(workspace):
    return key_client(workspace, Role.ADMIN)


def test_an_admin_creates_a_budget_and_sees_its_empty_current_window(admin):
    response = admin.post(
        "/api/v1/budgets/",
        {"scope": "workspace", "period": "month", "limit_usd": "25.50", "action": "block", "alert_threshold_pct": 80},
        format="json",
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert {k: body[k] for k in ("scope", "scope_id", "period", "limit_usd", "action", "alert_threshold_pct")} == {
        "scope": "workspace",
        "scope_id": None,
        "period": "month",
        "limit_usd": "25.5000000000",
        "action": "block",
        "alert_threshold_pct": 80,
    }
    window = body["window"]
    assert (window["spent_usd"], window["reserved_usd"], window["remaining_usd"]) == (
        "0.0000000000",
        "0.0000000000",
        "25.5000000000",
    )
    now = dt.datetime.now(dt.UTC)
    next_month = (now.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    assert window["end"] == next_month.strftime("%Y-%m-%dT00:00:00Z")


def test_the_window_shows_spent_reserved_remaining_and_reset_time(workspace, admin):
    budget = make_budget(workspace, "1", period=Budget.Period.DAY)
    budget_reserve(call_id="done", amount=Decimal("0.5"), workspace_id=workspace.pk)
    budget_settle(call_id="done", actual=Decimal("0.1234567890"))
    budget_reserve(call_id="in-flight", amount=Decimal("0.25"), workspace_id=workspace.pk)

    window = admin.get(f"/api/v1/budgets/{budget.pk}/").json()["window"]

    assert (window["spent_usd"], window["reserved_usd"], window["remaining_usd"]) == (
        "0.1234567890",
        "0.2500000000",
        "0.6265432110",
    )
    stored = BudgetWindow.objects.get(budget=budget)
    assert window["end"] == stored.end.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_budget_can_target_a_key_of_the_workspace(workspace, admin):
    key = api_key_issue(workspace=workspace, name="ci").api_key
    response = admin.post(
        "/api/v1/budgets/",
        {"scope": "api_key", "scope_id": str(key.pk), "period": "day", "limit_usd": "1"},
        format="json",
    )
    assert response.status_code == 201 and response.json()["scope_id"] == str(key.pk)


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"scope": "workspace", "period": "week", "limit_usd": "1"}, {"period"}),
        ({"scope": "workspace", "period": "day", "limit_usd": "-1"}, {"limit_usd"}),
        ({"scope": "workspace", "period": "day", "limit_usd": "abc"}, {"limit_usd"}),
        ({"scope": "workspace", "period": "day", "limit_usd": "0.00000000001"}, {"limit_usd"}),
        ({"scope": "planet", "period": "day"}, {"scope", "limit_usd"}),
        ({"scope": "api_key", "period": "day", "limit_usd": "1"}, {"scope_id"}),
        ({"scope": "user", "scope_id": "not-a-uuid", "period": "day", "limit_usd": "1"}, {"scope_id"}),
        (
            {"scope": "workspace", "period": "day", "limit_usd": "1", "alert_threshold_pct": 150},
            {"alert_threshold_pct"},
        ),
    ],
)
def test_an_invalid_budget_is_refused_naming_each_bad_field(admin, body, fields):
    body = problem(admin.post("/api/v1/budgets/", body, format="json"), 400, "validation_error")
    assert {e["field"] for e in body["errors"]} == fields
    assert not Budget.objects.exists()


def test_scope_id_must_name_an_object_of_the_callers_workspace(workspace, other_workspace, admin):
    theirs = api_key_issue(workspace=other_workspace, name="theirs").api_key
    mine = api_key_issue(workspace=workspace, name="mine").api_key
    cases = [
        {"scope": "api_key", "scope_id": str(theirs.pk)},
        {"scope": "workspace", "scope_id": str(mine.pk)},
        {"scope": "user", "scope_id": str(mine.pk)},
        {"scope": "workflow", "scope_id": str(mine.pk)},
    ]
    for case in cases:
        body = problem(
            admin.post("/api/v1/budgets/", {**case, "period": "day", "limit_usd": "1"}, format="json"),
            400,
            "validation_error",
        )
        assert [e["field"] for e in body["errors"]] == ["scope_id"], case
    assert not Budget.objects.exists()


def test_budgets_of_another_workspace_answer_404(workspace, other_workspace):
    theirs = make_budget(other_workspace, "5")
    assert_other_workspace_gets_404(
        clients_of(workspace),
        [
            ("get", f"/api/v1/budgets/{theirs.pk}/"),
            ("patch", f"/api/v1/budgets/{theirs.pk}/", {"limit_usd": "1000"}),
            ("delete", f"/api/v1/budgets/{theirs.pk}/"),
        ],
    )
    theirs.refresh_from_db()
    assert theirs.limit_usd == Decimal("5")


def test_the_list_shows_only_the_callers_workspace(workspace, other_workspace, admin):
    mine = make_budget(workspace, "1")
    make_budget(other_workspace, "2")
    assert [b["id"] for b in admin.get("/api/v1/budgets/").json()["results"]] == [str(mine.pk)]


@pytest.mark.parametrize("role", [Role.MEMBER, Role.VIEWER])
def test_members_and_viewers_read_budgets_but_cannot_create_change_or_delete_them(workspace, role):
    budget = make_budget(workspace, "5")
    for client in (key_client(workspace, role), session_client(workspace, role)):
        assert client.get("/api/v1/budgets/").status_code == 200
        assert client.get(f"/api/v1/budgets/{budget.pk}/").status_code == 200
        problem(
            client.post("/api/v1/budgets/", {"scope": "workspace", "period": "day", "limit_usd": "9"}, format="json"),
            403,
            "permission_denied",
        )
        problem(
            client.patch(f"/api/v1/budgets/{budget.pk}/", {"limit_usd": "9"}, format="json"), 403, "permission_denied"
        )
        problem(client.delete(f"/api/v1/budgets/{budget.pk}/"), 403, "permission_denied")
    budget.refresh_from_db()
    assert budget.limit_usd == Decimal("5") and Budget.objects.count() == 1


def test_an_admin_raises_a_limit_and_the_current_window_follows(workspace, admin):
    budget = make_budget(workspace, "1")
    budget_reserve(call_id="c1", amount=Decimal("0.75"), workspace_id=workspace.pk)

    response = admin.patch(f"/api/v1/budgets/{budget.pk}/", {"limit_usd": "3", "action": "warn"}, format="json")

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["limit_usd"], body["action"], body["window"]["remaining_usd"]) == (
        "3.0000000000",
        "warn",
        "2.2500000000",
    )


def test_scope_and_period_cannot_be_changed(workspace, admin):
    budget = make_budget(workspace, "1")
    body = problem(
        admin.patch(f"/api/v1/budgets/{budget.pk}/", {"period": "day", "limit_usd": "2"}, format="json"),
        400,
        "validation_error",
    )
    assert [e["field"] for e in body["errors"]] == ["period"]
    budget.refresh_from_db()
    assert (budget.period, budget.limit_usd) == (Budget.Period.MONTH, Decimal("1"))


def test_put_is_not_offered(workspace, admin):
    budget = make_budget(workspace, "1")
    problem(admin.put(f"/api/v1/budgets/{budget.pk}/", {"limit_usd": "2"}, format="json"), 405, "method_not_allowed")


def test_an_admin_deletes_a_budget(workspace, admin):
    budget = make_budget(workspace, "1")
    budget_reserve(call_id="c1", amount=Decimal("0.5"), workspace_id=workspace.pk)
    assert admin.delete(f"/api/v1/budgets/{budget.pk}/").status_code == 204
    assert not Budget.objects.filter(pk=budget.pk).exists()
    budget_settle(call_id="c1", actual=Decimal("0.1"))  # the call in flight finishes without error


def test_listing_budgets_costs_the_same_queries_for_one_or_many(workspace, admin, django_assert_max_num_queries):
    for _ in range(12):
        make_budget(workspace, "1")
    with django_assert_max_num_queries(6):
        assert len(admin.get("/api/v1/budgets/").json()["results"]) == 12


def test_a_budget_can_target_a_workflow_of_the_workspace_and_not_of_another(workspace, other_workspace, admin):
    from apps.workflows.services import workflow_create
    from tests.runs.conftest import transform_definition

    mine = workflow_create(workspace=workspace, definition=transform_definition())
    theirs = workflow_create(workspace=other_workspace, definition=transform_definition())
    body = {"scope": "workflow", "period": "month", "limit_usd": "3"}

    created = admin.post("/api/v1/budgets/", {**body, "scope_id": str(mine.pk)}, format="json")
    refused = admin.post("/api/v1/budgets/", {**body, "scope_id": str(theirs.pk)}, format="json")

    assert created.status_code == 201 and created.json()["scope_id"] == str(mine.pk)
    assert [e["field"] for e in problem(refused, 400, "validation_error")["errors"]] == ["scope_id"]
