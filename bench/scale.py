"""Server time of the pages that must stay fast on a large history, and memory of the processes."""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from contextlib import closing
from typing import Any

import httpx

from bench import load
from bench.scenarios import Ctx

SAMPLES = 5


def _server_ms(client: httpx.Client, url: str, **kwargs: Any) -> tuple[float, int]:
    client.get(url, **kwargs)  # warm-up: plans cached, connections open
    times = []
    status = 0
    for _ in range(SAMPLES):
        response = client.get(url, **kwargs)
        status = response.status_code
        times.append(float(response.headers["Server-Timing"].split("dur=")[1]))
    return load.median(times), status


def staff_session(base_url: str, email: str, password: str) -> httpx.Client:
    """A signed-in staff browser session (not yet entered as a context manager)."""
    client = httpx.Client(base_url=base_url, timeout=120)
    page = client.get("/admin/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    response = client.post(
        "/admin/login/?next=/admin/",
        data={"csrfmiddlewaretoken": token, "username": email, "password": password},
        headers={"Referer": f"{base_url}/admin/login/"},
    )
    if response.status_code != 302:
        raise RuntimeError(f"staff sign-in failed: {response.status_code}")
    return client


def pages(ctx: Ctx, *, email: str, password: str, workflow_id: str, loaded: dict[str, int]) -> list[dict[str, Any]]:
    rows = []
    today = dt.datetime.now(dt.UTC).date()
    staff = staff_session(ctx.web.url, email, password)
    with closing(staff), ctx.api() as api:
        targets = [
            ("admin runs changelist, first page", staff, "/admin/runs/run/", {}),
            (
                "admin runs changelist, status + workflow filter",
                staff,
                "/admin/runs/run/",
                {"params": {"status__exact": "succeeded", "workflow__id__exact": workflow_id}},
            ),
            ("GET /api/v1/runs/ first page", api, "/runs/", {}),
            (
                "GET /api/v1/usage/summary/ by day, 30 days",
                api,
                "/usage/summary/",
                {"params": {"from": str(today - dt.timedelta(days=30)), "to": str(today), "group_by": "day"}},
            ),
        ]
        for name, client, url, kwargs in targets:
            ms, status = _server_ms(client, url, **kwargs)
            rows.append({"scenario": "scale", "page": name, "server_ms": ms, "status": status, **loaded})
    return rows


def memory(ctx: Ctx, worker_pids: list[int], concurrency: int = 32) -> list[dict[str, Any]]:
    """RSS of one web worker and one RQ worker, and what each concurrently executing run adds."""
    web_children = [pid for pid in load.process_tree(ctx.web.pid) if pid != ctx.web.pid]
    before = sum(load.rss_mb(pid) for pid in web_children)
    peak = before
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, sum(load.rss_mb(pid) for pid in web_children))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    def call(i: int) -> None:
        client: httpx.Client = load.state()  # type: ignore[assignment]
        client.post("/workflows/slow/runs/", json={"input": {"text": f"memory {i} {time.time_ns()}"}, "mode": "sync"})

    load.closed_loop(call, concurrency=concurrency, requests_per_worker=1, make_state=ctx.api)
    stop.set()
    sampler.join()
    rq_rss = [load.rss_mb(pid) for pid in worker_pids]
    return [
        {
            "scenario": "memory",
            "web_worker_rss_mb": load.median([load.rss_mb(p) for p in web_children]),
            "rq_worker_rss_mb": load.median(rq_rss) if rq_rss else float("nan"),
            "per_concurrent_run_kb": (peak - before) * 1024 / concurrency,
            "concurrency": concurrency,
        }
    ]
