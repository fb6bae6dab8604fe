"""Build Tailor's tiny base model from code: tokenizer, chat template and a briefly pretrained Llama.

Tests and the local demo need a real causal language model that loads with `AutoModelForCausalLM`,
has a chat template with assistant-mask support, and trains in seconds on a CPU. Nothing is
downloaded: a byte-level BPE tokenizer is trained on the corpus shipped in `gpu_runner/data/corpus/`,
and a ~1.7M-parameter `LlamaForCausalLM` is pretrained on the same text for about a minute.

The build is deterministic for a seed on one machine, and cached: calling `build_tiny_model` again
with the same settings on a directory that already holds the result returns at once.

    python -m gpu_runner make-tiny-model var/models/tailor-tiny
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

MODEL_NAME = "tailor-tiny"
# Bump when the build recipe changes in a way that changes the weights, so stale caches rebuild.
BUILD_VERSION = 1
MANIFEST_FILE = "tailor_model.json"
CORPUS_DIR = Path(__file__).resolve().parent / "data" / "corpus"

BOS, EOS, PAD = "<|bos|>", "<|end|>", "<|pad|>"
SYSTEM, USER, ASSISTANT, TOOL, TOOL_CALL = (
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|tool|>",
    "<|tool_call|>",
)
SPECIAL_TOKENS = [PAD, BOS, EOS, SYSTEM, USER, ASSISTANT, TOOL, TOOL_CALL]

DEFAULT_PRETRAIN_STEPS = 150

# Model and optimisation settings. The hidden size is a multiple of 64 so that bitsandbytes'
# 4-bit blocks (64 values each) divide every weight evenly.
VOCAB_SIZE = 3072
MODEL_SETTINGS: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}
TRAIN_SETTINGS: dict[str, Any] = {
    "seq_len": 128,
    "batch_size": 16,
    "learning_rate": 3e-3,
    "min_lr_ratio": 0.1,
    "warmup_steps": 20,
    "weight_decay": 0.01,
    "max_grad_norm": 1.0,
    "threads": 2,
}


def _content_macro() -> str:
    # Content is a string, or a list of {"type": "text", "text": ...} parts (OpenAI's array form).
    return (
        "{% macro render_content(content) %}"
        "{% if content is string %}{{ content }}"
        "{% elif content is not none and content is iterable %}"
        "{% for part in content %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
        "{% endif %}"
        "{% endmacro %}"
    )


# The chat template. Why it looks the way it does:
# - every turn ends with <|end|>, the tokenizer's eos token, so generation stops at the end of a reply;
# - the assistant's content *and* its <|end|> sit inside {% generation %} so that
#   `return_assistant_tokens_mask=True` (and TRL's assistant_only_loss) trains the stop token;
# - an assistant message with OpenAI's `"weight": 0` is rendered outside {% generation %}, so the
#   mask honours per-message weights;
# - earlier turns render the same whatever follows (prefix-preserving), which TRL checks for tools;
# - tool calls and tool results are rendered in full so TRL's tool-support probe accepts it.
# transformers renders templates with trim_blocks, which eats a newline written right after a block
# tag, so those newlines are written as {{ '\n' }}. The pieces are joined without any other whitespace.
CHAT_TEMPLATE = (
    _content_macro() + "{% macro render_tool_calls(message) %}"
    "{% if message['tool_calls'] is defined and message['tool_calls'] %}"
    "{% for call in message['tool_calls'] %}"
    "{% set fn = call['function'] if call['function'] is defined else call %}"
    '<|tool_call|>{"name": {{ fn["name"] | tojson }}, "arguments": '
    "{% if fn['arguments'] is string %}{{ fn['arguments'] }}{% else %}{{ fn['arguments'] | tojson }}{% endif %}"
    "}"
    "{% endfor %}"
    "{% endif %}"
    "{% endmacro %}"
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system_text = render_content(messages[0]['content']) %}"
    "{% set loop_messages = messages[1:] %}"
    "{% else %}"
    "{% set system_text = '' %}"
    "{% set loop_messages = messages %}"
    "{% endif %}"
    "{% if system_text or tools %}"
    "<|system|>\n{{ system_text }}"
    "{% if tools %}"
    "{% if system_text %}{{ '\\n\\n' }}{% endif %}"
    'You can call these tools. To call one, write <|tool_call|> and a JSON object with "name" and "arguments".'
    "{% for tool in tools %}{{ '\\n' }}{{ (tool['function'] if tool['function'] is defined else tool) | tojson }}{% endfor %}"
    "{% endif %}"
    "<|end|>\n"
    "{% endif %}"
    "{% for message in loop_messages %}"
    "{% if message['role'] == 'user' %}"
    "<|user|>\n{{ render_content(message['content']) }}<|end|>\n"
    "{% elif message['role'] == 'assistant' %}"
    "<|assistant|>\n"
    "{% if message['weight'] is defined and message['weight'] == 0 %}"
    "{{ render_content(message['content']) }}{{ render_tool_calls(message) }}<|end|>"
    "{% else %}"
    "{% generation %}{{ render_content(message['content']) }}{{ render_tool_calls(message) }}<|end|>{% endgeneration %}"
    "{% endif %}{{ '\\n' }}"
    "{% elif message['role'] == 'tool' %}"
    "<|tool|>\n{{ render_content(message['content']) }}<|end|>\n"
    "{% elif message['role'] == 'system' %}"
    "<|system|>\n{{ render_content(message['content']) }}<|end|>\n"
    "{% else %}"
    "{{ raise_exception('Unsupported chat role: ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def corpus_files() -> list[Path]:
    """The corpus files the tokenizer and the model are trained on, in a fixed order."""
    return sorted([*CORPUS_DIR.glob("*.txt"), *CORPUS_DIR.glob("*.jsonl")])


def _corpus_digest() -> str:
    digest = hashlib.sha256()
    for path in corpus_files():
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _read_corpus() -> tuple[list[str], list[list[dict[str, Any]]]]:
    """Plain-text paragraphs and chat conversations from the corpus folder."""
    paragraphs: list[str] = []
    conversations: list[list[dict[str, Any]]] = []
    for path in corpus_files():
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            conversations.extend(json.loads(line)["messages"] for line in text.splitlines() if line.strip())
        else:
            paragraphs.extend(p.strip() for p in text.split("\n\n") if p.strip())
    return paragraphs, conversations


def _build_key(seed: int, pretrain_steps: int) -> str:
    settings = {
        "build_version": BUILD_VERSION,
        "seed": seed,
        "pretrain_steps": pretrain_steps,
        "vocab_size": VOCAB_SIZE,
        "model": MODEL_SETTINGS,
        "train": TRAIN_SETTINGS,
        "chat_template": CHAT_TEMPLATE,
        "corpus_sha256": _corpus_digest(),
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(model_dir: str | Path) -> dict[str, Any] | None:
    """The `tailor_model.json` of a built model directory, or None when there is none."""
    path = Path(model_dir) / MANIFEST_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _is_complete(model_dir: Path, build_key: str) -> bool:
    manifest = read_manifest(model_dir)
    if manifest is None or manifest.get("build_key") != build_key:
        return False
    weights = model_dir / "model.safetensors"
    required = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"]
    if not weights.is_file() or not all((model_dir / name).is_file() for name in required):
        return False
    return _file_sha256(weights)[:12] == manifest.get("revision")


def train_tokenizer(paragraphs: list[str], conversations: list[list[dict[str, Any]]]) -> Any:
    """A byte-level BPE `PreTrainedTokenizerFast` with Tailor's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = paragraphs + [str(m["content"]) for conv in conversations for m in conv]
    backend.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=[SYSTEM, USER, ASSISTANT, TOOL, TOOL_CALL],
        # Plain `tokenizer(text)` starts with <|bos|> as in pretraining; apply_chat_template passes
        # add_special_tokens=False and writes <|bos|> itself, so chats never get two.
        add_bos_token=True,
        add_eos_token=False,
        chat_template=CHAT_TEMPLATE,
        model_max_length=MODEL_SETTINGS["max_position_embeddings"],
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


