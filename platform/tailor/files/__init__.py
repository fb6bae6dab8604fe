"""Uploaded files: the OpenAI-compatible Files API, streaming uploads and dataset validation."""
