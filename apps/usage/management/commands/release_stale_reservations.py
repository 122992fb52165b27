from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from apps.usage.services import budget_release_stale


class Command(BaseCommand):
    help = "Release budget holds older than KEEL_BUDGET_RESERVATION_TTL_S (or --older-than seconds)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than", type=int, default=None, help="seconds (default: the TTL setting)")

    def handle(self, *args: Any, older_than: int | None = None, **options: Any) -> None:
        age = dt.timedelta(seconds=older_than) if older_than is not None else None
        finished = budget_release_stale(older_than=age)
        self.stdout.write(f"Finished {finished} stale call reservation(s).")
