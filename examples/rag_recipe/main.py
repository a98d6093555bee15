"""RAG with LlamaIndex: llama.cpp embeddings + pgvector store (+ a reranker) + a local chat model.

Uses $CRAB_DATABASE_URL, or starts the embedded PostgreSQL when it is unset. A reranker
reranks only when you give a real one in $CRAB_RERANK_MODEL (the bundled one is a toy).
SmolLM2-135M is small: for answers that stay on their sources, give the engine
`response_synthesizer=ExtractiveSynthesizer(embed_model)` instead of the LLM (what
`crab ask` and `build_pipeline().as_query_engine()` do: quoted sentences, cited).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from llama_index.core import SimpleDirectoryReader, StorageContext, VectorStoreIndex
from llama_index.core.node_parser import SentenceSplitter

from llama_index_crab import LlamaCppChat, LlamaCppEmbedding, LlamaCppRerank, PostgresVectorStore
from llama_index_crab.pipeline import resolve_database_url

ROOT = Path(__file__).resolve().parents[2]
TOPICS = ["with", "try", "yield", "for", "import", "class"]
question = " ".join(sys.argv[1:]) or "What does the with statement do?"

embed_model = LlamaCppEmbedding(ROOT / "models" / "all-MiniLM-L6-v2-q8_0.gguf")
store = PostgresVectorStore(resolve_database_url(), "rag_recipe", identity=embed_model.identity())
store.create_collection(exist_ok=True)
store.clear()

files = [str(ROOT / "examples" / "corpus" / "python-reference" / f"{t}.md") for t in TOPICS]
documents = SimpleDirectoryReader(input_files=files).load_data()
for document in documents:  # the reader's paths, sizes and dates are not content
    document.excluded_embed_metadata_keys = list(document.metadata)
    document.excluded_llm_metadata_keys = list(document.metadata)
index = VectorStoreIndex.from_documents(
    documents,
    storage_context=StorageContext.from_defaults(vector_store=store),
    embed_model=embed_model,
    transformations=[SentenceSplitter(chunk_size=256, chunk_overlap=32)],  # fits MiniLM's 512
)
reranker = os.environ.get("CRAB_RERANK_MODEL")
engine = index.as_query_engine(
    similarity_top_k=20 if reranker else 3,
    node_postprocessors=[LlamaCppRerank(reranker, top_n=3)] if reranker else [],
    llm=LlamaCppChat(max_tokens=128),
)
response = engine.query(question)
print(f"question: {question}\nanswer: {str(response).strip()}\nsources:")
for node in response.source_nodes:
    print(f"  {node.score:.3f} {node.node.metadata['file_name']}")
store.close()
