"""Everything that touches llama_cpp: load, tokenize, batched decode, pooled outputs."""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EmbeddingModeError, ModelError
from . import bindings
from .batching import plan_batches
from .cpu import cpu_flags
from .gguf import (
    POOLINGS,
    file_identity,
    is_cross_encoder,
    pooling_name,
    pooling_number,
    resolve_model_path,
)
from .wordpiece import WordPiece

__all__ = [
    "SPLIT_MODES",
    "DecodeContext",
    "LlamaRunner",
    "ModelInfo",
    "gpu_settings",
    "install_log_callback",
    "load_once",
    "model_params",
    "runner_for",
]

_MAX_SEQS = 64
SPLIT_MODES = ("none", "layer", "row")  # llama_split_mode 0, 1, 2
_ALL_LAYERS = 0x7FFFFFFF  # what llama-cpp-python passes for n_gpu_layers=-1

_log = logging.getLogger("llama_index_crab.llama_cpp")
_log_callback: Any = None


def install_log_callback() -> None:
    """Route llama.cpp's logs to Python logging (DEBUG) instead of stderr. Set again on
    every call: importing the ``llama_cpp`` package later sets its own."""
    global _log_callback
    llama_cpp = bindings.llama_cpp()
    if _log_callback is None:

        @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
        def forward(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            if _log.isEnabledFor(logging.DEBUG):
                _log.debug(text.decode("utf-8", "replace").rstrip())

        _log_callback = forward
    llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))


@dataclass(frozen=True)
class ModelInfo:
    """What the rest of the package needs to know about a loaded model."""

    identity: str
    arch: str
    n_embd: int
    n_ctx_train: int
    gguf_pooling: str | None
    n_cls_out: int
    head: tuple[int, ...]
    tail: tuple[int, ...]
    bos: int
    eos: int
    sep: int
    add_bos: bool
    add_eos: bool
    add_sep: bool
    rerank_template: str | None
    wordpiece: bool
    path: Path | None
    classifier: bool = False
    lowercase: bool = True
    strip_accents: bool = True


def gpu_settings(
    n_gpu_layers: int = 0,
    main_gpu: int = 0,
    split_mode: str = "layer",
    tensor_split: list[float] | None = None,
) -> dict[str, Any]:
    """GPU offload settings as ``LlamaRunner(gpu=...)`` and llama-cpp-python's ``Llama(...)``
    take them (``split_mode`` by name: none, layer or row)."""
    return {
        "n_gpu_layers": n_gpu_layers,
        "main_gpu": main_gpu,
        "split_mode": SPLIT_MODES.index(split_mode),
        "tensor_split": tensor_split,
    }


def model_params(
    n_gpu_layers: int = 0,
    main_gpu: int = 0,
    split_mode: int = 1,
    tensor_split: Sequence[float] | None = None,
    *,
    defaults: Callable[[], Any] | None = None,
) -> tuple[Any, Any]:
    """``llama_model_params`` with the GPU settings, plus an object to keep alive while
    the model loads (the tensor-split array the params point to). ``defaults``: what makes
    llama.cpp's default params (default: ``llama_model_default_params``)."""
    llama_cpp = bindings.llama_cpp()

    params = (defaults or llama_cpp.llama_model_default_params)()
    params.use_extra_bufts = not _amx_cpu()
    params.n_gpu_layers = _ALL_LAYERS if n_gpu_layers == -1 else n_gpu_layers
    params.main_gpu = main_gpu
    params.split_mode = split_mode
    keep: Any = None
    if tensor_split:
        if len(tensor_split) > llama_cpp.LLAMA_MAX_DEVICES:
            raise ValueError(
                f"tensor_split has {len(tensor_split)} entries; this llama.cpp build "
                f"supports at most {llama_cpp.LLAMA_MAX_DEVICES} devices"
            )
        keep = (ctypes.c_float * llama_cpp.LLAMA_MAX_DEVICES)(*tensor_split)
        params.tensor_split = keep
    return params, keep


