"""Statements a connection runs repeatedly are prepared on PostgreSQL (KEEL_DB_PREPARED_STATEMENTS).
A migration run by another process while workers live must not break them: a prepared statement
whose result columns change fails instead of re-planning, so none may select a table's `*`."""

from __future__ import annotations

import psycopg
import pytest
from django.db import connection

from apps.accounts.models import Role
from apps.accounts.tenancy import Actor
from apps.runs.engine import run_claim
from apps.runs.services import run_start

pytestmark = pytest.mark.django_db(transaction=True)


def _queued(workspace, workflow):
    actor = Actor(workspace=workspace, role=Role.OWNER)
    return run_start(workflow=workflow, actor=actor, input={"text": "hi"}, mode="async").run


def test_a_prepared_claim_survives_a_column_added_by_another_connection(workspace, shout):
    assert connection.connection.prepare_threshold is not None  # prepared statements are on
    for _ in range(7):  # past psycopg's threshold: the claim is now a prepared statement
        assert run_claim(run_id=_queued(workspace, shout).pk) is not None
    params = connection.get_connection_params()
    with psycopg.connect(
        dbname=params["dbname"],
        host=params.get("host"),
        port=params.get("port"),
        user=params.get("user"),
        autocommit=True,
    ) as other:  # a migration in another process
        other.execute("ALTER TABLE runs_run ADD COLUMN keel_test_extra integer")
        try:
            claim = run_claim(run_id=_queued(workspace, shout).pk)
        finally:
            other.execute("ALTER TABLE runs_run DROP COLUMN keel_test_extra")
    assert claim is not None and claim.run.status == "running"
