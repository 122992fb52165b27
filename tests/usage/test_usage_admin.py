"""Staff pages: budgets with their bars, raise a limit, reset a window; the ledger with filtered totals."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.usage.models import Budget, BudgetWindow, UsageRecord
from apps.usage.services import budget_reserve, budget_settle
from tests.support.factories import UserFactory
from tests.usage.conftest import book, make_budget, make_model

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client):
    user = UserFactory(is_staff=True, is_superuser=True)
    client.force_login(user)
    client.user = user
    return client


def test_the_budget_list_shows_spent_against_limit_for_the_current_window(staff, workspace):
    make_budget(workspace, "2", period=Budget.Period.DAY)
    budget_reserve(call_id="c1", amount=Decimal("1"), workspace_id=workspace.pk)
    budget_settle(call_id="c1", actual=Decimal("0.5"))

    page = staff.get("/admin/usage/budget/").content.decode()

    assert "$0.5 / $2" in page and 'title="25%"' in page
    assert "UTC" in page  # when the window resets


def test_staff_raise_a_limit_and_the_open_window_and_admin_log_follow(staff, workspace):
    budget = make_budget(workspace, "1")
    budget_reserve(call_id="c1", amount=Decimal("0.9"), workspace_id=workspace.pk)

    response = staff.post(
        f"/admin/usage/budget/{budget.pk}/change/",
        {
            "limit_usd": "5",
            "action": "block",
            "alert_threshold_pct": "",
            "windows-TOTAL_FORMS": "1",
            "windows-INITIAL_FORMS": "1",
            "windows-MIN_NUM_FORMS": "0",
            "windows-MAX_NUM_FORMS": "1000",
        },
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    assert BudgetWindow.objects.get(budget=budget).limit_usd == Decimal("5")
    entry = LogEntry.objects.get(object_id=str(budget.pk))
    assert entry.action_flag == CHANGE and entry.user_id == staff.user.pk and "Limit" in entry.get_change_message()


def test_staff_reset_a_window_and_it_is_recorded_in_the_admin_log(staff, workspace):
    budget = make_budget(workspace, "1")
    budget_reserve(call_id="c1", amount=Decimal("0.9"), workspace_id=workspace.pk)
    budget_settle(call_id="c1", actual=Decimal("0.9"))

    response = staff.post(
        "/admin/usage/budget/", {"action": "reset_window", "_selected_action": [str(budget.pk)]}, follow=True
    )

    assert response.status_code == 200
    windows = list(BudgetWindow.objects.filter(budget=budget).order_by("start"))
    assert [w.spent for w in windows] == [Decimal("0.9"), Decimal("0")]
    assert windows[0].end == windows[1].start
    entry = LogEntry.objects.get(object_id=str(budget.pk))
    assert entry.action_flag == CHANGE and "Reset the current window" in entry.get_change_message()
    budget_reserve(call_id="c2", amount=Decimal("0.9"), workspace_id=workspace.pk)  # room again


def test_staff_cannot_add_a_budget_for_another_workspaces_key(staff, workspace, other_workspace):
    from apps.accounts.services import api_key_issue

    theirs = api_key_issue(workspace=other_workspace, name="theirs").api_key
    response = staff.post(
        "/admin/usage/budget/add/",
        {
            "workspace": str(workspace.pk),
            "scope": "api_key",
            "scope_id": str(theirs.pk),
            "period": "day",
            "limit_usd": "1",
            "action": "block",
            "windows-TOTAL_FORMS": "0",
            "windows-INITIAL_FORMS": "0",
            "windows-MIN_NUM_FORMS": "0",
            "windows-MAX_NUM_FORMS": "1000",
        },
    )
    assert response.status_code == 200 and "No api_key with this id in your workspace." in response.content.decode()
    assert not Budget.objects.exists()


@pytest.fixture
def calls(workspace, other_workspace):
    fast, smart = make_model(workspace, "fast"), make_model(workspace, "smart")
    for n in range(30):
        book(
            fast if n % 2 else smart,
            cost=Decimal(n) / 7 * Decimal("0.001"),
            cache_hit=n % 3 == 0,
            status=UsageRecord.Status.FAILED if n % 5 == 0 else UsageRecord.Status.SUCCEEDED,
            input_tokens=n,
            output_tokens=2 * n,
        )
    book(make_model(other_workspace), cost="9", input_tokens=1000)
    return fast


def shown_totals(page: str) -> dict[str, str]:
    table = re.search(r'<table id="usage-totals".*?</table>', page, re.S)
    assert table, "the totals table is missing"
    cells = re.findall(r"<td>(.*?)</td>", table.group(0))
    return dict(zip(["calls", "input", "output", "cost", "saved"], cells, strict=True))


@pytest.mark.parametrize(
    ("params", "source"),
    [
        ({}, "hourly rollup"),
        ({"status__exact": "succeeded", "cache_hit__exact": "0"}, "hourly rollup"),
        ({"created": "today", "workspace__id__exact": "WS"}, "hourly rollup"),
        ({"q": "FIRST_CALL"}, "ledger"),
    ],
)
def test_the_ledger_list_shows_totals_of_exactly_the_filtered_calls(staff, workspace, calls, params, source):
    first = UsageRecord.objects.order_by("created_at").first()
    params = {k: v.replace("WS", str(workspace.pk)).replace("FIRST_CALL", first.call_id) for k, v in params.items()}

    response = staff.get("/admin/usage/usagerecord/", params)

    assert response.status_code == 200
    filtered = list(response.context["cl"].queryset)
    assert filtered
    totals = shown_totals(response.content.decode())
    assert f"from the {source}" in response.content.decode()
    assert (int(totals["calls"]), int(totals["input"]), int(totals["output"]), Decimal(totals["cost"])) == (
        len(filtered),
        sum(r.input_tokens for r in filtered),
        sum(r.output_tokens for r in filtered),
        sum((r.cost_usd for r in filtered), Decimal("0")),
    )


def test_the_ledger_list_never_counts_the_whole_table(staff, calls):
    with CaptureQueriesContext(connection) as queries:
        assert staff.get("/admin/usage/usagerecord/", {"status__exact": "succeeded"}).status_code == 200
    counts = [q["sql"] for q in queries if "COUNT(" in q["sql"].upper() and "usage_usagerecord" in q["sql"]]
    assert counts and all("LIMIT" in sql.upper() for sql in counts), counts


def test_the_ledger_cannot_be_edited_or_deleted_from_the_admin(staff, calls):
    record = UsageRecord.objects.first()
    page = staff.get(f"/admin/usage/usagerecord/{record.pk}/change/").content.decode()
    assert 'name="cost_usd"' not in page
    assert staff.post(f"/admin/usage/usagerecord/{record.pk}/delete/", {"post": "yes"}).status_code == 403
    assert UsageRecord.objects.filter(pk=record.pk).exists()
