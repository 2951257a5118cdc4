"""Delta Lake storage: one root URI, one folder per table, shard-exact partition replacement.

Per-shard tables are Delta-partitioned by ``shard``. Writing a shard is a single Delta
transaction ``overwrite ... WHERE shard = '<key>'``: the shard's old rows are replaced, every
other shard is untouched, and a reader never sees a half-written shard.

Concurrency: every commit carries ``curation.writer`` (host, pid) in its commit info. Two
processes creating the same table at once race for version 0; the loser's commit fails and is
retried against the table the winner created. A commit that still fails after the retries
raises :class:`ConcurrentWriteError` naming the writer of the latest commit. Every write
returns the version it committed, so a stage writing several tables can record them (see
:mod:`curation_assets.lib.commits`) and read them back with ``version=``.
"""

import contextlib
import json
import logging
import random
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from curation_assets.lib.deltalog import (
    SHARDS_KEY,
    TABLE_PROPERTIES,
    LogMovingError,
    data_version,
    discard_uncommitted,
    settled_history,
    shards_committed_since,
)
from curation_assets.lib.deltawrite import (
    FrameSlices,
    sql_literal,
    unwritable,
    writer_identity,
    writer_properties,
)
from curation_assets.lib.errors import TransientError
from curation_assets.lib.failpoints import die, dying_stream, failpoint
from curation_assets.lib.leases import DeltaLease
from curation_assets.lib.locks import file_lock
from curation_assets.lib.objectstore import is_remote, redacted
from curation_assets.lib.objectstore import storage_options_from_env as env_options
from curation_assets.lib.revisions import CHANGES, graph_merged, merged, stamp
from curation_assets.lib.tables import TableSpec

logger = logging.getLogger(__name__)

#: Write options of a table changed in place: its hidden columns may be newer than its files.
_MERGE = {"schema_mode": "merge"}

#: Commit attempts when a concurrent writer wins the race (first creation, conflicting commit).
COMMIT_ATTEMPTS = 5


class ConcurrentWriteError(TransientError, RuntimeError):
    """A commit kept failing because another process committed to the same table."""


