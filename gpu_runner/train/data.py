"""Training data: examples from `gpu_runner.formats`, rendered with the base model's chat template,
tokenized with an explicit loss mask, and the length-grouped batch order.

Masking rule (SFT, chat): a conversation is rendered once; each message owns the characters its turn
adds to the rendering (found by rendering growing prefixes of the conversation, which also catches
templates that do not render incrementally). A token is trained when its first character lies in a
trained message's span, as decided by `gpu_runner.formats.trained_messages`: by default only assistant
turns (from the first character of their content through their end-of-turn marker, so the model learns
to stop), never `weight: 0` turns; with `train_on_inputs` every turn, headers included. Tokens are
labelled with their own id (the model shifts labels); untrained tokens get -100.

Examples that end up with no trained token are never trained silently. One whose assistant turns all
have `weight: 0` is refused by the shared parser itself (`no_trained_tokens`, with its line). One whose
replies `max_seq_length` truncation cut away entirely is dropped and listed in a `warning` event while such
examples are at most 1% of the file; otherwise the run fails with `invalid_training_file` naming their lines.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from gpu_runner.formats import (
    ChatExample,
    DatasetError,
    DatasetFormat,
    Issue,
    Message,
    PreferenceExample,
    PromptCompletionExample,
    TextExample,
    read_examples,
    trained_messages,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
# Examples without a trained token may be dropped (with a warning) while they are at most this share.
MAX_DROPPED_SHARE = 0.01
LISTED_LINES = 20


class UntrainableExamplesError(Exception):
    """Too many examples have no trained token; `lines` names them (all of them)."""

    def __init__(self, source: str, lines: list[int], reasons: dict[int, str], total: int) -> None:
        self.source = source
        self.lines = lines
        self.reasons = reasons
        shown = ", ".join(str(n) for n in lines[:LISTED_LINES]) + (
            " ..." if len(lines) > LISTED_LINES else ""
        )
        first = reasons[lines[0]]
        super().__init__(
            f"{source}: {len(lines)} of {total} examples have no trained token (lines {shown}); line "
            f"{lines[0]}: {first}. At most {MAX_DROPPED_SHARE:.0%} of a file may be dropped this way."
        )


class TemplateError(Exception):
    """The base model's chat template cannot render this example so that tokens map to messages."""

    def __init__(self, source: str, line: int, message: str) -> None:
        self.source = source
        self.line = line
        super().__init__(f"{source} line {line}: {message}")


@dataclass
class SupervisedRow:
    """One tokenized SFT example."""

    line: int
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def trained_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


@dataclass
class PreferenceRow:
    """One tokenized preference pair: shared prompt tokens, then each reply's tokens (all scored)."""

    line: int
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    truncated: bool = False

    @property
    def trained_tokens(self) -> int:
        return len(self.chosen_ids) + len(self.rejected_ids)


@dataclass
class DataReport:
    """What a data file turned into; reported in the `dataset_ready` event."""

    source: str
    data_format: str
    examples: int = 0
    rows: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    max_tokens: int = 0
    truncated: int = 0
    truncated_lines: list[int] = field(default_factory=list)
    dropped_lines: list[int] = field(default_factory=list)
    drop_reasons: dict[int, str] = field(default_factory=dict)
    packed_rows: int | None = None

    def as_event_data(self) -> dict[str, Any]:
        """The fields of `dataset_ready.data.training` / `.validation`."""
        return {
            "file": self.source,
            "format": self.data_format,
            "examples": self.examples,
            "rows": self.rows,
            "tokens": self.tokens,
            "trained_tokens": self.trained_tokens,
            "max_tokens": self.max_tokens,
            "truncated": self.truncated,
            "truncated_lines": self.truncated_lines[:LISTED_LINES],
            "dropped": len(self.dropped_lines),
            "dropped_lines": self.dropped_lines[:LISTED_LINES],
            "packed_rows": self.packed_rows,
        }


def message_dict(message: Message) -> dict[str, Any]:
    """The dict a Hugging Face chat template expects for one message."""
    out: dict[str, Any] = {
        "role": message.role,
        "content": message.content if message.content is not None else "",
    }
    if message.name:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = message.tool_calls
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    return out


