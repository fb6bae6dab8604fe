"""Pushing adapters to inference endpoints: clients for vLLM's runtime LoRA API and Ollama's model API,
the compatibility gate run before any push, verified delivery of adapter folders, and the smoke request.

Django-free and torch-free (httpx and the standard library), so the control plane, its workers and the
endpoint agent beside a vLLM server all use the same code:

- `gpu_runner.endpoints.errors`: `EndpointError` (transient or permanent, HTTP status, reason code).
- `gpu_runner.endpoints.compat`: `check_compatibility(...) -> list[Incompatibility]`.
- `gpu_runner.endpoints.vllm`: `VLLMClient` (load, unload, models, health).
- `gpu_runner.endpoints.ollama`: `OllamaClient` (version, ensure_blob, create, tags, delete, health) and
  `ollama_model_name`.
- `gpu_runner.endpoints.smoke`: `smoke_chat`.
- `gpu_runner.endpoints.delivery`: `materialize`, `remove`.
"""
