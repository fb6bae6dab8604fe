"""Regenerate the tiny model's shipped fine-tuning task: answer every question in a fixed JSON shape.

The base model answers in prose; the task teaches it to reply with exactly
`{"answer": "<short answer>", "confidence": "high" | "medium" | "low"}`. Whether the content is right
does not matter for the task, only the format (see `gpu_runner.task.format_match`).

Held-out files ask about entities (countries, animals, sums, ...) that no training file mentions.
Deterministic: the same code writes the same bytes.

    python -m gpu_runner.data.task.generate
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gpu_runner.data.questions import Question, all_questions

TASK_DIR = Path(__file__).resolve().parent
SAMPLE_PATH = TASK_DIR.parent / "sample_chat.jsonl"

TRAIN_SIZE = 320
HELDOUT_SIZE = 40
PREFERENCE_TRAIN_SIZE = 200
PREFERENCE_HELDOUT_SIZE = 30
SAMPLE_SIZE = 60
HELDOUT_FRACTION = 0.2
SYSTEM_RATE = 0.4
MULTI_TURN_RATE = 0.1

SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a quiz assistant. Reply with a JSON object.",
    "Answer with JSON that has the keys answer and confidence.",
    "You answer questions for a trivia app.",
    "Keep answers short.",
    "You are a friendly tutor.",
    "Respond only in the agreed JSON format.",
]


def json_answer(question: Question) -> str:
    """The task's reply to one question."""
    return json.dumps({"answer": question.short, "confidence": question.confidence})


def split_by_entity(questions: list[Question], rng: random.Random) -> tuple[list[Question], list[Question]]:
    """Hold out a fraction of the entities of every kind, so held-out questions are about unseen things."""
    keys_by_kind: dict[str, list[str]] = defaultdict(list)
    for key in dict.fromkeys(q.key for q in questions):
        keys_by_kind[key.split(":", 1)[0]].append(key)
    heldout_keys: set[str] = set()
    for kind in sorted(keys_by_kind):
        keys = keys_by_kind[kind]
        rng.shuffle(keys)
        heldout_keys.update(keys[: max(1, round(len(keys) * HELDOUT_FRACTION))])
    train = [q for q in questions if q.key not in heldout_keys]
    heldout = [q for q in questions if q.key in heldout_keys]
    return train, heldout


def balanced_order(questions: list[Question], rng: random.Random) -> list[Question]:
    """All questions, topics interleaved round-robin so any prefix covers every topic."""
    by_topic: dict[str, list[Question]] = defaultdict(list)
    for q in questions:
        by_topic[q.topic].append(q)
    topics = sorted(by_topic)
    for topic in topics:
        rng.shuffle(by_topic[topic])
    out: list[Question] = []
    while any(by_topic.values()):
        rng.shuffle(topics)
        for topic in topics:
            if by_topic[topic]:
                out.append(by_topic[topic].pop())
    return out


def _prompt(rng: random.Random) -> list[dict[str, Any]]:
    if rng.random() < SYSTEM_RATE:
        return [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}]
    return []


def chat_examples(
    questions: Iterable[Question], count: int, rng: random.Random, *, multi_turn: bool
) -> list[dict[str, Any]]:
    """OpenAI chat fine-tuning rows: optional system prompt, one or two question/JSON-answer turns."""
    pool = list(questions)
    out: list[dict[str, Any]] = []
    i = 0
    while len(out) < count:
        if i >= len(pool):
            raise ValueError(f"question pool too small for {count} examples")
        messages = _prompt(rng)
        turns = 2 if multi_turn and rng.random() < MULTI_TURN_RATE and i + 1 < len(pool) else 1
        for q in pool[i : i + turns]:
            messages.append({"role": "user", "content": q.question})
            messages.append({"role": "assistant", "content": json_answer(q)})
        out.append({"messages": messages})
        i += turns
    return out


def preference_examples(
    questions: Iterable[Question], count: int, rng: random.Random
) -> list[dict[str, Any]]:
    """OpenAI DPO rows: the JSON reply is preferred over the prose reply the base model would give."""
    out = []
    for q in list(questions)[:count]:
        messages = [*_prompt(rng), {"role": "user", "content": q.question}]
        out.append(
            {
                "input": {"messages": messages},
                "preferred_output": [{"role": "assistant", "content": json_answer(q)}],
                "non_preferred_output": [{"role": "assistant", "content": q.prose}],
            }
        )
    if len(out) < count:
        raise ValueError(f"question pool too small for {count} preference pairs")
    return out


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def write_task_files(task_dir: Path = TASK_DIR, sample_path: Path = SAMPLE_PATH) -> dict[str, int]:
    """Write the task's five JSONL files; returns the number of rows written per file name."""
    rng = random.Random(1234)
    train_pool, heldout_pool = split_by_entity(all_questions(), rng)
    train_order = balanced_order(train_pool, rng)
    heldout_order = balanced_order(heldout_pool, rng)

    train = chat_examples(train_order, TRAIN_SIZE, rng, multi_turn=True)
    heldout = chat_examples(heldout_order[:HELDOUT_SIZE], HELDOUT_SIZE, rng, multi_turn=False)
    # Preference pairs start from the other end of each pool, so they mostly ask new questions.
    preference_train = preference_examples(reversed(train_order), PREFERENCE_TRAIN_SIZE, rng)
    preference_heldout = preference_examples(heldout_order[HELDOUT_SIZE:], PREFERENCE_HELDOUT_SIZE, rng)
    sample = [train[i] for i in sorted(rng.sample(range(len(train)), SAMPLE_SIZE))]

    files = {
        task_dir / "train.jsonl": train,
        task_dir / "heldout.jsonl": heldout,
        task_dir / "preference_train.jsonl": preference_train,
        task_dir / "preference_heldout.jsonl": preference_heldout,
        sample_path: sample,
    }
    for path, rows in files.items():
        write_jsonl(path, rows)
    return {path.name: len(rows) for path, rows in files.items()}


def main() -> None:
    counts = write_task_files()
    print("wrote " + ", ".join(f"{n} rows to {name}" for name, n in counts.items()))


if __name__ == "__main__":
    main()
