"""Find and read the files to ingest; a bad file is reported and skipped, never fatal.

Each given path is a file or a folder searched for supported suffixes. Every entry that
cannot be ingested becomes a :class:`Problem` naming the file: an *error* (unreadable, a
FIFO, a dangling or looping symbolic link, a name that is not UTF-8) or a *skip* (binary
content, a type whose reader needs an extra that is not installed). The rest is read.
"""

from __future__ import annotations

import codecs
import errno
import hashlib
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

from llama_index.core.readers.base import BaseReader
from llama_index.core.schema import Document

__all__ = [
    "SUPPORTED_SUFFIXES",
    "FileDoc",
    "FileSet",
    "HtmlText",
    "Problem",
    "binary_reason",
    "find_files",
    "printable",
    "read_documents",
]

SUPPORTED_SUFFIXES = (".txt", ".md", ".markdown", ".rst", ".html", ".htm", ".pdf")
# Modules each reader needs, all installed by the ``readers`` extra.
_NEEDS = {
    ".pdf": ("llama_index.readers.file", "pypdf"),
    ".html": ("llama_index.readers.file", "bs4"),
    ".htm": ("llama_index.readers.file", "bs4"),
}
_EXTRA_HINT = "pip install 'llama-index-crab[readers]'"
SNIFF_BYTES = 8192
# Reader parts longer than this are cut (at a paragraph or line break) before splitting:
# LlamaIndex's SentenceSplitter is quadratic in the number of sentences of one text.
PART_CHARS = 100_000
_MAGIC = {
    b"\x7fELF": "an ELF executable",
    b"%PDF-": "a PDF document",
    b"PK\x03\x04": "a ZIP archive",
    b"\x89PNG\r\n": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"\x1f\x8b": "a gzip file",
    b"7z\xbc\xaf": "a 7-Zip archive",
    b"Rar!\x1a\x07": "a RAR archive",
    b"\xca\xfe\xba\xbe": "a Mach-O or Java class file",
    b"\xcf\xfa\xed\xfe": "a Mach-O executable",
    b"\x00asm": "a WebAssembly module",
    b"SQLite format 3\x00": "an SQLite database",
}
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_TEXT_CONTROLS = frozenset("\t\n\r\f\v\b\x1b")
MAX_NOT_TEXT = 0.3  # share of undecodable or control characters that makes a file binary


@dataclass(frozen=True)
class Problem:
    """A file (or path) that was not ingested, and why; ``error`` ones fail the run."""

    path: str
    message: str
    error: bool = True

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class FileSet:
    """The files found under the given paths, the folders searched, and the entries refused."""

    files: list[Path] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)  # every candidate's resolved path
    unlisted: list[str] = field(default_factory=list)  # folders that could not be listed


@dataclass
class FileDoc:
    """One file's reader parts and the hash of their text."""

    ref_doc_id: str
    text_hash: str
    parts: list[Document]


def printable(path: str | Path) -> str:
    """``path`` safe to print: bytes that are not UTF-8 shown as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def find_files(paths: Iterable[str | Path], *, follow_links: bool = False) -> FileSet:
    """The files to ingest: given files as they are (each once), folders searched for
    supported suffixes; a missing path or an unreadable folder is a problem, not a stop.

    A folder's search stays inside it: a symbolic link whose target is outside the folder
    is skipped with a warning, and so is, when running as root, a link or a file only
    root may read that another user left in a folder others can write (they could point
    root at anything). ``follow_links=True`` ingests both."""
    found = FileSet()
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found.folders.append(path.resolve())
            _walk(path, found, follow_links)
        elif path.exists() or path.is_symlink():
            _add(path, found)
        else:
            found.problems.append(Problem(printable(raw), "does not exist; pass files or folders"))
    return found


def _walk(folder: Path, found: FileSet, follow_links: bool = False) -> None:
    def failed(exc: OSError) -> None:
        where = exc.filename or folder
        found.unlisted.append(str(Path(where).resolve()))
        found.problems.append(Problem(printable(where), f"cannot be listed: {_reason(exc)}"))

    inside = folder.resolve()
    for root, dirs, names in os.walk(folder, onerror=failed):
        dirs.sort()
        shared = _writable_by_others(root)
        for name in sorted(names):
            if Path(name).suffix.lower() not in SUPPORTED_SUFFIXES:
                continue
            path = Path(root, name)
            refused = None if follow_links else _leaves(path, inside, shared)
            if refused is None:
                _add(path, found)
            else:
                found.problems.append(Problem(printable(path), refused, error=False))


_FOLLOW = "pass --follow-links (Python: follow_links=True) to ingest it"


def _writable_by_others(folder: str) -> str | None:
    """When we run as root: ``folder`` described if users other than root may write
    in it (others, or a group other than root's), else None."""
    if os.geteuid() != 0:
        return None
    try:
        info = os.stat(folder)
    except OSError:
        return None
    mode = stat.S_IMODE(info.st_mode)
    if mode & stat.S_IWOTH or (mode & stat.S_IWGRP and info.st_gid != 0):
        return f"{printable(folder)}, mode {oct(mode)}"
    return None


def _leaves(path: Path, inside: Path, shared: str | None) -> str | None:
    """Why ``path``, found in the folder ``inside``, must not be read without
    ``follow_links``: a link out of the folder, or what another user planted in a folder
    others can write while we run as root; None when it may be read."""
    try:
        info = path.lstat()
    except OSError:
        return None  # gone meanwhile: reading it reports that
    link = stat.S_ISLNK(info.st_mode)
    if link:
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return None  # dangling or looping: reading it reports that
        if inside not in target.parents:
            return (
                f"skipped: a symbolic link to {printable(target)}, outside the folder "
                f"given; {_FOLLOW}"
            )
    if shared is None or info.st_uid == 0:
        return None
    if link or info.st_nlink > 1:
        kind = "symbolic link" if link else "hard link"
        return (
            f"skipped: a {kind} made by another user (uid {info.st_uid}) in a folder others "
            f"can write ({shared}); as root it could expose what that user may not read; "
            f"{_FOLLOW}"
        )
    if not info.st_mode & stat.S_IROTH:
        return (
            f"skipped: owned by another user (uid {info.st_uid}, mode "
            f"{oct(stat.S_IMODE(info.st_mode))}) in a folder others can write ({shared}), and "
            f"readable here only with root's rights; ingest it as its owner, or {_FOLLOW}"
        )
    return None


def _add(path: Path, found: FileSet) -> None:
    try:
        key = str(path.resolve(strict=False))
    except (OSError, RuntimeError):  # a symlink loop on Python < 3.13
        key = os.path.abspath(path)
    if key in found.seen:
        return
    found.seen.add(key)
    found.files.append(path)


def read_documents(files: Iterable[Path]) -> Iterator[FileDoc | Problem]:
    """One :class:`FileDoc` per readable file, else a :class:`Problem` naming it."""
    for path in files:
        try:
            yield _read(path)
        except _Refused as refused:
            yield Problem(printable(path), refused.message, refused.error)
        except Exception as exc:  # any reader failure belongs to this one file
            text = str(exc).strip().splitlines()
            detail = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
            yield Problem(printable(path), f"could not be read ({detail[:300]})")


class _Refused(Exception):
    def __init__(self, message: str, error: bool = True) -> None:
        super().__init__(message)
        self.message, self.error = message, error


def _read(path: Path) -> FileDoc:
    shown = str(path)
    try:
        shown.encode("utf-8")
    except UnicodeEncodeError:
        raise _Refused("the file name is not valid UTF-8; rename the file") from None
    head = _head(path)
    suffix = path.suffix.lower()
    missing = [m for m in _NEEDS.get(suffix, ()) if not _importable(m)]
    if missing:
        raise _Refused(
            f"skipped: reading {suffix} files needs the readers extra "
            f"({', '.join(missing)} missing); {_EXTRA_HINT}",
            error=False,
        )
    encoding = _bom_encoding(head)
    if suffix == ".pdf":
        if not head.startswith(b"%PDF-"):
            raise _Refused("skipped: not a PDF (no %PDF- header)", error=False)
    elif encoding is None:
        reason = binary_reason(head) or _binary_further(path)
        if reason is not None:
            raise _Refused(f"skipped: binary content ({reason})", error=False)
    from llama_index.core import SimpleDirectoryReader

    reader = SimpleDirectoryReader(
        input_files=[shown],
        filename_as_id=True,
        encoding=encoding or "utf-8",
        raise_on_error=True,
        file_extractor={".html": HtmlText(), ".htm": HtmlText()},
    )
    parts = [piece for part in reader.load_data() for piece in _cut(part)]
    digest = hashlib.sha256()
    for part in parts:
        if "\x00" in part.text:  # PostgreSQL text cannot hold NUL
            part.set_content(part.text.replace("\x00", ""))
        digest.update(part.text.encode("utf-8", "replace"))
    return FileDoc(str(path.resolve()), digest.hexdigest(), parts)


class HtmlText(BaseReader):
    """The visible text of an HTML file (BeautifulSoup, from the readers extra), one
    line per block element; scripts and styles left out."""

    BLOCKS = ("p", "div", "br", "li", "tr", "pre", "blockquote", "section", "article", "table")
    HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6", "title")

    def load_data(
        self, file: Path, extra_info: dict[str, object] | None = None, **_: object
    ) -> list[Document]:
        from bs4 import BeautifulSoup

        soup = BeautifulSoup(Path(file).read_bytes(), "html.parser")
        for tag in soup(["script", "style", "noscript", "template"]):
            tag.decompose()
        for tag in soup(self.BLOCKS + self.HEADINGS):
            tag.append("\n\n" if tag.name in self.HEADINGS or tag.name == "p" else "\n")
        lines = (" ".join(line.split()) for line in soup.get_text().splitlines())
        text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines))
        return [Document(text=text.strip(), metadata=dict(extra_info or {}))]


