"""The one parser for Tailor's dataset formats: each JSONL line becomes a typed example or a list of issues.

The upload validator (`validate_stream`) and the trainer (`read_examples`) both read through
`RecordParser`, so a file that validates always trains. A file holds one format; it is taken from the
first line whose keys name one (or from `expected_format`), and every later line is parsed as that
format. JSON is decoded with pydantic-core's `from_json` (jiter, a dependency of pydantic): it is about
three times faster than the standard library on chat data, validates UTF-8 itself and refuses lone
UTF-16 surrogates, which tokenizers cannot encode.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator
from typing import IO, Any, BinaryIO

import pydantic_core

from gpu_runner.formats.lines import DEFAULT_MAX_LINE_BYTES, UTF8_BOM, PhysicalLines
from gpu_runner.formats.types import (
    ChatExample,
    DatasetError,
    DatasetFormat,
    Example,
    Issue,
    Message,
    PreferenceExample,
    PromptCompletionExample,
    TextExample,
)

# NaN and Infinity are not JSON; refusing them keeps weights and arguments honest numbers.
_loads = functools.partial(pydantic_core.from_json, allow_inf_nan=False)

ROLES = ("system", "user", "assistant", "tool", "function")
_ROLES = frozenset(ROLES)
# Roles whose two-key messages ({"role", "content"}) take the fast path; "function" is legacy and
# is normalised on the slow path.
_PLAIN_ROLES = frozenset({"system", "user", "assistant", "tool"})
MESSAGE_KEYS = ("role", "content", "name", "weight", "tool_calls", "function_call", "tool_call_id")
_MESSAGE_KEYS = frozenset(MESSAGE_KEYS)
_OUTPUT_MESSAGE_KEYS = frozenset({"role", "content", "name"})

_TOP_LEVEL_KEYS: dict[DatasetFormat, frozenset[str]] = {
    DatasetFormat.CHAT: frozenset({"messages", "tools", "parallel_tool_calls", "functions"}),
    DatasetFormat.PREFERENCE: frozenset({"input", "preferred_output", "non_preferred_output"}),
    DatasetFormat.PROMPT_COMPLETION: frozenset({"prompt", "completion"}),
    DatasetFormat.TEXT: frozenset({"text"}),
}
_PREFERENCE_INPUT_KEYS = frozenset({"messages", "tools", "parallel_tool_calls"})

FORMAT_KEYS_HELP = (
    '"messages" (chat), "input" + "preferred_output" + "non_preferred_output" (preference), '
    '"prompt" + "completion" (prompt_completion) or "text" (text)'
)

# Keys from other tools' formats, so that a refusal can say what to change.
_FOREIGN_KEY_HINTS = {
    "conversations": 'ShareGPT-style "conversations" must become "messages" with role/content messages',
    "instruction": 'Alpaca-style "instruction"/"input"/"output" must become "prompt" and "completion" '
    "(or chat messages)",
    "chosen": 'TRL-style "chosen"/"rejected" pairs must become "input", "preferred_output" and '
    '"non_preferred_output"',
    "question": 'question/answer pairs must become "prompt" and "completion" (or chat messages)',
}
_MESSAGE_KEY_HINTS = {
    "from": 'ShareGPT-style "from" must be "role"',
    "value": 'ShareGPT-style "value" must be "content"',
    "text": 'the message text goes in "content"',
}


def _kind(value: Any) -> str:
    """How a JSON value reads in an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "an empty string" if not value else "a string"
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def classify(obj: dict[str, Any]) -> DatasetFormat | None:
    """The format a decoded line's top-level keys name, or None when they name none."""
    if "messages" in obj:
        return DatasetFormat.CHAT
    if "preferred_output" in obj or "non_preferred_output" in obj or type(obj.get("input")) is dict:
        return DatasetFormat.PREFERENCE
    if "prompt" in obj or "completion" in obj:
        return DatasetFormat.PROMPT_COMPLETION
    if "text" in obj:
        return DatasetFormat.TEXT
    return None


def _check_top_level_keys(obj: dict[str, Any], allowed: frozenset[str], fmt: DatasetFormat, line: int,
                          issues: list[Issue], prefix: str = "") -> None:
    if obj.keys() <= allowed:
        return
    for key in sorted(obj.keys() - allowed):
        hint = _FOREIGN_KEY_HINTS.get(key)
        message = f"unrecognized key {key!r} in a {fmt.value} example; allowed keys: {', '.join(sorted(allowed))}"
        if hint:
            message += f" ({hint})"
        issues.append(Issue(line, f"{prefix}{key}", "unrecognized_key", message))