def _token_stream(
    tokenizer: Any, paragraphs: list[str], conversations: list[list[dict[str, Any]]]
) -> list[list[int]]:
    """Every corpus document as token ids: paragraphs as <|bos|>text<|end|>, chats through the template."""
    docs: list[list[int]] = []
    for paragraph in paragraphs:
        docs.append([*tokenizer(paragraph)["input_ids"], tokenizer.eos_token_id])
    for conversation in conversations:
        docs.append(list(tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=False)))
    return docs


def _batches(
    docs: list[list[int]], seq_len: int, batch_size: int, rng: random.Random
) -> Iterator[list[list[int]]]:
    """Endless batches of packed blocks of seq_len + 1 tokens, reshuffling the documents every epoch."""
    block = seq_len + 1
    while True:
        order = list(range(len(docs)))
        rng.shuffle(order)
        stream = [token for i in order for token in docs[i]]
        blocks = [stream[i : i + block] for i in range(0, len(stream) - block + 1, block)]
        rng.shuffle(blocks)
        for i in range(0, len(blocks) - batch_size + 1, batch_size):
            yield blocks[i : i + batch_size]


@contextlib.contextmanager
def _deterministic_torch(threads: int) -> Iterator[None]:
    """Fix thread count and demand deterministic kernels for the build, restoring the caller's settings."""
    import torch

    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):  # seeding here must not change the caller's RNG
            yield
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_deterministic)


