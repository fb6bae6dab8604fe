"""Loss masks on real tokenized batches of the tiny model's chat template, the all-masked rule,
truncation, preference pairs, length-grouped batches and packing without cross-contamination."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from gpu_runner.formats import ChatExample, DatasetError, Message, PreferenceExample
from gpu_runner.tiny_model import build_tiny_model
from gpu_runner.train.data import (
    IGNORE_INDEX,
    ChatRenderer,
    LengthGroupedBatchSampler,
    TemplateError,
    UntrainableExamplesError,
    build_preference_rows,
    build_supervised_rows,
    padding_share,
    tokenize_chat,
    tokenize_preference,
)

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "var" / "models" / "tailor-tiny"


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from gpu_runner.train.common import load_tokenizer

    return load_tokenizer(build_tiny_model(TINY))


def trained_text(tokenizer: Any, input_ids: list[int], labels: list[int]) -> list[str]:
    """Decoded runs of consecutive trained tokens."""
    runs: list[list[int]] = []
    previous = False
    for token, label in zip(input_ids, labels, strict=True):
        trained = label != IGNORE_INDEX
        if trained:
            assert label == token  # a label is the token itself; the model shifts
            if not previous:
                runs.append([])
            runs[-1].append(token)
        previous = trained
    return [tokenizer.decode(run, skip_special_tokens=False) for run in runs]


def conversation(line: int = 1) -> ChatExample:
    return ChatExample(
        line=line,
        messages=[
            Message("system", "Be brief."),
            Message("user", "First question?"),
            Message("assistant", "First answer."),
            Message("user", "Second question?"),
            Message("assistant", "Ignored answer.", weight=0),
            Message("user", "Third question?"),
            Message("assistant", "Third answer."),
        ],
    )


def test_only_assistant_turns_are_trained_by_default(tokenizer: Any) -> None:
    row = tokenize_chat(
        tokenizer, ChatRenderer(tokenizer), conversation(), train_on_inputs=False, max_seq_length=4096
    )
    # Each reply is trained from its first character through the end-of-turn token (so the model
    # learns to stop); the weight-0 reply, system, user turns and turn headers are not.
    assert trained_text(tokenizer, row.input_ids, row.labels) == [
        "First answer.<|end|>\n",
        "Third answer.<|end|>\n",
    ]
    assert not row.truncated


def test_train_on_inputs_trains_everything_but_weight_zero_turns(tokenizer: Any) -> None:
    renderer = ChatRenderer(tokenizer)
    example = conversation()
    row = tokenize_chat(tokenizer, renderer, example, train_on_inputs=True, max_seq_length=4096)
    full = renderer.render([{"role": m.role, "content": m.content} for m in example.messages], None)
    skipped = "<|assistant|>\nIgnored answer.<|end|>\n"
    assert skipped in full
    before, after = full.split(skipped)
    assert trained_text(tokenizer, row.input_ids, row.labels) == [before, after]


def test_masks_survive_real_batches(tokenizer: Any) -> None:
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    renderer = ChatRenderer(tokenizer)
    rows = []
    for line in range(1, 9):
        example = ChatExample(
            line=line,
            messages=[Message("user", "word " * line + "?"), Message("assistant", "reply " * (9 - line))],
        )
        rows.append(tokenize_chat(tokenizer, renderer, example, train_on_inputs=False, max_seq_length=4096))
    collate = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)
    sampler = LengthGroupedBatchSampler([len(r.input_ids) for r in rows], 3, seed=0)
    seen = []
    for indices in sampler:
        batch = collate([{"input_ids": rows[i].input_ids, "labels": rows[i].labels} for i in indices])
        assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
        assert torch.all(batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX)
        for position, index in enumerate(indices):
            n = len(rows[index].input_ids)
            assert batch["labels"][position, :n].tolist() == rows[index].labels
            runs = trained_text(
                tokenizer, batch["input_ids"][position, :n].tolist(), batch["labels"][position, :n].tolist()
            )
            assert runs == ["reply " * (9 - rows[index].line) + "<|end|>\n"]
        seen.extend(indices)
    assert sorted(seen) == list(range(8))


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _chat_record(i: int, weight: int | None = None) -> dict[str, Any]:
    reply: dict[str, Any] = {"role": "assistant", "content": f"answer {i}"}
    if weight is not None:
        reply["weight"] = weight
    return {"messages": [{"role": "user", "content": f"question {i}"}, reply]}


def _long_prompt_record() -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": "many words " * 60},
            {"role": "assistant", "content": "short"},
        ]
    }


def test_an_all_weight_zero_example_is_refused_by_the_shared_parser(tokenizer: Any, tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "train.jsonl", [_chat_record(1), _chat_record(2, weight=0)])
    with pytest.raises(DatasetError) as caught:
        build_supervised_rows(
            path, tokenizer, train_on_inputs=False, max_seq_length=512, source="training_file"
        )
    assert caught.value.line == 2 and caught.value.issues[0].code == "no_trained_tokens"


def test_many_examples_without_trained_tokens_fail_the_run_naming_their_lines(
    tokenizer: Any, tmp_path: Path
) -> None:
    path = _write_jsonl(tmp_path / "train.jsonl", [_chat_record(1), _long_prompt_record(), _chat_record(3)])
    with pytest.raises(UntrainableExamplesError) as caught:
        build_supervised_rows(
            path, tokenizer, train_on_inputs=False, max_seq_length=48, source="training_file"
        )
    assert caught.value.lines == [2]
    assert "line 2" in str(caught.value) and "after truncation to max_seq_length=48" in str(caught.value)


def test_a_few_examples_cut_away_by_truncation_are_dropped_and_reported(
    tokenizer: Any, tmp_path: Path
) -> None:
    records = [_chat_record(i) for i in range(1, 101)] + [_long_prompt_record()]
    path = _write_jsonl(tmp_path / "train.jsonl", records)
    rows, report = build_supervised_rows(
        path, tokenizer, train_on_inputs=False, max_seq_length=48, source="training_file"
    )
    assert report.truncated == 1 and report.truncated_lines == [101]
    assert (
        report.dropped_lines == [101] and "after truncation to max_seq_length=48" in report.drop_reasons[101]
    )
    assert max(len(r.input_ids) for r in rows) <= 48
    assert report.examples == 101 and report.rows == len(rows) == 100
    assert report.trained_tokens == sum(r.trained_tokens for r in rows)


def test_preference_pairs_share_the_prompt_and_score_only_the_replies(tokenizer: Any) -> None:
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    example = PreferenceExample(
        line=1,
        messages=[Message("user", "Give JSON.")],
        chosen=Message("assistant", '{"ok": true}'),
        rejected=Message("assistant", "no"),
    )
    row = tokenize_preference(tokenizer, ChatRenderer(tokenizer), example, max_seq_length=512)
    assert tokenizer.decode(row.prompt_ids, skip_special_tokens=False).endswith("<|assistant|>\n")
    assert tokenizer.decode(row.chosen_ids, skip_special_tokens=False) == '{"ok": true}<|end|>\n'
    assert tokenizer.decode(row.rejected_ids, skip_special_tokens=False) == "no<|end|>\n"
    batch = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)(
        [{"prompt_ids": row.prompt_ids, "chosen_ids": row.chosen_ids, "rejected_ids": row.rejected_ids}]
    )
    assert batch["completion_mask"].sum(dim=1).tolist() == [len(row.chosen_ids), len(row.rejected_ids)]


def test_format_must_fit_the_method(tokenizer: Any, tmp_path: Path) -> None:
    preference = {
        "input": {"messages": [{"role": "user", "content": "q"}]},
        "preferred_output": [{"role": "assistant", "content": "a"}],
        "non_preferred_output": [{"role": "assistant", "content": "b"}],
    }
    path = _write_jsonl(tmp_path / "pref.jsonl", [preference])
    with pytest.raises(DatasetError, match="method supervised needs chat"):
        build_supervised_rows(
            path, tokenizer, train_on_inputs=False, max_seq_length=64, source="training_file"
        )
    chat = _write_jsonl(tmp_path / "chat.jsonl", [_chat_record(1)])
    with pytest.raises(DatasetError, match="method dpo needs preference data"):
        build_preference_rows(chat, tokenizer, max_seq_length=64, source="training_file")


def test_templates_that_rewrite_earlier_turns_are_refused(tokenizer: Any) -> None:
    original = tokenizer.chat_template
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['content'] }}{% if loop.last %}!{% endif %}{% endfor %}"
    )
    try:
        with pytest.raises(TemplateError, match="line 7: the chat template renders message 0 differently"):
            tokenize_chat(
                tokenizer,
                ChatRenderer(tokenizer),
                conversation(line=7),
                train_on_inputs=False,
                max_seq_length=512,
            )
    finally:
        tokenizer.chat_template = original


def test_batch_order_is_fixed_by_seed_and_epoch_and_groups_lengths() -> None:
    rng = random.Random(0)
    lengths = [max(20, min(1024, int(math.exp(rng.gauss(5, 0.8))))) for _ in range(2000)]
    sampler = LengthGroupedBatchSampler(lengths, 8, seed=5)
    epoch0 = sampler.batches(0)
    assert epoch0 == LengthGroupedBatchSampler(lengths, 8, seed=5).batches(0)
    assert epoch0 != sampler.batches(1)
    assert sorted(i for batch in epoch0 for i in batch) == list(range(2000))
    assert len(epoch0) == len(sampler) == 250
    assert max(lengths[i] for i in epoch0[0]) == max(lengths)  # an OOM shows at step one
    shuffled = list(range(2000))
    random.Random(1).shuffle(shuffled)
    random_batches = [shuffled[i : i + 8] for i in range(0, 2000, 8)]
    assert padding_share(lengths, epoch0) < 0.1 < padding_share(lengths, random_batches)
    sampler.set_epoch(1)
    assert list(sampler) == sampler.batches(1)


def test_packed_rows_do_not_attend_across_examples(tokenizer: Any) -> None:
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from gpu_runner.train.sft import pack_rows, supervised_dataset

    model = AutoModelForCausalLM.from_pretrained(str(TINY), dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    renderer = ChatRenderer(tokenizer)
    rows = [
        tokenize_chat(
            tokenizer,
            renderer,
            ChatExample(
                line=i,
                messages=[
                    Message("user", f"Question {i} " * i),
                    Message("assistant", f"Answer {i} " * (4 - i)),
                ],
            ),
            train_on_inputs=False,
            max_seq_length=256,
        )
        for i in (1, 2, 3)
    ]

    def token_logprobs(input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        # use_cache=False as in training (TRL sets it): transformers derives the per-example attention
        # blocks from the position ids only when no KV cache is in play.
        with torch.no_grad():
            logits = model(input_ids=input_ids, use_cache=False, **kwargs).logits.float()
        return torch.log_softmax(logits[0, :-1], -1).gather(-1, input_ids[0, 1:, None])[:, 0]

    alone = [token_logprobs(torch.tensor([r.input_ids])) for r in rows]
    packed = pack_rows(supervised_dataset(rows), 256)
    assert len(packed) == 1 and sorted(packed[0]["seq_lengths"]) == sorted(len(r.input_ids) for r in rows)
    batch = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)(
        [packed[0]]
    )
    together = token_logprobs(**{k: v for k, v in batch.items() if k != "labels"})
    start = 0
    for length in packed[0]["seq_lengths"]:
        segment = packed[0]["input_ids"][start : start + length]
        original = next(a for a, r in zip(alone, rows, strict=True) if r.input_ids == segment)
        # Inside each packed example the log-probabilities equal those of the example alone.
        assert torch.allclose(together[start : start + length - 1], original, atol=1e-4)
        start += length
