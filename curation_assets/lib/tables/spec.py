"""What a table is: a name, ordered columns (polars dtype and description each), partitioning.

Every Delta table the pipeline writes is a :class:`TableSpec` declared in
:mod:`curation_assets.lib.tables` (one module per stage). The Dagster glue turns the same spec
into a ``dg.TableSchema`` for ``dagster/column_schema`` metadata, so the schema a user sees in
the UI is the schema that is written.
"""

from dataclasses import dataclass

import polars as pl
import pyarrow as pa

UTC_TIMESTAMP = pl.Datetime("us", "UTC")
"""The dtype of every timestamp column: microseconds, UTC."""


@dataclass(frozen=True)
class Column:
    """One column of a table.

    Attributes:
        name: Column name.
        dtype: Polars dtype written to Delta.
        description: What the column means, shown in the Dagster UI.
    """

    name: str
    dtype: pl.DataType | type[pl.DataType]
    description: str


@dataclass(frozen=True)
class TableSpec:
    """A Delta table: its name (equal to the asset name), columns and partitioning.

    Attributes:
        name: Table name, also the folder under the Delta root.
        columns: Ordered columns.
        description: One-line description of a row.
        partition_by: Delta partition columns (``("shard",)`` for per-shard tables).
        revision_key: For a per-shard table whose rows change in place, the column that keys
            a row: changed rows are appended and merged on read
            (:mod:`curation_assets.lib.revisions`). None: rows are only ever replaced.
        change_key: For an unpartitioned table whose rows change in place, the columns that
            key a row: changed rows and tombstones are appended and merged on read
            (:func:`curation_assets.lib.revisions.graph_merged`). Empty: only ever replaced.
    """

    name: str
    columns: tuple[Column, ...]
    description: str
    partition_by: tuple[str, ...] = ("shard",)
    revision_key: str | None = None
    change_key: tuple[str, ...] = ()

    @property
    def schema(self) -> pl.Schema:
        """The polars schema of the table."""
        return pl.Schema({c.name: c.dtype for c in self.columns})

    @property
    def column_names(self) -> list[str]:
        """Column names in order."""
        return [c.name for c in self.columns]

    def to_arrow(self, df: pl.DataFrame) -> "pa.Table":
        """``df`` conformed to this table and as Arrow with exactly the table's Arrow schema."""
        return self.conform(df).to_arrow().cast(self.empty().to_arrow().schema)

    def empty(self) -> pl.DataFrame:
        """An empty frame with this table's schema."""
        return pl.DataFrame(schema=self.schema)

    def conform(self, df: pl.DataFrame) -> pl.DataFrame:
        """Select and cast ``df`` to this table's columns, in order.

        Raises:
            ValueError: If a column of the spec is missing from ``df``.
        """
        missing = [c for c in self.column_names if c not in df.columns]
        if missing:
            msg = (
                f"table {self.name!r}: frame lacks columns {missing}; it has {df.columns}. "
                "This is a bug in the stage that built the frame."
            )
            raise ValueError(msg)
        return df.select([pl.col(c.name).cast(c.dtype) for c in self.columns])