def _parse_tool_calls(raw: Any, path: str, line: int, issues: list[Issue]) -> list[dict[str, Any]] | None:
    expected = 'a non-empty list of {"id", "type": "function", "function": {"name", "arguments"}}'
    if type(raw) is not list or not raw:
        issues.append(Issue(line, path, "invalid_tool_calls", f"expected {expected}, found {_kind(raw)}"))
        return None
    before = len(issues)
    for j, call in enumerate(raw):
        where = f"{path}[{j}]"
        if type(call) is not dict:
            issues.append(Issue(line, where, "invalid_tool_calls",
                                f"expected a tool call object, found {_kind(call)}"))
            continue
        if call.get("type", "function") != "function":
            issues.append(Issue(line, f"{where}.type", "invalid_tool_calls",
                                f'expected "function", found {call.get("type")!r}'))
        if "id" in call and type(call["id"]) is not str:
            issues.append(Issue(line, f"{where}.id", "invalid_tool_calls",
                                f"expected a string id, found {_kind(call['id'])}"))
        _check_function(call.get("function"), f"{where}.function", line, issues)
    return raw if len(issues) == before else None


def _check_function(fn: Any, path: str, line: int, issues: list[Issue]) -> None:
    """A called function: {"name": str, "arguments": JSON-encoded object (or the object itself)}."""
    if type(fn) is not dict:
        issues.append(Issue(line, path, "invalid_tool_calls",
                            f'expected an object {{"name", "arguments"}}, found {_kind(fn)}'))
        return
    name = fn.get("name")
    if type(name) is not str or not name:
        issues.append(Issue(line, f"{path}.name", "invalid_tool_calls",
                            f"expected the function's name as a non-empty string, found {_kind(name)}"))
    if "arguments" not in fn:
        issues.append(Issue(line, f"{path}.arguments", "invalid_tool_calls",
                            "missing arguments; expected a JSON-encoded object string such as '{}'"))
        return
    arguments = fn["arguments"]
    if type(arguments) is dict:
        return
    if type(arguments) is not str:
        issues.append(Issue(line, f"{path}.arguments", "invalid_tool_calls",
                            f"expected a JSON-encoded object string, found {_kind(arguments)}"))
        return
    try:
        decoded = json.loads(arguments)
    except ValueError as exc:
        issues.append(Issue(line, f"{path}.arguments", "invalid_tool_calls",
                            f"arguments are not valid JSON ({exc.args[0] if exc.args else exc}); "
                            "expected a JSON-encoded object string"))
        return
    if type(decoded) is not dict:
        issues.append(Issue(line, f"{path}.arguments", "invalid_tool_calls",
                            f"arguments decode to {_kind(decoded)}; expected a JSON object"))


def _parse_content(raw: Any, path: str, line: int, issues: list[Issue]) -> str | None:
    """A message's content: a string, or a list of text parts (joined). Images, audio and files are
    refused because the trainer is text-only."""
    if type(raw) is str:
        return raw
    if type(raw) is list:
        texts = []
        for k, part in enumerate(raw):
            if type(part) is dict and part.get("type") == "text" and type(part.get("text")) is str:
                texts.append(part["text"])
            else:
                kind = part.get("type") if type(part) is dict else _kind(part)
                issues.append(Issue(line, f"{path}[{k}]", "invalid_content",
                                    f'expected a text part {{"type": "text", "text": "..."}}, found {kind!r}; '
                                    "only text content is trained"))
                return None
        return "".join(texts)
    issues.append(Issue(line, path, "invalid_content",
                        f"expected content as a string, found {_kind(raw)}"))
    return None


