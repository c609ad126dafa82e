"""The map's on-disk versioning (generations): every build writes a complete, self-contained
folder, then one atomic rename makes it current, so a process killed at any instant leaves the
last complete map.

```
MAP/                       SCENE/openmask3d by default
  CURRENT                  one line: the current generation's folder name (replaced atomically)
  gen-000007/              a complete map: cloud.ply (the cloud it was built on), instances.npz,
                           meta.json (with the cloud's content hash); only relative paths inside
  gen-000006/              older generations, pruned to the newest ``keep``
  .building-gen-000008-<pid>/   a build in progress (ignored; removed once its process is gone)
```
Write order: files into ``.building-*`` (each fsynced), rename it to ``gen-N`` (atomic), then
replace ``CURRENT``. Readers follow ``CURRENT``; when it is missing or unreadable they take the
newest ``gen-*`` folder, which exists only once complete.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from .atomic_files import fsync_dir, fsync_file, pid_alive, write_atomically
from .errors import InputError

log = logging.getLogger(__name__)

POINTER = "CURRENT"
GEN_RE = re.compile(r"^gen-(\d{6,})$")
_BUILD_RE = re.compile(r"^\.building-gen-\d+-(\d+)$")
_TRASH_PREFIX = ".trash-"


def generations(root: Path) -> list[Path]:
    """Complete generation folders of a map root, oldest first."""
    if not root.is_dir():
        return []
    gens = [(int(m.group(1)), p) for p in root.iterdir()
            if p.is_dir() and (m := GEN_RE.match(p.name))]
    return [p for _, p in sorted(gens)]


def current(root: Path) -> Path | None:
    """The generation ``CURRENT`` names, else the newest one, else None."""
    pointer = root / POINTER
    if pointer.is_file():
        try:
            name = pointer.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("%s unreadable (%s): using the newest generation", pointer, exc)
            name = None
        if name and GEN_RE.match(name) and (root / name).is_dir():
            return root / name
        if name == "":
            log.warning("%s is empty: using the newest generation", pointer)
        elif name:
            log.warning("%s names '%s', which is not a generation here: using the newest one",
                        pointer, name[:80])
    gens = generations(root)
    return gens[-1] if gens else None


def begin(root: Path) -> tuple[Path, str]:
    """A fresh, empty build folder and the generation name it will get."""
    root.mkdir(parents=True, exist_ok=True)
    if not os.access(root, os.W_OK):
        raise InputError("map folder is not writable", root)
    gens = generations(root)
    number = int(GEN_RE.match(gens[-1].name).group(1)) + 1 if gens else 1
    name = f"gen-{number:06d}"
    tmp = root / f".building-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp, name


def publish(root: Path, tmp: Path, name: str, keep: int) -> Path:
    """Make the finished build folder ``tmp`` the current generation; prune old ones."""
    for f in tmp.iterdir():
        fsync_file(f)
    fsync_dir(tmp)
    final = root / name
    while final.exists():          # another writer took the name meanwhile: take the next one
        number = int(GEN_RE.match(final.name).group(1)) + 1
        final = root / f"gen-{number:06d}"
    os.rename(tmp, final)
    fsync_dir(root)
    write_atomically(root / POINTER, f"{final.name}\n".encode(),
                     tmp=root / f".{POINTER}.{os.getpid()}", sync=True)
    fsync_dir(root)
    prune(root, keep)
    return final


def prune(root: Path, keep: int) -> list[str]:
    """Remove all but the newest ``keep`` generations (never the current one), abandoned build
    folders and leftovers of earlier prunes. Returns the names removed."""
    keep = max(1, int(keep))
    cur = current(root)
    gens = generations(root)
    doomed = [g for g in gens[:-keep] if g != cur]
    for p in root.iterdir() if root.is_dir() else ():
        m = _BUILD_RE.match(p.name)
        if m and not pid_alive(int(m.group(1))):
            doomed.append(p)
        elif p.name.startswith(_TRASH_PREFIX) or (p.name.startswith(f".{POINTER}.")
                                                 and not pid_alive(_tail_pid(p.name))):
            doomed.append(p)
    removed = []
    for p in doomed:
        # Rename first, so an interrupted delete never leaves a half generation named gen-*.
        trash = p if p.name.startswith(_TRASH_PREFIX) else root / f"{_TRASH_PREFIX}{p.name}"
        try:
            if trash != p:
                os.rename(p, trash)
            if trash.is_dir():
                shutil.rmtree(trash, ignore_errors=True)
            else:
                trash.unlink(missing_ok=True)
            removed.append(p.name)
        except OSError as exc:
            log.warning("could not remove old map data %s: %s", p, exc)
    if removed:
        log.info("map %s: removed %s", root, ", ".join(removed))
    return removed


def _tail_pid(name: str) -> int:
    tail = name.rsplit(".", 1)[-1]
    return int(tail) if tail.isdigit() else -1
