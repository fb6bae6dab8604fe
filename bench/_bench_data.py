"""Inputs shared by the training benchmarks: a Llama-shaped base model with random weights, its tokenizer,
and a chat dataset (OpenAI chat JSONL) whose token lengths follow a log-normal spread.

Everything is built locally and deterministically from a seed; nothing is downloaded. The tokenizer and
chat template are Tailor's tiny model's (`gpu_runner.tiny_model.train_tokenizer`, trained on the corpus
shipped in `gpu_runner/data/corpus/`), so both trainers render conversations with the same template and
see the same token counts. Example text is cut from that corpus, so it tokenizes like prose.

Model sizes:
  tiny  hidden 256, 4 layers, GQA 4/2 heads, MLP 768  ~3.9M parameters (CPU benchmark: big enough that
        matrix multiplies, not Python overhead, dominate a step; small enough for minutes on 2 cores)
  1b    hidden 2048, 16 layers, GQA 32/8 heads, MLP 8192  ~0.98B parameters (Llama-3.2-1B's body with a
        small vocabulary; the GPU check)
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MIN_TOKENS = 20


@dataclass(frozen=True)
class ModelShape:
    """The Llama configuration fields a benchmark model is built from (vocabulary comes from the tokenizer)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = True
    rms_norm_eps: float = 1e-5


MODEL_SHAPES: dict[str, ModelShape] = {
    "tiny": ModelShape(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=2),
    "1b": ModelShape(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8),
}


# --- tokenizer and model -------------------------------------------------------------------------------


def _corpus() -> tuple[list[str], list[list[dict[str, Any]]]]:
    """Paragraphs and conversations of the tiny model's corpus (the same files its tokenizer is trained on)."""
    from gpu_runner.tiny_model import corpus_files

    paragraphs: list[str] = []
    conversations: list[list[dict[str, Any]]] = []
    for path in corpus_files():
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            conversations.extend(json.loads(line)["messages"] for line in text.splitlines() if line.strip())
        else:
            paragraphs.extend(p.strip() for p in text.split("\n\n") if p.strip())
    return paragraphs, conversations


def build_tokenizer(directory: Path) -> Any:
    """Train the tiny model's byte-level BPE tokenizer (with its chat template) and save it to `directory`."""
    from gpu_runner.tiny_model import train_tokenizer

    paragraphs, conversations = _corpus()
    tokenizer = train_tokenizer(paragraphs, conversations)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(directory, save_jinja_files=False)
    return tokenizer


def build_model(directory: Path, shape: ModelShape, tokenizer: Any, *, seed: int, device: str = "cpu") -> int:
    """Write a randomly initialised `LlamaForCausalLM` of `shape` (bfloat16 safetensors) plus the tokenizer
    to `directory`; returns its parameter count. On `cuda` the weights are initialised on the GPU, which
    takes seconds for the 1B shape instead of a minute on CPU cores."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **asdict(shape),
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory, save_jinja_files=False)
    parameters = sum(p.numel() for p in model.parameters())
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return parameters


def matmul_parameters(shape: ModelShape, vocab_size: int) -> int:
    """Parameters that take part in a matrix multiply per token: every linear layer plus the output head
    (the input embedding is a lookup, not a multiply)."""
    head_dim = shape.hidden_size // shape.num_attention_heads
    attention = shape.hidden_size * head_dim * (2 * shape.num_attention_heads + 2 * shape.num_key_value_heads)
    mlp = 3 * shape.hidden_size * shape.intermediate_size
    return shape.num_hidden_layers * (attention + mlp) + vocab_size * shape.hidden_size


# --- dataset -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LengthSpread:
    """Log-normal token lengths (of the whole rendered conversation), clipped to [MIN_TOKENS, max_tokens]."""

    median: float = 256.0
    sigma: float = 0.5
    max_tokens: int = 1024

    def sample(self, rng: random.Random) -> int:
        value = int(round(rng.lognormvariate(math.log(self.median), self.sigma)))
        return max(MIN_TOKENS, min(self.max_tokens, value))


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _sentences() -> list[str]:
    paragraphs, conversations = _corpus()
    sentences = [s for p in paragraphs for s in _SENTENCE_END.split(p) if s]
    sentences += [str(m["content"]) for conv in conversations for m in conv if m.get("content")]
    return sentences


def _words(rng: random.Random, sentences: Sequence[str], at_least: int) -> list[str]:
    words: list[str] = []
    while len(words) < at_least:
        words.extend(rng.choice(sentences).split())
    return words


_SYSTEM_PROMPTS = ("You are a helpful assistant.", "Answer clearly and politely.",
                   "You are a patient tutor. Explain your reasoning step by step.")


class _ChatLengths:
    """Token counts of conversations as the tokenizer's chat template renders them."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def count(self, messages: list[dict[str, str]], *, prompt: bool = False) -> int:
        ids = self.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=prompt,
                                                 return_dict=False)
        return len(ids)

    def longest_fit(self, head: list[dict[str, str]], role: str, words: list[str], budget: int, *,
                    prompt: bool) -> int:
        """Largest k >= 1 such that `head` + one `role` message of words[:k] fits `budget` tokens (binary
        search: the count grows with k)."""
        lo, hi = 1, len(words)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.count([*head, {"role": role, "content": " ".join(words[:mid])}], prompt=prompt) <= budget:
                lo = mid
            else:
                hi = mid - 1
        return lo


