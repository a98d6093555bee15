"""The default embedding model for installs without a clone's ``models/`` folder.

A clone has ``models/all-MiniLM-L6-v2-q8_0.gguf``; a wheel does not ship it (25 MB), so
the same model is fetched once through ``huggingface_hub`` (the ``hf`` extra) into its
cache and read from there afterwards, without asking the network again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError
from .gguf import file_sha256

__all__ = [
    "BUNDLED_EMBEDDER",
    "BUNDLED_EMBEDDER_SHA256",
    "DEFAULT_EMBEDDER",
    "HubFile",
    "fetch",
]


@dataclass(frozen=True)
class HubFile:
    """A file in a Hugging Face model repository, with its sha256 when it is pinned."""

    repo_id: str
    filename: str
    sha256: str | None = None

    @property
    def spec(self) -> str:
        return f"{self.repo_id}:{self.filename}"


# The clone's models/ file (models/PROVENANCE.md), converted here; byte for byte reproducible.
BUNDLED_EMBEDDER = "all-MiniLM-L6-v2-q8_0.gguf"
BUNDLED_EMBEDDER_SHA256 = "1f9c645d3589f8cd64e436d73078a9f3478c7d2ae5795994135bba9f8b58555d"
# The same weights (sentence-transformers/all-MiniLM-L6-v2, Apache-2.0) as a Q8_0 GGUF on
# the Hub, converted by Second State with an older llama.cpp: not the clone's bytes, so a
# collection made with one refuses the other (its identity holds the file's hash). Its
# sha256 could not be read here (no network); pin it once known.
DEFAULT_EMBEDDER = HubFile(
    "second-state/All-MiniLM-L6-v2-Embedding-GGUF", "all-MiniLM-L6-v2-Q8_0.gguf"
)

_FIX = 'pip install "llama-index-crab[hf]"'


def fetch(file: HubFile, env: str) -> Path:
    """``file`` from the Hugging Face cache, downloaded there first if it is missing.

    Errors are one line naming the ``hf`` extra and ``env``, the variable that points at a
    local GGUF instead. A pinned ``sha256`` is checked.
    """
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
    except ImportError as exc:
        raise ModelError(
            f"no embedding model: the default one, {file.spec}, is fetched once from Hugging "
            f"Face after {_FIX}; or set {env} to a GGUF path"
        ) from exc
    cached = try_to_load_from_cache(file.repo_id, file.filename)
    if isinstance(cached, str):
        path = Path(cached)
    else:
        try:
            path = Path(hf_hub_download(repo_id=file.repo_id, filename=file.filename))
        except Exception as exc:  # offline, no such repo, disk full: all say the same to do
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(
                f"no embedding model: the default one, {file.spec}, is not in the Hugging Face "
                f"cache and could not be fetched ({reason}); connect to the internet once "
                f"(with {_FIX}), or set {env} to a GGUF path"
            ) from exc
    if file.sha256 is not None and (found := file_sha256(path)) != file.sha256:
        raise ModelError(
            f"{path} has sha256 {found}, not the expected {file.sha256}; delete it from "
            f"the Hugging Face cache to fetch it again, or set {env} to a GGUF path"
        )
    return path
