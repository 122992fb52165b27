from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from apps.core.demo import demo_seed


class Command(BaseCommand):
    help = "Create (or refresh) the demo workspace: a user, a simulator provider and sample workflows."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--reset-password", action="store_true", help="give the demo user a new password")

    def handle(self, *args: Any, reset_password: bool, **options: Any) -> None:
        result = demo_seed(reset_password=reset_password)
        self.stdout.write(f"Demo workspace: {result.workspace_slug}")
        for line in result.notes:
            self.stdout.write(f"  {line}")
        if result.password is not None:
            self.stdout.write(f"Demo sign-in: {result.email} / {result.password}  (shown once; keep it)")
        else:
            self.stdout.write(
                f"Demo sign-in: {result.email} (password printed on first run; "
                "`python manage.py seed_demo --reset-password` makes a new one)"
            )
        if result.api_key is not None:
            self.stdout.write(f"Demo API key (shown once): {result.api_key}")
