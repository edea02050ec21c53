"""Evaluation: perplexity and bits per byte, multiple-choice log-likelihood and generation tasks (stages/evaluate.py)."""
