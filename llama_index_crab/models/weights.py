"""The weights a model loads: its file as it is, or a float32 or bf16 copy of it made once with
llama.cpp's own quantize API into the user cache; ``weights="auto"`` (the default) loads the
fastest of them on this machine, timed once per model, CPU and llama.cpp build and remembered.

Widening to float32 is exact: every f16, bf16 or q8_0 weight is a float32 value, so the copy
computes the same model, with float32 activations where the 16-bit and q8_0 kernels round them.
A bf16 copy rounds f32, f16 and q8_0 weights to bf16's 8-bit mantissa; the parity tests hold
it to the PyTorch references (``tests/test_embedding.py``). Which one is fastest depends on
the CPU (``docs/performance.md``), so it is measured, never inferred from CPU flags.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import overload

from ..errors import ModelError
from .gguf import cache_root, file_sha256

__all__ = [
    "WEIGHTS",
    "WIDENABLE",
    "Choice",
    "cache_dir",
    "choose",
    "copy",
    "f32_copy",
    "file_type",
    "model_file",
]

WEIGHTS = ("auto", "file", "f32", "bf16")
# general.file_type values (llama_ftype). Every weight type llama.cpp loads dequantizes
# exactly to float32; bf16 copies are made of the types that round to it within parity.
ALL_F32, MOSTLY_BF16 = 0, 32
WIDENABLE = {1: "f16", 7: "q8_0", 32: "bf16"}  # the types auto times a float32 copy of
TO_BF16 = {0: "f32", 1: "f16", 7: "q8_0"}
# Bytes per weight of each source type, to size a copy before making it (other quantized
# types: at least half a byte).
_BYTES = {0: 4.0, 1: 2.0, 7: 34 / 32, 32: 2.0}
_SMALLEST_BYTES = 0.5
COPY_LIMIT_ENV = "CRAB_WEIGHTS_COPY_LIMIT_MB"
COPY_LIMIT_MB = 1024
# A copy is chosen over the file only when it is clearly faster (timings wobble by a few %).
MARGIN = 0.03


def cache_dir() -> Path:
    """Where float32 copies live."""
    return cache_root() / "f32"


def file_type(path: Path) -> int | None:
    """The GGUF's ``general.file_type`` (llama_ftype), or None when it does not say."""
    from .gguf import read_metadata

    value = read_metadata(path).get("general.file_type")
    return int(str(value)) if value is not None else None


@overload
def model_file(path: Path, weights: str) -> Path: ...
@overload
def model_file(path: None, weights: str) -> None: ...
def model_file(path: Path | None, weights: str) -> Path | None:
    """The file to load for ``weights``; ``path`` None is a ``llama_cpp.Llama`` passed in,
    loaded already: it gets no copy ("auto" and "file" load it as it is)."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}; got {weights!r}")
    if path is None:
        if weights in ("auto", "file"):
            return None
        raise ValueError(
            f"weights={weights!r} applies when the model is loaded from a path; pass the .gguf "
            "path instead of a llama_cpp.Llama"
        )
    if weights == "file":
        return path
    if weights == "auto":
        try:
            return choose(path).path
        except Exception:  # auto is a speed-up: the file's own load reports what is wrong
            return path
    return copy(path, weights)


def f32_copy(path: Path, cache: Path | None = None) -> Path:
    """``path`` itself when its weights are float32 already, else its float32 copy."""
    return copy(path, "f32", cache)


def copy(path: Path, kind: str, cache: Path | None = None) -> Path:
    """``path`` itself when its weights are ``kind`` ("f32" or "bf16") already, else its copy
    in the cache, made on first use (about a second for a small BERT)."""
    ftype = file_type(path)
    target, sources = (ALL_F32, WIDENABLE) if kind == "f32" else (MOSTLY_BF16, TO_BF16)
    if ftype == target:
        return path
    if kind == "bf16" and ftype not in sources:
        raise ModelError(
            f"{path.name} has weight type {ftype} (llama_ftype); {kind} copies are made of "
            f"{', '.join(sources.values())} files only; {_USE_FILE}"
        )
    dst = _copy_path(path, kind, cache)
    if dst.exists():
        return dst
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        _quantize(path, dst, kind)
    except OSError as exc:
        raise ModelError(
            f"could not write the {kind} copy of {path.name} to {dst.parent}: {exc}; set "
            f"CRAB_CACHE_DIR to a writable folder with room for it, or {_USE_FILE}"
        ) from exc
    return dst


def _copy_path(path: Path, kind: str, cache: Path | None = None) -> Path:
    root = cache or (cache_dir() if kind == "f32" else cache_root() / kind)
    stem = re.sub(r"[-._](f16|bf16|f32|q8_0)$", "", path.stem, flags=re.I)
    return root / content_hash(path) / f"{stem}-{kind}.gguf"


def content_hash(path: Path) -> str:
    """The first 16 hex digits of the file's sha256, computed once per version of the file
    (``gguf.file_sha256`` keeps it in a sidecar in the cache)."""
    return file_sha256(path.resolve())[:16]


# -- the choice -------------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """Which weights ``weights="auto"`` loads for a model, and the timings behind it."""

    kind: str  # "file", "f32" or "bf16"
    path: Path
    seconds: dict[str, float] = field(default_factory=dict)  # CPU s of one decode each
    skipped: dict[str, str] = field(default_factory=dict)  # candidate -> why not timed
    measured_now: bool = False

    def describe(self) -> str:
        """``loads KIND (kind ms, ...)``: the choice and the CPU time of one decode each."""
        timed = ", ".join(
            f"{k} {s * 1e3:.1f} ms" for k, s in sorted(self.seconds.items(), key=lambda kv: kv[1])
        )
        skipped = "".join(f"; {k} not timed: {why}" for k, why in self.skipped.items())
        return f"loads {self.kind} ({timed or 'the only candidate'}{skipped})"


def choice_key(path: Path) -> str:
    """What a choice depends on: the model's content, the CPU model, the llama.cpp build."""
    from .cpu import cpu_model, llama_build

    return f"{content_hash(path)} | {cpu_model()} | {llama_build()}"


