"""The development serving endpoint: one transformers base model and many PEFT LoRA adapters behind vLLM's
LoRA management API and OpenAI's chat/completions API.

It is Tailor's embedded default endpoint and the way tests prove that an adapter loads and changes what
the model says. It serves one request at a time on CPU or one GPU; production serving is vLLM's job.

    python -m gpu_runner serve --model var/models/tailor-tiny --served-model-name tailor-tiny
    tailor serve --model DIR --served-model-name NAME [--lora-modules name=path …]

Importing this package is cheap: torch, transformers, peft, FastAPI and uvicorn load when a server starts.
"""

from __future__ import annotations

from gpu_runner.serve.cli import main

__all__ = ["main"]
