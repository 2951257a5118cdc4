"""What a failed Delta write means, and how writes are laid out in parquet.

:class:`StorageUnwritableError` (and :func:`unwritable`, which maps an OS error to it) tells a
full or read-only root apart from a bug; :func:`writer_properties` sizes row groups;
:func:`sql_literal` quotes a predicate's value. Used by
:class:`~curation_assets.lib.storage.DeltaStore` for every write.
"""

import errno
import os
import re
import socket
from collections.abc import Callable, Iterator
from typing import Any

import polars as pl
import pyarrow as pa
from deltalake import WriterProperties

from curation_assets.lib.errors import PermanentError


class StorageUnwritableError(PermanentError, OSError):
    """The Delta root cannot take a write: no space, read-only, quota or permission.

    Raised instead of deltalake's generic error (which may read "Failed to parse parquet" for
    a full disk). Nothing of the failed write is committed, so freeing space (or making the
    root writable) and re-running converges; retrying at once does not help, so the Dagster
    steps fail at once on it.
    """


#: OS errors that make a storage root unwritable, with the advice given for each.
_UNWRITABLE = {
    errno.ENOSPC: "no space left on device: free space (or move the Delta root) and re-run",
    errno.EDQUOT: "disk quota exceeded: free space (or move the Delta root) and re-run",
    errno.EROFS: "read-only file system: remount it read-write (or move the Delta root)",
    errno.EACCES: "permission denied: fix the owner/permissions of the Delta root",
    errno.EPERM: "operation not permitted: fix the owner/permissions of the Delta root",
}


def unwritable(exc: BaseException, what: str) -> StorageUnwritableError | None:
    """``exc`` as a :class:`StorageUnwritableError` about ``what``, if it is one of those."""
    code = getattr(exc, "errno", None)
    if code not in _UNWRITABLE:
        found = re.search(r"os error (\d+)", str(exc))
        code = int(found.group(1)) if found else None
    if code not in _UNWRITABLE:
        return None
    return StorageUnwritableError(
        code,
        f"{what}: {os.strerror(code)} (os error {code}); {_UNWRITABLE[code]}. "
        "Nothing of this write was committed; the re-run converges.",
    )


#: Bytes of one parquet row group as a write buffers it. Delta's writer holds a file's rows
#: until its row group (default 1M rows) is full: a table of 1 KiB vectors wrote at 3× its size
#: in memory (measured: a 374 MB frame of ``duplicate_members`` peaked 1.1 GB above it; with
#: 16k-row groups 0.6 GB).
ROW_GROUP_BYTES = 16 * 2**20


class FrameSlices:
    """A polars frame handed to Delta's writer as Arrow one slice at a time; re-readable.

    ``pl.DataFrame.to_arrow`` copies every string and binary column (polars holds them as
    views): converting a frame of vectors whole held it twice more while the writer buffered
    its row groups. Each read of this source (``__arrow_c_stream__``: a retried commit reads
    it again) converts slices of about :data:`ROW_GROUP_BYTES`, so the copy is one slice.

    Attributes:
        frame: The rows.
        schema: Their Arrow schema (the table's).
        num_rows: Rows.
        nbytes: polars' estimate of the frame's bytes (sizes the row groups).
    """

    def __init__(
        self, frame: pl.DataFrame, schema: pa.Schema, to_arrow: Callable[[pl.DataFrame], pa.Table]
    ) -> None:
        self.frame = frame
        self.schema = schema
        self.num_rows = frame.height
        self.nbytes = max(1, int(frame.estimated_size()))
        self.slice_rows = max(1024, ROW_GROUP_BYTES * max(1, frame.height) // self.nbytes)
        self._to_arrow = to_arrow

    def reader(self) -> pa.RecordBatchReader:
        """A fresh stream of the rows, slice after slice."""

        def batches() -> Iterator[pa.RecordBatch]:
            for start in range(0, self.num_rows, self.slice_rows):
                yield from self._to_arrow(self.frame.slice(start, self.slice_rows)).to_batches()

        return pa.RecordBatchReader.from_batches(self.schema, batches())

    def __arrow_c_stream__(self, requested_schema: object = None) -> object:
        """The Arrow PyCapsule stream protocol (what ``write_deltalake`` reads)."""
        return self.reader().__arrow_c_stream__(requested_schema)


_SAFE_VALUE = re.compile(r"^[A-Za-z0-9._\-]+$")


def sql_literal(value: str) -> str:
    """Quote ``value`` as a SQL string literal for a Delta predicate.

    Raises:
        ValueError: If ``value`` is not ``[A-Za-z0-9._-]+`` (shard keys are checked at discovery).
    """
    if not _SAFE_VALUE.match(value):
        msg = f"value {value!r} is not a safe partition value; expected [A-Za-z0-9._-]+"
        raise ValueError(msg)
    return f"'{value}'"


def writer_properties(data: Any) -> WriterProperties:
    """Row groups of about :data:`ROW_GROUP_BYTES` (4k..1M rows), snappy as Delta's default.

    A table's (or :class:`FrameSlices`') bytes per row size them; a stream's are unknown:
    16k rows a group.
    """
    rows = 16_384
    if isinstance(data, pa.Table | FrameSlices) and data.num_rows:
        rows = ROW_GROUP_BYTES * data.num_rows // max(1, data.nbytes)
    return WriterProperties(max_row_group_size=min(max(rows, 4096), 1 << 20), compression="SNAPPY")


def writer_identity() -> str:
    """``host:pid`` of this process, stored in every commit's info."""
    return f"{socket.gethostname()}:{os.getpid()}"
