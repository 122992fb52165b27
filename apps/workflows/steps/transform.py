"""`transform`: compute a value from the input and earlier outputs, without calling a model.

Exactly one of:
- `template`: a template; a lone expression (`"{{ steps.a.output.items | length }}"`) keeps its type,
  anything else renders to text;
- `value`: any JSON value whose strings are templates (build an object or a list);
- `path`: a JSONPath (apps/workflows/jsonpath.py) into the context (`$.steps.a.output.items[0]`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from apps.workflows import jsonpath
from apps.workflows.steps import register
from apps.workflows.steps.base import CheckContext, Issue, StepContext, StepFailed, StepResult, StepType
from apps.workflows.templating import TemplateProblem, iter_templates, render_value


@register
class TransformStep(StepType):
    type = "transform"
    description = "A value computed by a template, a JSON value with templates, or a JSON path."
    properties = {
        "template": {"type": "string", "minLength": 1, "maxLength": 100_000},
        "value": {},
        "path": {"type": "string", "minLength": 1, "maxLength": 1000},
    }
    extra_schema = {
        "oneOf": [{"required": ["template"]}, {"required": ["value"]}, {"required": ["path"]}],
    }

    def templates(self, step: Mapping[str, Any]) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        if isinstance(step.get("template"), str):
            found.append(("template", step["template"]))
        if "value" in step:
            found.extend(iter_templates(step["value"], "value"))
        return found

    def check(self, step: Mapping[str, Any], ctx: CheckContext) -> list[Issue]:
        source = step.get("path")
        if not isinstance(source, str):
            return []
        try:
            path = jsonpath.parse(source)
        except jsonpath.PathError as exc:
            return [Issue(f"{ctx.path}.path", str(exc))]
        segments = path.segments
        if not segments or segments[0] not in ("input", "steps", "run"):
            return [Issue(f"{ctx.path}.path", "a path starts with $.input, $.steps or $.run")]
        if segments[0] == "steps":
            if len(segments) < 2 or not isinstance(segments[1], str):
                return [Issue(f"{ctx.path}.path", "name a step: $.steps.<id>.output")]
            if segments[1] not in ctx.earlier_step_ids:
                return [
                    Issue(f"{ctx.path}.path", f"refers to step {segments[1]!r}, which does not run before this one")
                ]
            if len(segments) > 2 and segments[2] != "output":
                return [Issue(f"{ctx.path}.path", f"a step exposes only .output, not .{segments[2]}")]
        return []

    def execute(self, step: Mapping[str, Any], ctx: StepContext) -> StepResult:
        context = ctx.template_context
        try:
            if "template" in step:
                output = render_value(step["template"], context)
            elif "value" in step:
                output = render_value(step["value"], context)
            else:
                output = jsonpath.resolve(jsonpath.parse(step["path"]), dict(context))
        except TemplateProblem as exc:
            raise StepFailed("template_error", f"The template failed: {exc}") from None
        except jsonpath.PathError as exc:
            raise StepFailed("path_not_found", f"The path {step['path']} found nothing: {exc}") from None
        return StepResult(output=output)