def _parse_message(m: dict[str, Any], path: str, line: int, issues: list[Issue]) -> Message | None:
    """Every rule for one chat message; the common two-key case is handled inline by the caller."""
    before = len(issues)
    if not m.keys() <= _MESSAGE_KEYS:
        for key in sorted(m.keys() - _MESSAGE_KEYS):
            hint = _MESSAGE_KEY_HINTS.get(key)
            message = f"unrecognized message key {key!r}; allowed keys: {', '.join(MESSAGE_KEYS)}"
            if hint:
                message += f" ({hint})"
            issues.append(Issue(line, f"{path}.{key}", "message_unrecognized_key", message))

    role = m.get("role")
    if "role" not in m:
        issues.append(Issue(line, f"{path}.role", "message_missing_key",
                            f"message has no 'role'; expected one of {', '.join(ROLES)}"))
    elif type(role) is not str or role not in _ROLES:
        issues.append(Issue(line, f"{path}.role", "unrecognized_role",
                            f"unrecognized role {role!r}; expected one of {', '.join(ROLES)}"))

    tool_calls = None
    if "tool_calls" in m and m["tool_calls"] is not None:
        tool_calls = _parse_tool_calls(m["tool_calls"], f"{path}.tool_calls", line, issues)
        if role != "assistant":
            issues.append(Issue(line, f"{path}.tool_calls", "invalid_tool_calls",
                                f"only assistant messages can carry tool_calls, this one has role {role!r}"))
    if "function_call" in m and m["function_call"] is not None:
        if "tool_calls" in m and m["tool_calls"] is not None:
            issues.append(Issue(line, f"{path}.function_call", "invalid_tool_calls",
                                "a message carries either tool_calls or the legacy function_call, not both"))
        elif role != "assistant":
            issues.append(Issue(line, f"{path}.function_call", "invalid_tool_calls",
                                f"only assistant messages can carry function_call, this one has role {role!r}"))
        else:
            before_call = len(issues)
            _check_function(m["function_call"], f"{path}.function_call", line, issues)
            if len(issues) == before_call:
                tool_calls = [{"type": "function", "function": m["function_call"]}]
    has_call = role == "assistant" and (bool(m.get("tool_calls")) or bool(m.get("function_call")))

    content = m.get("content")
    if content is None or content == "":
        if has_call:
            content = None
        else:
            state = "has no 'content'" if "content" not in m else f"has {_kind(content)} content"
            issues.append(Issue(line, f"{path}.content", "missing_content",
                                f"message {state}; expected a non-empty string "
                                "(only an assistant message with tool_calls may omit it)"))
    else:
        content = _parse_content(content, f"{path}.content", line, issues)
        if content == "" and not has_call:
            issues.append(Issue(line, f"{path}.content", "missing_content",
                                "message content is empty; expected a non-empty string"))

    name = m.get("name")
    if name is not None and type(name) is not str:
        issues.append(Issue(line, f"{path}.name", "invalid_value", f"expected name as a string, found {_kind(name)}"))
    weight = m.get("weight")
    if weight is not None and (type(weight) is not int or weight not in (0, 1)):
        issues.append(Issue(line, f"{path}.weight", "invalid_weight",
                            f"expected weight 0 (not trained) or 1 (trained), found {weight!r}"))
    tool_call_id = m.get("tool_call_id")
    if tool_call_id is not None and type(tool_call_id) is not str:
        issues.append(Issue(line, f"{path}.tool_call_id", "invalid_value",
                            f"expected tool_call_id as a string, found {_kind(tool_call_id)}"))

    if len(issues) > before:
        return None
    if role == "function":
        role = "tool"
    return Message(str(role), content, name, weight, tool_calls, tool_call_id)


def _parse_messages(raw: Any, path: str, line: int, issues: list[Issue]) -> list[Message] | None:
    if type(raw) is not list or not raw:
        found = "missing" if raw is None else _kind(raw)
        issues.append(Issue(line, path, "missing_messages_list",
                            f"expected {path!r} to be a non-empty list of messages, found {found}"))
        return None
    messages: list[Message] = []
    append = messages.append
    for i, m in enumerate(raw):
        if type(m) is not dict:
            issues.append(Issue(line, f"{path}[{i}]", "message_not_an_object",
                                f'expected a message object {{"role", "content"}}, found {_kind(m)}'))
            continue
        # Fast path: the overwhelmingly common {"role": ..., "content": "..."} message.
        content = m.get("content")
        role = m.get("role")
        if len(m) == 2 and type(content) is str and content and type(role) is str and role in _PLAIN_ROLES:
            append(Message(role, content))
            continue
        message = _parse_message(m, f"{path}[{i}]", line, issues)
        if message is not None:
            append(message)
    return messages if len(messages) == len(raw) else None


