"""More concurrent runs than the database takes connections: no 500 (docs/operations.md, "Database
connections").

A web process used to hold a connection per thread, two per in-flight sync or stream run, and
PostgreSQL answered the connection past its limit with "too many clients": requests were answered
500 and runs were left for the reaper. Here gunicorn connects as a role PostgreSQL lets open only a
few connections (a role's CONNECTION LIMIT stands in for the server's max_connections shared with
other clients; superusers are exempt, so the role is not one), and gets more concurrent runs than that.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.db import connection

from apps.accounts.models import Workspace
from apps.accounts.services import api_key_issue
from apps.runs.models import Run
from apps.workflows.services import workflow_create
from tests.runs.helpers import parse_sse
from tests.support.processes import PYTHON, free_port, running, wait_http
from tests.support.simulator import Simulator, sim_model, sim_provider, slow

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

URL = "/api/v1/workflows/ask/runs/"


@contextmanager
def limited_role(limit: int) -> Iterator[str]:
    """A login role that may hold at most `limit` connections, with read and write access to the
    test database's tables; yields a DATABASE_URL connecting as it."""
    name = f"keel_limited_{uuid.uuid4().hex[:10]}"
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE ROLE "{name}" LOGIN CONNECTION LIMIT {int(limit)}')
        cursor.execute(f'GRANT pg_read_all_data, pg_write_all_data TO "{name}"')
    params = connection.settings_dict
    try:
        yield f"postgres://{name}@{params.get('HOST') or '127.0.0.1'}:{params.get('PORT') or 5432}/{params['NAME']}"
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [name])
            cursor.execute(f'DROP ROLE "{name}"')


@contextmanager
def gunicorn(database_url: str, log: Path, *, threads: int, **env: str) -> Iterator[str]:
    port = free_port()
    argv = [
        PYTHON, "-m", "gunicorn", "config.wsgi:application", "--bind", f"127.0.0.1:{port}",
        "--workers", "1", "--worker-class", "gthread", "--threads", str(threads), "--timeout", "60",
    ]  # fmt: skip
    env = {"DEBUG": "1", "DATABASE_URL": database_url, "REDIS_URL": settings.REDIS_URL, "LOG_LEVEL": "WARNING", **env}
    with running(argv, env=env, log=log) as proc:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60, proc=proc)
        yield f"http://127.0.0.1:{port}"


def ask_workflow(workspace: Workspace, simulator: Simulator, *, latency_s: float) -> None:
    provider = sim_provider(simulator, workspace, config=slow(latency_s), max_retries=0)
    sim_model(provider, alias="fast")
    workflow_create(
        workspace=workspace,
        definition={
            "slug": "ask",
            "name": "Ask",
            "input_schema": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
            "steps": [
                {"id": "answer", "type": "llm", "model": "fast", "prompt": "{{ input.text }}", "retries": 0},
            ],
            "output": {"answer": "{{ steps.answer.output }}"},
        },
    )


def test_more_concurrent_sync_and_stream_runs_than_connections_all_succeed(workspace, simulator, tmp_path):
    # 12 clients at once against 8 threads: up to 8 runs in flight, which used to take 8 request
    # threads' and 8 run threads' connections (and the heartbeat's) from a role allowed 6. With a
    # pool of 4, runs wait for a connection instead; a request thread holds none while it waits
    # for its run, nor does an SSE stream between events.
    ask_workflow(workspace, simulator, latency_s=0.3)
    token = api_key_issue(workspace=workspace, name="load").token
    clients, per_client, streams = 12, 2, 4
    start = threading.Barrier(clients)

    with limited_role(6) as database_url:
        # A stream whose run never finishes would otherwise stay open for an hour (KEEL_SSE_MAX_S).
        with gunicorn(
            database_url, tmp_path / "gunicorn.log", threads=8, KEEL_DB_POOL_MAX_SIZE="4", KEEL_SSE_MAX_S="30"
        ) as base:

            def client(n: int) -> list[tuple[int, str, dict | list]]:
                mode = "stream" if n < streams else "sync"
                answers: list[tuple[int, str, dict | list]] = []
                with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
                    start.wait(timeout=30)
                    for i in range(per_client):
                        response = http.post(URL, json={"input": {"text": f"client {n} run {i}"}, "mode": mode})
                        kind = response.headers.get("Content-Type", "")
                        body = parse_sse(response.text) if kind.startswith("text/event-stream") else response.json()
                        answers.append((response.status_code, kind, body))
                return answers

            with ThreadPoolExecutor(max_workers=clients) as pool:
                answers = [answer for mine in pool.map(client, range(clients)) for answer in mine]

    log = (tmp_path / "gunicorn.log").read_text()
    assert [a for a in answers if a[0] >= 500] == [], log[-3000:]
    sync = [body for status, kind, body in answers if kind.startswith("application/json")]
    assert len(sync) == (clients - streams) * per_client
    assert all(body["status"] == "succeeded" for body in sync), sync
    streamed = [body for status, kind, body in answers if kind.startswith("text/event-stream")]
    assert len(streamed) == streams * per_client
    assert all(events[-1]["event"] == "run.finished" for events in streamed), streamed
    assert all(events[-1]["data"]["status"] == "succeeded" for events in streamed)
    # Every run the clients started finished; none is left running for the reaper.
    assert Run.objects.count() == clients * per_client
    assert set(Run.objects.values_list("status", flat=True)) == {Run.Status.SUCCEEDED}
    assert "too many connections" not in log


@pytest.mark.parametrize("pool_size", ["4", "0"], ids=["pooled", "connection-per-thread"])
def test_a_request_that_gets_no_database_connection_is_answered_503_with_retry_after(
    workspace, simulator, tmp_path, pool_size
):
    ask_workflow(workspace, simulator, latency_s=0)
    token = api_key_issue(workspace=workspace, name="refused").token
    with limited_role(0) as database_url:  # PostgreSQL refuses every connection, as at max_connections
        with gunicorn(
            database_url,
            tmp_path / "gunicorn.log",
            threads=4,
            KEEL_DB_POOL_MAX_SIZE=pool_size,
            KEEL_DB_POOL_TIMEOUT_S="1",
        ) as base:
            headers = {"Authorization": f"Bearer {token}"}
            answers = [
                httpx.post(f"{base}{URL}", json={"input": {"text": "hi"}, "mode": "sync"}, headers=headers, timeout=30),
                httpx.get(f"{base}/api/v1/runs/", headers=headers, timeout=30),
            ]
    for response in answers:
        assert response.status_code == 503, response.text
        assert response.headers["Content-Type"].startswith("application/problem+json")
        assert response.json()["code"] == "service_unavailable"
        assert int(response.headers["Retry-After"]) > 0
    assert Run.objects.count() == 0
