"""A lock shared by the processes of one machine on a local Delta root: ``flock`` on a file.

The kernel releases an ``flock`` when its holder dies, so a killed process never leaves the
lock stuck. :meth:`~curation_assets.lib.storage.DeltaStore.lock` uses it for local roots (an
object-store root holds a :class:`~curation_assets.lib.leases.DeltaLease` instead).
"""

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from curation_assets.lib.deltawrite import unwritable, writer_identity

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def file_lock(path: Path, *, poll_s: float) -> Iterator[None]:
    """Hold the exclusive ``flock`` of ``path`` (created, with its folder, when missing).

    While waiting, the holder (written into the file by each holder) is logged every
    ``poll_s`` seconds.

    Raises:
        StorageUnwritableError: If the lock file cannot be created (a full or read-only root).
    """
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        error = unwritable(exc, f"taking lock {path}")
        if error is not None:
            raise error from exc
        raise
    try:
        waited = 0.0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if waited % poll_s < 0.5:
                    holder = path.read_text(errors="replace").strip() or "unknown"
                    logger.warning(
                        "waiting for lock %s held by %s (%.0fs so far)", path, holder, waited
                    )
                time.sleep(0.5)
                waited += 0.5
        with contextlib.suppress(OSError):  # who holds it is for messages only
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"holder": writer_identity()}).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock
