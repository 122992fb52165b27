"""What executing a run costs the database: a fixed, small number of statements, whatever the
step count adds. (A regression here is a slower run for every user.)"""

from __future__ import annotations

import pytest

from apps.accounts.models import Role
from apps.accounts.tenancy import Actor
from apps.runs.models import Run, RunEvent
from apps.runs.services import run_execute, run_start

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


def test_a_queued_run_is_claimed_and_read_in_three_statements(workspace, shout, django_assert_num_queries):
    run = run_start(
        workflow=shout, actor=Actor(workspace=workspace, role=Role.OWNER), input={"text": "hi"}, mode="sync"
    ).run
    # The claim reads the run and updates it conditionally; the executor reads the steps.
    with django_assert_num_queries(3 + 3):
        run_execute(run_id=run.pk)
    assert Run.objects.get(pk=run.pk).status == "succeeded"
