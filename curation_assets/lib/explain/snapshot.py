"""The Delta tables as of a moment: which version of each table a trace reads, and bounded reads.

:class:`AsOf` says which version of each table to read: the latest (default), the last version
committed at or before a timestamp, or a version pinned per table (``curated_dataset=12``);
a pin wins over the timestamp for its table. :class:`Snapshot` resolves it table by table
(once each) and reads rows with a partition filter and a row filter that also prunes files by
the Delta log's min/max statistics, so that every read names the version and the number of
data files it opened (:class:`Source`).

A timestamp is resolved from the table's commit history (log only, cost ∝ commits): the last
commit whose timestamp is ≤ it. deltalake's own ``load_as_version(datetime)`` returns version
0 for a time before the table existed, which would report rows that were written later; here
such a table is *absent* (version None) and reported as such.
"""

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pa_fs
from deltalake import DeltaTable

from curation_assets.lib.deltalog import LogMovingError, settled_history
from curation_assets.lib.errors import ConfigError
from curation_assets.lib.revisions import CHANGES, DELETED, REVISION, graph_merged, merged
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import TABLES, TableSpec

Filter = tuple[str, str, Any]
"""``(column, op, value)`` with op ``=``, ``in``, ``>=`` or ``<``."""


class AsOfError(ConfigError):
    """An ``--as-of`` value that cannot be parsed or names an unknown table / version."""


@dataclass(frozen=True)
class AsOf:
    """Which version of each table to read.

    Attributes:
        timestamp: Read each table as of this moment (UTC); None: the latest version.
        versions: Table name -> pinned version (wins over ``timestamp`` for that table).
    """

    timestamp: dt.datetime | None = None
    versions: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        stamp = self.timestamp.isoformat() if self.timestamp else None
        return {"timestamp": stamp, "versions": dict(self.versions)}

    @property
    def latest(self) -> bool:
        """True when every table is read at its latest version."""
        return self.timestamp is None and not self.versions


_PIN = re.compile(r"^([a-z0-9_]+)=(\d+)$")


def parse_as_of(values: Iterable[str]) -> AsOf:
    """Parse ``--as-of`` values: one ISO timestamp and/or ``table=version`` pins.

    A timestamp without a zone is taken as UTC.

    Raises:
        AsOfError: For a value that is neither, two timestamps, or an unknown table.
    """
    stamp: dt.datetime | None = None
    pins: dict[str, int] = {}
    for raw in values:
        value = raw.strip()
        pin = _PIN.match(value)
        if pin:
            name, version = pin.group(1), int(pin.group(2))
            if name not in TABLES:
                msg = f"--as-of {value!r}: no table {name!r}; known tables: {', '.join(TABLES)}"
                raise AsOfError(msg)
            pins[name] = version
            continue
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            msg = (
                f"--as-of {value!r}: expected an ISO timestamp (2025-01-31T12:00:00, UTC when "
                "no zone is given) or table=version (e.g. curated_dataset=12)"
            )
            raise AsOfError(msg) from None
        if stamp is not None:
            msg = f"--as-of {value!r}: a timestamp was already given ({stamp.isoformat()})"
            raise AsOfError(msg)
        stamp = parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    return AsOf(stamp, pins)


@dataclass(frozen=True)
class Source:
    """One read behind a stage of a trace.

    Attributes:
        table: Table name.
        version: Delta version read; None when the table did not exist at the as-of moment.
        rows: Rows that matched.
        files: Data files opened (after partition and statistics pruning).
        scope: What was read, e.g. ``shard=shard-000`` or ``image_id`` lookup.
    """

    table: str
    version: int | None
    rows: int
    files: int
    scope: str


