from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.accounts.models import Role, Workspace
from apps.accounts.services import api_key_issue


class Command(BaseCommand):
    help = "Issue an API key for a workspace. The secret is printed once, as the last line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--workspace", required=True, help="workspace slug")
        parser.add_argument("--name", required=True)
        parser.add_argument("--role", choices=[Role.ADMIN, Role.MEMBER, Role.VIEWER], default=Role.MEMBER)

    def handle(self, *args: Any, workspace: str, name: str, role: str, **options: Any) -> None:
        ws = Workspace.objects.filter(slug=workspace).first()
        if ws is None:
            raise CommandError(f"No workspace with slug {workspace!r}.")
        issued = api_key_issue(workspace=ws, name=name, role=role)
        self.stdout.write(
            f"Issued {role} key {name!r} for {ws.slug} (prefix {issued.api_key.prefix}); it is shown once:"
        )
        self.stdout.write(issued.token)
