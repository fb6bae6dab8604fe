"""Tailor's data plane: job spec, dataset formats, object store, training, events, dev server. Django-free."""
