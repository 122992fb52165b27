"""usage_record(settle_budget=True): the gateway books an attempt and finishes its budget hold in one
transaction, with the same outcome budget_settle / budget_release had right after the booking."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import IntegrityError

from apps.usage.models import BudgetReservation, BudgetWindow, UsageHourly, UsageRecord
from apps.usage.services import budget_release, budget_reserve
from tests.usage.conftest import book, make_budget

pytestmark = pytest.mark.django_db

D = Decimal


def totals(budget) -> tuple[Decimal, Decimal]:
    window = BudgetWindow.objects.get(budget=budget)
    return window.spent, window.reserved


def test_a_booked_attempt_moves_its_hold_to_spent_at_the_booked_cost(workspace, model):
    budget = make_budget(workspace, "1")
    budget_reserve(call_id="c1", amount=D("0.5"), workspace_id=workspace.pk)

    book(model, call_id="c1", cost="0.0421", settle_budget=True)

    assert totals(budget) == (D("0.0421"), D("0"))
    hold = BudgetReservation.objects.get(call_id="c1")
    assert (hold.state, hold.actual) == (BudgetReservation.State.SETTLED, D("0.0421"))


def test_a_failed_attempt_that_cost_nothing_gives_its_hold_back(workspace, model):
    budget = make_budget(workspace, "1")
    budget_reserve(call_id="c1", amount=D("0.5"), workspace_id=workspace.pk)

    book(model, call_id="c1", status=UsageRecord.Status.FAILED, input_tokens=0, output_tokens=0, settle_budget=True)

    assert totals(budget) == (D("0"), D("0"))
    assert not BudgetReservation.objects.filter(state=BudgetReservation.State.HELD).exists()


def test_a_failed_attempt_that_reported_usage_is_charged(workspace, model):
    budget = make_budget(workspace, "1")
    budget_reserve(call_id="c1", amount=D("0.5"), workspace_id=workspace.pk)

    book(model, call_id="c1", status=UsageRecord.Status.FAILED, cost="0.003", settle_budget=True)

    assert totals(budget) == (D("0.003"), D("0"))


def test_booking_the_same_attempt_again_changes_nothing(workspace, model):
    budget = make_budget(workspace, "1")
    budget_reserve(call_id="c1", amount=D("0.5"), workspace_id=workspace.pk)

    book(model, call_id="c1", cost="0.01", settle_budget=True)
    book(model, call_id="c1", cost="0.01", settle_budget=True)

    assert totals(budget) == (D("0.01"), D("0"))
    assert UsageRecord.objects.filter(call_id="c1").count() == 1
    assert UsageHourly.objects.get().calls == 1


def test_a_call_booked_after_its_hold_was_swept_still_counts_its_cost(workspace, model):
    budget = make_budget(workspace, "1")
    budget_reserve(call_id="slow", amount=D("0.5"), workspace_id=workspace.pk)
    budget_release(call_id="slow")  # the stale sweep, or the reaper, gave the hold up

    book(model, call_id="slow", cost="0.2", settle_budget=True)

    assert totals(budget) == (D("0.2"), D("0"))


@pytest.mark.parametrize("told", [True, False], ids=["told-the-count", "not-told"])
def test_each_window_of_a_call_is_settled(workspace, model, told):
    month = make_budget(workspace, "1")
    day = make_budget(workspace, "1", period="day")
    holds = budget_reserve(call_id="c1", amount=D("0.5"), workspace_id=workspace.pk)
    assert holds == 2

    book(model, call_id="c1", cost="0.07", settle_budget=holds if told else True)

    assert totals(month) == totals(day) == (D("0.07"), D("0"))
    assert set(BudgetReservation.objects.values_list("state", flat=True)) == {BudgetReservation.State.SETTLED}


def test_a_booking_whose_settlement_fails_writes_nothing_at_all(workspace, model):
    budget = make_budget(workspace, "1")
    budget_reserve(call_id="c1", amount=D("0.5"), workspace_id=workspace.pk)

    with pytest.raises(IntegrityError):
        # A negative cost would drive the window's spent below zero: its check constraint refuses.
        book(model, call_id="c1", cost="-1", settle_budget=True)

    assert not UsageRecord.objects.exists() and not UsageHourly.objects.exists()
    assert totals(budget) == (D("0"), D("0.5"))
    assert BudgetReservation.objects.get(call_id="c1").state == BudgetReservation.State.HELD


def test_a_booking_that_crosses_the_alert_threshold_records_one_event(workspace, model):
    from apps.usage.models import BudgetEvent

    budget = make_budget(workspace, "1", alert_threshold_pct=50)
    for n, cost in enumerate(["0.3", "0.25", "0.1"]):
        budget_reserve(call_id=f"c{n}", amount=D("0.3"), workspace_id=workspace.pk)
        book(model, call_id=f"c{n}", cost=cost, settle_budget=True)

    assert totals(budget) == (D("0.65"), D("0"))
    events = list(BudgetEvent.objects.filter(window__budget=budget))
    assert [(e.kind, e.call_id, e.spent) for e in events] == [(BudgetEvent.Kind.THRESHOLD_REACHED, "c1", D("0.55"))]
