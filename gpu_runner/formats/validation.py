"""Streaming validation of an uploaded dataset: every line through the trainer's parser, plus statistics.

Memory stays bounded whatever the file size: lines are read in chunks (see `lines`), only the first
`max_errors` issues are kept (the total is counted), and statistics use fixed-size structures (see
`stats`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, BinaryIO

from gpu_runner.formats.lines import DEFAULT_MAX_LINE_BYTES, PhysicalLines
from gpu_runner.formats.parser import RecordParser
from gpu_runner.formats.stats import DatasetStats
from gpu_runner.formats.types import DatasetFormat, Issue


@dataclass
class ValidationReport:
    """The outcome of validating one file: stored on the File and shown to its owner."""

    ok: bool
    format: DatasetFormat | None
    errors: list[Issue] = field(default_factory=list)
    error_count: int = 0
    stats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "ok": self.ok,
            "format": self.format.value if self.format is not None else None,
            "error_count": self.error_count,
            "errors": [issue.to_dict() for issue in self.errors],
            "errors_truncated": self.error_count > len(self.errors),
            "stats": self.stats,
        }

    def summary(self) -> str:
        """One line for people, e.g. a File's status_details."""
        if not self.ok:
            first = self.errors[0].describe() if self.errors else "no details kept"
            lines = self.stats.get("invalid_example_count", 0)
            where = f" on {lines:,} line{'s' if lines != 1 else ''}" if lines else ""
            plural = "s" if self.error_count != 1 else ""
            return f"Invalid dataset: {self.error_count:,} error{plural}{where}; first: {first}"
        stats = self.stats
        tokens = stats["tokens"]
        approx = "~" if stats["tokens_estimated"] else ""
        text = (
            f"Valid {self.format.value if self.format else ''} dataset: {stats['example_count']:,} examples, "
            f"{approx}{tokens['total']:,} tokens ({approx}{stats['trained_tokens']:,} trained), "
            f"longest example {approx}{tokens['max']:,} tokens"
        )
        if stats["duplicate_count"]:
            text += f"; {stats['duplicate_count']:,} duplicate examples"
        return text


def validate_stream(
    stream: BinaryIO | IO[bytes],
    *,
    count_tokens: Callable[[str], int] | None = None,
    max_errors: int = 100,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    min_examples: int = 10,
    expected_format: DatasetFormat | None = None,
) -> ValidationReport:
    """Validate a JSONL dataset read from a binary stream, and measure it.

    Every line goes through the same parser as `read_examples`, so a file reported ok trains. Issues
    carry the 1-based physical line, the field path, a stable code and what was expected; the first
    `max_errors` are kept (file-level ones, line 0, first of all) and `error_count` counts them all.
    `count_tokens` (a tokenizer's length function) makes token statistics exact; without it they are
    estimated from bytes.
    """
    parser = RecordParser(expected_format, max_line_bytes)
    parse = parser.parse
    stats = DatasetStats(count_tokens)
    add_example = stats.add
    lines = PhysicalLines(stream, max_line_bytes)
    errors: list[Issue] = []
    error_count = 0
    invalid_lines = 0
    untrained_lines = 0
    blank_lines = 0
    line = 0
    for raw in lines:
        line += 1
        example, issues = parse(raw, line)
        if example is not None:
            add_example(example, raw)  # type: ignore[arg-type]  # raw is bytes whenever an example parsed
        elif issues:
            invalid_lines += 1
            error_count += len(issues)
            if len(errors) < max_errors:
                errors.extend(issues[: max_errors - len(errors)])
            if any(issue.code == "no_trained_tokens" for issue in issues):
                untrained_lines += 1
        else:
            blank_lines += 1

    records = line - blank_lines
    file_issues: list[Issue] = []
    if not records:
        file_issues.append(Issue(0, "", "empty_file",
                                 "the file holds no examples (it is empty or blank); expected one JSON object per line"))
    elif records < min_examples:
        file_issues.append(Issue(0, "", "too_few_examples",
                                 f"the file holds {records:,} example{'s' if records != 1 else ''}; "
                                 f"at least {min_examples:,} are required"))
    if file_issues:
        error_count += len(file_issues)
        errors = (file_issues + errors)[:max(max_errors, len(file_issues))]

    summary = stats.to_dict()
    summary["examples_without_trained_tokens"] += untrained_lines
    report_stats = {
        "line_count": line,
        "bytes": lines.bytes_read,
        "blank_line_count": blank_lines,
        "example_count": stats.example_count,
        "invalid_example_count": invalid_lines,
        "format_detected_at_line": parser.format_line or None,
        **summary,
    }
    return ValidationReport(
        ok=error_count == 0,
        format=parser.format,
        errors=errors,
        error_count=error_count,
        stats=report_stats,
    )
