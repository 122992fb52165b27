"""The system under test: a fresh bench database, the HTTP simulator, Keel's web server and workers,
all on loopback, with production settings (DEBUG=0, JSON logs, static files collected)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
BENCH_DB = os.environ.get("KEEL_BENCH_DB", "keel_bench")
BENCH_REDIS = os.environ.get("KEEL_BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")
PG = os.environ.get("KEEL_BENCH_PG", "postgres://postgres@127.0.0.1:5432")
VAR = ROOT / "var" / "bench"


def bench_env() -> dict[str, str]:
    from cryptography.fernet import Fernet

    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DEBUG": "0",
            "SECRET_KEY": env.get("KEEL_BENCH_SECRET_KEY") or secrets.token_urlsafe(50),
            "KEEL_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "KEEL_HTTPS": "0",
            "DATABASE_URL": f"{PG}/{BENCH_DB}",
            "REDIS_URL": BENCH_REDIS,
            "KEEL_VAR_DIR": str(VAR),
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
            # The benchmark measures the engine, not the per-key limit.
            "KEEL_API_THROTTLE_RATE": "100000000/min",
        }
    )
    return env


def setup() -> dict[str, str]:
    """What every bench command does first: the bench environment (also in this process's), a fresh
    bench database, and Django set up on it. Returns the environment for the processes it starts."""
    env = bench_env()
    os.environ.update(env)
    prepare_database(env)
    import logging

    import django

    django.setup()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would drown the report
    return env


def prepare_database(env: dict[str, str]) -> None:
    """Drop and recreate the bench database, migrate it, collect static files."""
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{BENCH_DB}"')
    VAR.mkdir(parents=True, exist_ok=True)
    for args in (["migrate", "--noinput"], ["collectstatic", "--noinput"]):
        subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=True)
    import redis

    redis.Redis.from_url(BENCH_REDIS).flushdb()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    url: str = ""

    @property
    def pid(self) -> int:
        return self.popen.pid


@contextmanager
def process(argv: list[str], env: dict[str, str], log: Path, url: str = "", ready_path: str = "") -> Iterator[Proc]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        popen = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            if ready_path:
                _wait(url + ready_path, popen)
            yield Proc(popen, url)
        finally:
            _stop(popen)


def _wait(url: str, popen: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"{popen.args} exited with {popen.returncode} before {url} answered")
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise TimeoutError(url)


def _stop(popen: subprocess.Popen[bytes]) -> None:
    import signal

    if popen.poll() is None:
        try:
            os.killpg(popen.pid, signal.SIGTERM)
            popen.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            popen.wait(timeout=15)


@contextmanager
def simulator(env: dict[str, str]) -> Iterator[Proc]:
    port = free_port()
    argv = [PYTHON, "manage.py", "run_simulator", "--host", "127.0.0.1", "--port", str(port)]
    with process(argv, env, VAR / "simulator.log", f"http://127.0.0.1:{port}", "/stats") as proc:
        yield proc


@dataclass(frozen=True)
class ServerModel:
    name: str
    argv: tuple[str, ...]


def gthread(workers: int, threads: int) -> ServerModel:
    return ServerModel(
        f"gunicorn gthread {workers}x{threads}",
        (
            "-m",
            "gunicorn",
            "config.wsgi:application",
            "--workers",
            str(workers),
            "--worker-class",
            "gthread",
            "--threads",
            str(threads),
            "--timeout",
            "120",
            "--keep-alive",
            "30",
        ),
    )


def sync_workers(workers: int) -> ServerModel:
    return ServerModel(
        f"gunicorn sync {workers}",
        ("-m", "gunicorn", "config.wsgi:application", "--workers", str(workers), "--timeout", "120"),
    )


@contextmanager
def web(env: dict[str, str], model: ServerModel, name: str = "web") -> Iterator[Proc]:
    port = free_port()
    argv = [PYTHON, *model.argv, "--bind", f"127.0.0.1:{port}"]
    with process(argv, env, VAR / f"{name}.log", f"http://127.0.0.1:{port}", "/healthz") as proc:
        yield proc


@contextmanager
def workers(env: dict[str, str], count: int) -> Iterator[list[Proc]]:
    procs: list[Proc] = []
    managers = []
    try:
        for n in range(count):
            argv = [PYTHON, "manage.py", "rqworker", "runs", "--name", f"bench-{n}-{secrets.token_hex(3)}"]
            manager = process(argv, env, VAR / f"worker-{n}.log")
            procs.append(manager.__enter__())
            managers.append(manager)
        time.sleep(1.5)  # let each worker register and start listening before load
        yield procs
    finally:
        for manager in reversed(managers):
            manager.__exit__(None, None, None)
