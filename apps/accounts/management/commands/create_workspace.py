from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.accounts.models import User, Workspace
from apps.accounts.services import workspace_create


class Command(BaseCommand):
    help = "Create a workspace owned by an existing user (create users with createsuperuser or the admin)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--owner", required=True, help="email of an existing user")
        parser.add_argument("--name", default=None)

    def handle(self, *args: Any, slug: str, owner: str, name: str | None, **options: Any) -> None:
        user = User.objects.filter(email=owner.lower()).first()
        if user is None:
            raise CommandError(f"No user with email {owner!r}.")
        if Workspace.objects.filter(slug=slug).exists():
            raise CommandError(f"A workspace with slug {slug!r} exists already.")
        workspace = workspace_create(slug=slug, name=name, owner=user)
        self.stdout.write(f"Created workspace {workspace.slug} ({workspace.pk}) owned by {user.email}")
