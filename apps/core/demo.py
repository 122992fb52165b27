"""The demo workspace seeded by `make run`. Each app contributes through its own services."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from django.db import transaction

from apps.accounts.models import Role, User, Workspace
from apps.accounts.services import api_key_issue, membership_set, workspace_create

DEMO_EMAIL = "demo@keel.local"
DEMO_WORKSPACE = "demo"


@dataclass
class DemoResult:
    workspace_slug: str
    email: str
    password: str | None
    api_key: str | None
    notes: list[str] = field(default_factory=list)


@transaction.atomic
def demo_seed(*, reset_password: bool = False) -> DemoResult:
    """Idempotent: a second run adds what is missing and changes nothing else."""
    password: str | None = None
    user = User.objects.filter(email=DEMO_EMAIL).first()
    if user is None:
        password = secrets.token_urlsafe(12)
        user = User.objects.create_superuser(DEMO_EMAIL, password)
    elif reset_password:
        password = secrets.token_urlsafe(12)
        user.set_password(password)
        user.save(update_fields=["password"])

    workspace = Workspace.objects.filter(slug=DEMO_WORKSPACE).first()
    api_token: str | None = None
    if workspace is None:
        workspace = workspace_create(slug=DEMO_WORKSPACE, name="Demo workspace", owner=user)
        api_token = api_key_issue(workspace=workspace, name="demo", role=Role.ADMIN, created_by=user).token
    else:
        membership_set(user=user, workspace=workspace, role=Role.OWNER)

    notes: list[str] = []
    for contribute in _contributors():
        notes.extend(contribute(workspace=workspace))
    return DemoResult(
        workspace_slug=workspace.slug, email=user.email, password=password, api_key=api_token, notes=notes
    )


def _contributors() -> list:  # type: ignore[type-arg]
    """Each app's demo seeding service, in dependency order (providers before workflows)."""
    from apps.providers.services import providers_demo_seed  # core does not depend on the apps at import time
    from apps.workflows.services import workflow_demo_seed

    return [providers_demo_seed, workflow_demo_seed]
