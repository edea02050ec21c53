"""Fuzz targets for the model-side files: fine-tuning data, checkpoints, token shards, tokenizers, GGUF."""

from __future__ import annotations