def _parse_tools(obj: dict[str, Any], line: int, issues: list[Issue], prefix: str = "") -> list[dict[str, Any]] | None:
    """`tools` (or the legacy `functions`, converted to tools) and `parallel_tool_calls`."""
    tools = obj.get("tools")
    if tools is not None:
        if type(tools) is not list or any(type(t) is not dict for t in tools):
            issues.append(Issue(line, f"{prefix}tools", "invalid_tool_calls",
                                f'expected a list of tool objects {{"type": "function", "function": {{...}}}}, '
                                f"found {_kind(tools)}"))
            tools = None
    functions = obj.get("functions")
    if functions is not None:
        if type(functions) is not list or any(type(f) is not dict for f in functions):
            issues.append(Issue(line, f"{prefix}functions", "invalid_tool_calls",
                                f"expected a list of function objects, found {_kind(functions)}"))
        elif tools is not None:
            issues.append(Issue(line, f"{prefix}functions", "invalid_tool_calls",
                                "an example carries either tools or the legacy functions, not both"))
        else:
            tools = [{"type": "function", "function": f} for f in functions]
    parallel = obj.get("parallel_tool_calls")
    if parallel is not None and type(parallel) is not bool:
        issues.append(Issue(line, f"{prefix}parallel_tool_calls", "invalid_value",
                            f"expected true or false, found {_kind(parallel)}"))
    return tools or None


def _parse_chat(obj: dict[str, Any], line: int, issues: list[Issue]) -> ChatExample | None:
    if len(obj) != 1 or "messages" not in obj:
        _check_top_level_keys(obj, _TOP_LEVEL_KEYS[DatasetFormat.CHAT], DatasetFormat.CHAT, line, issues)
        tools = _parse_tools(obj, line, issues)
    else:
        tools = None
    messages = _parse_messages(obj.get("messages"), "messages", line, issues)
    if messages is None or issues:
        return None
    has_assistant = False
    for m in messages:
        if m.role == "assistant":
            has_assistant = True
            if m.weight != 0:
                return ChatExample(line, messages, tools)
    if not has_assistant:
        issues.append(Issue(line, "messages", "example_missing_assistant_message",
                            "example has no assistant message; expected at least one message with role "
                            "'assistant' (the part the model learns to write)"))
    else:
        issues.append(Issue(line, "messages", "no_trained_tokens",
                            "every assistant message has weight 0, so this example trains nothing; "
                            "set weight 1 (or drop weight) on at least one assistant message"))
    return None


def _parse_preference_output(obj: dict[str, Any], key: str, line: int, issues: list[Issue]) -> Message | None:
    raw = obj.get(key)
    expected = 'a list holding exactly one message {"role": "assistant", "content": "..."}'
    if type(raw) is not list or len(raw) != 1:
        found = "missing" if key not in obj else (
            f"a list of {len(raw)} messages" if type(raw) is list and raw else _kind(raw))
        issues.append(Issue(line, key, "invalid_preference_output", f"expected {expected}, found {found}"))
        return None
    m = raw[0]
    path = f"{key}[0]"
    if type(m) is not dict:
        issues.append(Issue(line, path, "invalid_preference_output", f"expected {expected}, found {_kind(m)}"))
        return None
    before = len(issues)
    if not m.keys() <= _OUTPUT_MESSAGE_KEYS:
        for extra in sorted(m.keys() - _OUTPUT_MESSAGE_KEYS):
            issues.append(Issue(line, f"{path}.{extra}", "message_unrecognized_key",
                                f"unrecognized key {extra!r} in a preference output; allowed keys: role, content, name"))
    if m.get("role") != "assistant":
        issues.append(Issue(line, f"{path}.role", "invalid_preference_output",
                            f"expected role 'assistant', found {m.get('role')!r}"))
    content = m.get("content")
    if type(content) is not str or not content:
        issues.append(Issue(line, f"{path}.content", "invalid_preference_output",
                            f"expected the reply as a non-empty string, found {_kind(content) if 'content' in m else 'missing'}"))
    name = m.get("name")
    if name is not None and type(name) is not str:
        issues.append(Issue(line, f"{path}.name", "invalid_value", f"expected name as a string, found {_kind(name)}"))
    if len(issues) > before:
        return None
    return Message("assistant", content, name)


