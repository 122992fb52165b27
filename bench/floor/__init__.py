"""The floor of the stack: what the chosen parts cost per request on this machine before Keel's own
work (a run, its step, usage, a budget hold) begins.

Served by the same gunicorn model as Keel, with Keel's settings and middleware, but this URLconf
(`DJANGO_SETTINGS_MODULE=bench.floor.settings`), so nothing here is reachable in a real install:

- `floor/django`: Django with Keel's middleware reads the JSON body and answers JSON. No database.
- `floor/sdk`: the same, plus the one chat completion, sent by the `openai` SDK to the simulator as
  Keel's gateway sends it (a client per process, reused; no retries in the SDK).
- `floor/api`: a DRF view with Keel's API defaults (API-key authentication, workspace permission,
  per-principal throttle, JSON parser and renderer, problem+json errors), JSON in and out.
- `floor/api-sdk`: the same, plus the same chat completion.

`python -m bench.floor` measures them alone; `make bench` measures them next to Keel in the same
rounds (docs/benchmarks.md, "The floor of the stack").
"""
