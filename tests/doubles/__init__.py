"""Protocol-faithful doubles of the inference servers Tailor pushes adapters to: real HTTP servers on
127.0.0.1 that answer the way vLLM (`tests.doubles.vllm.VLLMDouble`) and Ollama
(`tests.doubles.ollama.OllamaDouble`) do according to their public sources: the same routes, status codes,
bodies, error envelopes and messages, including where they changed between releases (a knob picks one).

    with VLLMDouble(max_lora_rank=64) as vllm:
        VLLMClient(vllm.url).load("ft:…", "/adapters/x")
        assert vllm.requests[-1]["body"]["lora_name"] == "ft:…"
"""