@functools.cache
def _amx_cpu() -> bool:
    """Whether the CPU reports Intel AMX. llama.cpp's AMX weight buffers then die with
    SIGILL on virtual machines that report AMX without enabling it, so on such CPUs the
    extra (repacked) weight buffers are turned off; other CPUs keep them."""
    return "amx_tile" in cpu_flags()


class DecodeContext:
    """One llama.cpp context plus a reusable batch whose arrays numpy fills."""

    def __init__(self, ctx: Any, n_tokens: int, n_embd_in: int) -> None:
        llama_cpp = bindings.llama_cpp()

        self.ctx = ctx
        self.capacity = n_tokens
        self.token = np.zeros(n_tokens, dtype=np.int32)
        self.pos = np.zeros(n_tokens, dtype=np.int32)
        self.n_seq = np.ones(n_tokens, dtype=np.int32)
        self.seq = np.zeros(n_tokens, dtype=np.int32)
        self.logits = np.ones(n_tokens, dtype=np.int8)
        self.embd = np.zeros((n_tokens, n_embd_in), dtype=np.float32)
        base = self.seq.ctypes.data
        self._seq_ptrs = (ctypes.POINTER(ctypes.c_int32) * n_tokens)(
            *[ctypes.cast(base + 4 * i, ctypes.POINTER(ctypes.c_int32)) for i in range(n_tokens)]
        )
        batch: Any = llama_cpp.llama_batch()
        batch.pos = self.pos.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        batch.n_seq_id = self.n_seq.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        batch.seq_id = ctypes.cast(self._seq_ptrs, ctypes.POINTER(ctypes.POINTER(ctypes.c_int32)))
        batch.logits = self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        self.batch = batch
        self._token_ptr = self.token.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        self._embd_ptr = self.embd.ctypes.data_as(ctypes.POINTER(ctypes.c_float))

    def fill(self, seqs: Sequence[Sequence[int]], embeds: Sequence[np.ndarray] | None) -> int:
        n = 0
        for s, toks in enumerate(seqs):
            k = len(toks)
            self.token[n : n + k] = toks
            self.pos[n : n + k] = np.arange(k, dtype=np.int32)
            self.seq[n : n + k] = s
            if embeds is not None:
                self.embd[n : n + k] = embeds[s]
            n += k
        self.batch.n_tokens = n
        use_embd = embeds is not None
        self.batch.token = None if use_embd else self._token_ptr
        self.batch.embd = self._embd_ptr if use_embd else None
        return n