def make_chat_dataset(path: Path, tokenizer: Any, *, n_examples: int, seed: int,
                      spread: LengthSpread = LengthSpread()) -> list[int]:
    """Write `n_examples` chat examples ({"messages": [...]} per line) to `path` and return each example's
    token count as the chat template renders it.

    Each example draws a target length from `spread`; a user turn takes about a fifth of it (after an
    optional system prompt) and the assistant reply fills the rest, cut at a word boundary so that the
    rendered conversation ends at most a few tokens under the target.
    """
    rng = random.Random(f"tailor-bench-data:{seed}")
    sentences = _sentences()
    lengths_of = _ChatLengths(tokenizer)
    lengths: list[int] = []
    with path.open("w", encoding="utf-8") as out:
        for _ in range(n_examples):
            target = spread.sample(rng)
            prompt_budget = max(8, target // 5)
            head: list[dict[str, str]] = []
            if rng.random() < 0.3:
                system = {"role": "system", "content": rng.choice(_SYSTEM_PROMPTS)}
                # A system prompt only where it leaves room for a user turn.
                if lengths_of.count([system, {"role": "user", "content": "Hi"}], prompt=True) <= prompt_budget:
                    head.append(system)
            user_words = _words(rng, sentences, max(4, target // 4))
            k = lengths_of.longest_fit(head, "user", user_words, prompt_budget, prompt=True)
            messages = [*head, {"role": "user", "content": " ".join(user_words[:k])}]
            reply_words = _words(rng, sentences, target + 8)
            k = lengths_of.longest_fit(messages, "assistant", reply_words, target, prompt=False)
            messages.append({"role": "assistant", "content": " ".join(reply_words[:k])})
            lengths.append(lengths_of.count(messages))
            out.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    return lengths


# --- padding arithmetic ------------------------------------------------------------------------------------


def padding_share(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of a padded batch's token slots that hold padding (0 = none), over all `batches`."""
    slots = used = 0
    for batch in batches:
        widths = [lengths[i] for i in batch]
        slots += max(widths) * len(widths)
        used += sum(widths)
    return 1 - used / slots if slots else 0.0


def random_batches(n: int, batch_size: int, seed: int) -> list[list[int]]:
    """Shuffled batches of `batch_size` indices: what a plain sampler yields."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


# --- weights' memory ------------------------------------------------------------------------------------


def weight_footprints(model_dir: Path, device: str) -> dict[str, int]:
    """Bytes of the model's weights and buffers (`get_memory_footprint()`) loaded as NF4 with double
    quantization and as bfloat16; layers bitsandbytes leaves unquantized (embeddings, norms) are
    bfloat16 in both."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    device_map = {"": 0 if device == "cuda" else "cpu"}
    footprints: dict[str, int] = {}
    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.bfloat16)
    for name, quantization in (("nf4", nf4), ("bf16", None)):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, quantization_config=quantization,
                                                     device_map=device_map)
        footprints[name] = int(model.get_memory_footprint())
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    return footprints


def _main() -> int:
    """`build-model DIR` and `footprint DIR`, run as child processes by the benchmarks so that the
    measuring process never holds the model (or a CUDA context) itself. Each prints one JSON object."""
    import argparse

    parser = argparse.ArgumentParser(description="Benchmark inputs.")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build-model", help="tokenizer + random-weight Llama in DIR")
    build.add_argument("directory", type=Path)
    build.add_argument("--size", choices=sorted(MODEL_SHAPES), default="tiny")
    build.add_argument("--device", default="cpu")
    build.add_argument("--seed", type=int, default=0)
    footprint = commands.add_parser("footprint", help="weights' bytes as NF4 and as bfloat16")
    footprint.add_argument("directory", type=Path)
    footprint.add_argument("--device", default="cpu")
    args = parser.parse_args()

    if args.command == "build-model":
        shape = MODEL_SHAPES[args.size]
        tokenizer = build_tokenizer(args.directory)
        parameters = build_model(args.directory, shape, tokenizer, seed=args.seed, device=args.device)
        print(json.dumps({"parameters": parameters, "vocab_size": len(tokenizer),
                          "matmul_parameters": matmul_parameters(shape, len(tokenizer)), "shape": asdict(shape)}))
    else:
        print(json.dumps(weight_footprints(args.directory, args.device)))
    return 0


if __name__ == "__main__":
    import sys

    # Run as a script, bench/ is on sys.path but the repository root (gpu_runner) is not.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    raise SystemExit(_main())