class ChatRenderer:
    """Renders conversations with the tokenizer's own chat template (the one serving will use)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateError(
                "tokenizer",
                0,
                "the base model's tokenizer has no chat template; chat and "
                "preference data need one (tokenizer_config.json or chat_template.jinja)",
            )
        if not getattr(tokenizer, "is_fast", False):
            raise TemplateError(
                "tokenizer",
                0,
                "the base model needs a fast tokenizer (tokenizer.json) so that "
                "tokens can be mapped to messages for loss masking",
            )
        self.tokenizer = tokenizer

    def render(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        *,
        add_generation_prompt: bool = False,
    ) -> str:
        text = self.tokenizer.apply_chat_template(
            messages,
            tools=cast(Any, tools),
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
        assert isinstance(text, str)
        return text


def message_spans(
    renderer: ChatRenderer,
    example: ChatExample,
    trained: Sequence[bool],
    *,
    train_on_inputs: bool,
    source: str,
) -> tuple[str, list[tuple[int, int]]]:
    """Render `example` and return its text and the character spans of its trained messages."""
    messages = [message_dict(m) for m in example.messages]
    tools = example.tools
    text = renderer.render(messages, tools)
    spans: list[tuple[int, int]] = []
    previous_end = 0
    for index, message in enumerate(messages):
        prefix = text if index == len(messages) - 1 else renderer.render(messages[: index + 1], tools)
        if not text.startswith(prefix) or len(prefix) < previous_end:
            raise TemplateError(
                source,
                example.line,
                (
                    f"the chat template renders message {index} differently once later messages follow, so its "
                    "tokens cannot be attributed to it; use a template that renders conversations incrementally"
                ),
            )
        end = len(prefix)
        if trained[index]:
            start = previous_end
            if message["role"] == "assistant" and not train_on_inputs:
                # The turn header ("<|im_start|>assistant\n") is the prompt; training starts at the content.
                header = renderer.render(messages[:index], tools, add_generation_prompt=True)
                if not text.startswith(header) or not previous_end <= len(header) <= end:
                    raise TemplateError(
                        source,
                        example.line,
                        (
                            f"the chat template's generation prompt does not match how it renders assistant message "
                            f"{index}; cannot tell the reply from its header"
                        ),
                    )
                start = len(header)
            if end > start:
                spans.append((start, end))
        previous_end = end
    return text, spans


def _labels_from_spans(
    input_ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]
) -> list[int]:
    labels = [IGNORE_INDEX] * len(input_ids)
    span_index = 0
    for position, ((start, end), token) in enumerate(zip(offsets, input_ids, strict=True)):
        if end == start == 0 and position > 0:
            continue  # an added special token without text
        while span_index < len(spans) and start >= spans[span_index][1]:
            span_index += 1
        if span_index < len(spans) and spans[span_index][0] <= start < spans[span_index][1]:
            labels[position] = token
    return labels


def tokenize_chat(
    tokenizer: PreTrainedTokenizerBase,
    renderer: ChatRenderer,
    example: ChatExample,
    *,
    train_on_inputs: bool,
    max_seq_length: int,
    source: str = "training_file",
) -> SupervisedRow:
    """Tokenize one chat example with its loss mask (see the module docstring for the rule)."""
    trained = trained_messages(example, train_on_inputs=train_on_inputs)
    text, spans = message_spans(renderer, example, trained, train_on_inputs=train_on_inputs, source=source)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoding["input_ids"])
    labels = _labels_from_spans(input_ids, [tuple(o) for o in encoding["offset_mapping"]], spans)
    return _truncate(SupervisedRow(example.line, input_ids, labels), max_seq_length)


def tokenize_plain(
    tokenizer: PreTrainedTokenizerBase,
    example: PromptCompletionExample | TextExample,
    *,
    train_on_inputs: bool,
    max_seq_length: int,
) -> SupervisedRow:
    """Prompt/completion (the completion is trained; the prompt too with `train_on_inputs`) and raw text
    (everything is trained). An EOS token is appended so the model learns to stop."""
    eos = tokenizer.eos_token or ""
    if isinstance(example, TextExample):
        prompt, body = "", example.text
        train_all = True
    else:
        prompt, body = example.prompt, example.completion
        train_all = train_on_inputs
    text = prompt + body
    if eos and not text.endswith(eos):
        text += eos
    encoding = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    input_ids = list(encoding["input_ids"])
    spans = [(0 if train_all else len(prompt), len(text))]
    offsets = [tuple(o) for o in encoding["offset_mapping"]]
    labels = _labels_from_spans(input_ids, offsets, spans)
    if train_all:
        labels = list(input_ids)
    return _truncate(SupervisedRow(example.line, input_ids, labels), max_seq_length)


def _truncate(row: SupervisedRow, max_seq_length: int) -> SupervisedRow:
    if len(row.input_ids) > max_seq_length:
        row.input_ids = row.input_ids[:max_seq_length]
        row.labels = row.labels[:max_seq_length]
        row.truncated = True
    return row


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def tokenize_preference(
    tokenizer: PreTrainedTokenizerBase,
    renderer: ChatRenderer,
    example: PreferenceExample,
    *,
    max_seq_length: int,
) -> PreferenceRow:
    """Tokenize a preference pair: the prompt rendered with the generation prompt, then each reply as the
    template renders it after that prompt (end-of-turn marker included). Sequences longer than
    `max_seq_length` keep their start: the reply is cut."""
    messages = [message_dict(m) for m in example.messages]
    tools = example.tools
    prompt_text = renderer.render(messages, tools, add_generation_prompt=True)
    chosen_text = renderer.render(messages + [message_dict(example.chosen)], tools)
    rejected_text = renderer.render(messages + [message_dict(example.rejected)], tools)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    chosen_full = tokenizer(chosen_text, add_special_tokens=False)["input_ids"]
    rejected_full = tokenizer(rejected_text, add_special_tokens=False)["input_ids"]
    # Where tokens merge across the prompt/reply boundary the shared part ends earlier (as in TRL).
    prompt_len = min(_common_prefix(prompt_ids, chosen_full), _common_prefix(prompt_ids, rejected_full))
    row = PreferenceRow(
        example.line,
        list(prompt_ids[:prompt_len]),
        list(chosen_full[prompt_len:]),
        list(rejected_full[prompt_len:]),
    )
    room = max_seq_length - len(row.prompt_ids)
    if len(row.chosen_ids) > room or len(row.rejected_ids) > room:
        row.truncated = True
        room = max(room, 0)
        if room == 0:
            row.prompt_ids = row.prompt_ids[:max_seq_length]
        row.chosen_ids = row.chosen_ids[:room]
        row.rejected_ids = row.rejected_ids[:room]
    return row


def detect_format(path: Path) -> DatasetFormat:
    """The format of a data file, from its first example."""
    for example in read_examples(path):
        return _format_of(example)
    raise AssertionError("read_examples raises on an empty file")


def _format_of(example: Any) -> DatasetFormat:
    if isinstance(example, ChatExample):
        return DatasetFormat.CHAT
    if isinstance(example, PreferenceExample):
        return DatasetFormat.PREFERENCE
    if isinstance(example, PromptCompletionExample):
        return DatasetFormat.PROMPT_COMPLETION
    return DatasetFormat.TEXT


def build_supervised_rows(
    path: Path, tokenizer: PreTrainedTokenizerBase, *, train_on_inputs: bool, max_seq_length: int, source: str
) -> tuple[list[SupervisedRow], DataReport]:
    """Read and tokenize an SFT file (chat, prompt_completion or text). Raises `DatasetError` for an
    invalid line, `TemplateError`, or `UntrainableExamplesError` (see the module docstring)."""
    first_format = detect_format(path)
    if first_format == DatasetFormat.PREFERENCE:
        raise format_mismatch_error(path, "preference", "supervised")
    renderer = ChatRenderer(tokenizer) if first_format == DatasetFormat.CHAT else None
    report = DataReport(source=str(path), data_format=first_format.value)
    rows: list[SupervisedRow] = []
    for example in read_examples(path, expected_format=first_format):
        report.examples += 1
        if isinstance(example, ChatExample):
            assert renderer is not None
            row = tokenize_chat(
                tokenizer,
                renderer,
                example,
                train_on_inputs=train_on_inputs,
                max_seq_length=max_seq_length,
                source=source,
            )
        else:
            assert isinstance(example, PromptCompletionExample | TextExample)
            row = tokenize_plain(
                tokenizer, example, train_on_inputs=train_on_inputs, max_seq_length=max_seq_length
            )
        if row.truncated:
            report.truncated += 1
            report.truncated_lines.append(row.line)
        if row.trained_tokens == 0:
            report.dropped_lines.append(row.line)
            report.drop_reasons[row.line] = (
                f"no trained token is left after truncation to max_seq_length={max_seq_length}"
                if row.truncated
                else "no message is trained (every assistant turn has weight 0?)"
            )
            continue
        rows.append(row)
        report.tokens += len(row.input_ids)
        report.trained_tokens += row.trained_tokens
        report.max_tokens = max(report.max_tokens, len(row.input_ids))
    _check_dropped(report, source)
    report.rows = len(rows)
    return rows, report


def build_preference_rows(
    path: Path, tokenizer: PreTrainedTokenizerBase, *, max_seq_length: int, source: str
) -> tuple[list[PreferenceRow], DataReport]:
    """Read and tokenize a DPO file (preference format only)."""
    first_format = detect_format(path)
    if first_format != DatasetFormat.PREFERENCE:
        raise format_mismatch_error(path, first_format.value, "dpo")
    renderer = ChatRenderer(tokenizer)
    report = DataReport(source=str(path), data_format=first_format.value)
    rows: list[PreferenceRow] = []
    for example in read_examples(path, expected_format=DatasetFormat.PREFERENCE):
        assert isinstance(example, PreferenceExample)
        report.examples += 1
        row = tokenize_preference(tokenizer, renderer, example, max_seq_length=max_seq_length)
        if row.truncated:
            report.truncated += 1
            report.truncated_lines.append(row.line)
        if not row.chosen_ids or not row.rejected_ids:
            report.dropped_lines.append(row.line)
            report.drop_reasons[row.line] = (
                f"the prompt alone fills max_seq_length={max_seq_length}, no reply token is left"
            )
            continue
        rows.append(row)
        length = len(row.prompt_ids) + max(len(row.chosen_ids), len(row.rejected_ids))
        report.tokens += len(row.prompt_ids) * 2 + len(row.chosen_ids) + len(row.rejected_ids)
        report.trained_tokens += row.trained_tokens
        report.max_tokens = max(report.max_tokens, length)
    _check_dropped(report, source)
    report.rows = len(rows)
    return rows, report


def format_mismatch_error(path: Path, found: str, method: str) -> DatasetError:
    """The error for a file whose format does not fit the method (line 1, like the validator)."""
    expected = "preference" if method == "dpo" else "chat, prompt_completion or text"
    return DatasetError(
        [Issue(1, "", "unexpected_format", f"method {method} needs {expected} data, this file is {found}")],
        str(path),
    )


def _check_dropped(report: DataReport, source: str) -> None:
    dropped = len(report.dropped_lines)
    if dropped and dropped > math.floor(report.examples * MAX_DROPPED_SHARE):
        raise UntrainableExamplesError(source, report.dropped_lines, report.drop_reasons, report.examples)


def row_length(row: SupervisedRow | PreferenceRow) -> int:
    """The padded width a row needs in a batch (DPO: prompt plus the longer reply)."""
    if isinstance(row, SupervisedRow):
        return len(row.input_ids)
    return len(row.prompt_ids) + max(len(row.chosen_ids), len(row.rejected_ids))


class LengthGroupedBatchSampler:
    """Micro-batches of rows of similar length, in an order fixed by (seed, epoch).

    Each epoch: shuffle all rows, cut the order into mega-batches of `mega_batch_factor` micro-batches,
    sort each mega-batch by length, cut it into micro-batches, then shuffle the micro-batches (so loss
    does not trend with length) and move the one holding the longest row first (so an out-of-memory
    shows at step one, not hours in). Padding then costs a few percent instead of tens of percent.

    The order depends only on (seed, epoch, lengths), which makes resume exact: the trainer calls
    `set_epoch` and skips the micro-batches already trained.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        seed: int,
        mega_batch_factor: int = 50,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.mega_batch_factor = mega_batch_factor
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.lengths) // self.batch_size
        return math.ceil(len(self.lengths) / self.batch_size)

    def batches(self, epoch: int) -> list[list[int]]:
        """The micro-batches (lists of row indices) of `epoch`."""
        rng = random.Random(f"tailor-batches:{self.seed}:{epoch}")
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        mega = self.batch_size * self.mega_batch_factor
        batches: list[list[int]] = []
        for start in range(0, len(order), mega):
            chunk = sorted(order[start : start + mega], key=lambda i: self.lengths[i], reverse=True)
            batches.extend(chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        rng.shuffle(batches)
        if batches:
            longest = max(range(len(batches)), key=lambda b: max(self.lengths[i] for i in batches[b]))
            batches[0], batches[longest] = batches[longest], batches[0]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches(self.epoch))


def padding_share(lengths: Sequence[int], batches: Iterable[Sequence[int]]) -> float:
    """Share of a padded batch's token slots that hold padding (0 = no waste)."""
    slots = used = 0
    for batch in batches:
        widths = [lengths[i] for i in batch]
        slots += max(widths) * len(widths)
        used += sum(widths)
    return 1 - used / slots if slots else 0.0
