"""Pretraining corpus of the tiny model: hand-written prose plus files generated from the fact tables."""
