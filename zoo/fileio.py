"""The one way the zoo writes a file it may later read back: atomically.

A file is written to a temporary name in its own folder, flushed to disk
(``fsync``) and renamed over the target with :func:`os.replace`, so a reader
sees either the old file or the complete new one, never half of it (a crash,
a full disk or a killed process leaves at most a ``.NAME.*.tmp`` file, which
nothing loads). Two writers of one file each use their own temporary name.
Errors of the file system become one-line :class:`~zoo.errors.ZooError`\\ s
naming the folder.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from .errors import ZooError


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not every platform opens folders
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def cannot_write(path: Path, err: OSError) -> ZooError:
    """The one-line error for a file the zoo cannot write."""
    folder = Path(path).parent
    return ZooError(f"cannot write {Path(path).name} in {folder} ({err.strerror or err}); "
                    f"make the folder writable or choose another (ZOO_HOME for the cache)")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """``with atomic_path(p) as tmp: write(tmp)``: ``p`` appears, complete, only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as e:
        raise cannot_write(path, e) from None
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise cannot_write(path, e) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write(path: str | Path, write: Callable, mode: str = "wb") -> Path:
    """Write ``path`` atomically with ``write(f)`` on the open temporary file; return the path."""
    text = {} if "b" in mode else {"encoding": "utf-8"}
    with atomic_path(path) as tmp, open(tmp, mode, **text) as f:
        write(f)
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text), mode="w")


__all__ = ["atomic_path", "atomic_write", "atomic_write_bytes", "atomic_write_text", "cannot_write"]
