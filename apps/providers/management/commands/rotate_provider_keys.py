"""Re-encrypt every provider API key under the first KEEL_ENCRYPTION_KEYS key.

Rotation, step by step: put a new key first in KEEL_ENCRYPTION_KEYS (keep the old one after it),
deploy, run this command, then remove the old key. Safe to run again at any time.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from apps.providers.services import provider_rotate_keys


class Command(BaseCommand):
    help = "Re-encrypt every stored provider API key under the first KEEL_ENCRYPTION_KEYS key."

    def handle(self, *args: Any, **options: Any) -> None:
        result = provider_rotate_keys()
        self.stdout.write(f"Re-encrypted {result.rotated} provider key(s) under the first KEEL_ENCRYPTION_KEYS key.")
        if result.unreadable:
            raise CommandError(
                f"{len(result.unreadable)} key(s) could not be decrypted with any configured key and were left "
                f"as they are: {', '.join(result.unreadable)}. Add back the key they were encrypted with and run again."
            )