def copy_limit() -> int:
    """Bytes up to which ``auto`` makes a copy by itself (``CRAB_WEIGHTS_COPY_LIMIT_MB``)."""
    raw = os.environ.get(COPY_LIMIT_ENV, str(COPY_LIMIT_MB))
    try:
        return int(float(raw) * 1024 * 1024)
    except ValueError:
        raise ValueError(f"{COPY_LIMIT_ENV} must be a number of megabytes, got {raw!r}") from None


def candidates(path: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """The weights ``path`` can be loaded as (kind -> file, copies made as needed) and the
    kinds left out with the reason (a copy over the size limit; no bf16 dot products)."""
    from .cpu import has_bf16_dot

    ftype = file_type(path)
    found: dict[str, Path] = {"file": path}
    skipped: dict[str, str] = {}
    kinds = []
    if ftype in WIDENABLE:
        kinds.append("f32")
    if ftype in TO_BF16:
        if has_bf16_dot():
            kinds.append("bf16")
        else:
            skipped["bf16"] = "the CPU reports no bf16 dot products"
    limit = copy_limit()
    for kind in kinds:
        dst = _copy_path(path, kind)
        size = (
            path.stat().st_size
            / _BYTES.get(ftype or 0, _SMALLEST_BYTES)
            * (4 if kind == "f32" else 2)
        )
        if dst.exists() or size <= limit:
            found[kind] = copy(path, kind)
        else:
            skipped[kind] = (
                f"the copy would take {size / 2**20:,.0f} MB, over {COPY_LIMIT_ENV}="
                f"{limit / 2**20:,.0f}; weights='{kind}' makes it"
            )
    return found, skipped


def choose(path: Path, *, remeasure: bool = False) -> Choice:
    """The fastest weights for ``path`` on this machine: remembered in the cache's
    ``weights.json`` per :func:`choice_key`, else timed now (a few seconds, once)."""
    store = cache_root() / "weights.json"
    key = choice_key(path)
    kept = _read_json(store).get(key)
    if isinstance(kept, dict) and kept.get("kind") in WEIGHTS[1:] and not remeasure:
        kind = str(kept["kind"])
        # The choice belongs to the content: a renamed file or a cleaned cache remakes the copy.
        target = path if kind == "file" else _copy_path(path, kind)
        target = target if target.exists() else copy(path, kind)
        return Choice(kind, target, dict(kept.get("seconds", {})), dict(kept.get("skipped", {})))
    found, skipped = candidates(path)
    if len(found) == 1:
        seconds: dict[str, float] = {}
        kind = "file"
    else:
        from .cpu import time_decodes

        seconds = time_decodes(found)
        kind = min(seconds, key=seconds.__getitem__)
        if seconds["file"] <= seconds[kind] * (1 + MARGIN):
            kind = "file"
    entry = {"kind": kind, "seconds": seconds, "skipped": skipped, "model": path.name}
    with _locked(store):
        data = _read_json(store)
        data[key] = entry
        _write_json(store, data)
    return Choice(kind, found[kind], seconds, skipped, measured_now=True)


# -- files ------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict[str, object]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


_USE_FILE = (
    "load the file's own weights instead: `--rerank-weights file` for a reranker, "
    "`--embed-model` the .gguf itself for an embedder (Python: weights='file')"
)
_NAMES = {"f32": "float32", "bf16": "bf16"}


def _no_room(src: Path, folder: Path, kind: str) -> str | None:
    """What the disk of ``folder`` lacks for the ``kind`` copy of ``src``, or None."""
    import shutil

    need = src.stat().st_size / _BYTES.get(file_type(src) or 0, 4.0) * (4 if kind == "f32" else 2)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    if free >= need:
        return None
    return f"its disk has {free / 2**20:.0f} MB free, the copy needs about {need / 2**20:.0f} MB"


def _quantize(src: Path, dst: Path, kind: str) -> None:
    from .bindings import llama_cpp as bindings
    from .runtime import install_log_callback

    llama_cpp = bindings()

    install_log_callback()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = (
        llama_cpp.LLAMA_FTYPE_ALL_F32 if kind == "f32" else llama_cpp.LLAMA_FTYPE_MOSTLY_BF16
    )
    params.allow_requantize = True  # q8_0 -> f32 dequantizes (exact); -> bf16 rounds
    params.nthread = os.cpu_count() or 1
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        if rc != 0 or not tmp.exists():
            tmp.unlink(missing_ok=True)  # what a full disk took, before measuring it
            room = _no_room(src, dst.parent, kind)
            if room is not None:
                raise ModelError(
                    f"no space left for the {_NAMES[kind]} copy of {src.name} in {dst.parent}: "
                    f"{room}; free space there or set CRAB_CACHE_DIR to a disk with room, "
                    f"or {_USE_FILE}"
                )
            raise ModelError(
                f"llama.cpp could not make a {_NAMES[kind]} copy of {src.name} (code {rc}); "
                f"{_USE_FILE}"
            )
        os.replace(tmp, dst)  # whole or absent; a concurrent maker writes the same bytes
    finally:
        tmp.unlink(missing_ok=True)