class DeltaStore:
    """Delta tables under one root URI.

    Args:
        root_uri: Local folder or object-store URI (``s3://bucket/prefix``, ``gs://...``,
            ``az://...``). Local folders are created on first write.
        storage_options: Passed to deltalake, polars and :mod:`curation_assets.lib.objectstore`
            for object stores (credentials, endpoint, ...), over the environment's
            (:func:`~curation_assets.lib.objectstore.storage_options_from_env`: the AWS variables
            and ``CURATION_STORAGE_OPTIONS``), so every store built from a root URI alone (the
            CLI, the runner, the Dagster resource) reaches the same bucket. Never logged.
    """

    def __init__(self, root_uri: str, storage_options: dict[str, str] | None = None) -> None:
        self.root_uri = root_uri
        given = dict(storage_options or {})
        self.storage_options = given if not is_remote(root_uri) else {**env_options(), **given}

    def __repr__(self) -> str:
        """The root and the storage options with their secrets redacted."""
        return f"DeltaStore({self.root_uri!r}, storage_options={redacted(self.storage_options)})"

    @property
    def is_local(self) -> bool:
        """True when the root is a local folder."""
        return not is_remote(self.root_uri)

    def uri(self, table: str) -> str:
        """URI of ``table`` under the root."""
        if self.is_local:
            root = self.root_uri.removeprefix("file://")
            return str(Path(root).expanduser().resolve() / table)
        return f"{self.root_uri.rstrip('/')}/{table}"

    def exists(self, table: str) -> bool:
        """Whether ``table`` has been written at least once."""
        return self._table(table) is not None

    def version(self, table: str) -> int | None:
        """Version of ``table``'s latest commit that changed rows (None when it does not exist).

        A vacuum's commits come after it and are not counted (:func:`~.deltalog.data_version`):
        to every stage, a vacuumed table is the one its commit recorded.
        """
        dt = self._table(table)
        return None if dt is None else data_version(dt)

    def _shard_actions(
        self, table: str, version: int | None, column: str, *, changes: bool = False
    ) -> list[tuple[str, Any]]:
        """(shard, ``column``) of each data file of a shard-partitioned table, from the log.

        The change rows' partition (:mod:`~.revisions`) is left out, unless ``changes``.
        """
        dt = self._table(table)
        if dt is None:
            return []
        if version is not None:
            dt.load_as_version(version)
        actions = pa.table(dt.get_add_actions(flatten=True))
        if "partition.shard" not in actions.column_names:
            return []
        pairs = zip(
            actions.column("partition.shard").to_pylist(),
            actions.column(column).to_pylist(),
            strict=True,
        )
        return [(s, v) for s, v in pairs if changes or s != CHANGES]

    def change_row_count(self, table: str, version: int | None = None) -> int:
        """Change rows (:mod:`~.revisions`) of a table not yet folded, from the Delta log."""
        return self.shard_row_counts(table, version, changes=True).get(CHANGES, 0)

    def shard_files(
        self, table: str, version: int | None = None, *, changes: bool = False
    ) -> dict[str, frozenset[str]]:
        """The data files of each shard of a shard-partitioned table (at ``version``).

        Reads only the Delta log (no data file): cost ∝ files, not rows. ``changes``: the
        change rows' partition too, under :data:`~.revisions.CHANGES`.
        """
        files: dict[str, set[str]] = {}
        for shard, path in self._shard_actions(table, version, "path", changes=changes):
            files.setdefault(shard, set()).add(path)
        return {s: frozenset(p) for s, p in files.items()}

    def shard_uris(self, table: str, shards: Iterable[str]) -> list[tuple[str, str]]:
        """(shard, URI) of each data file of some shards, as of the latest version (log only)."""
        dt = self._table(table)
        uris = dt.file_uris if dt is not None else lambda **_: []
        return [(s, u) for s in shards for u in uris(file_pruning_predicate=[("shard", "=", s)])]

    def history(self, table: str, *, since_version: int = -1) -> list[dict[str, Any]]:
        """Commit infos of ``table`` after ``since_version`` (newest first; log only)."""
        if (dt := self._table(table)) is None or dt.version() <= since_version:
            return []
        try:
            entries = settled_history(dt, lambda version: version - since_version)
        except LogMovingError as exc:
            raise ConcurrentWriteError(str(exc)) from exc
        return [e for e in entries if int(e.get("version", -1)) > since_version]

    def shard_row_counts(
        self, table: str, version: int | None = None, *, changes: bool = False
    ) -> dict[str, int]:
        """Rows of each shard of a shard-partitioned table, from the Delta log's file stats.

        ``changes``: the change rows' partition too, under :data:`~.revisions.CHANGES`.
        A file written without statistics (another writer's) has its shard's rows counted.
        """
        counts: dict[str, int] = {}
        unknown: set[str] = set()
        for shard, n in self._shard_actions(table, version, "num_records", changes=changes):
            counts[shard] = counts.get(shard, 0) + int(n or 0)
            if n is None:
                unknown.add(shard)
        if unknown:  # only those shards' files are read (partition pruning)
            lf = pl.scan_delta(
                self.uri(table), version=version, storage_options=self.storage_options or None
            )
            lf = lf.filter(pl.col("shard").is_in(sorted(unknown))).group_by("shard").len()
            counts.update(dict(lf.collect().iter_rows()))
        return counts

    def changed_shards(self, table: str, since_version: int | None) -> set[str]:
        """Shards of a shard-partitioned table whose rows changed after ``since_version``.

        A shard counts as changed when its set of data files differs (written, replaced or
        removed); ``since_version=None`` (nothing seen yet) means every shard now present.
        Reads only the Delta log.
        """
        if since_version is not None:
            dt = self._table(table)
            listed = shards_committed_since(dt, since_version) if dt is not None else None
            if listed is not None:
                return listed
        now = self.shard_files(table, changes=True)
        moved = now.pop(CHANGES, None)
        if since_version is None:
            return set(now)
        before = self.shard_files(table, since_version, changes=True)
        if before.pop(CHANGES, None) != moved:
            return set(now) | set(before)  # rows changed in place: their shards are in the data
        return {s for s in set(now) | set(before) if now.get(s) != before.get(s)}

    @contextlib.contextmanager
    def lock(self, name: str, *, poll_s: float = 5.0, lease_ttl_s: float = 60.0) -> Iterator[None]:
        """Hold an exclusive lock named ``name`` shared by every process using this root.

        Serializes work that must not interleave across processes or Dagster instances sharing
        the Delta root (ingest: which shard keeps an image both contain). Local roots use
        ``flock`` on ``<root>/_locks/<name>.lock``: the kernel releases it when its holder
        dies, so a killed process never leaves it stuck. While waiting, the holder is logged
        every ``poll_s`` seconds. Object-store roots have no ``flock``: they hold a
        :class:`~curation_assets.lib.leases.DeltaLease` in the Delta table
        ``<root>/_locks/leases`` instead (atomic Delta commits decide who takes it; renewed
        while held, it expires ``lease_ttl_s`` after a holder dies).
        """
        if not self.is_local:
            lease = DeltaLease(
                self.uri("_locks/leases"),
                name,
                storage_options=self.storage_options,
                ttl_s=lease_ttl_s,
                log_every_s=poll_s,
            )
            with lease.held():
                yield
            return
        with file_lock(Path(self.uri("_locks")) / f"{name}.lock", poll_s=poll_s):
            yield

    def _table(self, table: str) -> DeltaTable | None:
        try:
            return DeltaTable(self.uri(table), storage_options=self.storage_options or None)
        except TableNotFoundError:
            return None

    def _write(
        self, name: str, data: Any, *, shards: Sequence[str] | None = None, **kwargs: Any
    ) -> int:
        """One Delta commit of ``data`` to table ``name``; returns the committed version.

        A commit that loses a race to another writer (two processes creating the table at
        once, or a conflicting concurrent commit) is retried with jittered backoff, up to
        :data:`COMMIT_ATTEMPTS` times, then raises :class:`ConcurrentWriteError` naming the
        other writer. ``data`` must be re-readable (a table, not a one-shot stream) for a retry;
        a one-shot stream is committed once.
        """
        token = uuid.uuid4().hex
        custom = {
            "curation.writer": writer_identity(),
            "curation.table": name,
            "curation.commit": token,
        }
        if shards is not None:  # what changed_shards reads back from the log's tail
            custom[SHARDS_KEY] = json.dumps(sorted(set(shards)))
        props = CommitProperties(custom_metadata=custom)
        kwargs.setdefault("writer_properties", writer_properties(data))
        attempts = COMMIT_ATTEMPTS if isinstance(data, pa.Table | FrameSlices) else 1
        fault = failpoint(name)
        if fault == "during":
            data = dying_stream(data)
        for attempt in range(1, attempts + 1):
            try:
                table = self._table(name) or self._create(name, data.schema, kwargs)
                write_deltalake(table, data, commit_properties=props, **kwargs)
                version = self._committed_version(name, token)
                if fault == "after":
                    die()
                return version
            except CommitFailedError as exc:
                other = self.last_writer(name)
                if attempt == attempts:
                    tried = (
                        f"failed {attempts} times"
                        if attempts > 1
                        else "failed and cannot be retried here (the rows were streamed)"
                    )
                    msg = (
                        f"commit to Delta table {name!r} {tried} because another process "
                        f"committed first (latest commit by {other}): {exc}. Two runs are "
                        "writing the same table at once; let one finish (a step retry redoes "
                        "this write), or run them from one Dagster instance so its pools "
                        "serialize them"
                    )
                    raise ConcurrentWriteError(msg) from exc
                delay = min(2.0, 0.05 * 2**attempt) * (0.5 + random.random())
                logger.warning(
                    "delta %s: commit lost a race with %s (%s); retry %d/%d in %.2fs",
                    name,
                    other,
                    exc,
                    attempt,
                    attempts - 1,
                    delay,
                )
                time.sleep(delay)
            except (DeltaError, OSError) as exc:
                error = unwritable(exc, f"writing Delta table {name!r} at {self.uri(name)}")
                if error is not None:
                    raise error from exc
                raise
        raise AssertionError("unreachable")

    def _create(self, name: str, schema: pa.Schema, kwargs: dict[str, Any]) -> DeltaTable:
        """Create table ``name`` empty (schema and partitioning only) and open it.

        The first write then runs against an existing table, where deltalake checks a
        conflicting concurrent commit. Creating and writing in one go is unsafe with two
        writers: the loser of the creation race is silently rebased onto the winner's commit
        with its ``overwrite ... WHERE`` never re-applied, so both writers' rows stay (seen
        with two instances ingesting one shard: every embedding of the shard twice). Losing
        the race to create the empty table is harmless: the table then exists.
        """
        partition_by = kwargs.get("partition_by") or None
        try:
            DeltaTable.create(
                self.uri(name),
                schema=schema,
                partition_by=partition_by,
                mode="ignore",
                storage_options=self.storage_options or None,
                configuration=TABLE_PROPERTIES,
                commit_properties=CommitProperties(
                    custom_metadata={
                        "curation.writer": writer_identity(),
                        "curation.table": name,
                    }
                ),
            )
        except (CommitFailedError, DeltaError, OSError) as exc:
            if self._table(name) is None:
                if self.is_local:
                    discard_uncommitted(Path(self.uri(name)))
                raise
            other = self.last_writer(name)
            logger.info("delta %s: created concurrently by %s (%s)", name, other, exc)
        table = self._table(name)
        if table is None:  # pragma: no cover - create succeeded or raised
            msg = f"Delta table {name!r} could not be created at {self.uri(name)}"
            raise RuntimeError(msg)
        return table

    def _committed_version(self, name: str, token: str) -> int:
        """The version of the commit carrying ``token``.

        Neither "0 for a table we created" nor the table's version after the write is right
        when another process commits in between (it may have created the table first, or
        committed after us), so the commit is found by its token in the recent history.
        deltalake numbers history entries down from the loaded snapshot's version while it
        lists the log afresh, so a commit landing during the listing shifts every number: the
        lookup is trusted only when the table's version did not move while it ran.
        """
        for _ in range(50):
            table = self._table(name)
            if table is None:  # pragma: no cover - we just committed to it
                break
            latest = table.version()
            for depth in (8, 64, None):
                found = [
                    int(info["version"])
                    for info in table.history(depth)
                    if info.get("curation.commit") == token
                ]
                if found or depth is None or latest < depth:
                    break
            now = self._table(name)
            moved = now is None or now.version() != latest
            if found and not moved:
                return found[0]
            if not moved:
                break
        msg = f"commit {token} to Delta table {name!r} is not in its history"
        raise RuntimeError(msg)

    def last_writer(self, table: str) -> str:
        """Who made the latest commit of ``table`` (``host:pid``, or the engine when unknown)."""
        dt = self._table(table)
        if dt is None:
            return "nobody (no table)"
        info = dt.history(1)[0]
        who = info.get("curation.writer") or info.get("engineInfo") or "an unknown writer"
        return f"{who} (version {info.get('version')}, {info.get('operation')})"

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
        revision = None if spec.revision_key is None else self._next_version(spec.name)
        out = schema if revision is None else stamp(schema.empty_table(), 0, change=False).schema
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
                    table = frame.to_arrow().cast(schema)
                    if revision is not None:  # newer than every change row so far
                        table = stamp(table, revision, change=False)
                    yield from table.to_batches()
            except BaseException as exc:  # re-raised below, unwrapped from deltalake's error
                failure.append(exc)
                raise

        if isinstance(data, pl.DataFrame):  # re-readable: the commit can be retried
            source: Any = pa.Table.from_batches(list(batches()), schema=out)
        else:
            source = pa.RecordBatchReader.from_batches(out, batches())
        try:
            self._write(
                spec.name,
                source,
                shards=[shard],
                mode="overwrite",
                partition_by=list(spec.partition_by),
                predicate=predicate,
                **({} if revision is None else _MERGE),
            )
        except Exception as exc:
            if failure:  # the producer failed: nothing was committed; raise its own error
                raise failure[0] from exc
            raise
        logger.info("delta %s: replaced %s with %d rows", spec.name, predicate, written)
        return written

    def replace_rows(
        self,
        spec: TableSpec,
        column: str,
        values: Iterable[str],
        df: pl.DataFrame | Sequence[pl.DataFrame],
        *,
        named: Sequence[str] | None = None,
    ) -> int:
        """Replace the rows whose ``column`` is one of ``values`` by ``df``, in one commit.

        ``named``: the shards the commit says changed (default: ``values`` of ``shard``); a
        fold (:func:`~.compaction.fold`) changes no row as read, and names none.

        ``df`` may be a list of frames: they are written as one table without being
        concatenated first (no copy).

        For replacing many shards at once, or shards of a table partitioned by something else
        (``dedup_members``, partitioned by clustering and bucket): Delta rewrites only the
        files holding such rows (file statistics prune the others). A value with no row in
        ``df`` has its rows removed.

        Returns:
            The Delta version committed.

        Raises:
            ValueError: If no value is given, or a row has a ``column`` value outside them.
        """
        wanted = sorted(set(values))
        if not wanted:
            msg = f"replace_rows on {spec.name!r}: no {column} value given"
            raise ValueError(msg)
        frames = [df] if isinstance(df, pl.DataFrame) else list(df)
        bad = sum(f.filter(~pl.col(column).is_in(wanted)).height for f in frames)
        if bad:
            msg = f"{bad} rows for table {spec.name!r} have a {column} outside the replaced ones"
            raise ValueError(msg)
        schema = spec.empty().to_arrow().schema
        data = (
            pa.concat_tables([spec.to_arrow(f) for f in frames]) if frames else schema.empty_table()
        )
        extra: dict[str, Any] = {}
        if spec.revision_key is not None:  # newer than every change row so far
            data, extra = stamp(data, self._next_version(spec.name), change=False), _MERGE
        version = self._write(
            spec.name,
            data,
            shards=named
            if named is not None
            else (wanted if column == "shard" and spec.partition_by == ("shard",) else None),
            mode="overwrite",
            partition_by=list(spec.partition_by) or None,
            predicate=f"{column} IN ({', '.join(sql_literal(v) for v in wanted)})",
            **extra,
        )
        logger.info(
            "delta %s: replaced %d %s values (v%d)", spec.name, len(wanted), column, version
        )
        return version

    def append_changes(
        self, spec: TableSpec, df: pl.DataFrame, *, deleted: bool = False
    ) -> int | None:
        """Append whole rows of existing keys, each superseding its key's row for every reader.

        ``deleted``: the rows delete their keys' rows instead (tombstones). One commit (one
        file for all shards) naming the shards; see :mod:`~.revisions`. Returns the Delta
        version committed (the current one when ``df`` is empty).
        """
        if spec.revision_key is None:
            msg = f"table {spec.name!r} is not changed in place (no revision_key)"
            raise ValueError(msg)
        if not df.height:
            return self.version(spec.name)
        data = stamp(spec.to_arrow(df), self._next_version(spec.name), change=True, deleted=deleted)
        version = self._write(
            spec.name,
            data,
            shards=df["shard"].unique().to_list(),
            mode="append",
            partition_by=list(spec.partition_by),
            **_MERGE,
        )
        logger.info("delta %s: %d rows changed in place (v%d)", spec.name, df.height, version)
        return version

    def _next_version(self, table: str) -> int:
        """The version the next commit to ``table`` gets (0 for a new table)."""
        dt = self._table(table)
        return 0 if dt is None else dt.version() + 1

    def replace_table(self, spec: TableSpec, df: pl.DataFrame | Iterable[pl.DataFrame]) -> int:
        """Overwrite a whole table in one transaction, from a frame or streamed frames.

        Streamed frames (memory: one frame) are a one-shot source: the commit is not retried
        when another writer commits first (:meth:`_write`).

        Returns:
            The Delta version committed.
        """
        if isinstance(df, pl.DataFrame):
            data: Any = _source(spec, df)
        else:
            batches = (b for frame in df for b in spec.to_arrow(frame).to_batches())
            data = pa.RecordBatchReader.from_batches(spec.empty().to_arrow().schema, batches)
        partition_by = list(spec.partition_by) or None
        version = self._write(
            spec.name, data, mode="overwrite", partition_by=partition_by, schema_mode="overwrite"
        )
        rows = df.height if isinstance(df, pl.DataFrame) else "streamed"
        logger.info("delta %s: overwritten with %s rows (v%d)", spec.name, rows, version)
        return version

    def append(self, spec: TableSpec, df: pl.DataFrame) -> int | None:
        """Append rows to a table in one transaction.

        Columns the table does not have yet (a newer schema) are added (``schema_mode=merge``).

        Returns:
            The Delta version committed (the current version, or None when the table does not
            exist, if ``df`` is empty: nothing is committed).
        """
        if not df.height:
            return self.version(spec.name)
        version = self._write(
            spec.name,
            _source(spec, df),
            mode="append",
            partition_by=list(spec.partition_by) or None,
            schema_mode="merge",
        )
        logger.info("delta %s: appended %d rows (v%d)", spec.name, df.height, version)
        return version

    def vacuum(
        self,
        table: str,
        *,
        retention_hours: int = 0,
        dry_run: bool = False,
        keep_versions: list[int] | None = None,
    ) -> list[str]:
        """Delete the files the table's current version does not reference (Delta VACUUM).

        Files replaced, or never committed (a killed writer's), more than ``retention_hours``
        ago go, except those of ``keep_versions``. The default, 0, deletes every one at once:
        only for a table no reader holds at an older version and no process is writing. For
        the pipeline's tables use :func:`curation_assets.lib.maintenance.vacuum` (it keeps what
        the stages' commits need). Delta commits the vacuum twice (start, end); to the stages
        that is no change (:meth:`version`).

        Returns:
            The files deleted (or, with ``dry_run``, that would be), relative to the table.
        """
        dt = self._table(table)
        if dt is None:
            return []
        gone = dt.vacuum(
            retention_hours=retention_hours,
            dry_run=dry_run,
            enforce_retention_duration=False,
            full=True,
            keep_versions=keep_versions or None,
        )
        logger.info(
            "delta %s: vacuum%s %d files", table, " (dry run)" if dry_run else "", len(gone)
        )
        return list(gone)

    def scan(
        self,
        spec: TableSpec,
        *,
        version: int | None = None,
        shards: Iterable[str] | None = None,
        keys: Iterable[str] | None = None,
    ) -> pl.LazyFrame:
        """Lazy scan of a table (at ``version`` when given, Delta time travel; some shards').

        A table changed in place (``spec.revision_key``) is read merged, one row per key
        (:func:`~.revisions.merged`); ``keys`` keeps only those keys' rows (filtered in the
        scan, before the merge).

        An empty frame of the right schema when the table does not exist. The table's log is
        read once, here: the scan reuses it (a table opened again at collect time costs as
        much as a small read).
        """
        try:
            table = DeltaTable(
                self.uri(spec.name), version=version, storage_options=self.storage_options or None
            )
        except TableNotFoundError:
            return spec.empty().lazy()
        if spec.change_key:  # unpartitioned, with appended change rows: no shards=, keys=
            assert keys is None and shards is None, f"{spec.name}: shards=, keys= unsupported"
            names = [f.name for f in table.schema().fields]
            return graph_merged(pl.scan_delta(table), spec.change_key, names, spec.column_names)
        if spec.revision_key is None:
            if keys is not None:
                msg = f"table {spec.name!r} has no row key (revision_key): keys= is not supported"
                raise ValueError(msg)
            lf = pl.scan_delta(table)
            return lf if shards is None else lf.filter(pl.col("shard").is_in(list(shards)))
        names = [f.name for f in table.schema().fields]
        return merged(
            pl.scan_delta(table), spec.revision_key, names, shards, keys, spec.column_names
        )

    def read(
        self,
        spec: TableSpec,
        *,
        shards: Iterable[str] | None = None,
        columns: list[str] | None = None,
        version: int | None = None,
        keys: Iterable[str] | None = None,
    ) -> pl.DataFrame:
        """Read a table (optionally only some shards, keys and columns, or as of ``version``)."""
        lf = self.scan(spec, version=version, shards=shards, keys=keys)
        if columns is not None:
            lf = lf.select(columns)
        return lf.collect()


def _source(spec: TableSpec, df: pl.DataFrame) -> pa.Table | FrameSlices:
    """What a write hands Delta: a frame larger than one slice as :class:`FrameSlices`."""
    source = FrameSlices(df, spec.empty().to_arrow().schema, spec.to_arrow)
    return source if df.height > source.slice_rows else spec.to_arrow(df)
