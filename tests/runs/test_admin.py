"""Runs in the admin: a changelist that stays cheap on large tables, steps inline, retry and cancel."""

from __future__ import annotations

import pytest

from apps.accounts.models import Role
from apps.accounts.tenancy import Actor
from apps.runs.admin import RunAdmin
from apps.runs.models import Run
from apps.runs.services import run_start

pytestmark = pytest.mark.django_db


def start(workflow, text: str = "x") -> Run:
    return run_start(
        workflow=workflow,
        actor=Actor(workspace=workflow.workspace, role=Role.OWNER),
        input={"text": text},
        mode="async",
    ).run


def test_the_runs_changelist_needs_no_count_and_a_fixed_number_of_queries(
    admin_client, shout, django_assert_max_num_queries
):
    assert RunAdmin.show_full_result_count is False
    for n in range(3):
        start(shout, str(n))
    with django_assert_max_num_queries(12) as few:
        assert admin_client.get("/admin/runs/run/").status_code == 200
    for n in range(20):
        start(shout, f"more {n}")
    with django_assert_max_num_queries(len(few.captured_queries)):
        page = admin_client.get("/admin/runs/run/?status__exact=queued&mode__exact=async")
    assert page.status_code == 200 and "shout" in page.content.decode()


def test_a_run_page_shows_its_steps_and_the_retry_action_starts_a_new_run(admin_client, shout):
    run = start(shout)
    Run.objects.filter(pk=run.pk).update(status="failed", error={"code": "x", "message": "y", "step": "upper"})
    page = admin_client.get(f"/admin/runs/run/{run.pk}/change/")
    assert page.status_code == 200
    assert all(step in page.content.decode() for step in ("upper", "stats", "pick"))
    response = admin_client.post("/admin/runs/run/", {"action": "retry_runs", "_selected_action": [str(run.pk)]})
    assert response.status_code == 302
    assert Run.objects.filter(retry_of=run).count() == 1


def test_the_cancel_action_cancels_queued_runs(admin_client, shout):
    run = start(shout)
    admin_client.post("/admin/runs/run/", {"action": "cancel_runs", "_selected_action": [str(run.pk)]})
    assert Run.objects.get(pk=run.pk).status == "cancelled"
