"""Temporary siblings of an output path, where files are written before they land at the destination.

A sibling is on the destination's filesystem (so the final rename is atomic and never crosses devices),
its name stays under NAME_MAX however long the destination's name is, it gets the umask's permissions
(not mkdtemp's 0700), and it carries its creator's pid, so that one left by a killed process is removed
by the next write to the same destination while one a live process is using is never touched.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import shutil
import time
from pathlib import Path

from modelport.errors import BadInput, ModelportError, os_error

# Bytes of the destination's name kept in a sibling's name: with the tag, pid and random part it stays
# well under the 255 bytes of NAME_MAX.
_KEPT_NAME_BYTES = 120
# A sibling whose pid is alive is stale only after this long (the pid may have been reused).
STALE_AFTER_S = 24 * 3600
# Under this much free space after a failure, the failure is taken for a full disk.
_FULL_BYTES = 1 << 20
_SUFFIX = re.compile(r"(\d+)-[0-9a-f]{8}")


def _prefix(dest: Path, tag: str) -> str:
    name = dest.name
    raw = name.encode()
    if len(raw) > _KEPT_NAME_BYTES:
        name = raw[:_KEPT_NAME_BYTES - 9].decode(errors="ignore") + "~" + hashlib.sha256(raw).hexdigest()[:8]
    return f".{name}.{tag}-"


def sibling_path(dest: Path, tag: str) -> Path:
    """A fresh name beside `dest` for this process (not created)."""
    return dest.parent / f"{_prefix(dest, tag)}{os.getpid()}-{secrets.token_hex(4)}"


def make_sibling_dir(dest: Path, tag: str) -> Path:
    """A new empty directory beside `dest`, after removing stale ones of the same tag."""
    remove_stale(dest, tag)
    while True:
        path = sibling_path(dest, tag)
        try:
            path.mkdir()  # 0o777 less the umask
        except FileExistsError:
            continue
        except OSError as exc:
            raise os_error(exc, dest) from exc
        return path


def remove_stale(dest: Path, tag: str) -> None:
    """Remove the `tag` siblings of `dest` whose process is dead (or that are older than STALE_AFTER_S)."""
    prefix = _prefix(dest, tag)
    try:
        entries = [e for e in dest.parent.iterdir() if e.name.startswith(prefix)]
    except OSError:
        return
    for entry in entries:
        found = _SUFFIX.fullmatch(entry.name[len(prefix):])
        if found is None or not _stale(int(found.group(1)), entry):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _stale(pid: int, entry: Path) -> bool:
    try:
        age = time.time() - entry.lstat().st_mtime
    except OSError:
        return False
    if age > STALE_AFTER_S:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, owned by another user
        return False
    return False


def ensure_dir(folder: Path, target: Path | None = None) -> None:
    """Create `folder` and its parents for writing `target` (default: the folder itself); a file in the way
    is named, as is any OS failure."""
    target = folder if target is None else target
    for part in (folder, *folder.parents):
        if part.exists() or part.is_symlink():
            if not part.is_dir():
                raise BadInput(f"{str(part)!r} is a file, not a directory, so {str(target)!r} cannot be written.",
                               hint="Choose an output path that is not under a file.")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise os_error(exc, target) from exc


def out_of_space(path: Path) -> bool:
    """Whether the filesystem holding `path` is (nearly) full: a runtime that fails to write says so badly."""
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < _FULL_BYTES


def no_space_error(path: Path, doing: str = "writing") -> ModelportError:
    """The error for a write that failed because the filesystem of `path` is full."""
    return os_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), path, doing)
