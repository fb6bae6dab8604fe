"""Data shipped with the tiny model: fact tables, question bank, pretraining corpus and the fine-tuning task."""
