"""The stale-hold sweep and the rollup rebuild as an operator runs them, and the sweep's schedule."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command

from apps.core.jobs import periodic_jobs
from apps.usage.models import BudgetReservation, BudgetWindow, UsageHourly
from apps.usage.services import budget_reserve
from tests.usage.conftest import book, make_budget

pytestmark = pytest.mark.django_db


def test_release_stale_reservations_frees_old_holds(workspace):
    budget = make_budget(workspace, "1")
    budget_reserve(call_id="dead", amount=Decimal("0.5"), workspace_id=workspace.pk)
    BudgetReservation.objects.update(created_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=3))
    out = StringIO()

    call_command("release_stale_reservations", stdout=out)

    assert "Finished 1 stale" in out.getvalue()
    assert BudgetWindow.objects.get(budget=budget).reserved == 0


def test_the_stale_sweep_is_scheduled_on_the_runs_queue(settings):
    sweep = [job for job in periodic_jobs() if job.name == "budget-release-stale"]
    assert [(job.func, job.queue) for job in sweep] == [("apps.usage.tasks.release_stale_reservations_job", "runs")]
    assert sweep[0].every_s == settings.KEEL_BUDGET_SWEEP_INTERVAL_S


def test_rebuild_usage_rollup_restores_buckets_from_the_ledger(workspace, model):
    for cost in ("0.1", "0.2", "0.3"):
        book(model, cost=cost)
    UsageHourly.objects.all().delete()
    out = StringIO()

    call_command("rebuild_usage_rollup", "--workspace", workspace.slug, stdout=out)

    assert "Rebuilt 1 hourly bucket" in out.getvalue()
    bucket = UsageHourly.objects.get()
    assert (bucket.calls, bucket.cost_usd) == (3, Decimal("0.6"))
