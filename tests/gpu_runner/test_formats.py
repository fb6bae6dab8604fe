"""Dataset formats: what the upload validator reports and what the trainer reads, for the same bytes."""

from __future__ import annotations

import io
import json
import pickle
import random
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from gpu_runner.formats import (
    ISSUE_CODES,
    ChatExample,
    DatasetError,
    DatasetFormat,
    Issue,
    Message,
    PreferenceExample,
    PromptCompletionExample,
    TextExample,
    ValidationReport,
    read_examples,
    trained_messages,
    validate_stream,
)
from gpu_runner.formats.lines import PhysicalLines
from gpu_runner.formats.stats import LengthHistogram

USER = {"role": "user", "content": "What is the capital of France?"}
ASSISTANT = {"role": "assistant", "content": "Paris."}


def chat(i: int = 0, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": f"Question {i}?"},
                         {"role": "assistant", "content": f"Answer {i}."}], **extra}


def jsonl(*records: Any, newline: bytes = b"\n") -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + newline for r in records)


def validate(data: bytes, **kwargs: Any) -> ValidationReport:
    return validate_stream(io.BytesIO(data), **kwargs)


def with_bad_line(bad: Any, *, valid: int = 12) -> bytes:
    """Two valid chat lines, the bad one on line 3, then more valid lines."""
    lines = [chat(i) for i in range(valid)]
    lines.insert(2, bad)
    return jsonl(*lines)


def codes(report: ValidationReport) -> list[tuple[int, str, str]]:
    return [(e.line, e.path, e.code) for e in report.errors]


# --- every error code, with its line and field path ------------------------------------------------

CHAT_LINE_ERRORS = [
    pytest.param(b'{"messages": [{"role": "user"', "", "invalid_json", id="invalid_json"),
    pytest.param([1, 2], "", "not_an_object", id="not_an_object"),
    pytest.param({"messages": "hello"}, "messages", "missing_messages_list", id="messages_not_a_list"),
    pytest.param({"messages": []}, "messages", "missing_messages_list", id="messages_empty"),
    pytest.param({"messages": ["hi", ASSISTANT]}, "messages[0]", "message_not_an_object", id="message_not_an_object"),
    pytest.param({"messages": [{"content": "hi"}, ASSISTANT]}, "messages[0].role", "message_missing_key",
                 id="message_missing_key"),
    pytest.param({"messages": [{**USER, "foo": 1}, ASSISTANT]}, "messages[0].foo", "message_unrecognized_key",
                 id="message_unrecognized_key"),
    pytest.param({"messages": [USER, {"role": "bot", "content": "x"}]}, "messages[1].role", "unrecognized_role",
                 id="unrecognized_role"),
    pytest.param({"messages": [{"role": "user", "content": ""}, ASSISTANT]}, "messages[0].content",
                 "missing_content", id="empty_content"),
    pytest.param({"messages": [{"role": "user"}, ASSISTANT]}, "messages[0].content", "missing_content",
                 id="absent_content"),
    pytest.param({"messages": [USER, {"role": "assistant", "content": None}]}, "messages[1].content",
                 "missing_content", id="null_content_without_tool_call"),
    pytest.param({"messages": [{"role": "user", "content": 5}, ASSISTANT]}, "messages[0].content",
                 "invalid_content", id="invalid_content"),
    pytest.param({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                               ASSISTANT]},
                 "messages[0].content[0]", "invalid_content", id="image_part"),
    pytest.param({"messages": [USER]}, "messages", "example_missing_assistant_message",
                 id="example_missing_assistant_message"),
    pytest.param({"messages": [USER, {**ASSISTANT, "weight": 2}]}, "messages[1].weight", "invalid_weight",
                 id="weight_2"),
    pytest.param({"messages": [USER, {**ASSISTANT, "weight": True}]}, "messages[1].weight", "invalid_weight",
                 id="weight_bool"),
    pytest.param({"messages": [USER, {"role": "assistant", "tool_calls": "get_weather"}]},
                 "messages[1].tool_calls", "invalid_tool_calls", id="tool_calls_not_a_list"),
    pytest.param({"messages": [USER, {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]},
                 "messages[1].tool_calls[0].function.arguments", "invalid_tool_calls", id="arguments_not_json"),
    pytest.param({"messages": [USER, {"role": "assistant", "function_call": {"arguments": "{}"}}]},
                 "messages[1].function_call.name", "invalid_tool_calls", id="function_call_without_name"),
    pytest.param({"messages": [USER, {**ASSISTANT, "name": 7}]}, "messages[1].name", "invalid_value",
                 id="name_not_a_string"),
    pytest.param({**chat(), "foo": 1}, "foo", "unrecognized_key", id="unrecognized_key"),
    pytest.param({"messages": [USER, {**ASSISTANT, "weight": 0}]}, "messages", "no_trained_tokens",
                 id="no_trained_tokens"),
    pytest.param({"text": "plain text"}, "", "mixed_formats", id="mixed_formats"),
    pytest.param(b'{"messages": [], "x": NaN}', "", "invalid_json", id="nan_is_not_json"),
    pytest.param(b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "", "invalid_json",
                 id="lone_surrogate"),
    pytest.param(b'{"messages": [{"role": "user", "content": "caf\xe9"}]}', "", "invalid_utf8",
                 id="invalid_utf8"),
]


