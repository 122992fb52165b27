#!/usr/bin/env bash
# Make sure PostgreSQL and Redis answer on loopback, starting them with this machine's documented
# commands when they do not, and that the database named in the URL exists.
set -euo pipefail
DATABASE_URL=${1:-postgres://postgres@127.0.0.1:5432/keel}
REDIS_URL=${2:-redis://127.0.0.1:6379/15}

db_name=${DATABASE_URL##*/}
db_hostport=${DATABASE_URL#*@}; db_hostport=${db_hostport%%/*}
db_host=${db_hostport%%:*}; db_port=${db_hostport##*:}
redis_hostport=${REDIS_URL#redis://}; redis_hostport=${redis_hostport%%/*}
redis_host=${redis_hostport%%:*}; redis_port=${redis_hostport##*:}

need() { command -v "$1" >/dev/null 2>&1 || { echo "ensure-services: '$1' not found; install $2" >&2; exit 1; }; }

wait_for() { # name, command...
  local name=$1; shift
  for _ in $(seq 1 60); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  echo "ensure-services: $name did not come up" >&2; exit 1
}

need pg_isready "Debian's postgresql (apt-get install postgresql)"
if ! pg_isready -q -h "$db_host" -p "$db_port"; then
  echo "PostgreSQL is not answering on $db_host:$db_port; starting it"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start
  wait_for PostgreSQL pg_isready -q -h "$db_host" -p "$db_port"
fi
if ! psql -h "$db_host" -p "$db_port" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$db_name'" | grep -q 1; then
  createdb -h "$db_host" -p "$db_port" -U postgres "$db_name"
fi

need redis-cli "Debian's redis-server (apt-get install redis-server)"
if ! redis-cli -h "$redis_host" -p "$redis_port" ping >/dev/null 2>&1; then
  echo "Redis is not answering on $redis_host:$redis_port; starting it"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$redis_port" --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_for Redis redis-cli -h "$redis_host" -p "$redis_port" ping
fi
echo "PostgreSQL ($db_host:$db_port/$db_name) and Redis ($redis_host:$redis_port) are up"
