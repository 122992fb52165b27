"""The step registry: every module in this package that registers a `StepType` is a step type.

Modules are imported on first use, so a new step type is a new file here and nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TypeVar

from apps.workflows.steps.base import StepType

_REGISTRY: dict[str, StepType] = {}
_loaded = False

S = TypeVar("S", bound=type[StepType])


def register(cls: S) -> S:
    if cls.type in _REGISTRY and type(_REGISTRY[cls.type]) is not cls:
        raise RuntimeError(f"two step types are named {cls.type!r}")
    _REGISTRY[cls.type] = cls()
    return cls


def _load() -> None:
    global _loaded
    if _loaded:
        return
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base":
            importlib.import_module(f"{__name__}.{module.name}")
    _loaded = True


def step_types() -> dict[str, StepType]:
    _load()
    return dict(sorted(_REGISTRY.items()))


def step_type(name: str) -> StepType:
    _load()
    return _REGISTRY[name]
