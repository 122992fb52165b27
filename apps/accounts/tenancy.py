"""Who is calling, in which workspace, with which role: and the view plumbing that scopes every
query to that workspace so no view can forget it.

Public to other apps (with services and selectors): `Actor`, `get_actor`, `IsWorkspaceMember`,
`WorkspaceScopedMixin`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.db import models
from rest_framework import exceptions, permissions
from rest_framework.request import Request

from apps.accounts.models import ApiKey, Membership, Role, User, Workspace, role_at_least
from apps.core.problems import PermissionProblem

if TYPE_CHECKING:
    from rest_framework.views import APIView

WORKSPACE_HEADER = "HTTP_KEEL_WORKSPACE"


@dataclass(frozen=True)
class Actor:
    """The principal of a request or job: a user or an API key, acting in one workspace."""

    workspace: Workspace
    role: str
    user: User | None = None
    api_key: ApiKey | None = None

    def can(self, required_role: str) -> bool:
        return role_at_least(self.role, required_role)

    @property
    def label(self) -> str:
        if self.api_key is not None:
            return f"key:{self.api_key.prefix}"
        return f"user:{self.user.email}" if self.user is not None else "system"


def get_actor(request: Request) -> Actor:
    """The request's actor (cached on the request). Raises 403 when a user is in no workspace.

    A user in several workspaces picks one with the `Keel-Workspace: <slug>` header; otherwise the
    oldest membership is used. A key always acts in its own workspace.
    """
    cached = getattr(request, "_keel_actor", None)
    if cached is not None:
        return cached
    api_key = request.auth if isinstance(request.auth, ApiKey) else None
    if api_key is not None:
        actor = Actor(workspace=api_key.workspace, role=api_key.role, api_key=api_key)
    else:
        user = request.user
        if not isinstance(user, User):  # anonymous: the permission check has answered 401 already
            raise exceptions.NotAuthenticated()
        memberships = Membership.objects.select_related("workspace").filter(user=user).order_by("created_at")
        slug = request.META.get(WORKSPACE_HEADER)
        if slug:
            memberships = memberships.filter(workspace__slug=slug)
        membership = memberships.first()
        if membership is None:
            raise PermissionProblem(
                "You are not a member of this workspace." if slug else "You belong to no workspace."
            )
        actor = Actor(workspace=membership.workspace, role=membership.role, user=user)
    request._keel_actor = actor  # type: ignore[attr-defined]
    return actor


class IsWorkspaceMember(permissions.BasePermission):
    """Authenticated, in a workspace, and with the role the view asks for.

    Views set `read_role` (safe methods, default viewer) and `write_role` (default member).
    """

    def has_permission(self, request: Request, view: APIView) -> bool:
        if not (request.user and request.user.is_authenticated):
            return False
        actor = get_actor(request)
        if request.method in permissions.SAFE_METHODS:
            required = getattr(view, "read_role", Role.VIEWER)
        else:
            required = getattr(view, "write_role", Role.MEMBER)
        if not actor.can(required):
            raise PermissionProblem(f"This needs the {required} role; you are {actor.role}.")
        return True


if TYPE_CHECKING:
    from rest_framework.generics import GenericAPIView

    _ViewBase = GenericAPIView
else:
    _ViewBase = object  # a mixin: the view it is mixed into supplies `request`


class WorkspaceScopedMixin(_ViewBase):
    """For DRF views over a tenant-owned model: `get_queryset()` is always the actor's workspace.

    Objects of another workspace are therefore simply absent: they answer 404, not 403.
    """

    scoped_model: type[models.Model]

    def refine_queryset(self, queryset: models.QuerySet[Any]) -> models.QuerySet[Any]:
        """Override to add select_related / filters; the workspace scope is already applied."""
        return queryset

    def get_queryset(self) -> models.QuerySet[Any]:
        if getattr(self, "swagger_fake_view", False):  # schema generation has no real caller
            return self.scoped_model.objects.none()  # type: ignore[attr-defined]
        scoped = self.scoped_model.objects.for_workspace(get_actor(self.request).workspace)  # type: ignore[attr-defined]
        return self.refine_queryset(scoped)

    @property
    def actor(self) -> Actor:
        return get_actor(self.request)