def pretrain(
    model: Any, docs: list[list[int]], *, seed: int, steps: int, progress: Callable[[str], None] | None
) -> float:
    """Causal-LM pretraining with AdamW and a warm-up + cosine schedule; returns the final smoothed loss."""
    import torch

    settings = TRAIN_SETTINGS
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=settings["learning_rate"],
        weight_decay=settings["weight_decay"],
        betas=(0.9, 0.95),
    )

    def lr_factor(step: int) -> float:
        if step < settings["warmup_steps"]:
            return (step + 1) / settings["warmup_steps"]
        progress_ratio = (step - settings["warmup_steps"]) / max(1, steps - settings["warmup_steps"])
        cosine = 0.5 * (1 + math.cos(math.pi * progress_ratio))
        return settings["min_lr_ratio"] + (1 - settings["min_lr_ratio"]) * cosine

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    batches = _batches(docs, settings["seq_len"], settings["batch_size"], rng)
    model.train()
    smoothed = float("nan")
    started = time.monotonic()
    for step in range(steps):
        batch = torch.tensor(next(batches), dtype=torch.long)
        loss = model(input_ids=batch[:, :-1], labels=batch[:, :-1]).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings["max_grad_norm"])
        optimizer.step()
        scheduler.step()
        value = float(loss.detach())
        smoothed = value if math.isnan(smoothed) else 0.9 * smoothed + 0.1 * value
        if progress and (step % 50 == 0 or step == steps - 1):
            progress(
                f"pretraining step {step + 1}/{steps} loss {smoothed:.3f} ({time.monotonic() - started:.0f}s)"
            )
    model.eval()
    return smoothed


