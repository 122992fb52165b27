"""`python -m bench.profile [--slug sync-0] [--runs 400] [--same-input]`: where a run's CPU goes.

Starts the same stack as `make bench` (fresh bench database, HTTP simulator, one gunicorn gthread
worker), sends sync runs one at a time, measures the worker's CPU per run from /proc and samples the
worker with py-spy (only threads holding the GIL, so waiting on PostgreSQL, Redis or the provider is
not counted). Prints CPU per run and the share of samples under each of Keel's functions and the
main library entry points (inclusive: a function's share contains its callees'). docs/benchmarks.md
(Where the time goes) quotes its output.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import load, stack

SHOWN = re.compile(
    r"\((apps/|rest_framework/views\.py|openai/_base_client\.py|structlog/stdlib\.py|django/core/handlers/base\.py)"
)


def measure(
    web_url: str, web_pid: int, token: str, *, slug: str, runs: int, same_input: bool, sample: bool = True
) -> dict[str, Any]:
    """Profile sync runs against a running one-worker gthread server; the result bench reports.
    Without `sample`, only CPU and wall time per run (no py-spy: nothing adds to the CPU)."""
    import httpx

    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if sample and not Path(spy).exists():
        raise RuntimeError("py-spy is not installed (pip install -r requirements-dev.txt)")
    out = stack.VAR / "profile.txt"
    client = httpx.Client(base_url=f"{web_url}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=60)

    def run(i: int) -> None:
        text = "the same question" if same_input else f"question {i} {time.time_ns()}"
        response = client.post(f"/workflows/{slug}/runs/", json={"input": {"text": text}, "mode": "sync"})
        if response.status_code != 200 or response.json().get("status") != "succeeded":
            raise RuntimeError(f"{response.status_code} {response.text[:300]}")

    for i in range(50):  # warm-up: connections, caches, prepared statements
        run(i)
    worker = int(subprocess.run(["pgrep", "-P", str(web_pid)], capture_output=True, text=True).stdout.split()[0])
    if not sample:
        database = load.CpuMeter({"postgres": lambda: load.pids_named("postgres")})
        database.start()
        cpu0, t0 = load.cpu_seconds(worker), time.perf_counter()
        for i in range(runs):
            run(i)
        cpu = (load.cpu_seconds(worker) - cpu0) * 1000 / runs
        wall = (time.perf_counter() - t0) * 1000 / runs
        postgres = database.stop()["postgres"] * 1000 / runs
        client.close()
        return {
            "slug": slug,
            "runs": runs,
            "cpu_ms_per_run": cpu,
            "wall_ms_per_run": wall,
            "postgres_cpu_ms_per_run": postgres,
            "samples": 0,
            "top": [],
        }
    sampler = subprocess.Popen(
        [spy, "record", "-p", str(worker), "-r", "500", "-f", "raw", "-o", str(out), "--nonblocking", "--gil"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.5)
    cpu0, t0 = load.cpu_seconds(worker), time.perf_counter()
    for i in range(runs):
        run(i)
    cpu = (load.cpu_seconds(worker) - cpu0) * 1000 / runs
    wall = (time.perf_counter() - t0) * 1000 / runs
    sampler.send_signal(signal.SIGINT)
    sampler.wait(timeout=60)
    client.close()
    total, shares = inclusive(out)
    top = [(frame, round(100 * n / total, 1)) for frame, n in shares.most_common() if SHOWN.search(frame)]
    return {"slug": slug, "runs": runs, "cpu_ms_per_run": cpu, "wall_ms_per_run": wall, "samples": total, "top": top}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--slug", default="sync-0", help="bench workflow: sync-0, sync-100, cached, stream")
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--same-input", action="store_true", help="the same input every run (cache hits)")
    parser.add_argument("--top", type=int, default=45)
    parser.add_argument("--no-sample", action="store_true", help="CPU and wall per run only, without py-spy")
    parser.add_argument("--json", action="store_true", help="print the result as JSON (bench.compare reads it)")
    args = parser.parse_args(argv)

    env = stack.setup()
    from bench import fixtures

    principal = fixtures.create_principal()
    with stack.simulator(env) as sim, stack.web(env, stack.gthread(1, 16)) as web:
        fixtures.create_resources(web.url, principal.token, sim.url)
        result = measure(
            web.url,
            web.pid,
            principal.token,
            slug=args.slug,
            runs=args.runs,
            same_input=args.same_input,
            sample=not args.no_sample,
        )
    print(json.dumps(result) if args.json else "\n".join(lines(result, args.top)))
    return 0


def lines(result: dict[str, Any], top: int = 45) -> list[str]:
    out = [
        f"`{result['slug']}`: {result['runs']} sync runs one at a time against one gunicorn gthread worker: "
        f"{result['cpu_ms_per_run']:.2f} ms of the worker's CPU and {result['wall_ms_per_run']:.2f} ms wall per run. "
        f"Share of {result['samples']} GIL-holding samples under each function (inclusive; the sampling itself "
        "adds to the CPU measured here, so the sync overhead table is the figure for CPU per run):",
        "",
        "| share | function |",
        "|---|---|",
    ]
    out += [f"| {pct:.1f}% | `{frame}` |" for frame, pct in result["top"][:top]]
    return out


def inclusive(path: Path) -> tuple[int, collections.Counter[str]]:
    """Samples per frame (function and file, not line), each stack counting a frame once."""
    total = 0
    shares: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        stack_text, count = line.rsplit(" ", 1)
        n = int(count)
        total += n
        for frame in {re.sub(r":\d+\)", ")", f) for f in stack_text.split(";")}:
            shares[frame] += n
    return total, shares


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
