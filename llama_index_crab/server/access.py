"""Let the server's own account pass through the folders above its data, and nothing more.

Started by root, PostgreSQL runs as a dedicated account (it refuses to run as root), which
must search every folder above its data directory. Folders it cannot search get one POSIX
ACL entry, ``user:<account>:--x``: that account may pass through (not list, not read); the
owner's, the group's and others' rights stay as they were (``ls -l`` then shows the ACL mask,
``--x`` at least, in the group column, with a ``+``). Written as the
``system.posix_acl_access`` attribute, so no ``setfacl`` is needed; a file system without
ACLs gets a one-line error naming the fix.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DatabaseUnavailableError

if TYPE_CHECKING:
    from .processes import Account

__all__ = ["grant_search", "granted", "unsearchable"]

_XATTR = "system.posix_acl_access"
_VERSION = 2
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_NO_ID = 0xFFFFFFFF
_SEARCH = 0o1


def _entries(path: Path) -> list[tuple[int, int, int]]:
    """The access ACL of ``path`` as (tag, perm, id) entries; the mode's own when it has none."""
    try:
        raw = os.getxattr(path, _XATTR)
    except OSError as exc:
        if exc.errno not in (errno.ENODATA, errno.EOPNOTSUPP):
            raise
        raw = b""
    if len(raw) >= 4 and struct.unpack_from("<I", raw)[0] == _VERSION:
        return [struct.unpack_from("<HHI", raw, i) for i in range(4, len(raw) - 7, 8)]
    mode = path.stat().st_mode
    return [
        (_USER_OBJ, (mode >> 6) & 7, _NO_ID),
        (_GROUP_OBJ, (mode >> 3) & 7, _NO_ID),
        (_OTHER, mode & 7, _NO_ID),
    ]


def granted(path: Path, uid: int) -> list[Path]:
    """The folders above ``path`` whose ACL names ``uid``."""
    found = []
    for folder in reversed(path.parents):
        try:
            if any(tag == _USER and ident == uid for tag, _, ident in _entries(folder)):
                found.append(folder)
        except OSError:
            continue
    return found


def _add_search(folder: Path, uid: int) -> None:
    entries = [e for e in _entries(folder) if not (e[0] == _USER and e[2] == uid)]
    old = next((e for e in _entries(folder) if e[0] == _USER and e[2] == uid), None)
    perm = (old[1] if old else 0) | _SEARCH
    mask = next((e[1] for e in entries if e[0] == _MASK), None)
    if mask is None:  # no ACL yet: the mask is the owning group's bits, plus search
        mask = next(e[1] for e in entries if e[0] == _GROUP_OBJ) | _SEARCH
    elif not mask & _SEARCH:
        widened = [e for e in entries if e[0] in (_USER, _GROUP, _GROUP_OBJ) and e[1] & _SEARCH]
        if widened:
            raise DatabaseUnavailableError(
                f"{folder} has an ACL whose mask withholds search rights from some of its "
                "entries; letting the embedded server through would give them back: run "
                f"`setfacl -m u:{uid}:x '{folder}'` yourself if that is fine, or set "
                "CRAB_PGDATA to a folder the server's account can reach"
            )
        mask |= _SEARCH
    entries = [e for e in entries if e[0] != _MASK]
    entries += [(_USER, perm, uid), (_MASK, mask, _NO_ID)]
    entries.sort(key=lambda e: (e[0], e[2]))
    data = struct.pack("<I", _VERSION) + b"".join(struct.pack("<HHI", *e) for e in entries)
    os.setxattr(folder, _XATTR, data)


def unsearchable(folders: Sequence[Path], account: Account) -> list[Path]:
    """The first of ``folders`` (outermost first) that ``account`` cannot search, if any;
    asked of the account itself (``test -x`` runs as it), so ACLs and groups count."""
    script = 'for d do test -x "$d" || { printf "%s" "$d"; exit 0; }; done'
    code, output = account.run(["/bin/sh", "-c", script, "sh", *folders], timeout=30)
    return [Path(output)] if code == 0 and output else []


def grant_search(folder: Path, account: Account) -> list[Path]:
    """Let ``account`` (the server's, when root starts it) search ``folder`` and every folder
    above it, with one ACL entry on each it could not search; the folders granted."""
    if account.name is None:
        return []
    chain = [*reversed(folder.parents), folder]
    done: list[Path] = []
    while missing := unsearchable(chain, account):
        blocked = missing[0]
        if blocked in done:
            raise DatabaseUnavailableError(
                f"the embedded server's account {account.name!r} still cannot pass through "
                f"{blocked} after an ACL entry let it; {_FIX}"
            )
        try:
            _add_search(blocked, account.uid)
        except OSError as exc:
            raise DatabaseUnavailableError(
                f"the embedded server runs as {account.name!r} (PostgreSQL refuses to run as "
                f"root) and cannot pass through {blocked}; letting that account in with an "
                f"ACL entry failed ({(exc.strerror or str(exc)).lower()}); {_FIX}"
            ) from exc
        done.append(blocked)
        chain = chain[chain.index(blocked) + 1 :]
    return done


_FIX = (
    "set CRAB_PGDATA to a folder every parent of which others may pass through, e.g. "
    "`mkdir -p -m 711 /srv/crab` and CRAB_PGDATA=/srv/crab/pgdata"
)


def opened_above(path: Path) -> list[tuple[Path, int]]:
    """Folders from the home folder down to ``path`` that every user may reach and read,
    with their modes: what versions before this one opened when started as root."""
    home = Path.home()
    if home not in path.parents:
        return []
    found = []
    for folder in [home, *(p for p in reversed(path.parents) if home in p.parents)]:
        try:
            mode = folder.stat().st_mode & 0o7777
        except OSError:
            break
        if not mode & 0o001:  # others cannot pass: nothing below is reachable
            break
        if mode & 0o004:
            found.append((folder, mode))
    return found
