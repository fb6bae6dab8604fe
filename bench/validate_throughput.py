"""Throughput and peak memory of Tailor's dataset validator against a bare JSON-lines loop.

Generates a chat JSONL of each requested size (MB = 10^6 bytes) with varied examples (system prompts,
multi-turn conversations, tool calls and tool results, weight-0 turns, non-ASCII text, ~1% duplicate
lines) in a temporary directory, then times, each in a fresh subprocess so that peak RSS
(`ru_maxrss` of that process) belongs to one measurement:

  floor      `for line in file: json.loads(line)` (standard library)
  validator  `gpu_runner.formats.validate_stream` over the same file (token counts estimated)
  jiter      `for line in file: pydantic_core.from_json(line)`, the decoder the validator uses (context)

Timing covers reading and processing only, not interpreter start-up or imports. Prints a table, then
as its last line one JSON object: value = validator MB/s at the largest size, baseline = floor MB/s
there, ratio = value / baseline, peak_rss_mb = validator peak RSS per size.

    .venv/bin/python bench/validate_throughput.py              # 200 MB
    .venv/bin/python bench/validate_throughput.py --sizes 50,200
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MB = 1_000_000
TARGET_RATIO = 0.5
TARGET_RSS_MB = 200

_WORDS = (
    "the model data training loss adapter request server queue token batch gradient value order customer "
    "account invoice shipping return policy refund please thanks error timeout config deploy cluster node "
    "memory latency python function variable result answer question context example summary report "
    "because however therefore although while during before after about between without within"
).split()
_FOREIGN = [
    "Bonjour, pouvez-vous vérifier ma commande numéro 4471 ? Elle n'est pas arrivée.",
    "Die Lieferung verzögert sich um zwei Tage, wir entschuldigen uns für die Unannehmlichkeiten.",
    "注文の状況を確認しました。明日の午前中にお届けする予定です。",
    "Спасибо за ожидание! Ваш возврат оформлен, деньги поступят в течение 5 дней.",
    "¿Podría indicarme el código postal de entrega, por favor? 😊",
    "我们已经收到您的退款申请，处理时间通常为三到五个工作日。",
]
_TOOLS = [
    {"type": "function", "function": {
        "name": "get_order_status", "description": "Look up the status of an order by its id.",
        "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}},
    {"type": "function", "function": {
        "name": "search_docs", "description": "Full-text search over the product documentation.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"},
                                                        "limit": {"type": "integer"}}, "required": ["query"]}}},
]


def _paragraph_pool(rnd: random.Random, count: int = 3000) -> list[str]:
    """Texts of varied length: mostly short and medium, a long tail up to ~12 KB."""
    pool = []
    for _ in range(count):
        words = int(rnd.lognormvariate(4.0, 1.0)) + 3
        words = min(words, 2000)
        text = " ".join(rnd.choice(_WORDS) for _ in range(words))
        if rnd.random() < 0.08:
            text += " " + rnd.choice(_FOREIGN)
        if rnd.random() < 0.1:
            text += "\n\n```python\ndef f(x):\n    return x * 2\n```"
        pool.append(text)
    return pool


def _example(rnd: random.Random, pool: list[str], n: int) -> dict[str, object]:
    messages: list[dict[str, object]] = []
    if rnd.random() < 0.8:
        messages.append({"role": "system", "content": rnd.choice(pool[:200])})
    example: dict[str, object] = {"messages": messages}
    if rnd.random() < 0.15:
        example["tools"] = _TOOLS
        call_id = f"call_{n:08x}"
        messages.append({"role": "user", "content": rnd.choice(pool)})
        messages.append({"role": "assistant", "content": None, "tool_calls": [{
            "id": call_id, "type": "function",
            "function": {"name": "get_order_status", "arguments": json.dumps({"order_id": f"A{n}"})}}]})
        messages.append({"role": "tool", "tool_call_id": call_id,
                         "content": json.dumps({"status": "shipped", "eta_days": rnd.randint(1, 9)})})
        messages.append({"role": "assistant", "content": rnd.choice(pool)})
    else:
        turns = rnd.choice((1, 1, 1, 2, 2, 3, 5))
        for turn in range(turns):
            messages.append({"role": "user", "content": rnd.choice(pool)})
            reply: dict[str, object] = {"role": "assistant", "content": rnd.choice(pool)}
            # An earlier reply the author chose not to train on; the last one always trains.
            if turn < turns - 1 and rnd.random() < 0.2:
                reply["weight"] = 0
            messages.append(reply)
    return example


def generate(path: Path, size_bytes: int, seed: int = 7) -> int:
    """Write a chat JSONL of at least `size_bytes`; returns the number of examples."""
    rnd = random.Random(seed)
    pool = _paragraph_pool(rnd)
    written = count = 0
    recent: list[bytes] = []
    with open(path, "wb") as out:
        while written < size_bytes:
            if recent and rnd.random() < 0.01:
                line = rnd.choice(recent)
            else:
                line = json.dumps(_example(rnd, pool, count), ensure_ascii=False).encode() + b"\n"
                if len(recent) < 1000:
                    recent.append(line)
            out.write(line)
            written += len(line)
            count += 1
    return count


_MEASURE = {
    "floor": (
        "import json\n"
        "def run(path):\n"
        "    with open(path, 'rb') as f:\n"
        "        for line in f:\n"
        "            json.loads(line)\n"
    ),
    "jiter": (
        "import pydantic_core\n"
        "def run(path):\n"
        "    with open(path, 'rb') as f:\n"
        "        for line in f:\n"
        "            pydantic_core.from_json(line)\n"
    ),
    "validator": (
        "from gpu_runner.formats import validate_stream\n"
        "def run(path):\n"
        "    with open(path, 'rb') as f:\n"
        "        report = validate_stream(f)\n"
        "    assert report.ok, report.summary()\n"
    ),
}

_CHILD = (
    "import json, resource, sys, time\n"
    "{setup}"
    "start = time.perf_counter()\n"
    "run(sys.argv[1])\n"
    "elapsed = time.perf_counter() - start\n"
    "rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
    "print(json.dumps({{'seconds': elapsed, 'peak_rss_mb': rss_kib / 1024}}))\n"
)


def measure(kind: str, path: Path) -> dict[str, float]:
    """Run one measurement in a fresh interpreter; returns seconds and its own peak RSS (MiB)."""
    code = _CHILD.format(setup=_MEASURE[kind])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True,
                         check=False)
    if out.returncode:
        raise SystemExit(f"{kind} measurement failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    """Generate, measure, print the table and the JSON result line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="200", help="comma-separated file sizes in MB (default 200)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tailor-bench-") as tmp:
        for size in sizes:
            path = Path(tmp) / f"chat_{size}mb.jsonl"
            examples = generate(path, size * MB, args.seed)
            actual_mb = path.stat().st_size / MB
            results = {kind: measure(kind, path) for kind in ("floor", "validator", "jiter")}
            rows.append({"size": size, "mb": actual_mb, "examples": examples, **results})
            path.unlink()

    print(f"{'size':>6} {'examples':>9} {'measurement':>11} {'MB/s':>8} {'seconds':>8} {'peak RSS MiB':>13}")
    for row in rows:
        for kind in ("floor", "validator", "jiter"):
            r = row[kind]
            print(f"{row['size']:>4}MB {row['examples']:>9,} {kind:>11} {row['mb'] / r['seconds']:>8.1f} "
                  f"{r['seconds']:>8.2f} {r['peak_rss_mb']:>13.1f}")
        ratio = row["floor"]["seconds"] / row["validator"]["seconds"]
        print(f"{'':>6} {'':>9} {'ratio':>11} {ratio:>8.2f}  (validator / floor)")

    largest = max(rows, key=lambda r: r["size"])
    value = largest["mb"] / largest["validator"]["seconds"]
    baseline = largest["mb"] / largest["floor"]["seconds"]
    per_size = {
        str(row["size"]): {
            "examples": row["examples"],
            "validator_mb_s": round(row["mb"] / row["validator"]["seconds"], 1),
            "floor_mb_s": round(row["mb"] / row["floor"]["seconds"], 1),
            "jiter_floor_mb_s": round(row["mb"] / row["jiter"]["seconds"], 1),
            "ratio": round(row["floor"]["seconds"] / row["validator"]["seconds"], 3),
            "floor_peak_rss_mb": round(row["floor"]["peak_rss_mb"], 1),
        }
        for row in rows
    }
    peak = {str(row["size"]): round(row["validator"]["peak_rss_mb"], 1) for row in rows}
    targets_met = all(
        row["floor"]["seconds"] / row["validator"]["seconds"] >= TARGET_RATIO
        and row["validator"]["peak_rss_mb"] < TARGET_RSS_MB
        for row in rows
    )
    print(json.dumps({
        "name": "validate_throughput",
        "value": round(value, 1),
        "unit": "MB/s",
        "baseline": round(baseline, 1),
        "ratio": round(value / baseline, 3),
        "peak_rss_mb": peak,
        "per_size": per_size,
        "json_decoder": "pydantic_core.from_json (jiter)",
        "targets": {"ratio": TARGET_RATIO, "peak_rss_mb": TARGET_RSS_MB},
        "targets_met": targets_met,
    }))


if __name__ == "__main__":
    main()
