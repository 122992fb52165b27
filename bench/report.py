"""Render bench results as a console table and as docs/benchmarks.md (method, machine, numbers, verdict)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

TARGETS = {
    "sync_c1_added_p50": 3.0,
    "sync_c1_cpu": 3.0,
    "sync_c32_100_added_p50": 10.0,
    "cache_server_p50": 2.0,
    "enqueue_to_start_p50": 5.0,
    "admin_and_runs_page": 300.0,
    "usage_summary": 200.0,
}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def memory_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal"):
            return round(int(line.split()[1]) / 1024 / 1024, 1)
    return float("nan")


def _f(value: Any, digits: int = 1) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _rows(results: dict[str, Any], scenario: str) -> list[dict[str, Any]]:
    return [r for r in results["rows"] if r["scenario"] == scenario]


def _floor(results: dict[str, Any], latency_ms: int, concurrency: int) -> dict[str, dict[str, float]] | None:
    for r in _rows(results, "floor"):
        if r["latency_ms"] == latency_ms and r["concurrency"] == concurrency:
            return r["targets"]
    return None


def verdicts(results: dict[str, Any]) -> list[tuple[str, str, str, bool, str]]:
    """(target, limit, measured, met, floor) for every target of issue #6 that this run measured.

    `floor` is the same figure for the floor of the stack (bench/floor) that does what the target's
    request cannot skip: Keel's API authentication, and the completion where one is made; "" if not
    measured or not applicable."""
    out = []
    primary = results["primary_server"]
    sync = {(r["latency_ms"], r["concurrency"]): r for r in _rows(results, "sync") if r.get("server") == primary}
    quick, loaded = _floor(results, 0, 1), _floor(results, 100, 32)
    if (0, 1) in sync:
        r = sync[(0, 1)]
        floor = _f(quick["api_sdk"]["added_p50"], 2) if quick else ""
        out.append(("sync, c=1, 0 ms: added p50", "<= 3 ms", _f(r["added_p50"], 2), r["added_p50"] <= 3, floor))
        floor = _f(quick["api_sdk"]["web"], 2) if quick else ""
        out.append(
            (
                "sync, c=1, 0 ms: server CPU per run",
                "<= 3 ms",
                _f(r["cpu_ms_per_run"], 2),
                r["cpu_ms_per_run"] <= 3,
                floor,
            )
        )
    if (100, 32) in sync:
        r = sync[(100, 32)]
        floor = _f(loaded["api_sdk"]["added_p50"], 2) if loaded else ""
        out.append(("sync, c=32, 100 ms: added p50", "<= 10 ms", _f(r["added_p50"], 2), r["added_p50"] <= 10, floor))
    for r in _rows(results, "cache_hit"):
        floor = _f(quick["api"]["server_p50"], 2) if quick else ""
        out.append(("cache hit: server p50", "<= 2 ms", _f(r["server_p50"], 2), r["server_p50"] <= 2, floor))
    for r in _rows(results, "async"):
        if r["workers"] == 1:
            out.append(
                (
                    "async: enqueue-to-start p50",
                    "<= 5 ms",
                    _f(r["enqueue_to_start_p50"], 2),
                    r["enqueue_to_start_p50"] <= 5,
                    "",
                )
            )
    for r in _rows(results, "scale"):
        limit = 200 if "summary" in r["page"] else 300
        out.append(
            (
                f"{r['page']} ({r['runs']:,} runs / {r['usage_records']:,} usage)",
                f"<= {limit} ms",
                _f(r["server_ms"], 1),
                r["server_ms"] <= limit and r["status"] == 200,
                "",
            )
        )
    return out


def table(results: dict[str, Any]) -> str:
    lines = [f"Keel benchmarks ({'quick' if results['quick'] else 'full'}), {results['date']}", ""]
    lines.append(
        f"{'server':<24}{'lat':>5}{'c':>4}{'direct p50':>12}{'keel p50':>10}{'added':>8}{'keel p99':>10}"
        f"{'keel rps':>10}{'cpu ms/run':>12}"
    )
    for r in _rows(results, "sync"):
        lines.append(
            f"{r['server']:<24}{r['latency_ms']:>5}{r['concurrency']:>4}{_f(r['direct_p50'], 2):>12}"
            f"{_f(r['keel_p50'], 2):>10}{_f(r['added_p50'], 2):>8}{_f(r['keel_p99'], 2):>10}"
            f"{_f(r['keel_rps']):>10}{_f(r['cpu_ms_per_run'], 2):>12}"
        )
    lines.append("")
    for target, limit, measured, met, floor in verdicts(results):
        at_floor = f"; floor of the stack {floor} ms" if floor else ""
        lines.append(f"{'MET ' if met else 'MISS'}  {target}: {measured} ms (target {limit}{at_floor})")
    return "\n".join(lines)


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    out = [
        "# Benchmarks",
        "",
        "Written by `make bench` (full) or `make bench-quick` (reduced); the numbers below are from the",
        f"last run: **{'quick' if results['quick'] else 'full'}**, {results['date']}, {results['duration_s']} s, "
        f"at commit `{results.get('commit', '?')}`.",
        "Raw numbers: `bench/results.json`.",
        "",
        "## Method",
        "",
        "- Everything runs on this machine over loopback: PostgreSQL, Redis, Keel's HTTP simulator",
        "  (`manage.py run_simulator`), Keel's web server with production settings (`DEBUG=0`, JSON logs at",
        "  INFO, static files collected), and RQ workers. The bench database is dropped and recreated first.",
        "- **Direct** is the same chat completion sent by the `openai` SDK straight to the simulator;",
        "  **Keel** is a one-step `llm` workflow run through `POST /api/v1/workflows/{slug}/runs/` with full",
        "  persistence (run, step, events, usage ledger row, a blocking workspace budget's reservation).",
        "- Closed-loop load: `c` client threads, each with its own keep-alive connection, send back to back.",
        "  Direct and Keel alternate round by round; each figure is the median over rounds of that round's",
        "  percentile (nearest rank). *Added* = Keel p50 − direct p50 in the same run.",
        "- Server CPU per run = CPU time (user + system, from /proc) of the web server's process tree during",
        "  the Keel phase ÷ runs served. The simulator, PostgreSQL and Redis are not counted there; the",
        "  same reading of every part of the machine is the section *The whole machine's CPU per run*.",
        "- Server times (cache hit, admin, API pages) are the app's own `Server-Timing` header (outermost",
        "  middleware), median of 5 after a warm-up.",
        "- Numbers on a 2-core machine running client, server, simulator, PostgreSQL and Redis together",
        "  are noisy: compare ratios within one run, not across runs. To measure a change, compare it",
        "  with a revision in the same minutes: `python -m bench.compare REV` (README, Benchmarks).",
        "",
        "## Machine",
        "",
        f"{m['cpus']} CPUs ({m['cpu']}), {m['memory_gb']} GiB, Python {m['python']}.",
        "",
        "## Targets (issue #6)",
        "",
        "The *floor* column is the same figure for the floor of the stack (section *The floor of the stack*):",
        "a DRF view with Keel's API-key authentication, permission and throttle, and the chat completion",
        "where the target's request makes one, that stores nothing.",
        "",
        "| target | limit | measured | | floor |",
        "|---|---|---|---|---|",
    ]
    for target, limit, measured, met, floor in verdicts(results):
        floor_cell = f"{floor} ms" if floor else ""
        out.append(f"| {target} | {limit} | {measured} ms | {'met' if met else '**missed**'} | {floor_cell} |")
    out += [
        "",
        "## Sync overhead",
        "",
        "| server | provider latency | c | direct p50 | Keel p50 | added p50 | direct p99 | Keel p95 | Keel p99 | direct rps | Keel rps | server CPU / run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in _rows(results, "sync"):
        out.append(
            f"| {r['server']} | {r['latency_ms']} ms | {r['concurrency']} | {_f(r['direct_p50'], 2)} | "
            f"{_f(r['keel_p50'], 2)} | {_f(r['added_p50'], 2)} | {_f(r['direct_p99'], 2)} | {_f(r['keel_p95'], 2)} | "
            f"{_f(r['keel_p99'], 2)} | {_f(r['direct_rps'])} | {_f(r['keel_rps'])} | {_f(r['cpu_ms_per_run'], 2)} ms |"
        )
    out += ["", "Latencies in ms.", ""]
    out += machine_cpu_section(results)
    out += floor_section(results)
    for r in _rows(results, "cache_hit"):
        out += [
            "## Cache hit",
            "",
            f"Client p50 {_f(r['client_p50'], 2)} ms, p99 {_f(r['client_p99'], 2)} ms; server p50 "
            f"{_f(r['server_p50'], 2)} ms, p99 {_f(r['server_p99'], 2)} ms; server CPU {_f(r['cpu_ms_per_run'], 2)} ms "
            f"per run; hit ratio {_f(r['hit_ratio'], 2)}.",
            "",
        ]
    async_rows = _rows(results, "async")
    if async_rows:
        out += [
            "## Async runs",
            "",
            "| workers | POST → succeeded p50 | p99 | enqueue → start p50 | p99 | runs/s (burst) |",
            "|---|---|---|---|---|---|",
        ]
        for r in async_rows:
            out.append(
                f"| {r['workers']} | {_f(r['e2e_p50'], 2)} ms | {_f(r['e2e_p99'], 2)} ms | "
                f"{_f(r['enqueue_to_start_p50'], 2)} ms | {_f(r['enqueue_to_start_p99'], 2)} ms | {_f(r['runs_per_s'])} |"
            )
        out.append("")
    for r in _rows(results, "stream"):
        out += [
            "## Streaming",
            "",
            f"Time to first token: direct p50 {_f(r['direct_ttft_p50'], 2)} ms, Keel's first `step.delta` p50 "
            f"{_f(r['keel_ttft_p50'], 2)} ms (added {_f(r['added_ttft_p50'], 2)} ms); p99 {_f(r['direct_ttft_p99'], 2)} / "
            f"{_f(r['keel_ttft_p99'], 2)} ms; {r['samples']} samples.",
            "",
        ]
    scale_rows = _rows(results, "scale")
    if scale_rows:
        out += ["## Scale of the books", "", "| page | server time | status |", "|---|---|---|"]
        for r in scale_rows:
            out.append(f"| {r['page']} | {_f(r['server_ms'], 1)} ms | {r['status']} |")
        out += [
            "",
            f"History: {scale_rows[0]['runs']:,} runs, {scale_rows[0]['usage_records']:,} usage records over 30 days.",
            "",
        ]
    for r in _rows(results, "memory"):
        out += [
            "## Memory",
            "",
            f"RSS of one web worker {_f(r['web_worker_rss_mb'])} MiB, of one RQ worker {_f(r['rq_worker_rss_mb'])} MiB "
            f"(after the load); each concurrently executing run adds about {_f(r['per_concurrent_run_kb'])} KiB "
            f"({r['concurrency']} in flight).",
            "",
        ]
    out += ["## Server model", "", *server_model_section(results), ""]
    if results.get("profile"):
        from bench.profile import lines

        out += ["## Where the time goes", "", *lines(results["profile"], 40), ""]
    if results["notes"]:
        out += ["## Notes", "", *[f"- {n}" for n in results["notes"]], ""]
    return "\n".join(out)


def server_model_section(results: dict[str, Any]) -> list[str]:
    rows = [r for r in _rows(results, "sync") if r["latency_ms"] == 100 and r["concurrency"] == 32]
    if len(rows) < 2:
        return [
            f"This run measured only `{results['primary_server']}`; the full run compares server models at",
            "concurrency 32 with 100 ms provider latency.",
        ]
    lines = [
        "Concurrency 32, provider latency 100 ms:",
        "",
        "| server | Keel p50 | added p50 | Keel rps |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['server']} | {_f(r['keel_p50'], 2)} | {_f(r['added_p50'], 2)} | {_f(r['keel_rps'])} |")
    best = min(rows, key=lambda r: r["added_p50"])
    lines += [
        "",
        f"Lowest added latency: `{best['server']}`. Sync workers cap throughput at workers ÷ latency; threads",
        "do not, as long as threads ≥ concurrent runs (each sync or stream run holds a thread while it waits",
        "on the provider).",
    ]
    return lines


def machine_cpu_section(results: dict[str, Any]) -> list[str]:
    """Where the machine's CPU goes per run, by process: what bounds throughput on this machine."""
    rows = [r for r in _rows(results, "sync") if r.get("machine_cpu_ms") and r["server"] == results["primary_server"]]
    if not rows:
        return []
    cores = results["machine"]["cpus"]
    parts = [("keel", "Keel web"), ("postgres", "PostgreSQL"), ("redis", "Redis"), ("simulator", "simulator")]
    parts.append(("client", "load client"))
    out = [
        "## The whole machine's CPU per run",
        "",
        f"Every part shares the {cores} cores during the load. CPU ms per request of each ({results['primary_server']};",
        "the load client is the benchmark's own process), and the most requests per second those cores",
        "could serve at that cost (cores ÷ total):",
        "",
        "| provider latency | c | "
        + " | ".join(label for _, label in parts)
        + " | total | ceiling | direct total | direct ceiling |",
        "|---|---|" + "---|" * (len(parts) + 4),
    ]
    for r in rows:
        keel, direct = r["machine_cpu_ms"], r["direct_machine_cpu_ms"]
        total, direct_total = sum(keel.values()), sum(direct.values())
        out.append(
            f"| {r['latency_ms']} ms | {r['concurrency']} | "
            + " | ".join(_f(keel[key], 2) for key, _ in parts)
            + f" | {_f(total, 2)} | {_f(cores * 1000 / total if total else float('nan'))}/s | {_f(direct_total, 2)} | "
            f"{_f(cores * 1000 / direct_total if direct_total else float('nan'))}/s |"
        )
    slow = next((r for r in rows if r["latency_ms"] == 100 and r["concurrency"] == 32), None)
    if slow is not None:
        needed = 32 / ((slow["direct_p50"] + 10) / 1000)
        budget = cores * 1000 / needed
        used = slow["machine_cpu_ms"]
        total = sum(used.values())
        keel = used["keel"] + used["postgres"] + used["redis"]
        out += [
            "",
            f"At c=32 with 100 ms provider latency, 10 ms added means {_f(needed)} runs/s (32 ÷ (direct p50 + 10 ms)):",
            f"a budget of {_f(budget, 2)} ms of CPU per run for the whole machine. This run used {_f(total, 2)} ms (Keel's",
            f"web process with its PostgreSQL and Redis {_f(keel, 2)} ms, the simulator and the load client",
            f"{_f(total - keel, 2)} ms), so the cores cap it at about {_f(cores * 1000 / total)} runs/s and the rest of the",
            "offered load waits in queues: that queueing is the added latency.",
        ]
    return out + [""]


