"""The workflow definition format (DESIGN.md §4): its published JSON Schema and every check.

`definition_schema()` is what `GET /api/v1/workflows/schema/` serves; it is built from the step
registry, so a new step type appears in it without an edit here. `definition_errors()` returns
every problem at once (schema errors first, then the checks a schema cannot express: unique step
ids, templates that parse and refer only to earlier steps, model aliases that exist in the
workspace, embedded JSON Schemas that are themselves valid).
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError
from jsonschema.validators import validator_for

from apps.workflows.steps import step_types
from apps.workflows.steps.base import CheckContext, Issue
from apps.workflows.templating import CONTEXT_NAMES, iter_templates, template_check

SLUG_PATTERN = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"
# Path segments under /api/v1/workflows/ that are not workflows.
RESERVED_SLUGS = frozenset({"schema"})
MODES = ("sync", "async", "stream")
MAX_STEPS = 50


@lru_cache(maxsize=1)
def definition_schema() -> dict[str, Any]:
    types = step_types()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:keel:workflow-definition",
        "title": "Keel workflow definition",
        "type": "object",
        "required": ["slug", "name", "steps"],
        "additionalProperties": False,
        "properties": {
            "slug": {"type": "string", "pattern": SLUG_PATTERN, "maxLength": 64},
            "name": {"type": "string", "minLength": 1, "maxLength": 200},
            "description": {"type": "string", "maxLength": 5000},
            "input_schema": {"type": "object", "description": "JSON Schema (2020-12) of the run input"},
            "steps": {"type": "array", "minItems": 1, "maxItems": MAX_STEPS, "items": {"$ref": "#/$defs/step"}},
            "output": {"description": "The run's output: any JSON value whose strings may be templates"},
            "limits": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "max_cost_usd": {
                        "description": "Fail the run once its cost exceeds this (USD, a decimal string)",
                        "oneOf": [
                            {"type": "string", "pattern": r"^\d{1,8}(\.\d{1,10})?$"},
                            {"type": "number", "minimum": 0},
                        ],
                    },
                    "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 86400},
                },
            },
            "default_mode": {"enum": list(MODES)},
        },
        "$defs": {
            "step": {
                "type": "object",
                "required": ["id", "type"],
                "properties": {"type": {"enum": list(types)}},
                "allOf": [
                    {
                        "if": {"properties": {"type": {"const": name}}, "required": ["type"]},
                        "then": {"$ref": f"#/$defs/step_{name}"},
                    }
                    for name in types
                ],
            },
            **{f"step_{name}": kind.schema() for name, kind in types.items()},
        },
    }


def _field(path: Iterable[Any], prefix: str = "") -> str:
    parts = [prefix] if prefix else []
    parts.extend(str(part) for part in path)
    return ".".join(parts)


def _schema_issues(errors: Iterable[ValidationError], prefix: str = "") -> list[Issue]:
    issues = []
    for error in sorted(errors, key=lambda e: [str(p) for p in e.absolute_path]):
        path = list(error.absolute_path)
        if error.validator == "required":
            # Name the missing field itself, not its parent object.
            missing = error.message.split("'")[1] if error.message.count("'") >= 2 else None
            if missing:
                path.append(missing)
                issues.append(Issue(_field(path, prefix), "This field is required."))
                continue
        message = error.message
        if error.validator == "oneOf" and all(
            isinstance(option, dict) and set(option) == {"required"} for option in error.validator_value
        ):
            names = ", ".join(option["required"][0] for option in error.validator_value)
            message = f"give exactly one of: {names}"
        issues.append(Issue(_field(path, prefix) or prefix or "(root)", message))
    return issues


def json_schema_issues(schema: Any, field: str) -> list[Issue]:
    """Why `schema` is not a usable JSON Schema (metaschema errors; remote `$ref`s refused)."""
    if not isinstance(schema, dict):
        return [Issue(field, "must be a JSON Schema object")]
    cls = validator_for(schema, default=Draft202012Validator)
    # The format checker makes the metaschema check `pattern`s too (they are declared format "regex").
    issues = _schema_issues(cls(cls.META_SCHEMA, format_checker=cls.FORMAT_CHECKER).iter_errors(schema), field)
    for path, ref in _refs(schema, field):
        if not ref.startswith("#"):
            issues.append(Issue(path, "only local references ($ref starting with #) are allowed"))
    return issues


def _refs(value: Any, path: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref" and isinstance(item, str):
                found.append((f"{path}.$ref", item))
            else:
                found.extend(_refs(item, f"{path}.{key}"))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(_refs(item, f"{path}.{index}"))
    return found


def _template_issues(
    source: str, field: str, *, earlier: frozenset[str], all_steps: frozenset[str], later_ok: bool
) -> list[Issue]:
    refs, error = template_check(source)
    if error is not None:
        return [Issue(field, f"the template does not parse: {error}")]
    assert refs is not None
    issues = []
    for name in sorted(refs.names - CONTEXT_NAMES):
        issues.append(Issue(field, f"unknown variable {name!r}: a template sees input, steps and run"))
    allowed = all_steps if later_ok else earlier
    for step_id in sorted(refs.steps):
        if step_id not in all_steps:
            issues.append(Issue(field, f"refers to step {step_id!r}, which does not exist"))
        elif step_id not in allowed:
            issues.append(Issue(field, f"refers to step {step_id!r}, which does not run before this one"))
    for step_id, attribute in sorted(refs.step_attributes):
        if attribute != "output" and step_id in all_steps:
            issues.append(Issue(field, f"steps.{step_id}.{attribute}: a step exposes only .output"))
    return issues


def definition_errors(definition: Any, *, model_aliases: Iterable[str]) -> list[dict[str, str]]:
    """Every problem of `definition` as `[{"field", "message"}]`; empty when it is valid."""
    if not isinstance(definition, dict):
        return [{"field": "(root)", "message": "A definition is a JSON object."}]
    validator = Draft202012Validator(definition_schema(), format_checker=FormatChecker())
    issues = _schema_issues(validator.iter_errors(definition))

    if definition.get("slug") in RESERVED_SLUGS:
        issues.append(Issue("slug", f"{definition['slug']!r} is reserved"))
    if "input_schema" in definition:
        issues.extend(json_schema_issues(definition["input_schema"], "input_schema"))
    max_cost = (
        (definition.get("limits") or {}).get("max_cost_usd") if isinstance(definition.get("limits"), dict) else None
    )
    if max_cost is not None:
        try:
            Decimal(str(max_cost))
        except InvalidOperation:
            issues.append(Issue("limits.max_cost_usd", "must be a decimal amount in USD"))

    steps = definition.get("steps")
    steps = steps if isinstance(steps, list) else []
    types = step_types()
    aliases = frozenset(model_aliases)
    ids: list[str] = [s["id"] for s in steps if isinstance(s, dict) and isinstance(s.get("id"), str)]
    all_steps = frozenset(ids)
    seen: dict[str, int] = {}
    for index, step in enumerate(steps):
        if not isinstance(step, dict) or not isinstance(step.get("id"), str):
            continue
        path = f"steps.{index}"
        step_id = step["id"]
        if step_id in seen:
            issues.append(Issue(f"{path}.id", f"duplicate step id {step_id!r} (also steps.{seen[step_id]})"))
        else:
            seen[step_id] = index
        earlier = frozenset(str(s["id"]) for s in steps[:index] if isinstance(s, dict) and isinstance(s.get("id"), str))
        kind = types.get(step.get("type"))  # type: ignore[arg-type]
        if kind is None:
            continue
        for name, source in kind.templates(step):
            issues.extend(
                _template_issues(source, f"{path}.{name}", earlier=earlier, all_steps=all_steps, later_ok=False)
            )
        if "response_schema" in step:
            issues.extend(json_schema_issues(step["response_schema"], f"{path}.response_schema"))
        issues.extend(
            kind.check(step, CheckContext(path=path, index=index, earlier_step_ids=earlier, model_aliases=aliases))
        )

    for field, source in iter_templates(definition.get("output"), "output"):
        issues.extend(_template_issues(source, field, earlier=all_steps, all_steps=all_steps, later_ok=True))

    unique: dict[tuple[str, str], None] = {}
    for issue in issues:
        unique.setdefault((issue.field, issue.message), None)
    return [{"field": field, "message": message} for field, message in unique]


def input_errors(schema: dict[str, Any] | None, value: Any) -> list[dict[str, str]]:
    """Every way `value` (a run's input) fails the version's input_schema, fields named `input.<path>`."""
    if value is None or not isinstance(value, dict):
        return [{"field": "input", "message": "The input is a JSON object."}]
    if not schema:
        return []
    cls = validator_for(schema, default=Draft202012Validator)
    validator = cls(schema, format_checker=FormatChecker())
    try:
        return [issue.as_dict() for issue in _schema_issues(validator.iter_errors(value), "input")]
    except Exception as exc:  # noqa: BLE001 - a schema that cannot be applied is reported, never a 500
        return [{"field": "input", "message": f"the workflow's input_schema cannot be applied: {exc}"}]
