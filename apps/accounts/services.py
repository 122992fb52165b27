"""Writes for users, workspaces, memberships and API keys."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from apps.accounts.models import ApiKey, Membership, Role, User, Workspace
from apps.core.rows import RowReader

TOKEN_PREFIX = "keel_"
# Touch last_used_at at most this often: a write per request would cost more than the request.
LAST_USED_RESOLUTION = dt.timedelta(seconds=60)
# Every API request reads its key: a statement built once (ApiKey.objects.usable() with its workspace).
_USABLE_KEY = RowReader(
    ApiKey,
    where="t0.prefix = %s AND t0.revoked_at IS NULL AND (t0.expires_at IS NULL OR t0.expires_at > %s)",
    join=["workspace"],
    limit=1,
)


def hash_secret(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedKey:
    api_key: ApiKey
    token: str  # shown once, never stored


@transaction.atomic
def workspace_create(*, slug: str, name: str | None = None, owner: User | None = None) -> Workspace:
    workspace = Workspace.objects.create(slug=slug, name=name or slug)
    if owner is not None:
        Membership.objects.create(user=owner, workspace=workspace, role=Role.OWNER)
    return workspace


def membership_set(*, user: User, workspace: Workspace, role: str) -> Membership:
    membership, _ = Membership.objects.update_or_create(user=user, workspace=workspace, defaults={"role": role})
    return membership


def api_key_issue(
    *,
    workspace: Workspace,
    name: str,
    role: str = Role.MEMBER,
    created_by: User | None = None,
    expires_at: dt.datetime | None = None,
) -> IssuedKey:
    prefix = secrets.token_hex(6)
    token = f"{TOKEN_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    api_key = ApiKey.objects.create(
        workspace=workspace,
        name=name,
        prefix=prefix,
        secret_hash=hash_secret(token),
        role=role,
        created_by=created_by,
        expires_at=expires_at,
    )
    return IssuedKey(api_key=api_key, token=token)


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at", "updated_at"])
    return api_key


def api_key_authenticate(*, token: str) -> ApiKey | None:
    """The usable key a presented token belongs to, or None. Records last use (coarsely)."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    prefix, sep, _ = token[len(TOKEN_PREFIX) :].partition("_")
    if not sep or not prefix:
        return None
    api_key = _USABLE_KEY.first([prefix, _USABLE_KEY.param("expires_at", timezone.now())])
    if api_key is None or not hmac.compare_digest(api_key.secret_hash, hash_secret(token)):
        return None
    now = timezone.now()
    if api_key.last_used_at is None or now - api_key.last_used_at > LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        api_key.last_used_at = now
    return api_key
