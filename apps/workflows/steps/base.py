"""What a step type is, what it is given when it runs, and what it hands back.

A step type is one module in this package that defines a `StepType` subclass decorated with
`@register`. The run engine only ever talks to this interface, so adding a type (`retrieve`,
`http`) is a new module here, not an edit of the engine or of the definition schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, ClassVar, Protocol
from uuid import UUID

STEP_ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"


@dataclass(frozen=True)
class Issue:
    """One problem in a definition: the field path (`steps.1.model`) and what is wrong there."""

    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


@dataclass(frozen=True)
class CheckContext:
    """What a step type may consult when checking a step of a definition."""

    path: str  # this step's field path, e.g. "steps.1"
    index: int
    earlier_step_ids: frozenset[str]
    model_aliases: frozenset[str]  # the aliases usable in the workspace the definition is saved in


class StepContext(Protocol):
    """What the run engine gives a step while it executes (see apps/runs/engine.py)."""

    workspace_id: UUID
    run_id: UUID
    workflow_id: UUID
    api_key_id: UUID | None
    user_id: UUID | None
    traceparent: str | None
    template_context: Mapping[str, Any]
    # False for a sync run: its caller waits for the whole answer, so the step asks the provider
    # for it in one response rather than a stream (less CPU per call; no token deltas).
    wants_deltas: bool

    def call_key(self, call: int) -> str:
        """A stable prefix for the ledger ids of this step's `call`-th gateway call in this execution."""

    def on_delta(self, text: str, *, answer: int = 1) -> None:
        """Streamed text of the step's `answer`-th answer, in order (a new number starts a new answer)."""

    def on_attempt(self, call_id: str, model: str, provider: str) -> None:
        """Called with each ledger call id, and the model alias and provider name it goes to, just
        before its provider request is sent."""

    def should_abort(self) -> bool:
        """True once the run is cancelled, timed out or taken over: stop as soon as possible."""

    def remaining_s(self) -> float | None:
        """Seconds left before the run's timeout."""


@dataclass
class Usage:
    """What a step's provider calls cost, summed over every call and attempt."""

    model: str = ""
    provider: str = ""
    fallback_used: bool = False
    cache_hit: bool = False
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = Decimal("0")
    saved_usd: Decimal = Decimal("0")
    latency_ms: int = 0
    call_ids: list[str] = field(default_factory=list)
    answers: int = 0  # answers streamed so far (numbers the step.delta events)


@dataclass
class StepResult:
    output: Any
    input: dict[str, Any] = field(default_factory=dict)  # what the step was given, rendered
    usage: Usage = field(default_factory=Usage)


class StepFailed(Exception):
    """The step could not produce an output. `code` is stable; `errors` lists details when there are several."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        errors: list[str] | None = None,
        input: dict[str, Any] | None = None,
        usage: Usage | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.errors = errors
        self.input = input or {}
        self.usage = usage or Usage()


class StepType:
    """One kind of step. Subclasses set `type` and `properties`, and implement `execute`."""

    type: ClassVar[str]
    description: ClassVar[str] = ""
    # JSON Schema of the step's own fields (id and type are common to every step).
    properties: ClassVar[dict[str, Any]] = {}
    required: ClassVar[tuple[str, ...]] = ()
    extra_schema: ClassVar[dict[str, Any]] = {}  # e.g. {"oneOf": [...]} for mutually exclusive fields

    def schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "description": self.description,
            "required": ["id", "type", *self.required],
            "properties": {
                "id": {"type": "string", "pattern": STEP_ID_PATTERN},
                "type": {"const": self.type},
                "description": {"type": "string", "maxLength": 2000},
                **self.properties,
            },
            "additionalProperties": False,
            **self.extra_schema,
        }

    def templates(self, step: Mapping[str, Any]) -> list[tuple[str, str]]:
        """The step's template strings as (field name, source), for the definition checks."""
        return []

    def check(self, step: Mapping[str, Any], ctx: CheckContext) -> list[Issue]:
        """Checks beyond the JSON Schema that need the workspace (model aliases) or other steps."""
        return []

    def execute(self, step: Mapping[str, Any], ctx: StepContext) -> StepResult:
        raise NotImplementedError
