"""Fine-tuning: base models, the OpenAI-compatible jobs API, the scheduler and the bookkeeping of what
GPU workers report (docs/job-protocol.md)."""