def floor_section(results: dict[str, Any]) -> list[str]:
    """The floor of the stack next to Keel, measured in the same rounds (bench/floor)."""
    rows = _rows(results, "floor")
    if not rows:
        return []
    from bench.floor.measure import lines

    out = [
        "## The floor of the stack",
        "",
        "What the chosen parts cost per request before Keel's own work begins, served by a second server of",
        f"the same model ({results['primary_server']}) with Keel's settings and middleware and the endpoints of",
        "`bench/floor/` (a URLconf only the benchmark serves). The direct call, the floor's endpoints and",
        "Keel take turns round by round; *added* is against the direct call of the same run; *server* is",
        "the `Server-Timing` the outermost middleware reports. `python -m bench.floor` measures this alone.",
        "",
        *lines(rows),
    ]
    quick = _floor(results, 0, 1)
    if quick is not None:
        floor, keel, hit, api = quick["api_sdk"], quick["keel"], quick["keel_cached"], quick["api"]
        thinnest = quick["sdk"]
        out += [
            "At c=1 with 0 ms provider latency, the thinnest server that makes the completion (Django, Keel's",
            f"middleware and the SDK, no database) uses {_f(thinnest['web'], 2)} ms of web CPU per request and adds "
            f"{_f(thinnest['added_p50'], 2)} ms;",
            f"with Keel's API authentication in front it is {_f(floor['web'], 2)} ms and {_f(floor['added_p50'], 2)} ms. "
            "The targets for Keel, which also stores",
            "the run, its step, its usage and its budget hold, are 3 ms of CPU and 3 ms added. What Keel's own",
            f"work costs on top of that floor: {_f(keel['web'] - floor['web'], 2)} ms of web CPU and "
            f"{_f(keel['postgres'] - floor['postgres'], 2)} ms of PostgreSQL per run. A",
            f"cache hit's floor (the authenticated API, no completion) answers in {_f(api['server_p50'], 2)} ms of "
            f"server time; Keel's hit, which records a run, in {_f(hit['server_p50'], 2)} ms.",
            "",
        ]
    loaded = _floor(results, 100, 32)
    if loaded is not None:
        out += [
            f"At c=32 with 100 ms provider latency the same floor adds {_f(loaded['api_sdk']['added_p50'], 2)} ms "
            f"({_f(loaded['api_sdk']['rps'])} requests/s) and Keel {_f(loaded['keel']['added_p50'], 2)} ms "
            f"({_f(loaded['keel']['rps'])} runs/s); the target is 10 ms.",
            "",
        ]
    return out
