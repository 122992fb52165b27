"""`python -m bench [--quick]`: measure Keel against a direct provider call; print a table and write
bench/results.json and docs/benchmarks.md. See docs/benchmarks.md for the method."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from bench import report, stack

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="reduced version (< 2 minutes)")
    parser.add_argument("--scale-runs", type=int, default=None, help="runs to load for the scale measurement")
    args = parser.parse_args(argv)

    env = stack.setup()
    from bench import fixtures, loader, scale, scenarios

    plan = scenarios.QUICK if args.quick else scenarios.FULL
    scale_runs = args.scale_runs or (20_000 if args.quick else 1_000_000)
    started = time.time()
    principal = fixtures.create_principal()
    rows: list[dict] = []
    notes: list[str] = []
    primary = stack.gthread(2, 16)
    alternatives = [] if args.quick else [stack.sync_workers(2), stack.gthread(2, 64)]

    with stack.simulator(env) as sim:
        with stack.web(env, primary) as web:
            fixtures.create_resources(web.url, principal.token, sim.url)
            fixtures.create_slow_workflow(web.url, principal.token, sim.url)
            ctx = scenarios.Ctx(web=web, simulator=sim, token=principal.token, plan=plan, server_model=primary.name)
            print(f"[bench] sync overhead ({primary.name})", flush=True)
            rows += [dict(r, server=primary.name) for r in scenarios.sync_overhead(ctx)]
            print("[bench] the floor of the stack", flush=True)
            from bench.floor import measure as floor_measure

            with stack.web(floor_measure.floor_env(env, sim.url), primary, name="floor") as floor:
                for config in floor_measure.QUICK if args.quick else floor_measure.FULL:
                    measured = floor_measure.measure(
                        keel=web, floor=floor, simulator=sim, token=principal.token, config=config, rounds=plan.rounds
                    )
                    rows.append({"scenario": "floor", **measured})
                    notes += [f"floor {config}: {e}" for e in measured["errors"][:1]]
            print("[bench] cache hit", flush=True)
            rows += scenarios.cache_hit(ctx)
            print("[bench] streaming", flush=True)
            rows += scenarios.streaming(ctx)
            worker_pids: list[int] = []
            for count in (1, 2):
                print(f"[bench] async with {count} worker(s)", flush=True)
                with stack.workers(env, count) as procs:
                    rows += scenarios.async_runs(ctx, count)
                    worker_pids = [p.pid for p in procs]
                    if count == 2:
                        print("[bench] memory", flush=True)
                        rows += scale.memory(ctx, worker_pids)
            print(f"[bench] loading {scale_runs:,} runs and {3 * scale_runs:,} usage records", flush=True)
            from apps.usage.services import usage_rollup_rebuild
            from apps.workflows.models import Workflow

            t0 = time.perf_counter()
            loaded = loader.load_history(workspace_id=principal.workspace_id, runs=scale_runs, usage_per_run=3)
            usage_rollup_rebuild()
            notes.append(
                f"bulk load of {loaded['runs']:,} runs + {loaded['usage_records']:,} usage records: "
                f"{time.perf_counter() - t0:.0f} s"
            )
            workflow_id = str(Workflow.objects.get(slug="sync-0").pk)
            rows += scale.pages(
                ctx,
                email=principal.staff_email,
                password=principal.staff_password,
                workflow_id=workflow_id,
                loaded=loaded,
            )
            notes += ctx.notes
        for model in alternatives:
            print(f"[bench] server model {model.name}: sync 100 ms, concurrency 32", flush=True)
            with stack.web(env, model) as web:
                alt = scenarios.Ctx(
                    web=web,
                    simulator=sim,
                    token=principal.token,
                    plan=scenarios.Plan(plan.rounds, {32: plan.per_worker[32]}, (32,), 0, 0, 0),
                    server_model=model.name,
                )
                rows += [dict(r, server=model.name) for r in scenarios.sync_overhead(alt) if r["latency_ms"] == 100]
                notes += alt.notes

        # Where a run's CPU goes (bench/profile.py): one worker, so py-spy sees every run.
        print("[bench] profile of sync runs (py-spy)", flush=True)
        from bench import profile

        with stack.web(env, stack.gthread(1, 16)) as web:
            profiled = profile.measure(
                web.url, web.pid, principal.token, slug="sync-0", runs=100 if args.quick else 400, same_input=False
            )

    import subprocess

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    results = {
        "quick": args.quick,
        "commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "duration_s": round(time.time() - started),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": report.cpu_model(),
            "python": platform.python_version(),
            "memory_gb": report.memory_gb(),
        },
        "primary_server": primary.name,
        "rows": rows,
        "notes": notes,
        "profile": profiled,
    }
    (ROOT / "bench" / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    text = report.render(results)
    (ROOT / "docs" / "benchmarks.md").write_text(text)
    print(report.table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
