"""Publishing export files atomically, and noticing when they changed (stage 8).

A reader of the export folder sees the previous version of a file or folder or the complete
new one, never a partial one: files are written under a temporary name and renamed
(:func:`write_file_atomic`); a folder is built beside a symlink and the symlink swapped
(:func:`staging_dir`, :func:`publish_dir`). :func:`file_stamps` and :func:`files_unchanged` let
the export tell whether the files are still as its last commit left them.
"""

import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from curation_assets.lib import objectstore as ost
from curation_assets.lib.objectstore import is_remote


def write_file_atomic(path: Path, write: Callable[[Path], Any]) -> Path:
    """Write a file under a temporary name in its folder, then rename it into place.

    A reader sees the old file or the complete new one, never a partial file; a process
    killed while writing leaves only a ``.NAME.*.tmp`` file, removed by the next call.

    Args:
        path: Final path.
        write: Called with the temporary path; writes the whole file there.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)
    return path


def staging_dir(link: Path) -> Path:
    """A fresh folder beside ``link`` to build a new version of its content in.

    Folders of earlier builds that were never published (a killed run) are deleted first.
    """
    link.parent.mkdir(parents=True, exist_ok=True)
    current = link.resolve() if link.is_symlink() else None
    for old in link.parent.glob(f".{link.name}-*"):
        if old.is_dir() and old.resolve() != current:
            shutil.rmtree(old, ignore_errors=True)
    staged = link.with_name(f".{link.name}-{uuid.uuid4().hex[:12]}")
    staged.mkdir()
    return staged


def publish_dir(staged: Path, link: Path) -> Path:
    """Make ``link`` point at the complete folder ``staged``, atomically (a symlink swap).

    ``staged`` may be anywhere under ``link``'s folder (the symlink is relative to it).

    Readers that open ``link/...`` see the previous version or the new one, never a mix. The
    previous version is deleted afterwards. A real folder at ``link`` (from an older layout) is
    moved aside and deleted.

    Returns:
        ``link``.
    """
    tmp = link.with_name(f".{link.name}.{os.getpid()}.link")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    # relative: the export folder can be moved as a whole
    os.symlink(os.path.relpath(staged, link.parent), tmp)
    previous: Path | None = None
    if link.is_symlink():
        previous = link.resolve()
    elif link.exists():
        previous = link.with_name(f".{link.name}-legacy-{uuid.uuid4().hex[:12]}")
        link.rename(previous)
    os.replace(tmp, link)
    if previous is not None and previous != staged.resolve():
        shutil.rmtree(previous, ignore_errors=True)
    return link


def file_stamps(
    paths: Iterable[Path | str], options: Mapping[str, str] | None = None
) -> dict[str, list[int]]:
    """``path → [size, mtime_ns]`` (a folder or symlink: of what it resolves to).

    A path may be an object-store URI (``options``: its storage options).

    Raises:
        FileNotFoundError: If an object-store path has no file.
    """
    out = {}
    for p in paths:
        if is_remote(p):
            found = ost.stat(p, options or {})
            if found is None:
                raise FileNotFoundError(str(p))
            out[str(p)] = [found.size, found.mtime_ns]
            continue
        st = Path(p).resolve().stat()
        out[str(p)] = [int(st.st_size), int(st.st_mtime_ns)]
    return out


def files_unchanged(
    stamps: Mapping[str, Sequence[int]], options: Mapping[str, str] | None = None
) -> bool:
    """Whether every file still has the size and modification time :func:`file_stamps` saw."""
    for path, stamp in stamps.items():
        if is_remote(path):
            found = ost.stat(path, options or {})
            if found is None or [found.size, found.mtime_ns] != list(stamp):
                return False
            continue
        try:
            st = Path(path).resolve().stat()
        except OSError:
            return False
        if [int(st.st_size), int(st.st_mtime_ns)] != list(stamp):
            return False
    return True
