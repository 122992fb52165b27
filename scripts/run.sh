#!/usr/bin/env bash
# Migrate, seed the demo workspace and serve web UI, admin and API (the second half of `make run`).
# Embedded defaults (SQLite in var/, in-process Redis, inline jobs) unless DATABASE_URL / REDIS_URL
# are set; with REDIS_URL set, an RQ worker (with the scheduler) runs beside the web server.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export DEBUG=${DEBUG:-1}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
mkdir -p "${KEEL_VAR_DIR:-var}"

"$PY" manage.py migrate --noinput
"$PY" manage.py seed_demo
# Runs a previous server left `running` (it stopped mid-run) are resumed or failed now; with a real
# Redis the workers' periodic reaper does this too.
"$PY" manage.py reap_runs

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait || true; }
trap cleanup EXIT INT TERM

if [ -n "${REDIS_URL:-}" ]; then
  "$PY" manage.py rqworker --with-scheduler runs default ingest notifications &
  pids+=($!)
  WEB_WORKERS=${WEB_WORKERS:-2}
else
  # The embedded Redis lives inside one process: a second web process would not share it.
  WEB_WORKERS=1
fi

echo "Keel is serving on http://$HOST:$PORT/  (admin: /admin/  API docs: /api/docs/)"
"$PY" -m gunicorn config.wsgi:application --bind "$HOST:$PORT" --workers "$WEB_WORKERS" \
  --worker-class gthread --threads "${WEB_THREADS:-16}" --timeout 120 --access-logfile - &
pids+=($!)
wait "${pids[-1]}"
