#!/usr/bin/env bash
# GPU check: gpu_runner against a plain TRL QLoRA script on one H200-class GPU, with no network.
#
# Builds a ~1B-parameter Llama-shaped model from a config (random weights, hidden 2048, 16 layers, GQA
# 32/8 heads, MLP 8192, the tiny model's 3k-token vocabulary; nothing downloaded), a chat dataset of
# 30 x 8 examples with log-normal lengths (20..1024 tokens), then runs bench/train_throughput.py in its
# cuda mode: 30 QLoRA steps (batch 8, NF4 double-quantized base, bf16 compute, LoRA r=16 on all linear
# layers) with gpu_runner, gpu_runner with packing, and the plain TRL script. Prints tokens/s, peak GPU
# memory (torch's max allocated and nvidia-smi's memory.used) and MFU, last line one JSON object.
#
# MFU = tokens/s (after step 1) x (6 N + 12 L H S) / 989e12, N = matmul parameters (linear layers and
# output head), L layers, H hidden size, S = sum(len^2) / sum(len) over the examples; 989 TFLOP/s is the
# H100/H200 SXM dense bf16 peak (override with PEAK_TFLOPS).
#
# Budget: 8 minutes on an H200. Usage, from anywhere:
#   bench/gpu_check.sh                      # PYTHON defaults to .venv/bin/python, else python3
#   STEPS=30 KEEP=1 bench/gpu_check.sh --arms gpu_runner,plain_trl
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
STEPS="${STEPS:-30}"
PEAK_TFLOPS="${PEAK_TFLOPS:-989}"
BUDGET_S="${BUDGET_S:-470}"

if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu_check: nvidia-smi not found; this check needs an NVIDIA GPU (run bench/train_throughput.py on CPU)" >&2
  exit 2
fi
if ! nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; then
  echo "gpu_check: nvidia-smi cannot talk to a GPU" >&2
  exit 2
fi
if ! "$PYTHON" - <<'EOF'
import sys
import torch
ok = torch.cuda.is_available()
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, device: {torch.cuda.get_device_name(0) if ok else 'none'}")
missing = []
for name in ("transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets", "pydantic"):
    try:
        __import__(name)
    except ImportError:
        missing.append(name)
if missing:
    print(f"missing packages: {', '.join(missing)} (pip install -e '.[train]')", file=sys.stderr)
sys.exit(0 if ok and not missing else 1)
EOF
then
  echo "gpu_check: $PYTHON has no CUDA-enabled torch or lacks the training stack" >&2
  exit 2
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/tailor-gpu-check.XXXXXX")"
cleanup() {
  if [[ "${KEEP:-0}" == "1" ]]; then echo "gpu_check: kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HOME="$WORK/hf-home"
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

# Each arm gets at most 150 s; the whole check is cut at BUDGET_S so it always reports inside 8 minutes.
timeout --signal=TERM --kill-after=15 "$BUDGET_S" \
  "$PYTHON" bench/train_throughput.py --device cuda --model-size 1b --steps "$STEPS" \
  --peak-tflops "$PEAK_TFLOPS" --timeout 150 --workdir "$WORK/bench" "$@"
