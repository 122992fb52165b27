"""Database connections shared by a process's threads (KEEL_DB_POOL_MAX_SIZE, docs/operations.md).

On PostgreSQL a process's threads borrow connections from one bounded psycopg pool. A thread keeps
the connection it borrowed until Django closes it (at the end of a request, after a run), so a
thread about to wait for something that needs no database (a sync request waiting for its run, an
SSE stream waiting for the next event, the heartbeat between beats) gives it back first with
`connection_release()`: the run it waits for may need that very connection.

`database_unavailable()` tells a failure to reach the database (the pool had no connection in
time, PostgreSQL refused or dropped the connection) from an error in a statement: the former is
answered 503 with Retry-After, since it passes once load falls, the latter stays a 500.
"""

from __future__ import annotations

import os
import sys

from django.db import OperationalError, connection

# How long a client is asked to wait after a 503 for an unavailable database.
RETRY_AFTER_S = 5

# SQLSTATE classes and codes that mean "no usable connection": 08 connection exception, 53
# insufficient resources (53300 too_many_connections), 57P01-57P03 the server is shutting down or
# starting up. Statement errors (deadlocks, serialization failures, lock timeouts) are not here.
_UNAVAILABLE_CLASSES = ("08", "53")
_UNAVAILABLE_CODES = ("57P01", "57P02", "57P03")


def pooled() -> bool:
    return bool(connection.settings_dict.get("OPTIONS", {}).get("pool"))


def connection_release() -> None:
    """Give this thread's pooled connection back before a wait that needs none.

    Without a pool this does nothing: closing would cost a new connection after the wait. Inside a
    transaction it does nothing either (the transaction needs its connection).
    """
    if connection.connection is not None and not connection.in_atomic_block and pooled():
        connection.close()


def database_unavailable(exc: BaseException) -> bool:
    """Whether `exc` is Django's wrapper of a failure to get or keep a database connection."""
    if not isinstance(exc, OperationalError):
        return False
    cause = exc.__cause__
    try:
        import psycopg
        from psycopg_pool import PoolTimeout, TooManyRequests
    except ImportError:  # SQLite (the embedded demo) has neither
        return False
    if isinstance(cause, (PoolTimeout, TooManyRequests)):
        return True
    if not isinstance(cause, psycopg.OperationalError):
        return False
    sqlstate = cause.sqlstate
    if sqlstate is None:
        # libpq reports a refused, failed or lost connection without a SQLSTATE (e.g. "connection
        # failed: ... FATAL: sorry, too many clients already").
        return True
    return sqlstate[:2] in _UNAVAILABLE_CLASSES or sqlstate in _UNAVAILABLE_CODES


# A forked child (RQ's work horse with KEEL_WORKER_FORK=1) inherits the parent's pool: its
# connections are the parent's sockets and its worker threads did not survive the fork. The child
# starts a pool of its own; the inherited one is kept referenced, never closed or collected, since
# closing its connections would end the parent's sessions.
_inherited_pools: list[object] = []


def _forget_inherited_pools() -> None:
    backend = sys.modules.get("django.db.backends.postgresql.base")
    pools = getattr(getattr(backend, "DatabaseWrapper", None), "_connection_pools", None)
    if pools:
        _inherited_pools.append(dict(pools))
        pools.clear()


os.register_at_fork(after_in_child=_forget_inherited_pools)
