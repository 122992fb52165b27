from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.accounts.models import Workspace
from apps.usage.services import usage_rollup_rebuild


class Command(BaseCommand):
    help = "Recompute the hourly usage rollup from the ledger (after loading ledger rows without usage_record)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--workspace", help="slug; default: every workspace")

    def handle(self, *args: Any, workspace: str | None = None, **options: Any) -> None:
        target = None
        if workspace:
            target = Workspace.objects.filter(slug=workspace).first()
            if target is None:
                raise CommandError(f"No workspace {workspace!r}.")
        buckets = usage_rollup_rebuild(workspace=target)
        self.stdout.write(f"Rebuilt {buckets} hourly bucket(s) from the ledger.")
