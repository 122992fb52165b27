"""Serve Keel's provider simulator over HTTP (tests, benchmarks, fault drills). Not a real model."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from apps.providers.simulator import KNOBS_HEADER, make_server


class Command(BaseCommand):
    help = (
        "Serve the OpenAI-compatible simulator: POST /v1/chat/completions, GET /stats, POST /stats/reset. "
        f"Fault knobs travel per request in the {KNOBS_HEADER} header (JSON); see apps/providers/simulator.py."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
        parser.add_argument("--port", type=int, default=8100, help="port to bind; 0 picks a free one")

    def handle(self, *args: Any, host: str, port: int, **options: Any) -> None:
        server = make_server(host, port)
        bound_host, bound_port = str(server.server_address[0]), int(server.server_address[1])

        def shut_down(signum: int, frame: Any) -> None:
            # shutdown() waits for serve_forever to return, so it must run off the serving thread.
            threading.Thread(target=server.shutdown, daemon=True).start()

        signal.signal(signal.SIGTERM, shut_down)
        self.stdout.write(f"Keel simulator (not a real model) listening on http://{bound_host}:{bound_port}/v1")
        sys.stdout.flush()
        try:
            server.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
