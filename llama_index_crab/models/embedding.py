"""LlamaCppEmbedding: a LlamaIndex BaseEmbedding backed by llama.cpp, many texts per decode."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from pydantic import Field, PrivateAttr

from ..errors import PoolingError, TruncationWarning
from .gguf import (
    POOLINGS,
    file_identity,
    gguf_pooling,
    is_cross_encoder,
    read_metadata,
    resolve_model_path,
)
from .options import GpuOptions, WeightsOption
from .prompts import Prompts, prompts_for
from .runtime import LlamaRunner, load_once, runner_for
from .weights import model_file

if TYPE_CHECKING:
    from ..store.collections import EmbeddingIdentity

__all__ = ["LlamaCppEmbedding"]

_log = logging.getLogger("llama_index_crab")


class LlamaCppEmbedding(BaseEmbedding, GpuOptions, WeightsOption):
    """Embeddings from a GGUF model through llama.cpp, L2-normalised by default.

    ``model`` is a path to a .gguf file, a Hugging Face spec (``owner/repo:file.gguf``), or a
    ``llama_cpp.Llama`` created with ``embedding=True``; none gives the project's default
    embedder (``CRAB_EMBED_MODEL``, else the bundled all-MiniLM-L6-v2). The model loads on
    first use. Queries and documents get the prompts the model's family was trained with
    (``query: ``/``passage: `` for E5, BGE's query instruction, ...), read from the GGUF's
    name; ``query_prefix``/``text_prefix`` replace them, ``""`` turns them off.
    Empty or whitespace-only texts raise ``ValueError`` unless ``allow_empty=True``, which
    embeds them as the bare start/end tokens, as sentence-transformers does.
    ``n_gpu_layers`` (-1: all), ``main_gpu``, ``split_mode`` and ``tensor_split`` offload the
    model to a GPU, as in llama-cpp-python; a CPU build ignores them.
    """

    model_path: str = Field(description="Path of the GGUF file.")
    pooling: str | None = Field(
        default=None, description="none, mean, cls or last; None reads the GGUF's own pooling."
    )
    normalize: bool = Field(default=True, description="L2-normalise, so dot product == cosine.")
    add_start_token: bool = Field(default=True, description="Prepend the model's BOS/[CLS] token.")
    query_prefix: str | None = Field(
        default=None, description="Prepended to queries; None: the family's (from the GGUF)."
    )
    text_prefix: str | None = Field(
        default=None, description="Prepended to documents; None: the family's (from the GGUF)."
    )
    truncate: bool = Field(default=True, description="Cut over-long texts (with a warning).")
    allow_empty: bool = Field(default=False, description="Embed empty texts instead of raising.")
    max_length: int | None = Field(default=None, description="Token limit; the model's context.")
    batch_tokens: int = Field(
        default=512, gt=0, description="Token budget of one llama.cpp decode."
    )
    n_contexts: int = Field(
        default=2, gt=0, description="llama.cpp contexts decoding side by side."
    )
    n_threads: int | None = Field(default=None, description="CPU threads; None uses all cores.")
    flash_attn: bool = Field(default=True, description="Flash attention (about 2x faster on CPU).")
    embed_batch_size: int = Field(default=256, gt=0, le=2048)

    _runner: LlamaRunner | None = PrivateAttr(default=None)
    _token_runner: LlamaRunner | None = PrivateAttr(default=None)
    _llm: Any = PrivateAttr(default=None)
    _load_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _prompts: Prompts = PrivateAttr(default=Prompts("none"))

    def __init__(self, model: str | os.PathLike[str] | Any = None, **kwargs: Any) -> None:
        llm = source = None
        if model is None:
            from ..pipeline import default_embed_model

            model = default_embed_model()
        if isinstance(model, (str, os.PathLike)):
            source = resolve_model_path(model)
            path = model_file(source, kwargs.get("weights", "auto"))
        else:
            model_file(None, kwargs.get("weights", "auto"))
            llm, path = model, Path(model.model_path)
            kwargs.setdefault("pooling", None)
        kwargs.setdefault("model_name", path.name)
        super().__init__(model_path=str(path), **kwargs)  # type: ignore[call-arg]
        self._llm, self._source = llm, source
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of none, mean, cls, last; got {self.pooling!r}")
        if self.pooling == "rank" or (
            self.pooling is None and llm is None and is_cross_encoder(path)
        ):
            raise PoolingError(
                f"{path.name!r} is a cross-encoder (rank pooling): it scores (query, document) "
                "pairs and gives no text embeddings; load it with LlamaCppRerank instead"
            )
        self._prompts = self._choose_prompts(path)
        self.query_prefix, self.text_prefix = self._prompts.query, self._prompts.text

    def _choose_prompts(self, path: Path) -> Prompts:
        meta = read_metadata(path) if path.exists() else {}
        family = prompts_for(
            *(str(meta.get(k, "")) for k in ("general.name", "general.basename")),
            str(meta.get("general.architecture", "")),
            path.stem,
        )
        if self.query_prefix is None and self.text_prefix is None:
            return family
        return Prompts(
            family.family if self.query_prefix is None or self.text_prefix is None else "custom",
            family.query if self.query_prefix is None else self.query_prefix,
            family.text if self.text_prefix is None else self.text_prefix,
        )

    @property
    def prompts(self) -> Prompts:
        """The query and document prompts in use, and the family they were chosen for."""
        return self._prompts

    @classmethod
    def class_name(cls) -> str:
        return "LlamaCppEmbedding"

    # -- model lifecycle ----------------------------------------------------------------

    @property
    def runner(self) -> LlamaRunner:
        """The loaded llama.cpp model (loaded on first access)."""
        return load_once(self, self._load)

    def _load(self) -> LlamaRunner:
        runner = runner_for(self, self.pooling)
        if runner.pooling == "rank":
            runner.close()
            raise PoolingError(
                "this llama_cpp.Llama uses rank pooling (a cross-encoder); "
                "use LlamaCppRerank for it"
            )
        p = self._prompts
        if p.query or p.text:
            _log.info(
                "%s: %s prompts, query %r, document %r (query_prefix/text_prefix change them)",
                Path(self.model_path).name,
                p.family,
                p.query,
                p.text,
            )
        return runner

    @property
    def dimension(self) -> int:
        """Length of the vectors this model produces (read from the GGUF, no model load)."""
        if self._llm is not None:
            return self.runner.info.n_embd
        meta = read_metadata(Path(self.model_path))
        return int(str(meta[f"{meta['general.architecture']}.embedding_length"]))

    @property
    def resolved_pooling(self) -> str:
        """The pooling in use: the one asked for, else the GGUF's own (mean if it has none)."""
        if self._llm is not None or self._runner is not None:
            return self.runner.pooling
        if self.pooling is not None:
            return self.pooling
        declared = gguf_pooling(Path(self.model_path))
        return declared if declared not in (None, "rank") else "mean"

    def identity(self) -> EmbeddingIdentity:
        """What a collection records about this model, so other models' vectors are refused."""
        from ..store.collections import EmbeddingIdentity

        return EmbeddingIdentity(
            model=file_identity(self.identity_file()),
            dimension=self.dimension,
            pooling=self.resolved_pooling,
            query_prefix=self._prompts.query,
            text_prefix=self._prompts.text,
        )

    def close(self) -> None:
        """Free the llama.cpp model and contexts; the next call loads them again."""
        for runner in (self._runner, self._token_runner):
            if runner is not None:
                runner.close()
        self._runner = self._token_runner = None

    def __enter__(self) -> LlamaCppEmbedding:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- embedding ----------------------------------------------------------------------

    def embed(self, texts: list[str], *, prefix: str | None = "") -> np.ndarray:
        """Embed ``texts`` (in as few llama.cpp decodes as possible) into an (n, dim) array."""
        runner = self.runner
        if runner.pooling == "none":
            raise PoolingError(
                "pooling 'none' gives one vector per token; call get_token_embeddings(), "
                "or choose pooling='mean', 'cls' or 'last' for one vector per text"
            )
        if not texts:
            return np.zeros((0, runner.info.n_embd), dtype=np.float32)
        vectors = np.stack(runner.run(self._encode(runner, texts, prefix)))
        self._check(vectors, runner)
        if self.normalize:
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors

    def get_token_embeddings(self, text: str, *, normalize: bool = False) -> np.ndarray:
        """Token-level output (pooling none): an (n_tokens, dim) matrix, one row per token."""
        return self.get_token_embeddings_batch([text], normalize=normalize)[0]

    def get_token_embeddings_batch(
        self, texts: list[str], *, normalize: bool = False
    ) -> list[np.ndarray]:
        """Token-level matrices for many texts, batched like :meth:`embed`."""
        if self._token_runner is None:
            if self._llm is None and self.pooling != "none":
                self._token_runner = runner_for(self, "none", n_contexts=1)
            else:
                self._token_runner = self.runner
        runner = self._token_runner
        mats = runner.run(self._encode(runner, texts, self.text_prefix), token_level=True)
        if normalize:
            mats = [m / np.linalg.norm(m, axis=1, keepdims=True) for m in mats]
        return mats

    @property
    def text_room(self) -> int:
        """Tokens of text one sequence holds: the context less the start and end tokens."""
        return self._text_room(self.runner)

    def _text_room(self, runner: LlamaRunner) -> int:
        head = runner.info.head if self.add_start_token else ()
        return runner.max_length - len(head) - len(self._tail(runner))

    def _tail(self, runner: LlamaRunner) -> list[int]:
        info = runner.info
        if runner.pooling == "last" and not info.tail and info.eos >= 0:
            # Last-token models (Qwen3-Embedding, gte-Qwen2, e5-mistral) were trained with
            # the end token appended, which GGUFs made before llama.cpp read the
            # tokenizer's post-processor do not ask for.
            return [info.eos]
        return list(info.tail)

    def tokenize(self, text: str, *, query: bool = False) -> list[int]:
        """The token ids the model sees for ``text`` (as a query: with the query prompt),
        start and end tokens included."""
        prefix = (self.query_prefix if query else self.text_prefix) or ""
        return self._encode(self.runner, [text], prefix)[0]

    def _encode(self, runner: LlamaRunner, texts: list[str], prefix: str | None) -> list[list[int]]:
        info = runner.info
        prefix = prefix or ""
        head = list(info.head) if self.add_start_token else []
        tail = self._tail(runner)
        room = self._text_room(runner)
        seqs: list[list[int]] = []
        cut: list[int] = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"text {i} is {type(text).__name__}, expected str")
            if not text.strip() and not self.allow_empty:
                raise ValueError(
                    f"text {i} is empty or whitespace-only ({text!r}); remove it, "
                    "or pass allow_empty=True to embed it as the bare start/end tokens"
                )
            body = runner.tokenize(prefix + text) if (prefix + text).strip() else []
            if len(body) > room:
                cut.append(i)
                body = body[:room]
            seq = head + body + tail
            if not seq:
                raise ValueError(f"text {i} gives no tokens for this model; pass a non-empty text")
            seqs.append(seq)
        if cut:
            where = f"texts {cut[:10]}" + (" ..." if len(cut) > 10 else "")
            message = f"{len(cut)} text(s) longer than {runner.max_length} tokens ({where})"
            if not self.truncate:
                from ..errors import InputTooLongError

                raise InputTooLongError(f"{message}; split them or pass truncate=True")
            warnings.warn(f"{message} were truncated to fit the model", TruncationWarning, 3)
        return seqs

    def _check(self, vectors: np.ndarray, runner: LlamaRunner) -> None:
        with np.errstate(all="ignore"):
            norms = np.linalg.norm(vectors, axis=1)
        bad = np.flatnonzero(~np.isfinite(norms) | (norms < 1e-6))
        if bad.size:
            what = "NaN" if not np.isfinite(norms[bad[0]]) else "an all-zero vector"
            declared = runner.info.gguf_pooling or "no pooling"
            raise PoolingError(
                f"pooling {runner.pooling!r} produced {what} for text {int(bad[0])}; the GGUF "
                f"declares {declared!r}. Leave pooling unset to use the model's own, or try "
                "pooling='mean'"
            )

    # -- LlamaIndex interface -----------------------------------------------------------

    def _get_query_embedding(self, query: str) -> Embedding:
        return self.embed([query], prefix=self.query_prefix)[0].tolist()  # type: ignore[no-any-return]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self.embed([text], prefix=self.text_prefix)[0].tolist()  # type: ignore[no-any-return]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self.embed(texts, prefix=self.text_prefix).tolist()  # type: ignore[no-any-return]

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)
