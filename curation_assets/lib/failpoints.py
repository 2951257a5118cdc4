"""Fault injection for the crash tests: kill this process at a chosen Delta write.

``CURATION_FAILPOINT=PHASE:TABLE[:N]`` SIGKILLs the process at the N-th (default first) write
to TABLE: ``before`` it starts, ``during`` it (after the first batch reached the writer, before
the commit) or ``after`` it committed. Unset in normal use
(:meth:`~curation_assets.lib.storage.DeltaStore._write` asks :func:`failpoint` at each write).
"""

import itertools
import logging
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

logger = logging.getLogger(__name__)

#: The variable that arms a failpoint (format: the module's docstring).
FAILPOINT_ENV = "CURATION_FAILPOINT"
_write_counts: dict[str, int] = {}


def failpoint(table: str) -> str | None:
    """The phase at which to kill this write, per :data:`FAILPOINT_ENV` (None: don't)."""
    spec = os.environ.get(FAILPOINT_ENV)
    if not spec:
        return None
    phase, _, rest = spec.partition(":")
    target, _, nth = rest.partition(":")
    if target != table:
        return None
    _write_counts[table] = _write_counts.get(table, 0) + 1
    if _write_counts[table] != int(nth or 1):
        return None
    if phase == "before":
        die()
    return phase


def die() -> None:
    """SIGKILL this process (no cleanup, no commit: what the crash tests simulate)."""
    logger.warning("failpoint %s: SIGKILL", os.environ.get(FAILPOINT_ENV))
    os.kill(os.getpid(), signal.SIGKILL)


def dying_stream(data: Any) -> pa.RecordBatchReader:
    """``data`` as a stream that hands the writer its first batch, then kills the process."""
    reader = (
        data if isinstance(data, pa.RecordBatchReader) else pa.RecordBatchReader.from_stream(data)
    )

    def batches() -> Iterator[pa.RecordBatch]:
        yield from itertools.islice(reader, 1)
        time.sleep(0.2)  # let the writer flush what it has
        die()

    return pa.RecordBatchReader.from_batches(reader.schema, batches())
