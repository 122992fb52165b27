"""The measurements of issue #6. Each returns rows for the report; Keel and the direct baseline are
alternated round by round in the same run, and medians over rounds are reported."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai

from bench import load
from bench.fixtures import LATENCIES_MS, STREAM_PER_TOKEN_MS
from bench.stack import Proc

KNOBS_HEADER = "X-Keel-Simulator"


@dataclass
class Plan:
    rounds: int
    per_worker: dict[int, int]  # concurrency -> requests per thread per round
    concurrencies: tuple[int, ...]
    async_runs: int
    stream_samples: int
    cache_samples: int


FULL = Plan(
    rounds=3,
    per_worker={1: 150, 8: 40, 32: 12},
    concurrencies=(1, 8, 32),
    async_runs=300,
    stream_samples=60,
    cache_samples=300,
)
QUICK = Plan(
    rounds=1,
    per_worker={1: 40, 8: 10, 32: 4},
    concurrencies=(1, 8, 32),
    async_runs=60,
    stream_samples=15,
    cache_samples=60,
)


@dataclass
class Ctx:
    web: Proc
    simulator: Proc
    token: str
    plan: Plan
    server_model: str
    notes: list[str] = field(default_factory=list)

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.web.url}/api/v1",
            timeout=60,
            headers={"Authorization": f"Bearer {self.token}"},
            limits=httpx.Limits(max_keepalive_connections=1),
        )


def direct_client(simulator_url: str, latency_ms: int = 0, per_token_ms: int = 0) -> openai.OpenAI:
    """The baseline: the `openai` SDK straight to the simulator, with the latency the Keel side gets."""
    knobs = {"latency_first_ms": latency_ms} if latency_ms else {}
    if per_token_ms:
        knobs["latency_per_token_ms"] = per_token_ms
    return openai.OpenAI(
        base_url=f"{simulator_url}/v1",
        api_key="bench",
        max_retries=0,
        timeout=60,
        default_headers={KNOBS_HEADER: json.dumps(knobs)},
    )


def _summary(result: load.LoadResult) -> dict[str, float]:
    return {
        "p50": result.p(50),
        "p95": result.p(95),
        "p99": result.p(99),
        "rps": result.rps,
        "n": result.count,
        "errors": len(result.errors),
    }


def _merge(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {key: load.median([r[key] for r in rounds]) for key in rounds[0]}


def _run_sync(ctx: Ctx, slug: str) -> Callable[[int], None]:
    def call(i: int) -> None:
        client: httpx.Client = load.state()  # type: ignore[assignment]
        response = client.post(
            f"/workflows/{slug}/runs/", json={"input": {"text": f"question {i} {time.time_ns()}"}, "mode": "sync"}
        )
        body = response.json()
        if response.status_code != 200 or body.get("status") != "succeeded":
            raise RuntimeError(f"{response.status_code} {str(body)[:200]}")

    return call


def direct_call(latency_ms: int) -> Callable[[int], None]:
    def call(i: int) -> None:
        client: openai.OpenAI = load.state()  # type: ignore[assignment]
        client.chat.completions.create(
            model="sim-model",
            messages=[{"role": "user", "content": f"question {i} {time.time_ns()}"}],
            max_tokens=32,
            temperature=0.7,
        )

    return call


def machine_meter(ctx: Ctx) -> load.CpuMeter:
    """The CPU of everything a run touches on this machine, by part (the load client is this process)."""
    return load.CpuMeter(
        {
            "keel": lambda: load.process_tree(ctx.web.pid),
            "postgres": lambda: load.pids_named("postgres"),
            "redis": lambda: load.pids_named("redis-server"),
            "simulator": lambda: load.process_tree(ctx.simulator.pid),
            "client": lambda: [os.getpid()],
        }
    )


def _per_run(used: dict[str, float], count: int) -> dict[str, float]:
    return {name: seconds * 1000 / max(1, count) for name, seconds in used.items()}


def sync_overhead(ctx: Ctx) -> list[dict[str, Any]]:
    rows = []
    meter = machine_meter(ctx)
    for latency in LATENCIES_MS:
        for concurrency in ctx.plan.concurrencies:
            n = ctx.plan.per_worker[concurrency]
            direct_rounds, keel_rounds, cpu_rounds = [], [], []
            direct_machine: list[dict[str, float]] = []
            keel_machine: list[dict[str, float]] = []
            for _ in range(ctx.plan.rounds):
                direct = load.closed_loop(
                    direct_call(latency),
                    concurrency=concurrency,
                    requests_per_worker=n,
                    make_state=lambda lat=latency: direct_client(ctx.simulator.url, lat),
                    meter=meter,
                )
                direct_machine.append(_per_run(direct.cpu_s, direct.count))
                direct_rounds.append(_summary(direct))
                keel = load.closed_loop(
                    _run_sync(ctx, f"sync-{latency}"),
                    concurrency=concurrency,
                    requests_per_worker=n,
                    make_state=ctx.api,
                    meter=meter,
                )
                used = _per_run(keel.cpu_s, keel.count)
                keel_machine.append(used)
                cpu_rounds.append(used["keel"])
                keel_rounds.append(_summary(keel))
                if keel.errors:
                    ctx.notes.append(
                        f"sync {latency}ms c={concurrency}: {len(keel.errors)} errors, e.g. {keel.errors[0]}"
                    )
            d, k = _merge(direct_rounds), _merge(keel_rounds)
            rows.append(
                {
                    "scenario": "sync",
                    "latency_ms": latency,
                    "concurrency": concurrency,
                    "direct_p50": d["p50"],
                    "keel_p50": k["p50"],
                    "added_p50": k["p50"] - d["p50"],
                    "direct_p95": d["p95"],
                    "keel_p95": k["p95"],
                    "direct_p99": d["p99"],
                    "keel_p99": k["p99"],
                    "direct_rps": d["rps"],
                    "keel_rps": k["rps"],
                    "cpu_ms_per_run": load.median(cpu_rounds),
                    # CPU ms per request of each part of the machine (medians over rounds).
                    "machine_cpu_ms": {k: load.median([r[k] for r in keel_machine]) for k in keel_machine[0]},
                    "direct_machine_cpu_ms": {
                        k: load.median([r[k] for r in direct_machine]) for k in direct_machine[0]
                    },
                    "ratio_p50": k["p50"] / d["p50"] if d["p50"] else float("nan"),
                    "errors": k["errors"],
                }
            )
    return rows


def cache_hit(ctx: Ctx) -> list[dict[str, Any]]:
    with ctx.api() as api:
        warm = api.post("/workflows/cached/runs/", json={"input": {"text": "the same question"}, "mode": "sync"}).json()
        if warm.get("status") != "succeeded":
            raise RuntimeError(f"cache warm-up failed: {warm}")
        server_ms: list[float] = []
        hits = 0
        cpu0 = load.cpu_seconds(ctx.web.pid)
        t0 = time.perf_counter()
        latencies = []
        for _ in range(ctx.plan.cache_samples):
            s = time.perf_counter()
            response = api.post(
                "/workflows/cached/runs/", json={"input": {"text": "the same question"}, "mode": "sync"}
            )
            latencies.append((time.perf_counter() - s) * 1000)
            server_ms.append(float(response.headers["Server-Timing"].split("dur=")[1]))
            hits += int(response.json()["usage"]["cache_hits"] > 0)
        wall = time.perf_counter() - t0
        cpu = (load.cpu_seconds(ctx.web.pid) - cpu0) * 1000 / ctx.plan.cache_samples
    return [
        {
            "scenario": "cache_hit",
            "client_p50": load.percentile(latencies, 50),
            "client_p99": load.percentile(latencies, 99),
            "server_p50": load.percentile(server_ms, 50),
            "server_p99": load.percentile(server_ms, 99),
            "cpu_ms_per_run": cpu,
            "hit_ratio": hits / ctx.plan.cache_samples,
            "rps": ctx.plan.cache_samples / wall,
        }
    ]


def _iso(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def async_runs(ctx: Ctx, worker_count: int) -> list[dict[str, Any]]:
    """Latency POST -> succeeded seen by one polling client, then throughput of a burst."""
    e2e, enqueue_to_start = [], []
    with ctx.api() as api:
        # At least 30 samples: the p50 is read against a 5 ms target on a noisy 2-core machine.
        for i in range(max(30, ctx.plan.async_runs // 5)):
            t0 = time.perf_counter()
            run = api.post(
                "/workflows/sync-0/runs/", json={"input": {"text": f"async {i} {time.time_ns()}"}, "mode": "async"}
            ).json()
            while run["status"] not in ("succeeded", "failed", "cancelled"):
                time.sleep(0.002)
                run = api.get(f"/runs/{run['id']}/").json()
            e2e.append((time.perf_counter() - t0) * 1000)
            if run["status"] != "succeeded":
                ctx.notes.append(f"async run failed: {run.get('error')}")
            enqueue_to_start.append((_iso(run["started_at"]) - _iso(run["created_at"])) * 1000)
        # Throughput: submit a burst from 8 threads, then wait for all of it.
        ids: list[str] = []

        def submit(i: int) -> None:
            client: httpx.Client = load.state()  # type: ignore[assignment]
            body = client.post(
                "/workflows/sync-0/runs/", json={"input": {"text": f"burst {i} {time.time_ns()}"}, "mode": "async"}
            ).json()
            ids.append(body["id"])

        t0 = time.perf_counter()
        load.closed_loop(submit, concurrency=8, requests_per_worker=ctx.plan.async_runs // 8, make_state=ctx.api)
        pending = set(ids)
        deadline = time.monotonic() + 600
        while pending and time.monotonic() < deadline:
            page = api.get("/runs/", params={"status": "queued", "page_size": 1}).json()["results"]
            running = api.get("/runs/", params={"status": "running", "page_size": 1}).json()["results"]
            if not page and not running:
                break
            time.sleep(0.05)
        wall = time.perf_counter() - t0
    return [
        {
            "scenario": "async",
            "workers": worker_count,
            "e2e_p50": load.percentile(e2e, 50),
            "e2e_p99": load.percentile(e2e, 99),
            "enqueue_to_start_p50": load.percentile(enqueue_to_start, 50),
            "enqueue_to_start_p99": load.percentile(enqueue_to_start, 99),
            "runs_per_s": len(ids) / wall,
        }
    ]


def streaming(ctx: Ctx) -> list[dict[str, Any]]:
    keel_ttft, direct_ttft = [], []
    client = direct_client(ctx.simulator.url, per_token_ms=STREAM_PER_TOKEN_MS)
    with ctx.api() as api:
        for i in range(ctx.plan.stream_samples):
            prompt = f"stream {i} {time.time_ns()}"
            t0 = time.perf_counter()
            for chunk in client.chat.completions.create(
                model="sim-model",
                messages=[{"role": "user", "content": prompt}],
                max_tokens=32,
                temperature=0.7,
                stream=True,
            ):
                if chunk.choices and chunk.choices[0].delta.content:
                    direct_ttft.append((time.perf_counter() - t0) * 1000)
                    break
            t0 = time.perf_counter()
            with api.stream(
                "POST", "/workflows/stream/runs/", json={"input": {"text": prompt}, "mode": "stream"}
            ) as resp:
                event = ""
                for line in resp.iter_lines():
                    if line.startswith("event:"):
                        event = line.split(":", 1)[1].strip()
                    elif line.startswith("data:") and event == "step.delta":
                        keel_ttft.append((time.perf_counter() - t0) * 1000)
                        break
    d50, k50 = load.percentile(direct_ttft, 50), load.percentile(keel_ttft, 50)
    return [
        {
            "scenario": "stream",
            "direct_ttft_p50": d50,
            "keel_ttft_p50": k50,
            "added_ttft_p50": k50 - d50,
            "direct_ttft_p99": load.percentile(direct_ttft, 99),
            "keel_ttft_p99": load.percentile(keel_ttft, 99),
            "samples": len(keel_ttft),
        }
    ]