class Snapshot:
    """The tables under ``store`` as of ``as_of``; versions resolved lazily, once per table."""

    def __init__(self, store: DeltaStore, as_of: AsOf) -> None:
        self.store = store
        self.as_of = as_of
        self._versions: dict[str, int | None] = {}

    def version(self, name: str) -> int | None:
        """The version of table ``name`` to read; None when it did not exist then.

        Raises:
            AsOfError: If a pinned version does not exist.
        """
        if name not in self._versions:
            self._versions[name] = self._resolve(name)
        return self._versions[name]

    @property
    def resolved(self) -> dict[str, int | None]:
        """Every table resolved so far and its version (None: absent then), by name."""
        return dict(sorted(self._versions.items()))

    def _open(self, name: str, version: int | None = None) -> DeltaTable | None:
        if not self.store.exists(name):
            return None
        opts = self.store.storage_options or None
        return DeltaTable(self.store.uri(name), version=version, storage_options=opts)

    def _filesystem(self, name: str) -> pa_fs.FileSystem | None:
        """Arrow's native filesystem for a local table (None: deltalake's own, object stores).

        deltalake's default is a Python-implemented pyarrow filesystem. A dataset scan over it
        can drop its last reference on an Arrow worker thread after ``to_table`` returned; when
        that happens during interpreter shutdown the thread cannot take the GIL and the process
        aborts ("terminate called without an active exception", exit 134: seen in about one
        ``curation explain`` of ten, gdb shows ``PyFileSystem`` released in
        ``OwnedRefNoGIL::~OwnedRefNoGIL`` on an Arrow thread). The native filesystem holds no
        Python object.
        """
        if not self.store.is_local:
            return None
        return pa_fs.SubTreeFileSystem(self.store.uri(name), pa_fs.LocalFileSystem())

    def _resolve(self, name: str) -> int | None:
        table = self._open(name)
        if table is None:
            return None
        latest = table.version()
        if name in self.as_of.versions:
            pinned = self.as_of.versions[name]
            if pinned > latest:
                msg = f"--as-of {name}={pinned}: {name} has versions 0..{latest}"
                raise AsOfError(msg)
            return pinned
        if self.as_of.timestamp is None:
            return latest
        limit_ms = self.as_of.timestamp.timestamp() * 1000
        try:
            entries = settled_history(table, lambda version: version + 1)
        except LogMovingError as exc:
            msg = f"{name}'s log kept moving while its history was read: try again"
            raise AsOfError(msg) from exc
        committed = [
            int(h["version"])
            for h in entries
            if "version" in h and int(h.get("timestamp", 0)) <= limit_ms
        ]
        return max(committed) if committed else None

    def columns(self, spec: TableSpec) -> list[str]:
        """The columns table ``spec`` had at its version ([] when absent then).

        A table written before a column was added to its spec lacks it: read only these.
        """
        version = self.version(spec.name)
        table = None if version is None else self._open(spec.name, version)
        return [] if table is None else [f.name for f in table.schema().fields]

    def shards(self, spec: TableSpec) -> set[str]:
        """The shards present in a shard-partitioned table at its version (Delta log only)."""
        version = self.version(spec.name)
        if version is None:
            return set()
        return set(self.store.shard_files(spec.name, version))

    def _read_changed(
        self,
        spec: TableSpec,
        table: DeltaTable,
        names: list[str],
        where: Sequence[Sequence[Filter]],
        cols: list[str],
    ) -> pl.DataFrame:
        """:meth:`read` of a table with appended change rows (``spec.change_key``).

        The rows ``where`` matches are found after the merge: a base row that matches may be
        superseded by a change row that does not, and the other way round.
        """
        raw = _read_changed_rows(table, self._filesystem(spec.name), names, where)
        df = pl.from_arrow(raw)
        assert isinstance(df, pl.DataFrame)
        merged_rows = graph_merged(df.lazy(), spec.change_key, names, spec.column_names)
        groups = [list(g) for g in where]
        matching = _expression(groups) if groups else None
        out = merged_rows.collect().to_arrow()
        if matching is not None:
            out = out.filter(matching)
        df = pl.from_arrow(out)
        assert isinstance(df, pl.DataFrame)
        return df.select(cols)

    def read(
        self,
        spec: TableSpec,
        *,
        shards: Sequence[str] | None = None,
        where: Sequence[Sequence[Filter]] = (),
        columns: Sequence[str] | None = None,
        scope: str = "",
    ) -> tuple[pl.DataFrame, Source]:
        """Rows of ``spec`` in ``shards`` matching ``where`` (OR of AND groups).

        Files are chosen by the Delta log: the shard partitions exactly, the other filters by
        each file's min/max statistics (a superset); the rows are then filtered exactly while
        reading (parquet row-group statistics prune further). Memory: the matching rows.
        """
        version = self.version(spec.name)
        cols = list(columns) if columns is not None else spec.column_names
        if version is None:
            return spec.empty().select(cols), Source(spec.name, None, 0, 0, scope)
        table = self._open(spec.name, version)
        assert table is not None  # version() found it
        names = [f.name for f in table.schema().fields]
        if spec.change_key and DELETED in names:
            df = self._read_changed(spec, table, names, where, cols)
            return df, Source(spec.name, version, df.height, len(table.file_uris()), scope)
        key = spec.revision_key if REVISION in names else None
        asked = cols
        if key is not None:  # changed in place: read the change rows too, then merge
            if any(f[0] not in (key, "shard") for g in where for f in g):
                msg = f"{spec.name}: filters on a table changed in place name only {key}, shard"
                raise ValueError(msg)
            cols = names
        groups = [list(g) for g in where] or [[]]
        if shards is not None:
            wanted = sorted(shards) if key is None else [*sorted(shards), CHANGES]
            groups = [[("shard", "in", wanted), *g] for g in groups]
        if shards is not None and not shards:
            return spec.empty().select(cols), Source(spec.name, version, 0, 0, scope)
        prune = [g for g in groups if g] or None
        dataset = table.to_pyarrow_dataset(
            file_pruning_predicate=_dnf(prune), filesystem=self._filesystem(spec.name)
        )
        files = len(dataset.files) if isinstance(dataset, ds.FileSystemDataset) else 0
        expr = _expression(groups)
        arrow: pa.Table = dataset.to_table(columns=cols, filter=expr)
        df = pl.from_arrow(arrow)
        assert isinstance(df, pl.DataFrame)
        if key is not None:
            df = merged(df.lazy(), key, names, shards).select(asked).collect()
        return df, Source(spec.name, version, df.height, files, scope)


