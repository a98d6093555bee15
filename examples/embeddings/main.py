"""Embeddings: one text in, one L2-normalised vector out (the seed's first example)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from llama_index_crab import LlamaCppEmbedding

MODEL = Path(__file__).resolve().parents[2] / "models" / "all-MiniLM-L6-v2-q8_0.gguf"
text = " ".join(sys.argv[1:]) or "llama.cpp embeddings, stored in PostgreSQL."

with LlamaCppEmbedding(MODEL) as model:
    vector = np.array(model.get_text_embedding(text))
    print(f"model:     {model.model_name} (pooling {model.runner.pooling}, dim {model.dimension})")
    print(f"text:      {text!r}")
    print(f"vector:    [{', '.join(f'{x:.4f}' for x in vector[:6])}, ...]")
    print(f"L2 norm:   {np.linalg.norm(vector):.6f}")

    tokens = model.get_token_embeddings(text)  # pooling none: one row per token
    print(f"per token: {tokens.shape[0]} rows x {tokens.shape[1]}")
