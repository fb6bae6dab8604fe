"""Dataset statistics a user wants before paying for GPU time, in memory bounded by design.

Token lengths go into a fixed-size log-bucketed histogram (exact below 128 tokens, within 1/64 of
the value above: at most ~3,700 counters whatever the file size). Duplicates are found by an
in-process 64-bit hash of each line with surrounding whitespace removed; only the hashes are kept,
up to `MAX_DUPLICATE_DIGESTS` of them (about 80 bytes each), after which the count covers the
examples checked so far and says so.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from gpu_runner.formats.types import (
    ChatExample,
    Example,
    Message,
    PreferenceExample,
    PromptCompletionExample,
    TextExample,
)

MAX_DUPLICATE_DIGESTS = 1_000_000
PERCENTILE_METHOD = "log-bucketed histogram: exact below 128 tokens, within 1/64 (1.6%) of the value above"


class LengthHistogram:
    """Counts of non-negative integers in buckets of bounded relative width, for percentiles."""

    _SUB_BITS = 6  # 64 buckets per power of two above 128
    _EXACT = 1 << (_SUB_BITS + 1)

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.n = 0
        self.total = 0
        self.max = 0

    def add(self, value: int) -> None:
        """Record one value."""
        if value < self._EXACT:
            index = value
        else:
            shift = value.bit_length() - (self._SUB_BITS + 1)
            index = (shift << self._SUB_BITS) + (value >> shift)
        counts = self.counts
        counts[index] = counts.get(index, 0) + 1
        self.n += 1
        self.total += value
        if value > self.max:
            self.max = value

    def _upper(self, index: int) -> int:
        if index < self._EXACT:
            return index
        shift = (index >> self._SUB_BITS) - 1
        top = index - (shift << self._SUB_BITS)
        return ((top + 1) << shift) - 1

    def percentile(self, q: float) -> int:
        """Nearest-rank percentile (q in 0..100), as the upper bound of its bucket, never above the max."""
        if not self.n:
            return 0
        rank = max(1, -(-self.n * q // 100))
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                return min(self._upper(index), self.max)
        return self.max


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


class DatasetStats:
    """Accumulates statistics over valid examples, one at a time.

    With `count_tokens` every text is measured by it; without, token counts are estimated as the
    UTF-8 bytes of the text divided by 4 (rounded up per example), and `tokens_estimated` says so.
    """

    def __init__(self, count_tokens: Callable[[str], int] | None = None,
                 max_digests: int = MAX_DUPLICATE_DIGESTS) -> None:
        self._count_tokens = count_tokens
        self._measure: Callable[[str], int] = count_tokens if count_tokens is not None else _utf8_len
        self.example_count = 0
        self.examples_without_trained_tokens = 0
        self.examples_with_tool_calls = 0
        self.trained_tokens = 0
        self.role_counts: dict[str, int] = {}
        self.messages_min = 0
        self.messages_max = 0
        self.messages_total = 0
        self.tokens = LengthHistogram()
        self._digests: set[int] = set()
        self._max_digests = max_digests
        self.duplicate_count = 0
        self.duplicates_checked = 0
        self._last_tools: list[dict[str, Any]] | None = None
        self._last_tools_size = 0

    def _to_tokens(self, measured: int) -> int:
        if self._count_tokens is not None:
            return measured
        return -(-measured // 4)

    def _tool_calls_size(self, tool_calls: list[dict[str, Any]]) -> int:
        measure = self._measure
        size = 0
        for call in tool_calls:
            fn = call["function"]
            arguments = fn.get("arguments", "")
            if type(arguments) is not str:
                arguments = json.dumps(arguments, ensure_ascii=False)
            size += measure(fn["name"]) + measure(arguments)
        return size

    def _tools_size(self, tools: list[dict[str, Any]]) -> int:
        """Size of the tool definitions the chat template renders into the prompt. Datasets repeat one
        tools list on every example, so the last one's size is reused when the next is equal (a deep
        comparison in C, far cheaper than serialising it again)."""
        if tools == self._last_tools:
            return self._last_tools_size
        size = self._measure(json.dumps(tools, ensure_ascii=False))
        self._last_tools, self._last_tools_size = tools, size
        return size

    def _messages_size(self, messages: list[Message]) -> tuple[int, int, bool]:
        """(measured size of all messages, of the trained ones, whether any carries tool calls)."""
        measure = self._measure
        estimate = self._count_tokens is None
        role_counts = self.role_counts
        count_of = role_counts.get
        total = trained = 0
        calls = False
        for m in messages:
            role = m.role
            role_counts[role] = count_of(role, 0) + 1
            content = m.content
            if not content:
                size = 0
            elif estimate:  # _utf8_len inlined: this loop runs for every message of every upload
                size = len(content) if content.isascii() else len(content.encode("utf-8"))
            else:
                size = measure(content)
            if role == "assistant":
                if m.tool_calls:
                    size += self._tool_calls_size(m.tool_calls)
                    calls = True
                if m.weight != 0:
                    trained += size
            total += size
        return total, trained, calls

    def _count_messages(self, n: int) -> None:
        if not self.messages_total or n < self.messages_min:
            self.messages_min = n
        if n > self.messages_max:
            self.messages_max = n
        self.messages_total += n

    def add(self, example: Example, raw_line: bytes) -> None:
        """Account for one valid example and its raw line."""
        self.example_count += 1
        measure = self._measure
        if type(example) is ChatExample:
            messages = example.messages
            total, trained, calls = self._messages_size(messages)
            if example.tools:
                total += self._tools_size(example.tools)
            n = len(messages)
            if n < self.messages_min or not self.messages_total:
                self.messages_min = n
            if n > self.messages_max:
                self.messages_max = n
            self.messages_total += n
            if calls:
                self.examples_with_tool_calls += 1
            if self._count_tokens is None:
                tokens, trained_tokens = -(-total // 4), -(-trained // 4)
            else:
                tokens, trained_tokens = total, trained
        elif type(example) is PreferenceExample:
            prompt, _, calls = self._messages_size(example.messages)
            if example.tools:
                prompt += self._tools_size(example.tools)
            chosen, rejected = measure(example.chosen.content or ""), measure(example.rejected.content or "")
            self._count_messages(len(example.messages))
            if calls:
                self.examples_with_tool_calls += 1
            # The longer of the two sequences the trainer builds (prompt + chosen, prompt + rejected).
            tokens = self._to_tokens(prompt + max(chosen, rejected))
            trained_tokens = self._to_tokens(chosen) + self._to_tokens(rejected)
        elif type(example) is PromptCompletionExample:
            completion = measure(example.completion)
            tokens = self._to_tokens(measure(example.prompt) + completion)
            trained_tokens = self._to_tokens(completion)
        elif type(example) is TextExample:
            tokens = trained_tokens = self._to_tokens(measure(example.text))
        else:
            raise TypeError(f"not an example: {type(example).__name__}")
        self.tokens.add(tokens)
        self.trained_tokens += trained_tokens
        if not trained_tokens:
            self.examples_without_trained_tokens += 1

        if self.duplicates_checked < self._max_digests:
            digest = hash(raw_line.strip())
            if digest in self._digests:
                self.duplicate_count += 1
            else:
                self._digests.add(digest)
            self.duplicates_checked += 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-able statistics."""
        tokens = self.tokens
        messages = None
        if self.messages_total:
            messages = {
                "min": self.messages_min,
                "mean": round(self.messages_total / self.example_count, 2),
                "max": self.messages_max,
            }
        return {
            "messages_per_example": messages,
            "role_counts": dict(sorted(self.role_counts.items())),
            "tokens": {
                "total": tokens.total,
                "mean": round(tokens.total / tokens.n, 1) if tokens.n else 0,
                "p50": tokens.percentile(50),
                "p90": tokens.percentile(90),
                "p99": tokens.percentile(99),
                "max": tokens.max,
            },
            "tokens_estimated": self._count_tokens is None,
            "token_percentile_method": PERCENTILE_METHOD,
            "trained_tokens": self.trained_tokens,
            "examples_without_trained_tokens": self.examples_without_trained_tokens,
            "examples_with_tool_calls": self.examples_with_tool_calls,
            "duplicate_count": self.duplicate_count,
            "duplicates_checked": self.duplicates_checked,
        }
