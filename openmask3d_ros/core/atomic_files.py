"""Crash-safe file writes, shared by the map's generations (map_versions.py), the build cache
(build_cache.py) and the scene's cloud (scene.py).

A file is written under a temporary name in its own folder and renamed over the target
(``os.replace``, atomic), so a reader sees the old file or the new one, never half of one. The
callers put their process id in the temporary name, so that ``pid_alive`` tells the leftovers of
a killed writer from the file of a writer still at work.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path: Path, tmp: Path) -> Iterator[Path]:
    """Write the file ``tmp`` inside the block; on leaving it, rename it over ``path``. When the
    block or the rename fails, ``tmp`` is removed and the error goes on; ``path`` is untouched."""
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise


def write_atomically(path: Path, data: bytes, tmp: Path, sync: bool = False) -> None:
    """``data`` as the new contents of ``path``, written to ``tmp`` first (synced to disk before
    the rename when ``sync``: after a power loss the file is then whole, not only not half)."""
    with replacing(path, tmp), open(tmp, "wb") as f:
        f.write(data)
        if sync:
            f.flush()
            os.fsync(f.fileno())


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Sync a folder's entries (a rename in it), where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs (one of another user's counts as running)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