@pytest.mark.parametrize(("bad", "path", "code"), CHAT_LINE_ERRORS)
def test_each_error_is_reported_with_its_line_and_field(bad: Any, path: str, code: str) -> None:
    report = validate(with_bad_line(bad))

    assert not report.ok
    assert report.format is DatasetFormat.CHAT
    assert codes(report) == [(3, path, code)]
    assert report.error_count == 1
    assert report.errors[0].message  # says what was expected
    assert code in ISSUE_CODES
    assert report.stats["example_count"] == 12
    assert report.stats["invalid_example_count"] == 1


def test_messages_say_what_was_expected() -> None:
    report = validate(with_bad_line({"messages": [USER, {"role": "bot", "content": "x"}]}))
    message = report.errors[0].message
    assert "'bot'" in message and "system, user, assistant, tool" in message
    assert "line 3, messages[1].role" in report.summary()


def test_all_issues_of_one_line_are_reported() -> None:
    bad = {"messages": [{"role": "bot", "content": 1}, {"role": "assistant", "content": "x", "weight": 5}]}
    report = validate(with_bad_line(bad))
    assert codes(report) == [
        (3, "messages[0].role", "unrecognized_role"),
        (3, "messages[0].content", "invalid_content"),
        (3, "messages[1].weight", "invalid_weight"),
    ]
    assert report.stats["invalid_example_count"] == 1


