"""Table maintenance: delete the files no reader needs any more (Delta VACUUM), safely.

Delta never deletes a data file when a write replaces it: the file stays so that a reader can
read an older version. At corpus scale that is the pipeline's largest disk cost: a full dedup
run replaces its layout (2·d bytes an image: 10 GB at 10M × 512), an update rewrites the pair
graph (∝ pairs) and the shards whose decisions changed, a refit of the weights rewrites every
shard. :func:`vacuum` deletes, per table of the registry, the files replaced more than
``retention_hours`` ago and the files no commit of the table mentions (left by a process
killed before its Delta commit) older than that, except the files of any version a stage's
latest commit records (``stage_commits``: what it read and wrote). Those are what a stage's
next run reads back after a crash (:mod:`curation_assets.lib.commits`: Delta time travel), so
a vacuum never breaks recovery, whatever the retention.

A reader holding a version older than the retention loses it, as with any Delta VACUUM: keep
the retention longer than the longest run (default a week, Delta's own). The Delta log is
left as it is (time travel to a vacuumed version then fails with the files' names).

Cost: one listing of each table's folder and one delete per file; memory: the file names.
"""

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from curation_assets.lib.commits import last_commit
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import STAGE_COMMITS, TABLES

logger = logging.getLogger(__name__)

#: Delta's own default retention of replaced files.
DEFAULT_RETENTION_HOURS = 168


@dataclass(frozen=True)
class Vacuumed:
    """What :func:`vacuum` deleted (or would delete) in one table.

    Attributes:
        table: The table.
        files: Files deleted (or that a dry run would delete); on a local store, those still
            on disk (Delta lists a file it removed until its log entry is cleaned up).
        bytes: Their size (None when the store is not local: not listed).
        kept_versions: Versions kept whatever their age (recorded by a stage's latest commit).
    """

    table: str
    files: int
    bytes: int | None
    kept_versions: tuple[int, ...]


def committed_versions(store: DeltaStore) -> dict[str, set[int]]:
    """Per table, the versions that any stage's latest commit read or wrote."""
    if not store.exists(STAGE_COMMITS.name):
        return {}
    stages = store.scan(STAGE_COMMITS).select("stage").unique().collect()["stage"].to_list()
    kept: dict[str, set[int]] = {}
    for stage in sorted(stages):
        commit = last_commit(store, stage)
        if commit is None:
            continue
        for table, version in [*commit.inputs.items(), *commit.outputs.items()]:
            if version is not None:
                kept.setdefault(table, set()).add(int(version))
    return kept


def vacuum(
    store: DeltaStore,
    *,
    retention_hours: int = DEFAULT_RETENTION_HOURS,
    dry_run: bool = True,
    tables: list[str] | None = None,
) -> list[Vacuumed]:
    """Delete (or, with ``dry_run``, list) the files no committed state needs (module doc).

    Args:
        store: Where the tables live.
        retention_hours: Files replaced (or orphaned) less than this long ago stay.
        dry_run: Count only; delete nothing.
        tables: Table names (default: every table of the registry that exists).

    Returns:
        One :class:`Vacuumed` per existing table, in registry order.

    Raises:
        ValueError: On a negative retention or a table name the registry does not hold.
    """
    if retention_hours < 0:
        raise ValueError(f"retention_hours={retention_hours}: expected >= 0")
    names = list(TABLES) if tables is None else tables
    unknown = sorted(set(names) - set(TABLES))
    if unknown:
        raise ValueError(f"unknown tables {unknown}; known: {', '.join(TABLES)}")
    keep = committed_versions(store)
    out = []
    for name in names:
        if not store.exists(name):
            continue
        kept = tuple(sorted(keep.get(name, ())))
        options = {"retention_hours": retention_hours, "keep_versions": list(kept)}
        listed = store.vacuum(name, dry_run=True, **options)
        size = None
        if store.is_local:  # Delta lists a removed file until its log entry goes: count on disk
            listed = _existing(store, name, listed)
            size = sum(path.stat().st_size for path in listed.values())
        if listed and not dry_run:
            store.vacuum(name, dry_run=False, **options)
        out.append(Vacuumed(name, len(listed), size, kept))
    return out


def _existing(store: DeltaStore, table: str, files: list[str]) -> dict[str, Path]:
    """The ``files`` (relative to the table, or absolute) still on disk, with their paths."""
    root = Path(store.uri(table).removeprefix("file://"))
    paths = {f: Path(f) if os.path.isabs(f) else root / f for f in files}
    return {f: path for f, path in paths.items() if path.exists()}


def summary(done: list[Vacuumed]) -> pl.DataFrame:
    """``done`` as a table (table, files, bytes, kept_versions), largest first."""
    return pl.DataFrame(
        {
            "table": [v.table for v in done],
            "files": [v.files for v in done],
            "bytes": [v.bytes for v in done],
            "kept_versions": [",".join(map(str, v.kept_versions)) for v in done],
        },
        schema={
            "table": pl.String,
            "files": pl.Int64,
            "bytes": pl.Int64,
            "kept_versions": pl.String,
        },
    ).sort("bytes", "files", descending=True, nulls_last=True)
