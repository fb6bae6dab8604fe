"""Typed training examples and validation issues shared by the upload validator and the trainer.

The dataclasses are what the trainer consumes; `Issue` and `DatasetError` are what users see when a
file is refused, so every issue names its line, its field and what was expected there.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class DatasetFormat(enum.StrEnum):
    """The four JSONL layouts Tailor trains on; a file holds exactly one of them."""

    CHAT = "chat"
    PREFERENCE = "preference"
    PROMPT_COMPLETION = "prompt_completion"
    TEXT = "text"


@dataclass(slots=True)
class Message:
    """One chat turn. Legacy function-calling data is normalised on parse: a `function_call` becomes a
    one-element `tool_calls` list and the `function` role becomes `tool`, so the trainer sees one shape."""

    role: str
    content: str | None
    name: str | None = None
    weight: int | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


@dataclass(slots=True)
class ChatExample:
    """A supervised chat example (OpenAI SFT format). `line` is the 1-based physical line in the file."""

    line: int
    messages: list[Message]
    tools: list[dict[str, Any]] | None = None


@dataclass(slots=True)
class PreferenceExample:
    """A preference pair (OpenAI DPO format): the prompt conversation and one chosen and one rejected reply."""

    line: int
    messages: list[Message]
    chosen: Message
    rejected: Message
    tools: list[dict[str, Any]] | None = None


@dataclass(slots=True)
class PromptCompletionExample:
    """A prompt/completion pair; the completion is the trained part."""

    line: int
    prompt: str
    completion: str


@dataclass(slots=True)
class TextExample:
    """Raw text for continued pre-training; every token is trained."""

    line: int
    text: str


Example = ChatExample | PreferenceExample | PromptCompletionExample | TextExample


@dataclass(slots=True)
class Issue:
    """One problem in a dataset: the 1-based physical line (0 for the whole file), the field path
    (`messages[2].role`, empty for the whole line), a stable machine code and a message for people."""

    line: int
    path: str
    code: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, as stored in a File's validation report."""
        return {"line": self.line, "path": self.path, "code": self.code, "message": self.message}

    def describe(self, source: str | None = None) -> str:
        """`train.jsonl line 3, messages[1].role: ... [unrecognized_role]`."""
        where = f"line {self.line}" if self.line else "file"
        if source:
            where = f"{source} {where}" if self.line else source
        if self.path:
            where = f"{where}, {self.path}"
        return f"{where}: {self.message} [{self.code}]"


class DatasetError(Exception):
    """A dataset line the trainer cannot use. `issues` holds every problem found on that line (or the
    file-level problem); `str()` names the file, line and field of the first one."""

    def __init__(self, issues: list[Issue], source: str | None = None) -> None:
        if not issues:
            raise ValueError("DatasetError needs at least one issue")
        self.issues = issues
        self.source = source
        text = issues[0].describe(source)
        if len(issues) > 1:
            text += f" (and {len(issues) - 1} more on this line)"
        super().__init__(text)

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its issues, so it survives pickling across process and task boundaries.
        return (type(self), (self.issues, self.source))

    @property
    def line(self) -> int:
        """The line of the first issue (0 for a whole-file problem)."""
        return self.issues[0].line


# Codes are part of the API: the control plane stores them and clients match on them.
ISSUE_CODES = frozenset({
    "invalid_json",
    "not_an_object",
    "missing_messages_list",
    "message_not_an_object",
    "message_missing_key",
    "message_unrecognized_key",
    "unrecognized_role",
    "missing_content",
    "invalid_content",
    "invalid_value",
    "example_missing_assistant_message",
    "invalid_weight",
    "invalid_tool_calls",
    "unrecognized_key",
    "mixed_formats",
    "unexpected_format",
    "unknown_format",
    "invalid_preference_output",
    "preference_input_ends_with_assistant",
    "invalid_utf8",
    "line_too_long",
    "too_few_examples",
    "empty_file",
    "no_trained_tokens",
})

