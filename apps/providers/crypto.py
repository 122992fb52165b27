"""Provider API keys at rest: Fernet tokens under `settings.KEEL_ENCRYPTION_KEYS`.

The first key encrypts; every key decrypts (MultiFernet), so a new key can be put first and old
tokens still read until `rotate_provider_keys` has re-encrypted them under it.
"""

from __future__ import annotations

from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


class SecretUnreadable(Exception):
    """A stored token that none of the configured keys can decrypt (a key was removed too early)."""


@lru_cache(maxsize=8)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(key.encode()) for key in keys])


def _current() -> MultiFernet:
    # Keyed on the settings' value (not cached once) so a changed key list takes effect at once.
    return _fernet(tuple(settings.KEEL_ENCRYPTION_KEYS))


def secret_encrypt(plaintext: str) -> str:
    return _current().encrypt(plaintext.encode()).decode()


def secret_decrypt(token: str) -> str:
    try:
        return _current().decrypt(token.encode()).decode()
    except InvalidToken:
        raise SecretUnreadable("no configured KEEL_ENCRYPTION_KEYS key decrypts this secret") from None


def secret_rotate(token: str) -> str:
    """The same secret, encrypted under the first key."""
    try:
        return _current().rotate(token.encode()).decode()
    except InvalidToken:
        raise SecretUnreadable("no configured KEEL_ENCRYPTION_KEYS key decrypts this secret") from None
