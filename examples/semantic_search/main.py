"""Semantic search: embed the bundled Python-reference corpus, rank passages by cosine."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from llama_index_crab import LlamaCppEmbedding

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "all-MiniLM-L6-v2-q8_0.gguf"
CORPUS = ROOT / "examples" / "corpus" / "python-reference"
QUERIES = sys.argv[1:] or [
    "How do I run cleanup code when a block exits?",
    "What does the yield keyword do?",
    "How are exceptions re-raised?",
]

passages = [
    (path.stem, para.strip())
    for path in sorted(CORPUS.glob("*.md"))
    for para in path.read_text().split("\n\n")
    if len(para.split()) >= 8
]
with LlamaCppEmbedding(MODEL) as model:
    start = time.perf_counter()
    vectors = model.embed([text for _, text in passages])
    seconds = time.perf_counter() - start
    print(f"embedded {len(passages)} passages in {seconds:.1f} s ({len(passages) / seconds:.0f}/s)")
    for query in QUERIES:
        scores = vectors @ np.array(model.get_query_embedding(query))  # unit vectors: dot == cosine
        print(f"\n{query}")
        for i in np.argsort(-scores)[:3]:
            topic, text = passages[i]
            print(f"  {scores[i]:.3f}  [{topic}] {' '.join(text.split())[:90]}")