def _parse_preference(obj: dict[str, Any], line: int, issues: list[Issue]) -> PreferenceExample | None:
    _check_top_level_keys(obj, _TOP_LEVEL_KEYS[DatasetFormat.PREFERENCE], DatasetFormat.PREFERENCE, line, issues)
    prompt = None
    tools = None
    inp = obj.get("input")
    if type(inp) is not dict:
        found = "missing" if "input" not in obj else _kind(inp)
        issues.append(Issue(line, "input", "missing_messages_list",
                            f'expected "input" to be an object {{"messages": [...]}}, found {found}'))
    else:
        _check_top_level_keys(inp, _PREFERENCE_INPUT_KEYS, DatasetFormat.PREFERENCE, line, issues, "input.")
        tools = _parse_tools(inp, line, issues, "input.")
        prompt = _parse_messages(inp.get("messages"), "input.messages", line, issues)
        if prompt is not None and prompt[-1].role == "assistant":
            issues.append(Issue(line, f"input.messages[{len(prompt) - 1}]", "preference_input_ends_with_assistant",
                                "the prompt ends with an assistant message; the compared replies go in "
                                "preferred_output and non_preferred_output, so input.messages must end "
                                "with a user (or tool) message"))
    chosen = _parse_preference_output(obj, "preferred_output", line, issues)
    rejected = _parse_preference_output(obj, "non_preferred_output", line, issues)
    if issues or prompt is None or chosen is None or rejected is None:
        return None
    return PreferenceExample(line, prompt, chosen, rejected, tools)


def _parse_prompt_completion(obj: dict[str, Any], line: int, issues: list[Issue]) -> PromptCompletionExample | None:
    _check_top_level_keys(obj, _TOP_LEVEL_KEYS[DatasetFormat.PROMPT_COMPLETION], DatasetFormat.PROMPT_COMPLETION,
                          line, issues)
    prompt = obj.get("prompt")
    if "prompt" not in obj:
        issues.append(Issue(line, "prompt", "missing_content", 'missing "prompt"; expected a string'))
    elif type(prompt) is not str:
        issues.append(Issue(line, "prompt", "invalid_content", f"expected prompt as a string, found {_kind(prompt)}"))
    completion = obj.get("completion")
    if "completion" not in obj:
        issues.append(Issue(line, "completion", "missing_content", 'missing "completion"; expected a non-empty string'))
    elif type(completion) is not str:
        issues.append(Issue(line, "completion", "invalid_content",
                            f"expected completion as a string, found {_kind(completion)}"))
    elif not completion:
        issues.append(Issue(line, "completion", "no_trained_tokens",
                            "completion is empty, so this example trains nothing; expected a non-empty string"))
    if issues:
        return None
    return PromptCompletionExample(line, prompt, completion)  # type: ignore[arg-type]


def _parse_text(obj: dict[str, Any], line: int, issues: list[Issue]) -> TextExample | None:
    _check_top_level_keys(obj, _TOP_LEVEL_KEYS[DatasetFormat.TEXT], DatasetFormat.TEXT, line, issues)
    text = obj.get("text")
    if type(text) is not str:
        issues.append(Issue(line, "text", "invalid_content", f"expected text as a string, found {_kind(text)}"))
    elif not text:
        issues.append(Issue(line, "text", "missing_content", "text is empty; expected a non-empty string"))
    if issues:
        return None
    return TextExample(line, text)  # type: ignore[arg-type]


_PARSERS = {
    DatasetFormat.CHAT: _parse_chat,
    DatasetFormat.PREFERENCE: _parse_preference,
    DatasetFormat.PROMPT_COMPLETION: _parse_prompt_completion,
    DatasetFormat.TEXT: _parse_text,
}


def _json_issue(raw: bytes, line: int, exc: ValueError) -> Issue:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        bad = raw[err.start:err.start + 1].hex()
        return Issue(line, "", "invalid_utf8",
                     f"byte 0x{bad} at byte offset {err.start} is not valid UTF-8; save the file as UTF-8")
    detail = str(exc).replace("at line 1 column", "at column")
    if raw.startswith(UTF8_BOM):
        detail = "the line starts with a UTF-8 byte-order mark, which only the first line of a file may carry"
    return Issue(line, "", "invalid_json", f"line is not valid JSON: {detail}; expected one JSON object per line")