def _read_changed_rows(
    table: DeltaTable,
    filesystem: Any,
    names: list[str],
    where: Sequence[Sequence[Filter]],
) -> pa.Table:
    """The base rows matching ``where`` (files pruned by statistics) and every change row."""
    groups = [list(g) for g in where] or [[]]
    prune = [g for g in groups if g] or None
    matching = _expression(groups)
    base = pc.field(DELETED).is_null()
    pruned = table.to_pyarrow_dataset(file_pruning_predicate=_dnf(prune), filesystem=filesystem)
    rows = pruned.to_table(columns=names, filter=base if matching is None else base & matching)
    every = table.to_pyarrow_dataset(filesystem=filesystem)
    changes = every.to_table(columns=names, filter=pc.field(DELETED).is_valid())
    return pa.concat_tables([rows, changes.cast(rows.schema)])


def _dnf(groups: list[list[Filter]] | None) -> Any:
    """Deltalake's tuple filters: a flat list for one group, a list of lists for an OR."""
    if groups is None:
        return None
    return groups[0] if len(groups) == 1 else groups


def _expression(groups: list[list[Filter]]) -> ds.Expression | None:
    """The pyarrow row filter of ``groups`` (OR of ANDs); None when empty."""
    ors: list[ds.Expression] = []
    for group in groups:
        ands: list[ds.Expression] = []
        for column, op, value in group:
            f = pc.field(column)
            if op == "=":
                ands.append(f == value)
            elif op == "in":
                ands.append(f.isin(list(value)))
            elif op == ">=":
                ands.append(f >= value)
            elif op == "<":
                ands.append(f < value)
            else:
                msg = f"filter op {op!r} on {column!r}: expected =, in, >= or <"
                raise ValueError(msg)
        if ands:
            expr = ands[0]
            for e in ands[1:]:
                expr = expr & e
            ors.append(expr)
    if not ors:
        return None
    out = ors[0]
    for e in ors[1:]:
        out = out | e
    return out
