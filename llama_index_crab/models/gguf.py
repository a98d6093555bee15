"""GGUF files: locate, validate and read the few tensors llama.cpp does not expose."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModelError

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "POOLINGS",
    "cache_root",
    "file_identity",
    "file_sha256",
    "gguf_pooling",
    "is_cross_encoder",
    "pooling_name",
    "pooling_number",
    "read_embedding_tables",
    "read_metadata",
    "resolve_model_path",
    "tensor_names",
]

# llama.cpp's ``enum llama_pooling_type``, in order: a GGUF stores the number.
POOLINGS = ("none", "mean", "cls", "last", "rank")

_MAGIC = b"GGUF"


def resolve_model_path(model: str | os.PathLike[str]) -> Path:
    """Turn a local path or a Hugging Face spec into a path of a valid-looking GGUF file.

    A spec is ``hf://owner/repo/file.gguf`` or ``owner/repo:file.gguf``; it is downloaded
    once through huggingface_hub and served from its cache afterwards.
    """
    text = os.fspath(model)
    path = Path(text).expanduser()
    if not path.exists() and _looks_like_hf_spec(text):
        path = _download(text)
    if not path.exists():
        raise ModelError(
            f"model file {text!r} not found; pass the path of a .gguf file "
            "or a Hugging Face spec like 'owner/repo:file.gguf'"
        )
    if path.is_dir():
        raise ModelError(f"model path {text!r} is a directory; pass the .gguf file inside it")
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic != _MAGIC:
        raise ModelError(
            f"{text!r} is not a GGUF file (it starts with {magic!r}, not b'GGUF'); "
            "convert the model with llama.cpp's convert_hf_to_gguf.py"
        )
    return path


def _looks_like_hf_spec(text: str) -> bool:
    return text.startswith("hf://") or (":" in text and text.count("/") >= 1 and "\\" not in text)


def _download(spec: str) -> Path:
    body = spec.removeprefix("hf://")
    if ":" in body:
        repo_id, filename = body.split(":", 1)
    else:
        owner, repo, filename = body.split("/", 2)
        repo_id = f"{owner}/{repo}"
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:
        raise ModelError(
            f"{spec!r} looks like a Hugging Face spec; install huggingface_hub "
            "(pip install 'llama-index-crab[hf]') or pass a local .gguf path"
        ) from exc
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename))
    except Exception as exc:
        raise ModelError(f"could not download {filename!r} from {repo_id!r}: {exc}") from exc


def file_identity(path: Path) -> str:
    """A stable identity for a model file: its name and the first 12 hex digits of its sha256."""
    return f"{path.name}@{file_sha256(path)[:12]}"


def cache_root() -> Path:
    """The package's cache folder: ``CRAB_CACHE_DIR``, else the user cache directory."""
    base = os.environ.get("CRAB_CACHE_DIR")
    if base:
        return Path(base)
    import platformdirs

    return platformdirs.user_cache_path("llama-index-crab")


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, as hex, read once per version of the file.

    The digest is kept in a sidecar file (``cache_root()/sha256/``) with the file's path,
    size, mtime and inode; while they match, it is read back instead of hashing the file
    again (a model of hundreds of MB). A cache that cannot be written costs only the hashing.
    """
    resolved = path.resolve()
    st = resolved.stat()
    return _file_sha256(resolved, st.st_size, st.st_mtime_ns, st.st_ino)


@lru_cache(maxsize=64)
def _file_sha256(path: Path, size: int, mtime_ns: int, inode: int) -> str:
    version = [str(path), size, mtime_ns, inode]
    name = hashlib.sha256(os.fsencode(path)).hexdigest()[:32] + ".json"
    sidecar = cache_root() / "sha256" / name
    try:
        kept = json.loads(sidecar.read_text())
        if kept.get("version") == version and isinstance(kept.get("sha256"), str):
            return str(kept["sha256"])
    except (OSError, ValueError, AttributeError):
        pass
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    found = digest.hexdigest()
    try:
        sidecar.parent.mkdir(parents=True, exist_ok=True)
        tmp = sidecar.with_name(f".{name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": version, "sha256": found}))
        os.replace(tmp, sidecar)
    except OSError:
        pass
    return found


def read_embedding_tables(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """Return (token embeddings, token-type embeddings) as float32 arrays, or None.

    None means the file has no token-type table with more than one row (RoBERTa-style
    models, decoder models), so token types cannot matter.
    """
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    types = tensors.get("token_types.weight")
    tokens = tensors.get("token_embd.weight")
    if types is None or tokens is None:
        return None

    def load(t: object) -> np.ndarray:
        data = dequantize(t.data, t.tensor_type)  # type: ignore[attr-defined]
        return np.ascontiguousarray(data, dtype=np.float32)

    type_rows = load(types)
    return (load(tokens), type_rows) if type_rows.shape[0] >= 2 else None


def read_metadata(path: Path) -> dict[str, object]:
    """GGUF key/value metadata (scalars and strings only), without loading any weights."""
    return _summary(path)[0]


def tensor_names(path: Path) -> frozenset[str]:
    """Names of the tensors in a GGUF file."""
    return _summary(path)[1]


# GGUF value types: struct format of the scalars; 8 is a string, 9 an array.
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}


@lru_cache(maxsize=16)
def _summary(path: Path) -> tuple[dict[str, object], frozenset[str]]:
    """Scalar and string metadata plus tensor names, read straight from the header: arrays
    (a tokenizer's 150k tokens and merges) are skipped, not parsed, so this stays fast."""
    import mmap

    def string(at: int) -> tuple[str, int]:
        (n,) = struct.unpack_from("<Q", buf, at)
        return bytes(buf[at + 8 : at + 8 + n]).decode("utf-8", "replace"), at + 8 + n

    def skip(kind: int, at: int) -> int:
        if kind == 8:
            return at + 8 + int(struct.unpack_from("<Q", buf, at)[0])
        if kind == 9:
            inner, count = struct.unpack_from("<IQ", buf, at)
            at += 12
            if inner in _SCALARS:
                return at + int(count) * struct.calcsize(_SCALARS[inner])
            for _ in range(count):
                at = skip(inner, at)
            return at
        return at + struct.calcsize(_SCALARS[kind])

    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            buf = memoryview(mm)
            try:
                if bytes(buf[:4]) != _MAGIC:
                    raise ValueError("not a GGUF file")
                _, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
                at, meta = 24, dict[str, object]()
                for _ in range(n_kv):
                    key, at = string(at)
                    (kind,) = struct.unpack_from("<I", buf, at)
                    at += 4
                    if kind == 8:
                        meta[key], at = string(at)
                    elif kind in _SCALARS:
                        meta[key] = struct.unpack_from(_SCALARS[kind], buf, at)[0]
                        at += struct.calcsize(_SCALARS[kind])
                    else:
                        at = skip(kind, at)
                names = []
                for _ in range(n_tensors):
                    name, at = string(at)
                    (n_dims,) = struct.unpack_from("<I", buf, at)
                    at += 4 + 8 * n_dims + 4 + 8
                    names.append(name)
            finally:
                buf.release()
    except (ValueError, OSError, KeyError, struct.error) as exc:
        raise ModelError(
            f"{str(path)!r} is a damaged GGUF file ({exc}); download or convert it again"
        ) from exc
    return meta, frozenset(names)


def pooling_name(value: object) -> str | None:
    """llama.cpp's pooling type number (``enum llama_pooling_type``, as GGUFs store it) as
    one of :data:`POOLINGS`; None when absent or unknown."""
    try:
        number = int(str(value))
    except ValueError:
        return None
    return POOLINGS[number] if 0 <= number < len(POOLINGS) else None


def pooling_number(name: str) -> int:
    """The llama.cpp pooling type number of ``name`` (one of :data:`POOLINGS`)."""
    return POOLINGS.index(name)


def gguf_pooling(path: Path) -> str | None:
    """The pooling a GGUF declares (``{arch}.pooling_type``), or None."""
    meta = read_metadata(path)
    return pooling_name(meta.get(f"{meta.get('general.architecture')}.pooling_type"))


def is_cross_encoder(path: Path) -> bool:
    """Whether the GGUF scores pairs: it has a classifier head and declares rank pooling or
    none (llama.cpp's converter writes no pooling for BERT and XLM-R sequence classifiers
    such as bge-reranker)."""
    has_head = any(name.startswith("cls.") for name in tensor_names(path))
    return has_head and gguf_pooling(path) in ("rank", None)
