"""Templates in workflow definitions: Jinja2 in a sandbox, with strict undefined variables.

The context a template sees is `input` (the run's validated input), `steps.<id>.output` (the
outputs of earlier steps) and `run` (id, workflow, version, mode, metadata, trace_id).

Two ways to render:
- `render_text`: always a string (prompts). Objects and lists render as JSON, not as Python reprs,
  because a model reads them.
- `render_value`: any JSON value (step outputs, the workflow's `output`). A string that is exactly
  one expression (`"{{ steps.classify.output.urgent }}"`) yields that expression's value with its
  type (a boolean stays a boolean); any other string renders as text; dicts and lists recurse.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError, Undefined, nodes
from jinja2.meta import find_undeclared_variables
from jinja2.sandbox import ImmutableSandboxedEnvironment

CONTEXT_NAMES = frozenset({"input", "steps", "run"})
# A rendered value larger than this is a runaway template (a loop), not a prompt.
MAX_RENDERED_CHARS = 1_000_000

_SINGLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>.*?)\}\}\s*$", re.DOTALL)


class TemplateProblem(Exception):
    """A template that does not parse or fails to render; `str()` says why in one line."""


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _finalize(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)):
        return _json_text(value)
    if value is None or isinstance(value, bool):
        return _json_text(value)
    return value


def _make_environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True, finalize=_finalize
    )
    # Jinja's own tojson escapes <, > and & for HTML; prompts want the plain JSON text.
    env.filters["tojson"] = _json_text
    return env


ENV = _make_environment()


@lru_cache(maxsize=2048)
def _compile(source: str) -> Any:
    return ENV.from_string(source)


@lru_cache(maxsize=2048)
def _compile_expression(expression: str) -> Any:
    return ENV.compile_expression(expression, undefined_to_none=False)


def _describe(exc: Exception) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    lineno = getattr(exc, "lineno", None)
    return (
        f"{message} (line {lineno})" if lineno and isinstance(exc, TemplateError) and "line" not in message else message
    )


def is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value or "{#" in value)


@dataclass
class References:
    """What a template refers to: top-level names, and step ids used as `steps.<id>` / `steps['id']`."""

    names: set[str] = field(default_factory=set)
    steps: set[str] = field(default_factory=set)
    step_attributes: set[tuple[str, str]] = field(default_factory=set)  # (step id, attribute after it)


def template_check(source: str) -> tuple[References | None, str | None]:
    """Parse a template: its references, or the parse error as one line."""
    try:
        ast = ENV.parse(source)
    except TemplateError as exc:
        return None, _describe(exc)
    refs = References(names=set(find_undeclared_variables(ast)))
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        step_id = _step_reference(node)
        if step_id is not None:
            refs.steps.add(step_id)
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        if not isinstance(node, (nodes.Getattr, nodes.Getitem)):
            continue  # find_all yields only these; this tells the type checker so
        inner = node.node
        step_id = _step_reference(inner) if isinstance(inner, (nodes.Getattr, nodes.Getitem)) else None
        if step_id is None:
            continue
        attribute = node.attr if isinstance(node, nodes.Getattr) else _const_str(node.arg)
        if attribute is not None:
            refs.step_attributes.add((step_id, attribute))
    return refs, None


def _const_str(node: nodes.Node) -> str | None:
    return node.value if isinstance(node, nodes.Const) and isinstance(node.value, str) else None


def _step_reference(node: nodes.Node) -> str | None:
    if not isinstance(node.node, nodes.Name) or node.node.name != "steps":  # type: ignore[attr-defined]
        return None
    if isinstance(node, nodes.Getattr):
        return node.attr
    if isinstance(node, nodes.Getitem):
        return _const_str(node.arg)
    return None


def render_text(source: str, context: Mapping[str, Any]) -> str:
    """Render to a string. Raises TemplateProblem (undefined variable, sandbox refusal, runaway size)."""
    try:
        template = _compile(source)
        chunks: list[str] = []
        size = 0
        for chunk in template.generate(dict(context)):
            size += len(chunk)
            if size > MAX_RENDERED_CHARS:
                raise TemplateProblem(f"renders to more than {MAX_RENDERED_CHARS} characters")
            chunks.append(chunk)
        return "".join(chunks)
    except TemplateProblem:
        raise
    except TemplateError as exc:
        raise TemplateProblem(_describe(exc)) from None
    except Exception as exc:  # noqa: BLE001 - any error inside user template code is the template's error
        raise TemplateProblem(f"{type(exc).__name__}: {exc}") from None


def _render_expression(expression: str, context: Mapping[str, Any]) -> Any:
    try:
        value = _compile_expression(expression)(**context)
        if isinstance(value, Undefined):
            value._fail_with_undefined_error()
    except TemplateError as exc:
        raise TemplateProblem(_describe(exc)) from None
    except Exception as exc:  # noqa: BLE001 - as in render_text
        raise TemplateProblem(f"{type(exc).__name__}: {exc}") from None
    return _jsonable(value)


def _jsonable(value: Any) -> Any:
    """The value as plain JSON types (tuples become lists; anything exotic becomes its text)."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return str(value)


def render_value(value: Any, context: Mapping[str, Any]) -> Any:
    """Render templates inside a JSON value (see the module docstring)."""
    if isinstance(value, str):
        if not is_template(value):
            return value
        match = _SINGLE_EXPRESSION.match(value)
        if match and "{{" not in match["expr"] and "}}" not in match["expr"] and "{%" not in match["expr"]:
            return _render_expression(match["expr"], context)
        return render_text(value, context)
    if isinstance(value, dict):
        return {key: render_value(item, context) for key, item in value.items()}
    if isinstance(value, list):
        return [render_value(item, context) for item in value]
    return value


def iter_templates(value: Any, path: str) -> list[tuple[str, str]]:
    """Every template string inside a JSON value, with its field path (`output.category`)."""
    found: list[tuple[str, str]] = []
    if isinstance(value, str):
        if is_template(value):
            found.append((path, value))
    elif isinstance(value, dict):
        for key, item in value.items():
            found.extend(iter_templates(item, f"{path}.{key}" if path else str(key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(iter_templates(item, f"{path}.{index}" if path else str(index)))
    return found
