"""Property-based: any interleaving of reserve / settle / release / crash / recovery keeps the books.

Runs against the real PostgreSQL: every rule calls the services, every invariant reads the tables.
Invariants after every step:
- a blocking window never holds more than its limit: spent + reserved <= limit;
- reserved >= 0 in every window, and equals the sum of what the calls in flight hold;
- spent equals the ledger's costs of the calls settled in the window, to the last decimal.
"""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from apps.accounts.services import api_key_issue
from apps.core.problems import BudgetExceeded
from apps.usage.models import Budget, BudgetReservation, BudgetWindow, UsageRecord
from apps.usage.services import budget_release, budget_release_stale, budget_reserve, budget_settle
from tests.support.factories import WorkspaceFactory
from tests.usage.conftest import book, make_budget, make_model

QUANTUM = Decimal("0.0000000001")
_examples = itertools.count()


# Amounts near the limits' scale (so limits are reached within a few calls), some with all ten decimals.
AMOUNTS = st.one_of(
    st.integers(min_value=0, max_value=100).map(lambda n: Decimal(n) / 1000),
    st.integers(min_value=0, max_value=10**9).map(lambda n: Decimal(n) / 10**10),
).map(lambda d: d.quantize(QUANTUM))


class BudgetBooks(RuleBasedStateMachine):
    """Two blocking budgets (workspace per month, API key per day) and one warn budget on the key."""

    in_flight = Bundle("in_flight")
    crashed = Bundle("crashed")

    def __init__(self) -> None:
        super().__init__()
        self.workspace = WorkspaceFactory(slug=f"books-{next(_examples)}")
        self.key = api_key_issue(workspace=self.workspace, name="k").api_key
        self.model = make_model(self.workspace)
        self.blocking = [
            make_budget(self.workspace, "0.25"),
            make_budget(
                self.workspace, "0.2", scope=Budget.Scope.API_KEY, scope_id=self.key.pk, period=Budget.Period.DAY
            ),
        ]
        self.warn = make_budget(
            self.workspace, "0.1", scope=Budget.Scope.API_KEY, scope_id=self.key.pk, action=Budget.Action.WARN
        )
        self.calls = itertools.count()
        self.held: dict[str, Decimal] = {}  # call_id -> amount, what the model says is in flight
        self.crashed_ids: set[str] = set()
        # One instant for every reservation: a run of the test across UTC midnight must not open a new day.
        self.now = self.blocking[0].created_at + dt.timedelta(seconds=1)
        self.spent = Decimal("0")

    def _reserve(self, amount: Decimal) -> str | None:
        call_id = f"{self.workspace.slug}-{next(self.calls)}"
        fits = self.spent + sum(self.held.values(), Decimal("0")) + amount <= Decimal("0.2")
        try:
            budget_reserve(
                call_id=call_id, amount=amount, workspace_id=self.workspace.pk, api_key_id=self.key.pk, now=self.now
            )
        except BudgetExceeded:
            assert not fits, f"refused a call that fits: {amount}"
            return None
        assert fits, f"accepted a call that does not fit: {amount}"
        self.held[call_id] = amount
        return call_id

    @rule(target=in_flight, amount=AMOUNTS)
    def reserve(self, amount: Decimal) -> str:
        call_id = self._reserve(amount)
        return call_id or "refused"

    @rule(call_id=consumes(in_flight), fraction=st.integers(0, 100), booked=st.booleans())
    def settle(self, call_id: str, fraction: int, booked: bool) -> None:
        if call_id not in self.held:
            budget_settle(call_id=call_id, actual=Decimal("0.01"))  # refused or finished: must do nothing
            return
        actual = (self.held.pop(call_id) * fraction / 100).quantize(QUANTUM)
        if booked:  # the gateway's order: book the attempt, then settle
            book(self.model, call_id=call_id, cost=actual, api_key=self.key)
        budget_settle(call_id=call_id, actual=actual)
        self.spent += actual

    @rule(call_id=consumes(in_flight))
    def release(self, call_id: str) -> None:
        self.held.pop(call_id, None)
        budget_release(call_id=call_id)

    @rule(target=crashed, call_id=consumes(in_flight), booked_units=st.none() | st.integers(0, 100))
    def crash(self, call_id: str, booked_units: int | None) -> str:
        """The worker dies mid-call: sometimes after booking the attempt, never settling it."""
        if call_id in self.held and booked_units is not None:
            cost = (self.held[call_id] * booked_units / 100).quantize(QUANTUM)
            book(self.model, call_id=call_id, cost=cost, api_key=self.key)
        self.crashed_ids.add(call_id)
        return call_id

    @rule(call_id=consumes(crashed))
    def reaper_releases(self, call_id: str) -> None:
        self._recovered(call_id)
        budget_release(call_id=call_id)

    @precondition(lambda self: bool(self.held))
    @rule()
    def stale_sweep_releases_old_holds(self) -> None:
        """Crashed holds age past the TTL; the sweep finds them (calls still in flight are young)."""
        crashed = [c for c in self.held if c in self.crashed_ids]
        BudgetReservation.objects.filter(call_id__in=crashed).update(
            created_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
        )
        budget_release_stale(older_than=dt.timedelta(hours=1))
        for call_id in crashed:
            self._recovered(call_id)

    @rule(call_id=in_flight)
    def repeat_reserve_of_the_same_call(self, call_id: str) -> None:
        if call_id in self.held:  # a redelivered job reserving again for an attempt already holding
            budget_reserve(
                call_id=call_id,
                amount=Decimal("0.1"),
                workspace_id=self.workspace.pk,
                api_key_id=self.key.pk,
                now=self.now,
            )

    def _recovered(self, call_id: str) -> None:
        if call_id in self.held:
            self.held.pop(call_id)
            booked = UsageRecord.objects.filter(call_id=call_id).values_list("cost_usd", flat=True).first()
            self.spent += booked or Decimal("0")

    @invariant()
    def books_hold(self) -> None:
        in_flight = sum(self.held.values(), Decimal("0"))
        ledger = dict(UsageRecord.objects.filter(workspace=self.workspace).values_list("call_id", "cost_usd"))
        settled: dict[int, dict[str, Decimal]] = {}
        for window_id, call_id, actual in BudgetReservation.objects.filter(
            window__budget__workspace=self.workspace, state=BudgetReservation.State.SETTLED
        ).values_list("window_id", "call_id", "actual"):
            settled.setdefault(window_id, {})[call_id] = actual
        for window in BudgetWindow.objects.filter(budget__workspace=self.workspace).select_related("budget"):
            assert window.reserved >= 0
            assert window.reserved == in_flight, (window.budget, window.reserved, in_flight)
            assert window.spent == self.spent, (window.budget, window.spent, self.spent)
            if window.budget.action == Budget.Action.BLOCK:
                assert window.spent + window.reserved <= window.limit_usd
            calls = settled.get(window.pk, {})
            assert all(ledger.get(call_id, actual) == actual for call_id, actual in calls.items()), (
                "not the ledger cost"
            )
            assert sum(calls.values(), Decimal("0")) == window.spent


@pytest.mark.django_db
def test_no_interleaving_of_reserve_settle_release_and_crash_breaks_the_books():
    run_state_machine_as_test(
        BudgetBooks,
        settings=settings(
            max_examples=30,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
