"""Retrieve then rerank: the bi-encoder finds candidates, the cross-encoder orders them."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from llama_index_crab import LlamaCppEmbedding, LlamaCppRerank

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "examples" / "corpus" / "python-reference"
query = " ".join(sys.argv[1:]) or "What happens when a with block exits?"

TOPICS = ["with", "try", "for", "while", "if", "yield", "import", "class", "function", "raise"]
passages = [
    p.strip()
    for topic in TOPICS
    for p in (CORPUS / f"{topic}.md").read_text().split("\n\n")
    if 8 <= len(p.split()) <= 300
]
with LlamaCppEmbedding(ROOT / "models" / "all-MiniLM-L6-v2-q8_0.gguf") as embedder:
    scores = embedder.embed(passages) @ np.array(embedder.get_query_embedding(query))
candidates = [passages[i] for i in np.argsort(-scores)[:20]]  # stage 1: top 20 by cosine

reranker = LlamaCppRerank(ROOT / "models" / "minilm-toy-reranker-q8_0.gguf")
print(f"query: {query}")
for rank, (i, score) in enumerate(reranker.rerank(query, candidates)[:5], 1):  # stage 2
    print(f"{rank}. {score:.3f}  {' '.join(candidates[i].split())[:100]}")
reranker.close()
