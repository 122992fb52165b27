"""`python -m bench.floor [--rounds 3] [--quick]`: the floor of the stack next to Keel, alone.

Starts the bench stack (fresh bench database, HTTP simulator, Keel's server and the floor's server,
both gunicorn gthread 2x16, or 2 x --threads) and prints the tables of docs/benchmarks.md "The floor of the stack"
for provider latency 0 ms at concurrency 1 and 100 ms at concurrency 32.
"""

from __future__ import annotations

import argparse
import sys

from bench import stack


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="the request counts of `make bench-quick`")
    parser.add_argument("--threads", type=int, default=16, help="threads per gunicorn worker (2 workers)")
    args = parser.parse_args(argv)

    env = stack.setup()
    from bench import fixtures
    from bench.floor import measure

    principal = fixtures.create_principal()
    model = stack.gthread(2, args.threads)
    with (
        stack.simulator(env) as sim,
        stack.web(env, model) as keel,
        stack.web(measure.floor_env(env, sim.url), model, name="floor") as floor,
    ):
        fixtures.create_resources(keel.url, principal.token, sim.url)
        measured = [
            measure.measure(
                keel=keel, floor=floor, simulator=sim, token=principal.token, config=config, rounds=args.rounds
            )
            for config in (measure.QUICK if args.quick else measure.FULL)
        ]
    print("\n".join(measure.lines(measured)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