def _head(path: Path) -> bytes:
    """The first bytes of ``path``, after checking it is a readable regular file
    (a FIFO is never opened: that would block)."""
    try:
        info = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Refused("is a symbolic link loop; remove or fix the link") from None
        if exc.errno == errno.ENOENT and path.is_symlink():
            target = printable(os.readlink(path))
            raise _Refused(f"is a dangling symbolic link (to {target}); fix or remove it") from None
        raise _Refused(f"cannot be read: {_reason(exc)}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(info.st_mode) else "not a regular file"
        if stat.S_ISSOCK(info.st_mode):
            kind = "a socket"
        elif stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):
            kind = "a device"
        raise _Refused(f"is {kind}, not a regular file; skipped")
    try:
        with open(path, "rb") as fh:
            return fh.read(SNIFF_BYTES)
    except OSError as exc:
        raise _Refused(f"cannot be read: {_reason(exc)}") from None


def _reason(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied; check its permissions"
    return (exc.strerror or type(exc).__name__).lower()


def _importable(module: str) -> bool:
    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _bom_encoding(head: bytes) -> str | None:
    return next((name for bom, name in _BOMS if head.startswith(bom)), None)


def binary_reason(head: bytes) -> str | None:
    """Why ``head`` (a file's first bytes) is not text, or ``None`` if it looks like text:
    a known magic number, a NUL byte (as git decides), or mostly invalid UTF-8 / control
    characters."""
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return kind
    if b"\x00" in head:
        return "NUL bytes"
    text = head.decode("utf-8", "replace")
    if not text:
        return None
    bad = sum(1 for c in text if c == "\ufffd" or (c < " " and c not in _TEXT_CONTROLS))
    if bad > MAX_NOT_TEXT * len(text):
        return f"{100 * bad // len(text)}% invalid UTF-8 or control characters"
    return None


_NOT_TEXT = re.compile("[\ufffd\x00-\x07\x0e-\x1a\x1c-\x1f]")


def _binary_further(path: Path) -> str | None:
    """Why ``path`` is not text past its head, or None: read block by block to the end, a
    block with a NUL byte or mostly invalid UTF-8 or control characters makes it binary."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    offset = 0
    try:
        with open(path, "rb") as fh:
            while block := fh.read(SNIFF_BYTES):
                nul = block.find(b"\x00")
                if nul >= 0:
                    return f"NUL bytes from byte {offset + nul}"
                text = decoder.decode(block)
                if len(_NOT_TEXT.findall(text)) > MAX_NOT_TEXT * max(len(text), 1):
                    return f"invalid UTF-8 or control characters from byte {offset}"
                offset += len(block)
    except OSError as exc:
        raise _Refused(f"cannot be read: {_reason(exc)}") from None
    return None


def _cut(part: Document) -> Iterator[Document]:
    """``part`` in pieces of at most about ``PART_CHARS`` characters, cut at a paragraph or
    line break when there is one, each with the part's metadata."""
    text = part.text
    if len(text) <= PART_CHARS:
        yield part
        return
    start = 0
    while start < len(text):
        end = min(start + PART_CHARS, len(text))
        if end < len(text):
            for sep in ("\n\n", "\n", ". ", " "):
                at = text.rfind(sep, start + PART_CHARS // 2, end)
                if at > start:
                    end = at + len(sep)
                    break
        yield Document(
            text=text[start:end],
            metadata=dict(part.metadata),
            excluded_embed_metadata_keys=list(part.excluded_embed_metadata_keys),
            excluded_llm_metadata_keys=list(part.excluded_llm_metadata_keys),
        )
        start = end
