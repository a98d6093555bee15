"""LlamaCppRerank: a llama.cpp cross-encoder (rank pooling) as a LlamaIndex node postprocessor."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
from pydantic import Field, PrivateAttr

from ..errors import PoolingError
from .gguf import (
    gguf_pooling,
    is_cross_encoder,
    read_embedding_tables,
    read_metadata,
    resolve_model_path,
    tensor_names,
)
from .options import GpuOptions, WeightsOption
from .runtime import LlamaRunner, load_once, runner_for
from .weights import model_file

__all__ = ["LlamaCppRerank"]

_POSITIVE_LABELS = ("yes", "relevant", "true", "positive", "label_1")
# llama.cpp applies a softmax inside the graph for these architectures' rank heads.
_PROBABILITY_HEADS = ("qwen3", "qwen3vl")


class LlamaCppRerank(BaseNodePostprocessor, GpuOptions, WeightsOption):
    """Rerank nodes with a GGUF cross-encoder, many (query, document) pairs per decode.

    ``scores="probability"`` (default) maps the classifier output into [0, 1]: a sigmoid for a
    one-logit head, a softmax over labels otherwise (the positive label's share), unchanged
    when llama.cpp's head already yields probabilities. ``scores="raw"`` keeps the logit.

    Documents longer than the context are cut from the end (the query always survives), as
    sentence-transformers does. For BERT cross-encoders (two token types), documents are fed
    as type 1, as in training and in Hugging Face's pair encoding; llama.cpp itself would use
    type 0 for every token. GPU offload: ``n_gpu_layers`` etc., as for LlamaCppEmbedding.
    """

    model_path: str = Field(description="Path of the GGUF cross-encoder.")
    top_n: int = Field(default=5, gt=0, description="Nodes kept after reranking.")
    scores: Literal["probability", "raw"] = Field(default="probability")
    keep_retrieval_score: bool = Field(
        default=False, description="Keep the first-stage score as metadata['retrieval_score']."
    )
    token_types: bool | None = Field(
        default=None, description="Give document tokens type 1; None: when the model has them."
    )
    max_length: int | None = Field(default=None, description="Pair token limit; the context.")
    batch_tokens: int = Field(default=512, gt=0)
    n_contexts: int = Field(default=2, gt=0)
    n_threads: int | None = Field(default=None)
    flash_attn: bool = Field(default=True)

    _runner: LlamaRunner | None = PrivateAttr(default=None)
    _tables: tuple[np.ndarray, np.ndarray] | None = PrivateAttr(default=None)
    _llm: Any = PrivateAttr(default=None)
    _load_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, model: str | os.PathLike[str] | Any = None, **kwargs: Any) -> None:
        llm = None
        if model is None:
            model = os.environ.get("CRAB_RERANK_MODEL")
        if model is None:
            raise TypeError(
                "LlamaCppRerank needs a cross-encoder GGUF: pass its path, e.g. "
                "LlamaCppRerank('bge-reranker-v2-m3-q4_k_m.gguf'), or 'owner/repo:file.gguf', "
                "or set CRAB_RERANK_MODEL (the project bundles no reranker worth using)"
            )
        if isinstance(model, (str, os.PathLike)):
            path = resolve_model_path(model)
            _refuse_non_cross_encoder(path)
            path = model_file(path, kwargs.get("weights", "auto"))
        else:
            model_file(None, kwargs.get("weights", "auto"))
            llm, path = model, Path(model.model_path)
        super().__init__(model_path=str(path), **kwargs)  # type: ignore[call-arg]
        self._llm = llm

    @classmethod
    def class_name(cls) -> str:
        return "LlamaCppRerank"

    @property
    def runner(self) -> LlamaRunner:
        """The loaded llama.cpp model (loaded on first access)."""
        return load_once(self, self._load)

    def _load(self) -> LlamaRunner:
        runner = runner_for(self, "rank")
        if runner.pooling != "rank":
            runner.close()
            raise PoolingError(
                f"this llama_cpp.Llama uses {runner.pooling!r} pooling; a cross-encoder needs "
                "rank pooling (Llama(..., embedding=True, pooling_type=LLAMA_POOLING_TYPE_RANK)), "
                "otherwise its scores are garbage"
            )
        path = Path(self.model_path)
        # Reading the tables parses the whole GGUF: only for models with two token types.
        types = read_metadata(path).get("tokenizer.ggml.token_type_count", 2)
        if self.token_types is not False and runner.info.rerank_template is None and types != 1:
            self._tables = read_embedding_tables(path)
        return runner

    def close(self) -> None:
        """Free the llama.cpp model; the next call loads it again."""
        if self._runner is not None:
            self._runner.close()
        self._runner = None
        self._tables = None

    # -- scoring ------------------------------------------------------------------------

    def score(self, query: str, documents: list[str]) -> list[float]:
        """One score per document, in input order."""
        return self.score_pairs([(query, doc) for doc in documents], query=query)

    def score_pairs(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        scores: Literal["probability", "raw"] | None = None,
        query: str | None = None,
    ) -> list[float]:
        """One score per (query, document) pair, in input order: pairs of several queries
        share decodes. ``scores`` overrides the model's ``scores`` setting."""
        for q in {q for q, _ in pairs} if query is None else {query}:
            if not isinstance(q, str) or not q.strip():
                raise ValueError(
                    "a non-empty query is needed to rerank; pass query_str or a QueryBundle"
                )
        if not pairs:
            return []
        runner = self.runner
        by_query: dict[str, list[int]] = {}
        for i, (q, _) in enumerate(pairs):
            by_query.setdefault(q, []).append(i)
        built: list[tuple[list[int], int, bool]] = [([], 0, False)] * len(pairs)
        for q, where in by_query.items():  # the query side is tokenized once per query
            for i, pair in zip(where, self._pairs(runner, q, [pairs[i][1] for i in where])):
                built[i] = pair
        seqs = [seq for seq, _, _ in built]
        embeds = None
        if self._tables is not None:
            embeds = [self._embed_with_types(seq, n_b) for seq, n_b, _ in built]
        raw = runner.run(seqs, embeds=embeds)
        return [self._to_score(runner, r, scores or self.scores) for r in raw]

    def rerank(self, query: str, documents: list[str]) -> list[tuple[int, float]]:
        """(index, score) of every document, best first, like llama.cpp's rerank."""
        scores = self.score(query, documents)
        return sorted(enumerate(scores), key=lambda item: -item[1])

    @property
    def pair_format(self) -> str:
        """How (query, document) pairs are fed and scored, read from the GGUF."""
        meta = read_metadata(Path(self.model_path))
        if "tokenizer.chat_template.rerank" in meta:
            return "pairs in the GGUF's rerank template, score P(yes)"
        if int(str(meta.get("tokenizer.ggml.token_type_count", 1))) >= 2:
            return "BERT pairs with token types, score sigmoid(logit)"
        return "pairs without token types (RoBERTa/XLM-R), score sigmoid(logit)"

    def tokenize_pair(self, query: str, document: str) -> list[int]:
        """The token ids the model sees for one (query, document) pair."""
        return self._pair(self.runner, query, document)[0]

    def _pair(self, runner: LlamaRunner, query: str, doc: str) -> tuple[list[int], int, bool]:
        """One pair's tokens; see :meth:`_pairs`."""
        return self._pairs(runner, query, [doc])[0]

    def _pairs(
        self, runner: LlamaRunner, query: str, docs: list[str]
    ) -> list[tuple[list[int], int, bool]]:
        """Pair tokens as llama.cpp's server builds them, each document cut to fit.

        Returns, per document, (tokens, number of trailing tokens that form segment B,
        truncated?). The query side is tokenized once for all documents.
        """
        info = runner.info
        limit = runner.max_length
        if info.rerank_template is not None:
            before, _, after = info.rerank_template.replace("{query}", query).partition(
                "{document}"
            )
            # The document is tokenized with the text before it, as the model's own recipe
            # and llama.cpp's server do: a BPE word keeps the space in front of it.
            post = runner.tokenize(after, special=True)
            room = max(0, limit - len(post))
            out = []
            for doc in docs:
                ids = runner.tokenize(before + doc, special=True)
                out.append((ids[:room] + post, 0, len(ids) > room))
            return out
        eos = info.eos if info.eos >= 0 else info.sep
        head = [info.bos] if info.add_bos else []
        q_end = [eos] if info.add_eos else []
        sep = [info.sep] if info.add_sep else []
        tail = [eos] if info.add_eos else []
        fixed = len(head) + len(q_end) + len(sep) + len(tail)
        q = runner.tokenize(query)[: (limit - fixed) // 2]
        seg_a = head + q + q_end + sep
        room = limit - fixed - len(q)
        out = []
        for doc in docs:
            d = runner.tokenize(doc)
            seg_b = d[:room] + tail
            out.append((seg_a + seg_b, len(seg_b), len(d) > room))
        return out

    def _embed_with_types(self, seq: list[int], n_type1: int) -> np.ndarray:
        assert self._tables is not None
        tok, types = self._tables
        rows = tok[seq]
        # llama.cpp's BERT graph adds the type-0 row to every token; shift segment B to type 1.
        if n_type1:
            rows[len(seq) - n_type1 :] += types[1] - types[0]
        return rows

    def _to_score(self, runner: LlamaRunner, raw: np.ndarray, scores: str) -> float:
        if raw.size == 1:
            value = float(raw[0])
            return value if scores == "raw" else float(1.0 / (1.0 + np.exp(-value)))
        positive = _positive_index(runner)
        if runner.info.arch in _PROBABILITY_HEADS or scores == "raw":
            return float(raw[positive])
        exp = np.exp(raw - raw.max())
        return float(exp[positive] / exp.sum())

    # -- LlamaIndex interface -----------------------------------------------------------

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("reranking needs a query; pass query_str or a QueryBundle")
        if not nodes:
            return []
        with self.callback_manager.event(
            CBEventType.RERANKING,
            payload={
                EventPayload.NODES: nodes,
                EventPayload.MODEL_NAME: Path(self.model_path).name,
                EventPayload.QUERY_STR: query_bundle.query_str,
                EventPayload.TOP_K: self.top_n,
            },
        ) as event:
            ranked = self.rerank_nodes(query_bundle.query_str, nodes)
            event.on_end(payload={EventPayload.NODES: ranked})
        return ranked

    def rerank_nodes(
        self,
        query: str,
        nodes: list[NodeWithScore],
        top_n: int | None = None,
        score: Callable[[str, list[str]], list[float]] | None = None,
    ) -> list[NodeWithScore]:
        """Score ``nodes`` against ``query`` (their embed-mode content) and return them best
        first, at most ``top_n`` (default: the ``top_n`` field). The scores replace the nodes'
        own; the first-stage score is kept as ``metadata['retrieval_score']`` when
        ``keep_retrieval_score`` is set. ``score``: what scores them instead of
        :meth:`score` (a server batching the pairs of many requests)."""
        if not nodes:
            return []
        texts = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
        for node, value in zip(nodes, (score or self.score)(query, texts)):
            if self.keep_retrieval_score:
                node.node.metadata["retrieval_score"] = node.score
            node.score = value
        ranked = sorted(nodes, key=lambda n: -(n.score or 0.0))
        return ranked[: self.top_n if top_n is None else top_n]


def _positive_index(runner: LlamaRunner) -> int:
    import llama_cpp

    n = runner.info.n_cls_out
    labels = []
    for i in range(n):
        raw = llama_cpp.llama_model_cls_label(runner._model, i)
        labels.append(raw.decode().lower() if raw else "")
    for name in _POSITIVE_LABELS:
        if name in labels:
            return labels.index(name)
    return 0 if runner.info.arch in _PROBABILITY_HEADS else n - 1


def _refuse_non_cross_encoder(path: Path) -> None:
    pooling = gguf_pooling(path)
    if is_cross_encoder(path):
        return
    if pooling != "rank":
        declared = pooling or "no"
        raise PoolingError(
            f"{path.name!r} declares {declared!r} pooling, not rank: it is not a cross-encoder "
            "(scoring pairs with it returns garbage); use LlamaCppEmbedding for embedding "
            "models, or a reranker GGUF converted with its classifier head"
        )
    if not any(name.startswith("cls.") for name in tensor_names(path)):
        raise PoolingError(
            f"{path.name!r} declares rank pooling but has no classifier head (cls.* tensors); "
            "convert the reranker again keeping its classification head"
        )
