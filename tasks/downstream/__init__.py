"""Downstream tasks (GLUE, SQuAD): registry, readers, tokenization into model inputs, span decoding."""