def _write_model(
    work_dir: Path, *, seed: int, pretrain_steps: int, build_key: str, progress: Callable[[str], None] | None
) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    paragraphs, conversations = _read_corpus()
    with _deterministic_torch(TRAIN_SETTINGS["threads"]):
        tokenizer = train_tokenizer(paragraphs, conversations)
        if progress:
            progress(f"trained tokenizer: {len(tokenizer)} tokens")
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **MODEL_SETTINGS,
        )
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        docs = _token_stream(tokenizer, paragraphs, conversations)
        final_loss = pretrain(model, docs, seed=seed, steps=pretrain_steps, progress=progress)

    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(work_dir)  # transformers 5 always writes model.safetensors
    # The chat template goes into tokenizer_config.json (not a separate .jinja file) so that every
    # reader of tokenizer configs, old transformers included, finds it in the same place.
    tokenizer.save_pretrained(work_dir, save_jinja_files=False)
    parameters = sum(p.numel() for p in model.parameters())
    manifest = {
        "name": MODEL_NAME,
        "revision": _file_sha256(work_dir / "model.safetensors")[:12],
        "architecture": "llama",
        "parameters": parameters,
        "seed": seed,
        "pretrain_steps": pretrain_steps,
        "final_loss": round(final_loss, 4),
        "vocab_size": len(tokenizer),
        "context_length": MODEL_SETTINGS["max_position_embeddings"],
        "chat_template": True,
        "eos_token": EOS,
        "build_key": build_key,
        "build_version": BUILD_VERSION,
    }
    (work_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def _make_readable(model_dir: Path) -> None:
    # mkdtemp creates a 0700 directory; inference servers often read models as another user.
    model_dir.chmod(0o755)
    for path in model_dir.iterdir():
        path.chmod(0o644)


def default_model_dir() -> Path:
    """Where the tiny model is cached unless a caller says otherwise.

    `$TAILOR_TINY_MODEL_DIR` when set, else `$XDG_CACHE_HOME/tailor/models/tailor-tiny`
    (`~/.cache/...` without XDG_CACHE_HOME). Tests and the demo share this cache.
    """
    if configured := os.environ.get("TAILOR_TINY_MODEL_DIR"):
        return Path(configured)
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home) / "tailor" / "models" / MODEL_NAME


@contextlib.contextmanager
def _build_lock(out_dir: Path) -> Iterator[None]:
    """Serialise concurrent builds of one directory (several test processes may ask at once)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic rename still keeps the directory consistent
        yield
        return
    lock_path = out_dir.parent / f".{out_dir.name}.lock"
    with lock_path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_tiny_model(
    out_dir: str | Path,
    *,
    seed: int = 0,
    pretrain_steps: int = DEFAULT_PRETRAIN_STEPS,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Build (or reuse) the tiny base model in `out_dir` and return its path.

    The directory then holds `model.safetensors`, `config.json`, `generation_config.json`, the
    tokenizer files (with the chat template in `tokenizer_config.json`) and `tailor_model.json`.
    It is written to a temporary directory beside `out_dir` and renamed into place, so readers
    never see a half-written model. A directory that already holds a complete build with the same
    seed, steps, recipe and corpus is returned untouched. `progress`, if given, receives one-line
    status messages.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    build_key = _build_key(seed, pretrain_steps)
    if _is_complete(out_dir, build_key):
        return out_dir
    with _build_lock(out_dir):
        if _is_complete(out_dir, build_key):  # another process finished it while we waited
            return out_dir
        started = time.monotonic()
        work_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.build-", dir=out_dir.parent))
        try:
            _write_model(
                work_dir, seed=seed, pretrain_steps=pretrain_steps, build_key=build_key, progress=progress
            )
            _make_readable(work_dir)
            if out_dir.exists():
                # A stale or different build: move it aside first, because rename cannot replace a
                # non-empty directory, then delete it once the new one is in place.
                stale = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.stale-", dir=out_dir.parent))
                os.replace(out_dir, stale / "old")
                os.replace(work_dir, out_dir)
                shutil.rmtree(stale, ignore_errors=True)
            else:
                os.replace(work_dir, out_dir)
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
        if progress:
            progress(f"built {MODEL_NAME} in {out_dir} ({time.monotonic() - started:.0f}s)")
    return out_dir
