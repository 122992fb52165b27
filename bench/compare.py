"""`python -m bench.compare REV [--slug sync-0] [--runs 400] [--rounds 3]`: this tree against REV.

Whole benchmark runs taken at different times do not compare on a shared machine (its speed drifts
by 10-15% within minutes). This measures the two versions in the same minutes instead: a git
worktree of REV and this working tree take turns, round by round, each running `bench.profile
--no-sample` (sync runs one at a time against one gunicorn gthread worker: CPU of the worker and of
PostgreSQL, and wall time, per run). It prints each round, the medians and the ratio this / REV.
The worktree gets this tree's bench/ (the harness is the same for both; only the application
differs) and is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import load
from bench.stack import ROOT

KEYS = {
    "cpu_ms_per_run": "web worker CPU per run",
    "postgres_cpu_ms_per_run": "PostgreSQL CPU per run",
    "wall_ms_per_run": "wall per run",
}


def _profile(tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    argv = [
        sys.executable,
        "-m",
        "bench.profile",
        "--no-sample",
        "--json",
        "--slug",
        args.slug,
        "--runs",
        str(args.runs),
    ]
    if args.same_input:
        argv.append("--same-input")
    done = subprocess.run(argv, cwd=tree, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench.profile failed in {tree}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare")
    parser.add_argument("rev", help="the git revision to compare this working tree with")
    parser.add_argument("--slug", default="sync-0", help="bench workflow: sync-0, sync-100, cached, stream")
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--same-input", action="store_true", help="the same input every run (cache hits)")
    args = parser.parse_args(argv)

    base = Path(tempfile.mkdtemp(prefix="keel-compare-")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(base), args.rev], cwd=ROOT, check=True)
    try:
        shutil.rmtree(base / "bench")
        shutil.copytree(ROOT / "bench", base / "bench", ignore=shutil.ignore_patterns("__pycache__", "results.json"))
        results: dict[str, list[dict[str, Any]]] = {"rev": [], "this": []}
        for n in range(1, args.rounds + 1):
            for name, tree in (("rev", base), ("this", ROOT)):
                result = _profile(tree, args)
                results[name].append(result)
                print(
                    f"round {n} {name:>4}: worker CPU {result['cpu_ms_per_run']:.2f} ms, PostgreSQL CPU "
                    f"{result['postgres_cpu_ms_per_run']:.2f} ms, wall {result['wall_ms_per_run']:.2f} ms per run",
                    flush=True,
                )
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False)
        shutil.rmtree(base.parent, ignore_errors=True)
    medians = {name: {key: load.median([r[key] for r in rows]) for key in KEYS} for name, rows in results.items()}
    for key, label in KEYS.items():
        before, after = medians["rev"][key], medians["this"][key]
        print(f"{label}: {args.rev} {before:.2f} ms, this tree {after:.2f} ms, ratio {after / before:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
