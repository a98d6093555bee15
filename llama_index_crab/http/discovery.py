"""How `crab query` finds a running `crab serve`: a small file per server in a private folder.

The file is named after the settings that decide what a server answers (database, models,
weights, replicas), so a command finds only a server that would answer as it would itself.
Standard library only: the command line reads it before importing anything heavy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["Endpoint", "announce", "find", "server_key", "state_dir", "withdraw"]


@dataclass(frozen=True)
class Endpoint:
    """Where a server listens (``url`` or a Unix ``socket``), its token, its process."""

    url: str | None
    socket: str | None
    token: str | None
    pid: int

    @property
    def where(self) -> str:
        return self.url or f"unix:{self.socket}"


def state_dir() -> Path:
    """The folder of the server files: ``serve/`` in ``CRAB_CACHE_DIR``, else in the user
    cache directory."""
    base = os.environ.get("CRAB_CACHE_DIR")
    if base:
        return Path(base) / "serve"
    import platformdirs

    return platformdirs.user_cache_path("llama-index-crab") / "serve"


def server_key(
    *,
    database_url: str | None,
    embed_model: str | None,
    rerank_model: str | None,
    rerank_weights: str = "file",
    n_gpu_layers: int = 0,
    read_urls: Sequence[str] = (),
) -> str:
    """A short name for the settings a server was started with; the same options (and
    environment) on the command line give the same key."""
    settings = {
        "database": database_url or f"embedded:{_path(os.environ.get('CRAB_PGDATA', ''))}",
        "embed_model": _path(embed_model or ""),
        "rerank_model": _path(rerank_model or ""),
        "rerank_weights": rerank_weights if rerank_model else "file",
        "n_gpu_layers": n_gpu_layers,
        "read_urls": sorted(read_urls),
    }
    text = json.dumps(settings, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _path(value: str) -> str:
    """A model or data path made absolute (so ``./m.gguf`` and its full path agree); a Hugging
    Face spec or an empty value as it is."""
    if value and os.path.exists(value):
        return os.path.realpath(value)
    return value


def _file(key: str, folder: Path | None) -> Path:
    return (folder or state_dir()) / f"{key}.json"


def announce(key: str, endpoint: Endpoint, folder: Path | None = None) -> Path:
    """Write the server file for ``key`` (0600, in a 0700 folder: it may hold the token)."""
    path = _file(key, folder)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(asdict(endpoint), fh)
    os.replace(tmp, path)
    return path


def withdraw(key: str, pid: int, folder: Path | None = None) -> None:
    """Remove the server file for ``key`` if process ``pid`` wrote it."""
    path = _file(key, folder)
    found = _read(path)
    if found is not None and found.pid == pid:
        with contextlib.suppress(OSError):
            path.unlink()


def find(key: str, folder: Path | None = None) -> Endpoint | None:
    """The running server for ``key``, or None (a file left by a dead process is removed)."""
    path = _file(key, folder)
    found = _read(path)
    if found is None:
        return None
    if not _alive(found.pid):
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    return found


def _read(path: Path) -> Endpoint | None:
    try:
        data = json.loads(path.read_text())
        return Endpoint(
            url=data.get("url"),
            socket=data.get("socket"),
            token=data.get("token"),
            pid=int(data["pid"]),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
