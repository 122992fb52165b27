"""Base classes every Keel table builds on."""

from __future__ import annotations

import uuid
from typing import Any, TypedDict, TypeVar

from django.db import models


class Digits(TypedDict):
    max_digits: int
    decimal_places: int


# Money is a Decimal in USD, exact to 1e-10 (DESIGN.md, Data): every amount and price column, and
# every serializer field of one, has these digits.
MONEY: Digits = {"max_digits": 18, "decimal_places": 10}

M = TypeVar("M", bound=models.Model)


class BaseModel(models.Model):
    """UUID primary key (safe to expose in URLs) and creation / update times."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True


class WorkspaceQuerySet(models.QuerySet[M]):
    """The single place tenancy is applied: `Model.objects.for_workspace(ws)`."""

    def for_workspace(self, workspace: Any) -> WorkspaceQuerySet[M]:
        return self.filter(workspace=workspace)


class WorkspaceOwnedModel(BaseModel):
    """A tenant-owned row. API views reach these only through `for_workspace` (accounts.tenancy)."""

    workspace = models.ForeignKey("accounts.Workspace", on_delete=models.CASCADE, related_name="+")

    objects = WorkspaceQuerySet.as_manager()

    class Meta:
        abstract = True
