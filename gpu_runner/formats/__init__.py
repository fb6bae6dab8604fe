"""Tailor's dataset formats: one parser shared by the upload validator and the trainer.

A JSONL file holds one of four formats (chat, preference, prompt_completion, text). `validate_stream`
checks a whole upload and measures it; `read_examples` streams typed examples to the trainer and stops
at the first line the validator would refuse, so a file that validates always trains. Light on
purpose: no torch, no Django.
"""

from gpu_runner.formats.lines import DEFAULT_MAX_LINE_BYTES
from gpu_runner.formats.parser import read_examples, trained_messages
from gpu_runner.formats.types import (
    ISSUE_CODES,
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
from gpu_runner.formats.validation import ValidationReport, validate_stream

__all__ = [
    "DEFAULT_MAX_LINE_BYTES",
    "ISSUE_CODES",
    "ChatExample",
    "DatasetError",
    "DatasetFormat",
    "Example",
    "Issue",
    "Message",
    "PreferenceExample",
    "PromptCompletionExample",
    "TextExample",
    "ValidationReport",
    "read_examples",
    "trained_messages",
    "validate_stream",
]
