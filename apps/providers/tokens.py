"""A simple, deterministic tokenizer: what the simulator bills, and how the gateway estimates a prompt.

A token is a run of word characters or a single punctuation mark ("Hello, world!" is 4 tokens).
Chat messages cost their content's tokens plus a fixed overhead per message and per reply, the
way OpenAI's own accounting works. Real providers count differently; for them this is only the
estimate behind a budget reservation, which the actual usage then settles.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

TOKEN = re.compile(r"\w+|[^\w\s]")
# A token with the whitespace before it: pieces that concatenate back to the text, one per token.
_PIECE = re.compile(r"\s*(?:\w+|[^\w\s])")

MESSAGE_OVERHEAD = 4  # role and separators of each message
REPLY_OVERHEAD = 3  # the primer of the assistant's reply


def count_tokens(text: str) -> int:
    return len(TOKEN.findall(text))


def pieces(text: str) -> Iterator[str]:
    """The text cut at token starts: `"".join(pieces(t)) == t` for text without trailing space."""
    for match in _PIECE.finditer(text):
        yield match.group(0)


def content_text(content: Any) -> str:
    """A message's text: a plain string, or the text parts of a list of content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", "")) for part in content if isinstance(part, Mapping) and part.get("type") == "text"
        )
    return str(content)


def count_prompt_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    total = REPLY_OVERHEAD
    for message in messages:
        total += MESSAGE_OVERHEAD + count_tokens(content_text(message.get("content")))
        if message.get("name"):
            total += count_tokens(str(message["name"]))
    return total
