"""Acceptance 1 (and 4 under load): 50 runs at once against a blocking budget with room for 10.5.

Every repetition: a fresh blocking workspace budget with limit = 10.5 x one run's reservation, then
50 runs started at once (sync and stream executed by the web tier's threads, async by three real RQ
workers), one llm step each, over HTTP to the simulator. The simulator's answers are cut at
max_tokens and the prompt estimate is the simulator's own count, so a run costs exactly what it
reserves: exactly 10 can succeed; the other 40 must fail with budget_exceeded without reaching the
provider, and spent + reserved must never exceed the limit, watched while the race runs.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from rest_framework.test import APIClient

from apps.accounts.services import api_key_issue
from apps.core.redis import get_redis
from apps.runs.models import Run
from apps.usage.models import Budget, BudgetReservation, BudgetWindow, UsageRecord
from apps.workflows.services import workflow_create
from tests.runs.helpers import sse_events, wait_for
from tests.support.simulator import sim_model, sim_provider
from tests.usage.conftest import make_budget

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

REPETITIONS = 20
RUNS = 50
MODES = ("sync", "async", "stream")
# The web tier's request threads (a gunicorn gthread worker has 16 by default); PostgreSQL's
# connections are shared with other test sessions, so the 50 requests go through 20 at a time.
WEB_THREADS = 20
URL = "/api/v1/workflows/race/runs/"
BODY_INPUT = {"question": "What is the tide doing in the harbour this evening?"}


def race_definition() -> dict[str, Any]:
    return {
        "slug": "race",
        "name": "Budget race",
        "input_schema": {"type": "object", "required": ["question"], "properties": {"question": {"type": "string"}}},
        "steps": [
            {
                "id": "answer",
                "type": "llm",
                "model": "fast",
                "prompt": "Answer in one line: {{ input.question }}",
                "temperature": 0,
                "max_tokens": 8,  # every simulator answer is longer: output is exactly 8 tokens
                "cache": False,
                "retries": 0,
            }
        ],
        "output": "{{ steps.answer.output }}",
        "default_mode": "sync",
    }


def start(token: str, mode: str) -> str:
    """One run through the API, as a client would start it; returns its id."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    try:
        response = client.post(URL, {"input": BODY_INPUT, "mode": mode}, format="json")
        assert response.status_code in (200, 202), response.content if mode != "stream" else response
        if mode == "stream":
            return str(sse_events(response)[-1]["data"]["run_id"])
        return str(response.json()["id"])
    finally:
        connection.close()


class Watcher(threading.Thread):
    """Reads the window over and over while the race runs: spent + reserved must never pass the limit."""

    def __init__(self, budget: Budget) -> None:
        super().__init__(daemon=True)
        self.budget = budget
        self.stop = threading.Event()
        self.samples: list[tuple[Decimal, Decimal, Decimal]] = []

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                row = BudgetWindow.objects.filter(budget=self.budget).values_list("spent", "reserved", "limit_usd")
                self.samples.extend(row)
                self.stop.wait(0.005)
        finally:
            connection.close()


def one_run_reservation(workspace, token: str) -> Decimal:
    """What one run reserves, read from a run under a roomy warn budget; and check it is what it costs."""
    probe = make_budget(workspace, "1000", action=Budget.Action.WARN)
    run_id = start(token, "sync")
    held = BudgetReservation.objects.get(window__budget=probe)
    cost = UsageRecord.objects.get(run_id=run_id).cost_usd
    assert held.amount == cost > 0, "the race needs runs that cost exactly what they reserve"
    probe.delete()
    return held.amount


def test_fifty_runs_at_once_never_overspend_a_blocking_budget_twenty_times_over(workspace, simulator, rq_workers):
    provider = sim_provider(simulator, workspace, max_retries=0)
    sim_model(
        provider, alias="fast", input_price_per_million=Decimal("0.1500"), output_price_per_million=Decimal("0.6001")
    )
    workflow_create(workspace=workspace, definition=race_definition())
    token = api_key_issue(workspace=workspace, name="racer", role="member").token
    reservation = one_run_reservation(workspace, token)
    limit = reservation * Decimal("10.5")
    workers = [rq_workers.start("runs", wait=False) for _ in range(3)]  # async runs: three real workers
    wait_for(lambda: all(get_redis().exists(f"rq:worker:{w.name}") for w in workers), timeout=60, what="the workers")

    for repetition in range(REPETITIONS):
        simulator.reset()
        budget = make_budget(workspace, str(limit), period=Budget.Period.DAY)
        watcher = Watcher(budget)
        watcher.start()
        modes = [MODES[n % len(MODES)] for n in range(RUNS)]
        try:
            with ThreadPoolExecutor(max_workers=WEB_THREADS) as web:
                run_ids = list(web.map(lambda mode: start(token, mode), modes))
            wait_for(
                lambda ids=run_ids: (
                    not Run.objects.filter(pk__in=ids).exclude(status__in=["succeeded", "failed"]).exists()
                ),
                timeout=120,
                what="every async run to finish",
            )
        finally:
            watcher.stop.set()
            watcher.join(timeout=10)

        runs = list(Run.objects.filter(pk__in=run_ids))
        succeeded = [r for r in runs if r.status == "succeeded"]
        refused = [r for r in runs if r.status == "failed" and (r.error or {}).get("code") == "budget_exceeded"]
        where = f"repetition {repetition + 1}"
        assert len(runs) == RUNS and {r.mode for r in runs} == set(MODES), where
        assert len(succeeded) == 10 and len(refused) == RUNS - 10, (where, [(r.status, r.error) for r in runs])
        # Refused before any provider call: the simulator saw exactly the successful runs' calls.
        assert simulator.calls() == 10, where
        ledger = UsageRecord.objects.filter(run_id__in=run_ids)
        assert sorted(str(r) for r in ledger.values_list("run_id", flat=True)) == sorted(str(r.pk) for r in succeeded)
        window = BudgetWindow.objects.get(budget=budget)
        assert window.reserved == 0, where
        assert window.spent == sum(ledger.values_list("cost_usd", flat=True)) == 10 * reservation <= limit, where
        assert watcher.samples, where
        assert all(spent + reserved <= limit_usd for spent, reserved, limit_usd in watcher.samples), where
        budget.delete()
