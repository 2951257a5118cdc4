"""Delta Lake storage: one root URI, one folder per table, shard-exact partition replacement.

Per-shard tables are Delta-partitioned by ``shard``. Writing a shard is a single Delta
transaction ``overwrite ... WHERE shard = '<key>'``: the shard's old rows are replaced, every
other shard is untouched, and a reader never sees a half-written shard.
"""

import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import polars as pl
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import TableNotFoundError

from curation_assets.lib.tables import TableSpec

logger = logging.getLogger(__name__)

_SAFE_VALUE = re.compile(r"^[A-Za-z0-9._\-]+$")


def sql_literal(value: str) -> str:
    """Quote ``value`` as a SQL string literal for a Delta predicate.

    Raises:
        ValueError: If ``value`` holds characters outside ``[A-Za-z0-9._-]`` (shard keys are
            validated at discovery, so this guards against a bug, not user data).
    """
    if not _SAFE_VALUE.match(value):
        msg = f"value {value!r} is not a safe partition value; expected [A-Za-z0-9._-]+"
        raise ValueError(msg)
    return f"'{value}'"


class DeltaStore:
    """Delta tables under one root URI.

    Args:
        root_uri: Local folder or object-store URI (``s3://bucket/prefix``, ``gs://...``,
            ``az://...``). Local folders are created on first write.
        storage_options: Passed to deltalake for object stores (credentials, endpoint, ...).
    """

    def __init__(self, root_uri: str, storage_options: dict[str, str] | None = None) -> None:
        self.root_uri = root_uri
        self.storage_options = dict(storage_options or {})

    @property
    def is_local(self) -> bool:
        """True when the root is a local folder."""
        return "://" not in self.root_uri or self.root_uri.startswith("file://")

    def uri(self, table: str) -> str:
        """URI of ``table`` under the root."""
        if self.is_local:
            root = self.root_uri.removeprefix("file://")
            return str(Path(root).expanduser().resolve() / table)
        return f"{self.root_uri.rstrip('/')}/{table}"

    def exists(self, table: str) -> bool:
        """Whether ``table`` has been written at least once."""
        try:
            DeltaTable(self.uri(table), storage_options=self.storage_options or None)
        except TableNotFoundError:
            return False
        return True

    def version(self, table: str) -> int | None:
        """Current Delta version of ``table`` (None when it does not exist)."""
        try:
            return DeltaTable(
                self.uri(table), storage_options=self.storage_options or None
            ).version()
        except TableNotFoundError:
            return None

    def replace_shard(
        self,
        spec: TableSpec,
        shard: str,
        data: pl.DataFrame | Iterable[pl.DataFrame],
        *,
        where: dict[str, str] | None = None,
    ) -> int:
        """Replace exactly one shard's rows of a shard-partitioned table, atomically.

        Args:
            spec: The table; must be partitioned by ``shard``.
            shard: Partition key; every row of ``data`` must carry it.
            data: One frame, or an iterable of frames streamed into the same transaction
                (memory stays bounded by one frame).
            where: Extra equality conditions narrowing what is replaced inside the shard
                (e.g. ``{"stage": "embed"}`` so one stage does not erase another's rows).

        Returns:
            Rows written.

        Raises:
            ValueError: If a row carries another shard or a ``where`` column differs.
        """
        if spec.partition_by != ("shard",):
            msg = f"table {spec.name!r} is partitioned by {spec.partition_by}, not ('shard',)"
            raise ValueError(msg)
        conditions = {"shard": shard, **(where or {})}
        predicate = " AND ".join(f"{k} = {sql_literal(v)}" for k, v in conditions.items())
        frames = [data] if isinstance(data, pl.DataFrame) else data
        schema = spec.empty().to_arrow().schema
        written = 0

        failure: list[BaseException] = []

        def batches() -> Iterator[pa.RecordBatch]:
            nonlocal written
            try:
                for frame in frames:
                    frame = spec.conform(frame)
                    for col, value in conditions.items():
                        bad = frame.filter(pl.col(col) != value).height
                        if bad:
                            msg = (
                                f"{bad} rows for table {spec.name!r} have {col} != {value!r}; "
                                "a shard write may only contain that shard's rows"
                            )
                            raise ValueError(msg)
                    written += frame.height
                    yield from frame.to_arrow().cast(schema).to_batches()
            except BaseException as exc:  # re-raised below, unwrapped from deltalake's error
                failure.append(exc)
                raise

        reader = pa.RecordBatchReader.from_batches(schema, batches())
        try:
            write_deltalake(
                self.uri(spec.name),
                reader,
                mode="overwrite",
                partition_by=list(spec.partition_by),
                predicate=predicate,
                storage_options=self.storage_options or None,
            )
        except Exception as exc:
            if failure:  # the producer failed: nothing was committed; raise its own error
                raise failure[0] from exc
            raise
        logger.info("delta %s: replaced %s with %d rows", spec.name, predicate, written)
        return written

    def replace_table(self, spec: TableSpec, df: pl.DataFrame) -> int:
        """Overwrite a whole (unpartitioned) table in one transaction; returns rows written."""
        table = spec.to_arrow(df)
        write_deltalake(
            self.uri(spec.name),
            table,
            mode="overwrite",
            partition_by=list(spec.partition_by) or None,
            schema_mode="overwrite",
            storage_options=self.storage_options or None,
        )
        logger.info("delta %s: overwritten with %d rows", spec.name, table.num_rows)
        return table.num_rows

    def append(self, spec: TableSpec, df: pl.DataFrame) -> int:
        """Append rows to a table in one transaction; returns rows written."""
        table = spec.to_arrow(df)
        if table.num_rows:
            write_deltalake(
                self.uri(spec.name),
                table,
                mode="append",
                partition_by=list(spec.partition_by) or None,
                storage_options=self.storage_options or None,
            )
        logger.info("delta %s: appended %d rows", spec.name, table.num_rows)
        return table.num_rows

    def scan(self, spec: TableSpec) -> pl.LazyFrame:
        """Lazy scan of a table; an empty frame of the right schema when it does not exist."""
        if not self.exists(spec.name):
            return spec.empty().lazy()
        return pl.scan_delta(self.uri(spec.name), storage_options=self.storage_options or None)

    def read(
        self,
        spec: TableSpec,
        *,
        shards: Iterable[str] | None = None,
        columns: list[str] | None = None,
    ) -> pl.DataFrame:
        """Read a table (optionally only some shards and columns)."""
        lf = self.scan(spec)
        if shards is not None:
            lf = lf.filter(pl.col("shard").is_in(list(shards)))
        if columns is not None:
            lf = lf.select(columns)
        return lf.collect()