class LlamaRunner:
    """A GGUF model with one or more llama.cpp contexts, decoding many sequences per call.

    Thread-safe: each call borrows a context from a pool, so two threads never share one.
    """

    def __init__(
        self,
        model: Any,
        *,
        pooling: str | None = None,
        batch_tokens: int = 512,
        max_length: int | None = None,
        n_threads: int | None = None,
        n_contexts: int = 1,
        flash_attn: bool = True,
        gpu: dict[str, Any] | None = None,
    ) -> None:
        llama_cpp = bindings.llama_cpp()

        install_log_callback()
        llama_cpp.llama_backend_init()
        self._own = not bindings.is_llama(model)
        self._lock = threading.Lock()
        self._wp: WordPiece | None = None
        self._closed = False
        self.decodes = 0  # llama_decode calls so far (a server reports how well it batches)
        if self._own:
            path = resolve_model_path(model)
            mparams, _keep = model_params(**(gpu or {}))  # _keep: alive while loading
            self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
            if not self._model:
                raise ModelError(
                    f"llama.cpp could not load {str(path)!r}; the file may be truncated or "
                    "of an architecture this llama.cpp build does not know"
                )
            self.info = _read_info(self._model, path)
        else:
            if not model.context_params.embeddings:
                raise EmbeddingModeError(
                    "embedding mode is not enabled on this llama_cpp.Llama; create it with "
                    "Llama(model_path=..., embedding=True) or pass the model path instead"
                )
            self._llm = model
            self._model = model.model
            self.info = _read_info(self._model, Path(model.model_path))
        self.pooling = self._choose_pooling(pooling, model)
        limit = self.info.n_ctx_train if self.info.n_ctx_train > 0 else 512
        self.max_length = min(max_length or limit, limit)
        self._contexts: queue.Queue[DecodeContext] = queue.Queue()
        if self._own:
            self.batch_tokens = batch_tokens
            ubatch = max(batch_tokens, self.max_length)
            self._threads = n_threads or os.cpu_count() or 1
            self._split = max(1, self._threads // max(1, n_contexts))
            for _ in range(max(1, n_contexts)):
                ctx = self._new_context(ubatch, self._threads, flash_attn)
                self._contexts.put(DecodeContext(ctx, ubatch, self.n_embd_in))
            self.n_seq_max = min(_MAX_SEQS, llama_cpp.llama_max_parallel_sequences())
        else:
            ctx = model.ctx
            ubatch = min(llama_cpp.llama_n_ubatch(ctx), llama_cpp.llama_n_batch(ctx))
            self.max_length = min(self.max_length, ubatch)
            self.batch_tokens = min(batch_tokens, ubatch)
            self.n_seq_max = llama_cpp.llama_n_seq_max(ctx)
            self._threads = self._split = 0
            self._contexts.put(DecodeContext(ctx, ubatch, self.n_embd_in))
        self.n_contexts = self._contexts.qsize()
        self._pool = ThreadPoolExecutor(self.n_contexts) if self.n_contexts > 1 else None

    @property
    def n_embd_in(self) -> int:
        llama_cpp = bindings.llama_cpp()

        return int(llama_cpp.llama_model_n_embd_inp(self._model))

    @property
    def n_out(self) -> int:
        """Floats per pooled sequence: n_cls_out for rank pooling, n_embd otherwise."""
        return self.info.n_cls_out if self.pooling == "rank" else self.info.n_embd

    def _choose_pooling(self, pooling: str | None, model: Any) -> str:
        llama_cpp = bindings.llama_cpp()

        if not self._own:
            return POOLINGS[llama_cpp.llama_pooling_type(model.ctx)]
        if pooling is None:
            if self.info.gguf_pooling is not None:
                return self.info.gguf_pooling
            if self.info.classifier:
                return "rank"  # converted cross-encoders often declare no pooling
            _log.warning(
                "%s declares no pooling; using mean pooling (pass pooling='cls', 'mean' or "
                "'last' if the model was trained with another)",
                self.info.path.name if self.info.path else self.info.arch,
            )
            return "mean"
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        return pooling

    def _new_context(self, ubatch: int, threads: int, flash_attn: bool) -> Any:
        llama_cpp = bindings.llama_cpp()

        p = llama_cpp.llama_context_default_params()
        p.n_ctx = p.n_batch = p.n_ubatch = ubatch
        p.n_seq_max = min(_MAX_SEQS, llama_cpp.llama_max_parallel_sequences())
        p.n_threads = p.n_threads_batch = threads
        p.embeddings = True
        p.pooling_type = pooling_number(self.pooling)
        p.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if flash_attn
            else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        p.kv_unified = True
        p.no_perf = True
        ctx = llama_cpp.llama_init_from_model(self._model, p)
        if not ctx:
            raise ModelError(f"llama.cpp could not create a context of {ubatch} tokens")
        return ctx

    # -- tokens -------------------------------------------------------------------------

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        """Word pieces of ``text`` without the model's start/end tokens."""
        if self.info.wordpiece and not special:
            return self._wordpiece()(text)
        return _tokenize(self._model, text, add_special=False, parse_special=special)

    def _wordpiece(self) -> WordPiece:
        """BERT's tokenizer over this vocabulary, built on first use (see :mod:`.wordpiece`)."""
        if self._wp is None:
            with self._lock:
                if self._wp is None:
                    info = self.info
                    self._wp = WordPiece(self._model, info.lowercase, info.strip_accents)
        return self._wp

    # -- decoding -----------------------------------------------------------------------

    def run(
        self,
        seqs: Sequence[Sequence[int]],
        *,
        token_level: bool = False,
        embeds: Sequence[np.ndarray] | None = None,
    ) -> list[np.ndarray]:
        """Decode token sequences in as few llama.cpp calls as the budget allows.

        Returns, in input order, one pooled vector per sequence, or with ``token_level``
        (pooling none) one (n_tokens, n_embd) matrix per sequence.
        """
        if self._closed:
            raise ModelError("this model was closed; create a new one")
        for i, s in enumerate(seqs):
            if not 0 < len(s) <= self.max_length:
                raise ValueError(f"sequence {i} has {len(s)} tokens; allowed 1..{self.max_length}")
        out: list[np.ndarray | None] = [None] * len(seqs)
        plan = plan_batches([len(s) for s in seqs], self.batch_tokens, self.n_seq_max)

        def job(idx: list[int]) -> None:
            with self._borrow() as c:
                part = [seqs[i] for i in idx]
                got = self._decode(
                    c, part, [embeds[i] for i in idx] if embeds else None, token_level
                )
                for i, v in zip(idx, got):
                    out[i] = v

        if self._pool is not None and len(plan) > 1:
            self._set_threads(self._split)
            list(self._pool.map(job, plan))
        else:
            self._set_threads(self._threads)
            for idx in plan:
                job(idx)
        return [v for v in out if v is not None]

    def _set_threads(self, n: int) -> None:
        """One batch uses every thread; several batches run side by side, threads split."""
        llama_cpp = bindings.llama_cpp()

        if n and n != getattr(self, "_current_threads", None):
            for c in list(self._contexts.queue):
                llama_cpp.llama_set_n_threads(c.ctx, n, n)
            self._current_threads = n

    @contextmanager
    def _borrow(self) -> Iterator[DecodeContext]:
        c = self._contexts.get()
        try:
            yield c
        finally:
            self._contexts.put(c)

    def _decode(
        self,
        c: DecodeContext,
        seqs: Sequence[Sequence[int]],
        embeds: Sequence[np.ndarray] | None,
        token_level: bool,
    ) -> list[np.ndarray]:
        llama_cpp = bindings.llama_cpp()

        n = c.fill(seqs, embeds)
        mem = llama_cpp.llama_get_memory(c.ctx)
        if mem:
            llama_cpp.llama_memory_clear(mem, True)
        rc = llama_cpp.llama_decode(c.ctx, c.batch)
        with self._lock:
            self.decodes += 1
        if rc != 0:
            raise ModelError(f"llama_decode failed with code {rc} on a batch of {n} tokens")
        if token_level or self.pooling == "none":
            rows = []
            start = 0
            for s in seqs:
                ptrs = [llama_cpp.llama_get_embeddings_ith(c.ctx, start + j) for j in range(len(s))]
                rows.append(np.array([p[: self.info.n_embd] for p in ptrs], dtype=np.float32))
                start += len(s)
            return rows
        width = self.n_out
        return [
            np.ctypeslib.as_array(
                llama_cpp.llama_get_embeddings_seq(c.ctx, s), shape=(width,)
            ).copy()
            for s in range(len(seqs))
        ]

    def close(self) -> None:
        """Free the contexts and the model (a Llama handed in is left to its owner)."""
        llama_cpp = bindings.llama_cpp()

        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._pool is not None:
                self._pool.shutdown()
            if self._own:
                while not self._contexts.empty():
                    llama_cpp.llama_free(self._contexts.get().ctx)
                llama_cpp.llama_model_free(self._model)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def load_once(owner: Any, build: Callable[[], LlamaRunner]) -> LlamaRunner:
    """``owner._runner``, built on first use under ``owner._load_lock`` (thread-safe)."""
    if owner._runner is None:
        with owner._load_lock:
            if owner._runner is None:
                owner._runner = build()
    runner: LlamaRunner = owner._runner
    return runner


def runner_for(owner: Any, pooling: str | None, n_contexts: int | None = None) -> LlamaRunner:
    """A runner from a model class's fields (``_llm`` or ``model_path``, batching, threads,
    GPU offload)."""
    gpu = owner.gpu_options()
    if owner._llm is not None and gpu != gpu_settings():
        raise ValueError(
            "GPU options apply when the model is loaded from a path; create the "
            "llama_cpp.Llama with n_gpu_layers=... (and main_gpu, split_mode) instead"
        )
    return LlamaRunner(
        owner._llm if owner._llm is not None else owner.model_path,
        pooling=pooling,
        batch_tokens=owner.batch_tokens,
        max_length=owner.max_length,
        n_threads=owner.n_threads,
        n_contexts=n_contexts or owner.n_contexts,
        flash_attn=owner.flash_attn,
        gpu=gpu,
    )


def _tokenize(model: Any, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
    llama_cpp = bindings.llama_cpp()

    vocab = llama_cpp.llama_model_get_vocab(model)
    data = text.encode("utf-8", "replace")
    size = len(data) + 8
    buf = (llama_cpp.llama_token * size)()
    n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, size, add_special, parse_special)
    if n < 0:
        size = -n
        buf = (llama_cpp.llama_token * size)()
        n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, size, add_special, parse_special)
    return list(buf[:n])


