"""What executing a run costs the database: a fixed, small number of statements, whatever the
step count adds. (A regression here is a slower run for every user.)"""

from __future__ import annotations

import pytest
from django.conf import settings

from apps.accounts.models import Role
from apps.accounts.tenancy import Actor
from apps.runs.engine import run_claim
from apps.runs.models import Run, RunEvent
from apps.runs.services import run_execute, run_start
from apps.workflows.services import workflow_create
from tests.runs.conftest import transform_definition

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_run_started_here_executes_in_one_statement_per_step(workspace, shout, django_assert_num_queries):
    started = run_start(
        workflow=shout, actor=Actor(workspace=workspace, role=Role.OWNER), input={"text": "hi"}, claim=True
    )
    # Three local steps: each step's checkpoint (start, result, events, totals) is one statement;
    # the last one carries the run's end. Nothing is read back.
    with django_assert_num_queries(3):
        body = run_execute(run_id=started.run.pk, claim=started.claim, steps=started.steps)

    run = Run.objects.get(pk=started.run.pk)
    assert run.status == "succeeded" and body["status"] == "succeeded" and body["output"] == run.output
    seqs = list(RunEvent.objects.filter(run=run).order_by("seq").values_list("seq", "type"))
    assert [seq for seq, _ in seqs] == list(range(1, 9)) and run.last_event_seq == 8
    assert [t for _, t in seqs][0] == "run.started" and [t for _, t in seqs][-1] == "run.finished"


def test_a_queued_run_is_claimed_and_read_in_two_statements(workspace, shout, django_assert_num_queries):
    run = run_start(
        workflow=shout, actor=Actor(workspace=workspace, role=Role.OWNER), input={"text": "hi"}, mode="sync"
    ).run
    # The claim is one conditional UPDATE returning what execution needs; the executor reads the steps.
    with django_assert_num_queries(2 + 3):
        run_execute(run_id=run.pk)
    run = Run.objects.get(pk=run.pk)
    assert run.status == "succeeded" and run.executions == 1
    assert (run.deadline_at - run.started_at).total_seconds() == settings.KEEL_RUN_DEFAULT_TIMEOUT_S


def test_the_claim_sets_the_deadline_from_the_definitions_time_limit(workspace):
    workflow = workflow_create(workspace=workspace, definition=transform_definition(limits={"timeout_s": 42.5}))
    run = run_start(
        workflow=workflow, actor=Actor(workspace=workspace, role=Role.OWNER), input={"text": "hi"}, mode="async"
    ).run
    claim = run_claim(run_id=run.pk)
    assert claim is not None and run_claim(run_id=run.pk) is None  # claimed once
    stored = Run.objects.get(pk=run.pk)
    assert (stored.deadline_at - stored.started_at).total_seconds() == 42.5
    assert (stored.status, stored.lease_token, stored.executions) == ("running", claim.token, 1)
    assert claim.run.workflow.slug == "shout" and claim.run.workspace.slug == "acme"
    assert claim.run.workflow_version.definition["limits"] == {"timeout_s": 42.5}


def test_the_one_statement_insert_stores_what_the_orm_would(workspace, shout):
    """sql.rows_insert (the steps as one JSON array of records) against the values the instances
    hold: JSON of every shape, exact decimals, instants and references survive as the ORM writes them."""
    from datetime import UTC, datetime
    from decimal import Decimal

    from django.forms.models import model_to_dict

    from apps.runs import sql
    from apps.runs.models import StepRun

    version = shout.versions.get()
    now = datetime(2026, 12, 6, 3, 8, 32, 401434, tzinfo=UTC)
    run = Run(
        workspace=workspace,
        workflow=shout,
        workflow_version=version,
        mode="sync",
        input={"text": 'héllo "quoted" \\ back', "nested": [1, 2.5, None, True, {"k": []}]},
        metadata={"team": "ops"},
        trace_id="t" * 32,
        cost_usd=Decimal("0.123456"),
    )
    shapes = [None, "a plain string", ["a", 1], {"deep": {"er": [None, False]}}, 12.75]
    steps = [
        StepRun(
            workspace_id=workspace.pk,
            run=run,
            step_id=f"s{index}",
            index=index,
            type="transform",
            input=shape,
            output={"answer": shape},
            error=None if index % 2 else {"code": "x", "message": "ü"},
            cost_usd=Decimal("0.000001") * index,
            call_ids=[f"call-{index}"],
            started_at=now if index else None,
        )
        for index, shape in enumerate(shapes)
    ]
    sql.rows_insert(run, steps, now=now)

    stored = Run.objects.get(pk=run.pk)
    assert model_to_dict(stored) == model_to_dict(run)
    assert (stored.created_at, stored.updated_at) == (now, now)
    for step in steps:
        assert model_to_dict(StepRun.objects.get(pk=step.pk)) == model_to_dict(step)
        assert StepRun.objects.get(pk=step.pk).created_at == now
    assert StepRun.objects.get(pk=steps[0].pk).input is None  # None is SQL NULL, as save() stores it