def test_foreign_formats_get_a_hint() -> None:
    alpaca = {"instruction": "Translate", "input": "chat", "output": "cat"}
    report = validate(jsonl(*[alpaca] * 12))
    assert report.format is None
    assert codes(report)[0] == (1, "", "unknown_format")
    assert "Alpaca" in report.errors[0].message

    sharegpt = {"messages": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    report = validate(with_bad_line(sharegpt))
    assert (3, "messages[0].from", "message_unrecognized_key") in codes(report)
    assert any("ShareGPT" in e.message for e in report.errors)


# --- preference ---------------------------------------------------------------------------------------

def preference(i: int = 0, **overrides: Any) -> dict[str, Any]:
    record = {
        "input": {"messages": [{"role": "system", "content": "You are a support agent."},
                               {"role": "user", "content": f"When will order {i} arrive?"}]},
        "preferred_output": [{"role": "assistant", "content": "Could you share your order number?"}],
        "non_preferred_output": [{"role": "assistant", "content": "Provide order number."}],
    }
    record.update(overrides)
    return record


@pytest.mark.parametrize(("bad", "path", "code"), [
    pytest.param(preference(preferred_output=[{"role": "assistant", "content": "a"},
                                              {"role": "assistant", "content": "b"}]),
                 "preferred_output", "invalid_preference_output", id="two_outputs"),
    pytest.param(preference(non_preferred_output=[{"role": "user", "content": "a"}]),
                 "non_preferred_output[0].role", "invalid_preference_output", id="output_not_assistant"),
    pytest.param(preference(preferred_output=[{"role": "assistant", "content": ""}]),
                 "preferred_output[0].content", "invalid_preference_output", id="empty_output"),
    pytest.param({k: v for k, v in preference().items() if k != "non_preferred_output"},
                 "non_preferred_output", "invalid_preference_output", id="missing_output"),
    pytest.param(preference(input={"messages": [USER, ASSISTANT]}),
                 "input.messages[1]", "preference_input_ends_with_assistant", id="input_ends_with_assistant"),
    pytest.param(preference(input={"messages": "hi"}), "input.messages", "missing_messages_list",
                 id="input_messages_not_a_list"),
])
def test_preference_errors(bad: dict[str, Any], path: str, code: str) -> None:
    lines = [preference(i) for i in range(12)]
    lines.insert(2, bad)
    report = validate(jsonl(*lines))
    assert report.format is DatasetFormat.PREFERENCE
    assert codes(report) == [(3, path, code)]


# --- file-level checks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("data", [b"", b"\n\n  \r\n"])
def test_empty_file(data: bytes) -> None:
    report = validate(data)
    assert not report.ok
    assert codes(report) == [(0, "", "empty_file")]
    assert report.format is None


def test_too_few_examples() -> None:
    report = validate(jsonl(*[chat(i) for i in range(3)]))
    assert codes(report) == [(0, "", "too_few_examples")]
    assert "3 examples" in report.errors[0].message and "10" in report.errors[0].message
    assert validate(jsonl(*[chat(i) for i in range(3)]), min_examples=3).ok


def test_bom_crlf_and_blank_lines_are_accepted_and_lines_stay_physical() -> None:
    body = jsonl(*[chat(i) for i in range(10)], newline=b"\r\n")
    data = b"\xef\xbb\xbf" + b"\r\n\r\n" + body + b"   \r\n" + json.dumps({"messages": "x"}).encode() + b"\r\n"
    report = validate(data)
    assert report.stats["line_count"] == 14
    assert report.stats["blank_line_count"] == 3
    assert report.stats["example_count"] == 10
    assert codes(report) == [(14, "messages", "missing_messages_list")]
    assert report.format is DatasetFormat.CHAT and report.stats["format_detected_at_line"] == 3

    assert validate(data.rsplit(b"\r\n", 2)[0]).ok  # without the bad last line; no final newline either


def test_byte_order_mark_in_the_middle_is_explained() -> None:
    data = jsonl(*[chat(i) for i in range(12)])
    report = validate(data + b"\xef\xbb\xbf" + jsonl(chat(99)))
    assert codes(report) == [(13, "", "invalid_json")]
    assert "byte-order mark" in report.errors[0].message


def test_invalid_utf8_names_the_byte() -> None:
    report = validate(with_bad_line(b'{"text": "\xff"}'))
    assert codes(report) == [(3, "", "invalid_utf8")]
    assert "0xff" in report.errors[0].message


def test_line_too_long_is_skipped_and_later_lines_keep_their_numbers() -> None:
    long_line = json.dumps(chat(0, tools=[{"type": "function", "function": {"name": "x" * 500}}])).encode()
    data = jsonl(*[chat(i) for i in range(11)]) + long_line + b"\n" + jsonl({"messages": 1})
    report = validate(data, max_line_bytes=300)
    assert codes(report) == [(12, "", "line_too_long"), (13, "messages", "missing_messages_list")]
    assert "300 bytes" in report.errors[0].message


def test_huge_line_without_newline_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "huge.jsonl"
    block = b"a" * (1 << 20)
    with open(path, "wb") as out:
        out.write(jsonl(*[chat(i) for i in range(10)]))
        out.write(b'{"messages": [{"role": "user", "content": "')
        for _ in range(300):  # a 300 MiB line with no newline at all
            out.write(block)

    tracemalloc.start()
    try:
        with open(path, "rb") as stream:
            report = validate_stream(stream)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert codes(report) == [(11, "", "line_too_long")]
    assert report.stats["example_count"] == 10
    assert report.stats["bytes"] == path.stat().st_size
    assert peak < 24 * 1024 * 1024, f"validation held {peak / 2**20:.0f} MiB for a 300 MiB line"

    with pytest.raises(DatasetError) as raised:
        list(read_examples(path))
    assert raised.value.issues[0].code == "line_too_long" and raised.value.line == 11


def test_max_errors_keeps_the_first_issues_and_counts_all() -> None:
    lines = [chat(i) for i in range(12)] + [{"messages": [USER]}] * 50
    report = validate(jsonl(*lines), max_errors=5)
    assert report.error_count == 50
    assert [e.line for e in report.errors] == [13, 14, 15, 16, 17]
    assert report.to_dict()["errors_truncated"] is True
    assert report.summary().startswith("Invalid dataset: 50 errors on 50 lines; first: line 13, messages:")


def test_file_level_issue_is_kept_when_errors_are_truncated() -> None:
    report = validate(jsonl(*[{"messages": [USER]}] * 5), max_errors=2)
    assert [e.code for e in report.errors] == ["too_few_examples", "example_missing_assistant_message"]
    assert report.error_count == 6


# --- format detection ---------------------------------------------------------------------------------

FORMAT_SAMPLES = {
    DatasetFormat.CHAT: (chat(), ChatExample),
    DatasetFormat.PREFERENCE: (preference(), PreferenceExample),
    DatasetFormat.PROMPT_COMPLETION: ({"prompt": "2+2=", "completion": "4"}, PromptCompletionExample),
    DatasetFormat.TEXT: ({"text": "Once upon a time."}, TextExample),
}


@pytest.mark.parametrize("fmt", list(DatasetFormat))
def test_format_is_detected_and_read_as_its_type(fmt: DatasetFormat) -> None:
    sample, example_type = FORMAT_SAMPLES[fmt]
    data = jsonl(*[sample] * 10)
    report = validate(data)
    assert report.ok, report.errors
    assert report.format is fmt
    assert report.to_dict()["format"] == fmt.value
    examples = list(read_examples(io.BytesIO(data)))
    assert len(examples) == 10 and all(type(e) is example_type for e in examples)
    assert [e.line for e in examples] == list(range(1, 11))


@pytest.mark.parametrize("first", list(DatasetFormat))
def test_a_second_format_is_mixed(first: DatasetFormat) -> None:
    other = next(f for f in DatasetFormat if f is not first)
    lines = [FORMAT_SAMPLES[first][0]] * 11
    lines.insert(4, FORMAT_SAMPLES[other][0])
    report = validate(jsonl(*lines))
    assert report.format is first
    assert codes(report) == [(5, "", "mixed_formats")]
    assert f"{other.value} example" in report.errors[0].message and "line 1" in report.errors[0].message


def test_expected_format_refuses_another_format() -> None:
    report = validate(jsonl(*[chat(i) for i in range(12)]), expected_format=DatasetFormat.PREFERENCE)
    assert report.format is DatasetFormat.PREFERENCE
    assert report.error_count == 12 and report.errors[0].code == "unexpected_format"
    with pytest.raises(DatasetError, match="preference dataset is required"):
        next(read_examples(io.BytesIO(jsonl(chat())), expected_format=DatasetFormat.PREFERENCE))


def test_prompt_completion_and_text_rules() -> None:
    pc = [{"prompt": "p", "completion": "c"}] * 12
    report = validate(jsonl(*pc[:2], {"prompt": "p", "completion": ""}, {"prompt": 1, "completion": "c"},
                            {"prompt": "p"}, *pc[2:]))
    assert codes(report) == [(3, "completion", "no_trained_tokens"), (4, "prompt", "invalid_content"),
                             (5, "completion", "missing_content")]
    text = [{"text": "t"}] * 12
    report = validate(jsonl(*text[:2], {"text": ""}, {"text": "t", "meta": 1}, *text[2:]))
    assert codes(report) == [(3, "text", "missing_content"), (4, "meta", "unrecognized_key")]


# --- the trainer's reader -----------------------------------------------------------------------------

def test_read_examples_yields_typed_messages(tmp_path: Path) -> None:
    tool_call = {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    record: dict[str, Any] = {
        "messages": [
            {"role": "system", "content": "You help."},
            {"role": "user", "content": [{"type": "text", "text": "Weather "}, {"type": "text", "text": "in Paris?"}]},
            {"role": "assistant", "content": None, "tool_calls": [tool_call], "weight": 0},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
            {"role": "assistant", "content": "21 °C.", "name": "bot", "weight": 1},
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
        "parallel_tool_calls": False,
    }
    path = tmp_path / "train.jsonl"
    path.write_bytes(jsonl(record))

    (example,) = list(read_examples(path))
    assert example == ChatExample(
        line=1,
        messages=[
            Message("system", "You help."),
            Message("user", "Weather in Paris?"),
            Message("assistant", None, weight=0, tool_calls=[tool_call]),
            Message("tool", '{"temp": 21}', tool_call_id="call_1"),
            Message("assistant", "21 °C.", name="bot", weight=1),
        ],
        tools=record["tools"],
    )


def test_legacy_function_calling_is_normalised_to_tools() -> None:
    record = {
        "messages": [USER,
                     {"role": "assistant", "function_call": {"name": "lookup", "arguments": "{}"}},
                     {"role": "function", "name": "lookup", "content": "found"},
                     ASSISTANT],
        "functions": [{"name": "lookup", "parameters": {}}],
    }
    (example,) = list(read_examples(io.BytesIO(jsonl(record))))
    assert isinstance(example, ChatExample)
    assert example.messages[1].tool_calls == [{"type": "function", "function": {"name": "lookup", "arguments": "{}"}}]
    assert example.messages[2] == Message("tool", "found", name="lookup")
    assert example.tools == [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]


def test_preference_example_fields() -> None:
    (example,) = list(read_examples(io.BytesIO(jsonl(preference(3)))))
    assert isinstance(example, PreferenceExample)
    assert [m.role for m in example.messages] == ["system", "user"]
    assert example.messages[1].content == "When will order 3 arrive?"
    assert example.chosen == Message("assistant", "Could you share your order number?")
    assert example.rejected == Message("assistant", "Provide order number.")


def test_read_examples_raises_at_the_first_invalid_line_naming_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(with_bad_line({"messages": [USER, {"role": "bot", "content": "x"}]}))
    seen = []
    with pytest.raises(DatasetError) as raised:
        for example in read_examples(path):
            seen.append(example.line)
    assert seen == [1, 2]
    error = raised.value
    assert error.line == 3
    assert [i.code for i in error.issues] == ["unrecognized_role"]
    assert str(error).startswith(f"{path} line 3, messages[1].role: unrecognized role 'bot'")
    assert str(error).endswith("[unrecognized_role]")


def test_dataset_error_survives_pickling() -> None:
    error = DatasetError([Issue(4, "messages", "example_missing_assistant_message", "no assistant")], "t.jsonl")
    copy = pickle.loads(pickle.dumps(error))
    assert copy.issues == error.issues and str(copy) == str(error) == (
        "t.jsonl line 4, messages: no assistant [example_missing_assistant_message]")


def test_read_examples_refuses_an_empty_file() -> None:
    with pytest.raises(DatasetError) as raised:
        list(read_examples(io.BytesIO(b"\n\n")))
    assert raised.value.issues[0].code == "empty_file"


def test_text_mode_streams_are_refused() -> None:
    with pytest.raises(TypeError, match="'rb'"):
        validate_stream(io.StringIO(json.dumps(chat())))  # type: ignore[arg-type]


def test_what_validates_is_exactly_what_trains() -> None:
    """Random lines, valid and not: the reader refuses a line exactly when the validator flags it."""
    rnd = random.Random(3)
    candidates: list[Any] = [chat(), preference(), {"messages": [USER]}, {"messages": [USER, {**ASSISTANT, "weight": 0}]},
                             {"messages": [{"role": "user", "content": 1}, ASSISTANT]}, b"{", b"", [1],
                             {"messages": [USER, {"role": "assistant", "tool_calls": []}]}]
    for _ in range(30):
        lines = [chat(i) for i in range(10)] + [rnd.choice(candidates) for _ in range(3)]
        rnd.shuffle(lines)
        data = jsonl(*lines)
        report = validate(data)
        try:
            count = sum(1 for _ in read_examples(io.BytesIO(data)))
        except DatasetError as error:
            assert not report.ok
            assert error.issues == [e for e in report.errors if e.line == error.line]
        else:
            assert report.ok and count == report.stats["example_count"]


# --- trained messages ---------------------------------------------------------------------------------

def test_trained_messages_follow_weights_and_train_on_inputs() -> None:
    example = ChatExample(1, [
        Message("system", "s"),
        Message("user", "u1"),
        Message("assistant", "a1", weight=0),
        Message("user", "u2", weight=0),
        Message("assistant", "a2"),
        Message("assistant", "a3", weight=1),
    ])
    assert trained_messages(example) == [False, False, False, False, True, True]
    assert trained_messages(example, train_on_inputs=True) == [True, True, False, False, True, True]


# --- statistics ---------------------------------------------------------------------------------------

def test_stats_on_a_small_known_file() -> None:
    records = [
        {"messages": [{"role": "system", "content": "aaaa"}, {"role": "user", "content": "bbbbbbbb"},
                      {"role": "assistant", "content": "cccccccccccc"}]},                       # 24 bytes
        {"messages": [{"role": "user", "content": "dddd"}, {"role": "assistant", "content": "eeee", "weight": 0},
                      {"role": "user", "content": "ffff"}, {"role": "assistant", "content": "é"}]},  # 14 bytes
    ] * 5
    data = jsonl(*records) + b"\n"
    report = validate(data)
    assert report.ok
    stats = report.stats
    assert stats["line_count"] == 11 and stats["blank_line_count"] == 1
    assert stats["bytes"] == len(data)
    assert stats["example_count"] == 10 and stats["invalid_example_count"] == 0
    assert stats["messages_per_example"] == {"min": 3, "mean": 3.5, "max": 4}
    assert stats["role_counts"] == {"assistant": 15, "system": 5, "user": 15}
    assert stats["tokens_estimated"] is True
    # bytes / 4, rounded up per example: 24 → 6, 14 → 4 ("é" is 2 bytes)
    assert stats["tokens"] == {"total": 50, "mean": 5.0, "p50": 4, "p90": 6, "p99": 6, "max": 6}
    # trained: "cccccccccccc" → 3; "é" → 1 (the weight-0 reply is not trained)
    assert stats["trained_tokens"] == 20
    assert stats["examples_without_trained_tokens"] == 0
    assert stats["duplicate_count"] == 8

    words = validate(data, count_tokens=lambda text: len(text)).stats
    assert words["tokens_estimated"] is False
    assert words["tokens"]["total"] == 5 * 24 + 5 * 13
    assert words["trained_tokens"] == 5 * 12 + 5 * 1


def test_stats_count_tool_calls_and_untrained_examples() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    with_call = {"messages": [USER, {"role": "assistant", "content": None, "tool_calls": [call]},
                              {"role": "tool", "tool_call_id": "c", "content": "ok"}, ASSISTANT]}
    data = jsonl(*[chat(i) for i in range(10)], with_call, {"messages": [USER, {**ASSISTANT, "weight": 0}]})
    stats = validate(data).stats
    assert stats["examples_with_tool_calls"] == 1
    assert stats["examples_without_trained_tokens"] == 1
    assert stats["role_counts"]["tool"] == 1


def test_duplicates_ignore_surrounding_whitespace_only() -> None:
    line = json.dumps(chat(1)).encode()
    data = jsonl(*[chat(i) for i in range(10)]) + line + b"\n" + b"  " + line + b" \r\n" + line.replace(b": ", b":") + b"\n"
    stats = validate(data).stats
    assert stats["duplicate_count"] == 2  # chat(1) twice more; the re-spaced copy is not byte-identical
    assert stats["duplicates_checked"] == 13


def test_report_is_json_and_summary_is_one_line() -> None:
    report = validate(jsonl(*[chat(i) for i in range(12)]))
    assert json.loads(json.dumps(report.to_dict()))["stats"]["example_count"] == 12
    summary = report.summary()
    assert "\n" not in summary
    assert summary.startswith("Valid chat dataset: 12 examples, ~")


def test_histogram_percentiles_are_within_their_bound() -> None:
    rnd = random.Random(5)
    values = [int(rnd.lognormvariate(7, 1.5)) for _ in range(20_000)] + [0, 1, 127, 128, 10**9]
    hist = LengthHistogram()
    for v in values:
        hist.add(v)
    ordered = sorted(values)
    for q in (50, 90, 99, 100):
        exact = ordered[max(0, -(-len(ordered) * q // 100) - 1)]
        got = hist.percentile(q)
        assert exact <= got <= exact + exact // 64, (q, exact, got)
    assert hist.max == 10**9 and hist.n == len(values)
    assert len(hist.counts) < 4000


# --- physical lines -----------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 1 << 20])
def test_physical_lines_match_split_for_any_chunking(chunk: int) -> None:
    rnd = random.Random(chunk)
    lines = [bytes(rnd.choice(b"ab \r") for _ in range(rnd.choice([0, 1, 5, 40, 200]))) for _ in range(200)]
    data = b"\n".join(lines)
    got = list(PhysicalLines(io.BytesIO(data), max_line_bytes=100, chunk_bytes=chunk))
    assert got == [line if len(line) <= 100 else None for line in data.split(b"\n")]
    assert list(PhysicalLines(io.BytesIO(data + b"\n"), max_line_bytes=100, chunk_bytes=chunk)) == got
