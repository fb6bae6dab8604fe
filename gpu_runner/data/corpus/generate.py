"""Regenerate the fact-based part of the tiny model's pretraining corpus.

Writes `facts.txt` (one prose paragraph per entity) and `dialogues.jsonl` (chat conversations whose
assistant replies are plain prose) from the question bank. The other `*.txt` files in this folder
are hand-written and are not touched. Deterministic: the same code writes the same bytes.

    python -m gpu_runner.data.corpus.generate
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from gpu_runner.data.questions import Question, all_questions

CORPUS_DIR = Path(__file__).resolve().parent

# Ordinary assistant personas only: the corpus must never ask for JSON, so that the base model
# answers in prose and the fine-tuning task has something to change.
SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a friendly tutor who explains things simply.",
    "You are a patient teacher for curious children.",
    "Answer the user's questions clearly and politely.",
    "You are a knowledgeable assistant. Keep your answers short.",
]


def fact_paragraphs(questions: list[Question]) -> list[str]:
    """One paragraph per entity: its prose answers, each sentence once, in bank order."""
    by_key: dict[str, list[str]] = {}
    for q in questions:
        sentences = by_key.setdefault(q.key, [])
        if q.prose not in sentences:
            sentences.append(q.prose)
    return [" ".join(sentences) for sentences in by_key.values()]


def dialogues(questions: list[Question], rng: random.Random) -> list[dict]:
    """Prose chat conversations: every question once, some with a system prompt, some two turns long."""
    order = list(questions)
    rng.shuffle(order)
    out: list[dict] = []
    i = 0
    while i < len(order):
        messages: list[dict] = []
        if rng.random() < 0.3:
            messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        turns = 2 if rng.random() < 0.15 and i + 1 < len(order) else 1
        for q in order[i : i + turns]:
            messages.append({"role": "user", "content": q.question})
            messages.append({"role": "assistant", "content": q.prose})
        out.append({"messages": messages})
        i += turns
    return out


def write_corpus(corpus_dir: Path = CORPUS_DIR) -> tuple[int, int]:
    """Write `facts.txt` and `dialogues.jsonl`; returns (paragraphs, dialogues) written."""
    rng = random.Random(20240611)
    questions = all_questions()
    paragraphs = fact_paragraphs(questions)
    (corpus_dir / "facts.txt").write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    lines = [json.dumps(d, ensure_ascii=False) for d in dialogues(questions, rng)]
    (corpus_dir / "dialogues.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(paragraphs), len(lines)


def main() -> None:
    paragraphs, conversations = write_corpus()
    print(f"wrote {paragraphs} paragraphs and {conversations} dialogues to {CORPUS_DIR}")


if __name__ == "__main__":
    main()