def _meta(model: Any, key: str) -> str | None:
    llama_cpp = bindings.llama_cpp()

    buf = ctypes.create_string_buffer(4096)
    n = llama_cpp.llama_model_meta_val_str(model, key.encode(), buf, len(buf))
    if n < 0:
        return None
    if n >= len(buf):
        buf = ctypes.create_string_buffer(n + 1)
        llama_cpp.llama_model_meta_val_str(model, key.encode(), buf, len(buf))
    return buf.value.decode("utf-8", "replace")


def _read_info(model: Any, path: Path | None) -> ModelInfo:
    llama_cpp = bindings.llama_cpp()

    vocab = llama_cpp.llama_model_get_vocab(model)
    arch = _meta(model, "general.architecture") or "unknown"
    raw_pooling = _meta(model, f"{arch}.pooling_type")
    gguf_pooling = pooling_name(raw_pooling)
    probe = _tokenize(model, "a", add_special=False, parse_special=False)
    full = _tokenize(model, "a", add_special=True, parse_special=False)
    at = _find(full, probe)
    template = llama_cpp.llama_model_chat_template(model, b"rerank")
    has_file = path is not None and path.exists()
    lowercase = _meta(model, "tokenizer.ggml.normalizer.lowercase") != "false"
    strip = _meta(model, "tokenizer.ggml.normalizer.strip_accents")
    return ModelInfo(
        identity=file_identity(path) if has_file and path else arch,
        arch=arch,
        n_embd=int(llama_cpp.llama_model_n_embd(model)),
        n_ctx_train=int(llama_cpp.llama_model_n_ctx_train(model)),
        gguf_pooling=gguf_pooling,
        n_cls_out=int(llama_cpp.llama_model_n_cls_out(model)),
        head=tuple(full[:at]),
        tail=tuple(full[at + len(probe) :]),
        bos=int(llama_cpp.llama_vocab_bos(vocab)),
        eos=int(llama_cpp.llama_vocab_eos(vocab)),
        sep=int(llama_cpp.llama_vocab_sep(vocab)),
        add_bos=bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        add_eos=bool(llama_cpp.llama_vocab_get_add_eos(vocab)),
        add_sep=bool(llama_cpp.llama_vocab_get_add_sep(vocab)),
        rerank_template=template.decode() if template else None,
        wordpiece=llama_cpp.llama_vocab_type(vocab) == llama_cpp.LLAMA_VOCAB_TYPE_WPM,
        path=path,
        classifier=has_file and path is not None and is_cross_encoder(path),
        lowercase=lowercase,
        strip_accents=lowercase if strip is None else strip != "false",
    )


def _find(full: list[int], part: list[int]) -> int:
    for i in range(len(full) - len(part) + 1):
        if full[i : i + len(part)] == part:
            return i
    return 0
