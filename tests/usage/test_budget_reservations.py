"""Reserve, settle and release against real PostgreSQL: what a budget holds and spends per call."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from apps.accounts.services import api_key_issue, membership_set
from apps.core.problems import BudgetExceeded
from apps.usage.models import Budget, BudgetEvent, BudgetReservation, BudgetWindow
from apps.usage.services import (
    budget_release,
    budget_release_stale,
    budget_reserve,
    budget_settle,
    budget_update,
    budget_window_reset,
    budget_windows_current,
)
from tests.support.factories import UserFactory
from tests.usage.conftest import book, make_budget

pytestmark = pytest.mark.django_db

D = Decimal


def window_of(budget: Budget) -> BudgetWindow:
    return BudgetWindow.objects.get(budget=budget, end__isnull=budget.period == Budget.Period.TOTAL)


def test_a_reservation_is_held_in_every_budget_that_applies_and_no_other(workspace, other_workspace):
    key = api_key_issue(workspace=workspace, name="k").api_key
    user = UserFactory()
    membership_set(user=user, workspace=workspace, role="member")
    other_key = api_key_issue(workspace=workspace, name="other").api_key
    applies = [
        make_budget(workspace, "5"),
        make_budget(workspace, "5", scope=Budget.Scope.API_KEY, scope_id=key.pk, period=Budget.Period.DAY),
        make_budget(workspace, "5", scope=Budget.Scope.USER, scope_id=user.pk, period=Budget.Period.TOTAL),
    ]
    unrelated = [
        make_budget(workspace, "5", scope=Budget.Scope.API_KEY, scope_id=other_key.pk),
        make_budget(other_workspace, "5"),
    ]

    budget_reserve(call_id="c1", amount=D("0.25"), workspace_id=workspace.pk, api_key_id=key.pk, user_id=user.pk)

    assert [window_of(b).reserved for b in applies] == [D("0.25")] * 3
    assert not BudgetWindow.objects.filter(budget__in=unrelated).exclude(reserved=0).exists()


def test_a_blocking_budget_refuses_a_call_that_does_not_fit_and_nothing_is_held_anywhere(workspace):
    roomy = make_budget(workspace, "100", period=Budget.Period.DAY)
    tight = make_budget(workspace, "1")
    budget_reserve(call_id="c1", amount=D("0.6"), workspace_id=workspace.pk)

    with pytest.raises(BudgetExceeded) as refused:
        budget_reserve(call_id="c2", amount=D("0.5"), workspace_id=workspace.pk)

    assert refused.value.status_code == 402 and refused.value.code == "budget_exceeded"
    assert "$0.4 left" in str(refused.value.detail_text) and refused.value.extra["budget_id"] == str(tight.pk)
    assert window_of(roomy).reserved == D("0.6"), "the roomy window must not keep the refused call's hold"
    assert window_of(tight).reserved == D("0.6")
    assert not BudgetReservation.objects.filter(call_id="c2").exists()


def test_a_call_that_exactly_fills_the_budget_is_allowed(workspace):
    budget = make_budget(workspace, "1")
    budget_reserve(call_id="c1", amount=D("0.4"), workspace_id=workspace.pk)
    budget_reserve(call_id="c2", amount=D("0.6"), workspace_id=workspace.pk)
    assert window_of(budget).reserved == D("1")


def test_a_zero_limit_blocks_every_paid_call(workspace):
    make_budget(workspace, "0")
    with pytest.raises(BudgetExceeded):
        budget_reserve(call_id="c1", amount=D("0.0000000001"), workspace_id=workspace.pk)


def test_settling_moves_the_hold_to_spent_at_the_actual_cost_once(workspace):
    budget = make_budget(workspace, "1")
    budget_reserve(call_id="c1", amount=D("0.5"), workspace_id=workspace.pk)
    budget_settle(call_id="c1", actual=D("0.1234567891"))
    budget_settle(call_id="c1", actual=D("0.1234567891"))
    budget_release(call_id="c1")

    window = window_of(budget)
    assert (window.spent, window.reserved) == (D("0.1234567891"), D("0"))


def test_releasing_gives_the_room_back_and_is_idempotent(workspace):
    budget = make_budget(workspace, "1")
    budget_reserve(call_id="c1", amount=D("0.9"), workspace_id=workspace.pk)
    budget_release(call_id="c1")
    budget_release(call_id="c1")
    budget_reserve(call_id="c2", amount=D("0.9"), workspace_id=workspace.pk)

    window = window_of(budget)
    assert (window.spent, window.reserved) == (D("0"), D("0.9"))


def test_reserving_twice_for_the_same_call_holds_once(workspace):
    budget = make_budget(workspace, "1")
    budget_reserve(call_id="c1", amount=D("0.3"), workspace_id=workspace.pk)
    budget_reserve(call_id="c1", amount=D("0.3"), workspace_id=workspace.pk)
    assert window_of(budget).reserved == D("0.3")


def test_unknown_calls_settle_and_release_as_no_ops(workspace):
    budget = make_budget(workspace, "1")
    budget_settle(call_id="never-reserved", actual=D("0.5"))
    budget_release(call_id="never-reserved")
    assert not BudgetWindow.objects.filter(budget=budget).exclude(spent=0).exists()


def test_a_release_after_the_call_was_booked_settles_at_the_ledger_cost(workspace, model):
    budget = make_budget(workspace, "1")
    budget_reserve(call_id="c1", amount=D("0.5"), workspace_id=workspace.pk)
    book(model, call_id="c1", cost="0.0421")  # the worker died after booking, before settling

    budget_release(call_id="c1")

    window = window_of(budget)
    assert (window.spent, window.reserved) == (D("0.0421"), D("0"))


def test_settle_takes_the_ledger_cost_when_the_call_is_booked(workspace, model):
    budget = make_budget(workspace, "1")
    budget_reserve(call_id="c1", amount=D("0.5"), workspace_id=workspace.pk)
    book(model, call_id="c1", cost="0.03")
    budget_settle(call_id="c1", actual=D("0.02"))
    assert window_of(budget).spent == D("0.03")


def test_a_call_that_settles_after_its_hold_was_swept_is_still_counted(workspace):
    budget = make_budget(workspace, "1")
    budget_reserve(call_id="slow", amount=D("0.5"), workspace_id=workspace.pk)
    budget_release(call_id="slow")
    budget_settle(call_id="slow", actual=D("0.2"))

    window = window_of(budget)
    assert (window.spent, window.reserved) == (D("0.2"), D("0"))


def test_the_stale_sweep_releases_old_holds_and_keeps_young_ones(workspace, model):
    budget = make_budget(workspace, "1")
    budget_reserve(call_id="dead", amount=D("0.3"), workspace_id=workspace.pk)
    budget_reserve(call_id="dead-booked", amount=D("0.3"), workspace_id=workspace.pk)
    book(model, call_id="dead-booked", cost="0.01")
    BudgetReservation.objects.filter(call_id__startswith="dead").update(
        created_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    )
    budget_reserve(call_id="alive", amount=D("0.2"), workspace_id=workspace.pk)

    assert budget_release_stale(older_than=dt.timedelta(minutes=30)) == 2
    assert budget_release_stale(older_than=dt.timedelta(minutes=30)) == 0

    window = window_of(budget)
    assert (window.spent, window.reserved) == (D("0.01"), D("0.2"))


def test_a_warn_budget_never_refuses_and_records_one_event_when_exceeded(
    workspace, monkeypatch, django_capture_on_commit_callbacks
):
    budget = make_budget(workspace, "1", action=Budget.Action.WARN)
    notified: list[int] = []
    monkeypatch.setattr("apps.usage.services.budget_event_notify", lambda *, event_id: notified.append(event_id))
    with django_capture_on_commit_callbacks(execute=True):
        for n in range(3):
            budget_reserve(call_id=f"c{n}", amount=D("0.6"), workspace_id=workspace.pk)

    window = window_of(budget)
    assert window.reserved == D("1.8")
    events = list(BudgetEvent.objects.filter(window=window))
    assert [e.kind for e in events] == [BudgetEvent.Kind.LIMIT_EXCEEDED]
    assert events[0].call_id == "c1" and notified == [events[0].pk]


def test_crossing_the_alert_threshold_records_one_event(workspace):
    budget = make_budget(workspace, "1", alert_threshold_pct=50)
    for n, cost in enumerate(["0.3", "0.25", "0.1"]):
        budget_reserve(call_id=f"c{n}", amount=D("0.3"), workspace_id=workspace.pk)
        budget_settle(call_id=f"c{n}", actual=D(cost))

    events = list(BudgetEvent.objects.filter(window__budget=budget))
    assert [(e.kind, e.call_id, e.spent) for e in events] == [(BudgetEvent.Kind.THRESHOLD_REACHED, "c1", D("0.55"))]


def test_windows_follow_utc_calendar_periods_and_start_at_the_budgets_creation(workspace):
    daily = make_budget(workspace, "1", period=Budget.Period.DAY)
    monthly = make_budget(workspace, "1", period=Budget.Period.MONTH)
    total = make_budget(workspace, "1", period=Budget.Period.TOTAL)
    created = daily.created_at
    later = created + dt.timedelta(days=40)

    now_windows = budget_windows_current(budgets=[daily, monthly, total], now=created + dt.timedelta(seconds=1))
    later_windows = budget_windows_current(budgets=[daily, monthly, total], now=later)

    assert now_windows[daily.pk].start == created and now_windows[total.pk].end is None
    next_midnight = created.replace(hour=0, minute=0, second=0, microsecond=0) + dt.timedelta(days=1)
    assert now_windows[daily.pk].end == next_midnight
    assert later_windows[daily.pk].start == later.replace(hour=0, minute=0, second=0, microsecond=0)
    assert later_windows[monthly.pk].start == later.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    assert later_windows[total.pk].pk == now_windows[total.pk].pk


def test_a_new_day_starts_with_an_empty_window(workspace):
    budget = make_budget(workspace, "1", period=Budget.Period.DAY)
    today = budget.created_at + dt.timedelta(seconds=1)
    budget_reserve(call_id="c1", amount=D("0.9"), workspace_id=workspace.pk, now=today)
    budget_settle(call_id="c1", actual=D("0.9"))

    tomorrow = today + dt.timedelta(days=1)
    budget_reserve(call_id="c2", amount=D("0.9"), workspace_id=workspace.pk, now=tomorrow)

    windows = list(BudgetWindow.objects.filter(budget=budget).order_by("start").values_list("spent", "reserved"))
    assert windows == [(D("0.9"), D("0")), (D("0"), D("0.9"))]


def test_raising_the_limit_makes_room_in_the_open_window_at_once(workspace):
    budget = make_budget(workspace, "1")
    budget_reserve(call_id="c1", amount=D("0.8"), workspace_id=workspace.pk)
    with pytest.raises(BudgetExceeded):
        budget_reserve(call_id="c2", amount=D("0.8"), workspace_id=workspace.pk)

    budget_update(budget=budget, limit_usd=D("2"))
    budget_reserve(call_id="c2", amount=D("0.8"), workspace_id=workspace.pk)
    assert window_of(budget).reserved == D("1.6")


def test_resetting_a_window_starts_an_empty_one_and_in_flight_calls_settle_in_the_old(workspace):
    budget = make_budget(workspace, "1")
    budget_reserve(call_id="done", amount=D("0.5"), workspace_id=workspace.pk)
    budget_settle(call_id="done", actual=D("0.5"))
    budget_reserve(call_id="in-flight", amount=D("0.4"), workspace_id=workspace.pk)

    fresh = budget_window_reset(budget=budget)
    budget_settle(call_id="in-flight", actual=D("0.3"))
    budget_reserve(call_id="after", amount=D("0.9"), workspace_id=workspace.pk)

    old = BudgetWindow.objects.get(budget=budget, end=fresh.start)
    fresh.refresh_from_db()
    assert (old.spent, old.reserved) == (D("0.8"), D("0"))
    assert (fresh.spent, fresh.reserved) == (D("0"), D("0.9"))


def test_a_budget_deleted_while_a_call_reserves_is_skipped_without_error(workspace, monkeypatch):
    keep = make_budget(workspace, "1")
    gone = make_budget(workspace, "1", period=Budget.Period.DAY)
    original = budget_windows_current

    def then_delete(**kwargs):
        windows = original(**kwargs)
        gone.delete()  # an admin deletes it between finding the windows and reserving in them
        return windows

    monkeypatch.setattr("apps.usage.services.budget_windows_current", then_delete)
    budget_reserve(call_id="c1", amount=D("0.5"), workspace_id=workspace.pk)
    budget_settle(call_id="c1", actual=D("0.25"))

    assert window_of(keep).spent == D("0.25")
    assert list(BudgetReservation.objects.values_list("window__budget", flat=True)) == [keep.pk]