class RecordParser:
    """Parses the lines of one file in order, remembering the file's format.

    `parse(raw, line)` returns `(example, None)` for a usable line, `(None, issues)` for a refused one
    and `(None, None)` for a blank line. `raw` is one physical line without its newline, or None for a
    line that exceeded the length limit.
    """

    def __init__(self, expected_format: DatasetFormat | None = None,
                 max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self.expected_format = DatasetFormat(expected_format) if expected_format is not None else None
        self.format: DatasetFormat | None = self.expected_format
        self.format_line = 0  # the line the format was detected from; 0 when given or not yet known
        self.max_line_bytes = max_line_bytes

    def parse(self, raw: bytes | None, line: int) -> tuple[Example | None, list[Issue] | None]:
        """One physical line → typed example, or its issues, or (None, None) when blank."""
        if raw is None:
            return None, [Issue(line, "", "line_too_long",
                                f"line is longer than {self.max_line_bytes:,} bytes; each example must be one "
                                "JSON object on a line of at most that size")]
        if not raw:
            return None, None
        if line == 1 and raw.startswith(UTF8_BOM):
            raw = raw[3:]
        try:
            obj = _loads(raw)
        except ValueError as exc:
            if raw.isspace():
                return None, None
            return None, [_json_issue(raw, line, exc)]
        if type(obj) is not dict:
            return None, [Issue(line, "", "not_an_object",
                                f"expected a JSON object with {FORMAT_KEYS_HELP}, found {_kind(obj)}")]
        fmt = self.format
        # Chat files dominate; skip the full classification for their lines.
        shape = DatasetFormat.CHAT if "messages" in obj else classify(obj)
        if fmt is None:
            if shape is None:
                return None, [self._unknown_format(obj, line)]
            self.format = fmt = shape
            self.format_line = line
        elif shape is not None and shape is not fmt:
            if self.expected_format is not None:
                return None, [Issue(line, "", "unexpected_format",
                                    f"this is a {shape.value} example but a {fmt.value} dataset is required here")]
            return None, [Issue(line, "", "mixed_formats",
                                f"this is a {shape.value} example but the file is {fmt.value} (detected at line "
                                f"{self.format_line}); a file holds exactly one format")]
        issues: list[Issue] = []
        example = _PARSERS[fmt](obj, line, issues)
        return (example, None) if example is not None else (None, issues)

    @staticmethod
    def _unknown_format(obj: dict[str, Any], line: int) -> Issue:
        keys = ", ".join(repr(k) for k in sorted(obj)) or "none"
        hints = [hint for key, hint in _FOREIGN_KEY_HINTS.items() if key in obj]
        message = f"cannot tell the format from keys {keys}; expected {FORMAT_KEYS_HELP}"
        if hints:
            message += f" ({hints[0]})"
        return Issue(line, "", "unknown_format", message)


def _source_name(source: object) -> str | None:
    name = getattr(source, "name", None)
    return name if isinstance(name, str) else None


def read_examples(
    source: str | os.PathLike[str] | BinaryIO | IO[bytes],
    *,
    expected_format: DatasetFormat | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> Iterator[Example]:
    """Stream the typed examples of a JSONL dataset (a path or a binary stream), in file order.

    Blank lines, a UTF-8 BOM and CRLF line ends are accepted. Raises `DatasetError` naming the file,
    line and field at the first line the validator would refuse, and `DatasetError` (`empty_file`) when
    the file holds no example. With `expected_format`, lines of another format are refused.
    """
    if isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        with open(path, "rb") as stream:
            yield from _read_stream(stream, path, expected_format, max_line_bytes)
    else:
        yield from _read_stream(source, _source_name(source), expected_format, max_line_bytes)


def _read_stream(stream: BinaryIO | IO[bytes], name: str | None, expected_format: DatasetFormat | None,
                 max_line_bytes: int) -> Iterator[Example]:
    parser = RecordParser(expected_format, max_line_bytes)
    parse = parser.parse
    count = 0
    for line, raw in enumerate(PhysicalLines(stream, max_line_bytes), start=1):
        example, issues = parse(raw, line)
        if example is not None:
            count += 1
            yield example
        elif issues:
            raise DatasetError(issues, name)
    if not count:
        raise DatasetError([Issue(0, "", "empty_file", "the file holds no examples (it is empty or blank)")], name)


def trained_messages(example: ChatExample, *, train_on_inputs: bool = False) -> list[bool]:
    """Per message of a chat example: does the loss cover it?

    By default only assistant messages are trained, except those with `weight: 0`. With
    `train_on_inputs`, every message is trained except those with `weight: 0` (an explicit opt-out
    is always honoured). `weight` on a non-assistant message matters only with `train_on_inputs`.
    """
    if train_on_inputs:
        return [m.weight != 0 for m in example.messages]
    return [m.role == "assistant" and m.weight != 0 for m in example.messages]
