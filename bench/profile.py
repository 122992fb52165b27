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
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench import load, stack

SHOWN = re.compile(
    r"\((apps/|rest_framework/views\.py|openai/_base_client\.py|structlog/stdlib\.py|django/core/handlers/base\.py)"
)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--slug", default="sync-0", help="bench workflow: sync-0, sync-100, cached, stream")
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--same-input", action="store_true", help="the same input every run (cache hits)")
    parser.add_argument("--top", type=int, default=45)
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("py-spy is not installed (pip install -r requirements-dev.txt)", file=sys.stderr)
        return 2

    env = stack.bench_env()
    os.environ.update(env)
    stack.prepare_database(env)
    import django

    django.setup()
    import httpx

    from bench import fixtures

    principal = fixtures.create_principal()
    out = stack.VAR / "profile.txt"
    with stack.simulator(env) as sim, stack.web(env, stack.gthread(1, 16)) as web:
        fixtures.create_resources(web.url, principal.token, sim.url)
        client = httpx.Client(
            base_url=f"{web.url}/api/v1", headers={"Authorization": f"Bearer {principal.token}"}, timeout=60
        )

        def run(i: int) -> None:
            text = "the same question" if args.same_input else f"question {i} {time.time_ns()}"
            response = client.post(f"/workflows/{args.slug}/runs/", json={"input": {"text": text}, "mode": "sync"})
            if response.status_code != 200 or response.json().get("status") != "succeeded":
                raise RuntimeError(f"{response.status_code} {response.text[:300]}")

        for i in range(50):  # warm-up: connections, caches, prepared statements
            run(i)
        worker = int(subprocess.run(["pgrep", "-P", str(web.pid)], capture_output=True, text=True).stdout.split()[0])
        sampler = subprocess.Popen(
            [spy, "record", "-p", str(worker), "-r", "500", "-f", "raw", "-o", str(out), "--nonblocking", "--gil"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.5)
        cpu0, t0 = load.cpu_seconds(worker), time.perf_counter()
        for i in range(args.runs):
            run(i)
        cpu = (load.cpu_seconds(worker) - cpu0) * 1000 / args.runs
        wall = (time.perf_counter() - t0) * 1000 / args.runs
        sampler.send_signal(signal.SIGINT)
        sampler.wait(timeout=60)
    print(f"{args.slug}: {args.runs} sync runs, one at a time; web worker CPU {cpu:.2f} ms per run, wall {wall:.2f} ms")
    total, shares = inclusive(out)
    print(f"share of {total} GIL-holding samples (inclusive):")
    for frame, n in shares.most_common():
        if SHOWN.search(frame):
            print(f"  {100 * n / total:5.1f}%  {frame}")
            args.top -= 1
            if args.top <= 0:
                break
    return 0


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
