"""A small, predictable subset of JSONPath for `transform` steps.

    $.steps.fetch.output.items[0].title     names, indexes (negative from the end)
    $['input']['a key with spaces']          quoted names
    $.steps.search.output.hits[*].url        a wildcard: the result is the list of every match

`$` is the template context (`input`, `steps`, `run`). No filters, slices or recursive descent:
those belong in a template.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_TOKEN = re.compile(
    r"""\.(?P<name>[A-Za-z_][A-Za-z0-9_-]*)
      | \.(?P<dotstar>\*)
      | \[\s*(?P<index>-?\d+)\s*\]
      | \[\s*'(?P<squoted>(?:[^'\\]|\\.)*)'\s*\]
      | \[\s*"(?P<dquoted>(?:[^"\\]|\\.)*)"\s*\]
      | \[\s*(?P<star>\*)\s*\]""",
    re.VERBOSE,
)

WILDCARD = object()


class PathError(ValueError):
    pass


@dataclass(frozen=True)
class Path:
    source: str
    segments: tuple[Any, ...]  # str (key), int (index) or WILDCARD

    @property
    def has_wildcard(self) -> bool:
        return any(segment is WILDCARD for segment in self.segments)


def parse(source: str) -> Path:
    text = source.strip()
    if not text.startswith("$"):
        raise PathError("a path starts with $")
    position, segments = 1, []
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise PathError(f"cannot read the path at character {position + 1}: {text[position : position + 20]!r}")
        if match["name"] is not None:
            segments.append(match["name"])
        elif match["index"] is not None:
            segments.append(int(match["index"]))
        elif match["squoted"] is not None or match["dquoted"] is not None:
            quoted = match["squoted"] if match["squoted"] is not None else match["dquoted"]
            segments.append(re.sub(r"\\(.)", r"\1", quoted))
        else:
            segments.append(WILDCARD)
        position = match.end()
    return Path(source=source, segments=tuple(segments))


def resolve(path: Path, root: Any) -> Any:
    """The value at `path`, or the list of values when it has a wildcard. Raises PathError when absent."""
    values = [root]
    for depth, segment in enumerate(path.segments):
        found: list[Any] = []
        for value in values:
            if segment is WILDCARD:
                if isinstance(value, dict):
                    found.extend(value.values())
                elif isinstance(value, list):
                    found.extend(value)
                continue
            if isinstance(segment, int) and isinstance(value, list):
                if -len(value) <= segment < len(value):
                    found.append(value[segment])
            elif isinstance(segment, str) and isinstance(value, dict):
                if segment in value:
                    found.append(value[segment])
            if not found and not path.has_wildcard:
                where = _render(path.segments[: depth + 1])
                raise PathError(f"nothing at {where}")
        values = found
    return values if path.has_wildcard else values[0]


def _render(segments: tuple[Any, ...]) -> str:
    out = "$"
    for segment in segments:
        if segment is WILDCARD:
            out += "[*]"
        elif isinstance(segment, int):
            out += f"[{segment}]"
        else:
            out += f".{segment}"
    return out
