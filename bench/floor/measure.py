"""Closed-loop load on the direct call, the floor's endpoints and Keel, taking turns round by round,
with the server's own time per request (`Server-Timing`) and the CPU of every part of the machine
per request (the same method as the sync overhead)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from bench import load, scenarios
from bench.scenarios import direct_call, direct_client
from bench.stack import Proc

TARGETS = {
    "direct": "direct: the `openai` SDK straight to the simulator",
    "django": "Django + Keel's middleware, JSON in and out",
    "api": "DRF + Keel's API key auth, permission, throttle, JSON in and out",
    "sdk": "Django + Keel's middleware + one completion through the SDK",
    "api_sdk": "DRF + Keel's API key auth, permission, throttle + the completion",
    "keel": "Keel: a one-step `llm` run, full persistence",
    "keel_cached": "Keel: the same run served from the response cache",
}


@dataclass(frozen=True)
class Configuration:
    latency_ms: int
    concurrency: int
    requests_per_worker: int


def _configurations(plan: scenarios.Plan) -> tuple[Configuration, ...]:
    """The two rows of the issue's targets (the cost of one request, the throughput under load),
    with the sync overhead's requests per client thread."""
    return (Configuration(0, 1, plan.per_worker[1]), Configuration(100, 32, plan.per_worker[32]))


FULL, QUICK = _configurations(scenarios.FULL), _configurations(scenarios.QUICK)


def floor_env(env: dict[str, str], simulator_url: str) -> dict[str, str]:
    from bench.floor.urls import SIMULATOR_URL_ENV

    return {**env, "DJANGO_SETTINGS_MODULE": "bench.floor.settings", SIMULATOR_URL_ENV: simulator_url}


class _Poster:
    """POSTs a body, checks the answer succeeded, and keeps the server's own time of each request."""

    def __init__(self, path: str, body: Callable[[int], dict[str, Any]]) -> None:
        self.path, self.body = path, body
        self.server_ms: list[float] = []
        self._lock = threading.Lock()

    def __call__(self, i: int) -> None:
        client: httpx.Client = load.state()  # type: ignore[assignment]
        response = client.post(self.path, json=self.body(i))
        if response.status_code != 200 or response.json().get("status") != "succeeded":
            raise RuntimeError(f"{response.status_code} {response.text[:200]}")
        with self._lock:
            self.server_ms.append(float(response.headers["Server-Timing"].split("dur=")[1]))


def measure(
    *, keel: Proc, floor: Proc, simulator: Proc, token: str, config: Configuration, rounds: int
) -> dict[str, Any]:
    """Medians over rounds, per target: p50 latency and server time, requests per second, and CPU ms
    per request by part of the machine."""
    latency = config.latency_ms

    def text(i: int) -> str:
        return f"question {i} {time.time_ns()}"

    def http(base: str) -> Callable[[], httpx.Client]:
        return lambda: httpx.Client(
            base_url=base,
            timeout=60,
            headers={"Authorization": f"Bearer {token}"},
            limits=httpx.Limits(max_keepalive_connections=1),
        )

    def floor_post(path: str) -> _Poster:
        return _Poster(path, lambda i: {"text": text(i), "latency_ms": latency})

    def run_post(slug: str, same_input: bool = False) -> _Poster:
        return _Poster(
            f"/workflows/{slug}/runs/",
            lambda i: {"input": {"text": "the same question" if same_input else text(i)}, "mode": "sync"},
        )

    plans: dict[str, tuple[Callable[[int], None], Callable[[], object], int | None]] = {
        "direct": (direct_call(latency), lambda: direct_client(simulator.url, latency), None),
        "django": (floor_post("/floor/django"), http(floor.url), floor.pid),
        "api": (floor_post("/floor/api"), http(floor.url), floor.pid),
        "sdk": (floor_post("/floor/sdk"), http(floor.url), floor.pid),
        "api_sdk": (floor_post("/floor/api-sdk"), http(floor.url), floor.pid),
        "keel": (run_post(f"sync-{latency}"), http(f"{keel.url}/api/v1"), keel.pid),
        # The bench's cached workflow calls the 0 ms provider; a hit never reaches it.
        "keel_cached": (run_post("cached", same_input=True), http(f"{keel.url}/api/v1"), keel.pid),
    }
    for call, make_state, _ in plans.values():  # warm-up: connections, caches, the cached answer
        load.closed_loop(call, concurrency=config.concurrency, requests_per_worker=3, make_state=make_state)
    per_round: dict[str, list[dict[str, float]]] = {name: [] for name in plans}
    errors: list[str] = []
    for _ in range(rounds):
        for name, (call, make_state, server_pid) in plans.items():
            meter = load.CpuMeter(
                {
                    "web": (lambda pid=server_pid: load.process_tree(pid) if pid else []),
                    "postgres": lambda: load.pids_named("postgres"),
                    "redis": lambda: load.pids_named("redis-server"),
                    "simulator": lambda: load.process_tree(simulator.pid),
                    "client": lambda: [os.getpid()],
                }
            )
            if isinstance(call, _Poster):
                call.server_ms.clear()
            result = load.closed_loop(
                call,
                concurrency=config.concurrency,
                requests_per_worker=config.requests_per_worker,
                make_state=make_state,
                meter=meter,
            )
            errors += [f"{name}: {e}" for e in result.errors[:3]]
            cpu = {part: s * 1000 / max(1, result.count) for part, s in result.cpu_s.items()}
            server = load.percentile(call.server_ms, 50) if isinstance(call, _Poster) else float("nan")
            per_round[name].append(
                {"p50": result.p(50), "server_p50": server, "rps": result.rps, **cpu, "machine": sum(cpu.values())}
            )
    targets = {name: {key: load.median([r[key] for r in rows]) for key in rows[0]} for name, rows in per_round.items()}
    for row in targets.values():
        row["added_p50"] = row["p50"] - targets["direct"]["p50"]
    return {
        "latency_ms": latency,
        "concurrency": config.concurrency,
        "requests": config.concurrency * config.requests_per_worker,
        "rounds": rounds,
        "targets": targets,
        "errors": errors,
    }


def _ms(value: float) -> str:
    return "–" if value != value else f"{value:.2f}"  # NaN: the direct call has no server of Keel's


def lines(measured: list[dict[str, Any]]) -> list[str]:
    """A markdown table per configuration: the floor's steps and Keel, CPU ms per request by part."""
    out: list[str] = []
    for m in measured:
        out += [
            f"Provider latency {m['latency_ms']} ms, concurrency {m['concurrency']}, {m['requests']} requests "
            f"per round, median of {m['rounds']} round(s); times and CPU in ms per request:",
            "",
            "| what answers | p50 | added p50 | server p50 | rps | web CPU | PostgreSQL | Redis | simulator "
            "| client | machine |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, label in TARGETS.items():
            t = m["targets"][name]
            out.append(
                f"| {label} | {t['p50']:.2f} | {t['added_p50']:.2f} | {_ms(t['server_p50'])} | {t['rps']:.1f} | "
                f"{t['web']:.2f} | {t['postgres']:.2f} | {t['redis']:.2f} | {t['simulator']:.2f} | "
                f"{t['client']:.2f} | {t['machine']:.2f} |"
            )
        if m["errors"]:
            out += ["", f"Errors: {len(m['errors'])}, e.g. {m['errors'][0]}"]
        out.append("")
    return out
