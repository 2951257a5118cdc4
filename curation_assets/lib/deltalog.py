"""Reading and repairing a Delta table's log directly, where the snapshot API costs too much.

* :func:`shards_committed_since` — which shards the commits after a version replaced, from the
  log's tail (each shard write of :class:`~curation_assets.lib.storage.DeltaStore` names its
  shards in its commit metadata, :data:`SHARDS_KEY`): a cost that grows with the commits read,
  not with the shards the table holds (two snapshots of a table with 10⁵ shards list 10⁵ files
  each).
* :func:`data_version` — the latest version that changed rows (a vacuum's commits skipped).
* :func:`discard_uncommitted` — the folder a failed table creation leaves with no commit.
"""

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deltalake import DeltaTable

from curation_assets.lib.errors import TransientError

logger = logging.getLogger(__name__)

SHARDS_KEY = "curation.shards"
"""Commit metadata key: the shards a shard write replaced (a JSON list)."""
LOG_TAIL_MAX = 1000
"""Most commits :func:`shards_committed_since` reads before its caller compares two snapshots."""
TABLE_PROPERTIES = {"delta.checkpointInterval": "10"}
"""Properties every table is created with. A checkpoint every 10 commits (Delta Lake's own
default; deltalake's is 100): opening a table replays each commit since its last checkpoint,
and a stage opens tables ~90 times an update. Measured on a 20-shard table rewritten 160
times (``/tmp`` probe, deltalake 1.6): an open 18.5 → 8.0 ms on average over versions 101–160,
a shard write 47 → 26 ms."""
_MOVED_ATTEMPTS = 20
"""Times :func:`settled_history` reloads a snapshot the log moved past before it gives up."""
MAINTENANCE_OPERATIONS = frozenset({"VACUUM START", "VACUUM END", "OPTIMIZE"})
"""Commit operations that change no row: a Delta VACUUM commits two, whatever it deleted; a
compaction (:func:`~curation_assets.lib.compaction.compact`) rewrites files, not rows."""


def snapshot_history(dt: DeltaTable, limit: int) -> list[dict[str, Any]] | None:
    """The commit infos of ``dt``'s ``limit`` latest versions, newest first, rightly numbered.

    None when the log moved past ``dt``'s snapshot. deltalake 1.6's ``DeltaTable.history``
    reads the newest commits in storage, from the latest one, but numbers them down from the
    snapshot's version: once another writer commits after the snapshot was loaded, each entry
    carries the version of an older commit (measured: a snapshot at 2, commit 3 landed, and
    ``history(limit=2)`` returned commits 3, 2 and 1 numbered 2, 1 and 0). It then returns
    more entries than asked, by the commits in storage after the snapshot: that is how it is
    told apart here.
    """
    current = dt.version()
    entries = dt.history(limit=limit)
    if len(entries) != min(limit, current + 1):
        return None
    return entries


class LogMovingError(TransientError, RuntimeError):
    """A table's log kept moving past every snapshot loaded to read its history."""


def settled_history(dt: DeltaTable, limit: Callable[[int], int]) -> list[dict[str, Any]]:
    """:func:`snapshot_history` of ``limit(version)`` entries, ``dt`` reloaded while it refuses.

    ``dt`` ends at the snapshot the entries were read from. Raises :class:`LogMovingError`
    after :data:`_MOVED_ATTEMPTS` tries.
    """
    for _ in range(_MOVED_ATTEMPTS):
        entries = snapshot_history(dt, limit(dt.version()))
        if entries is not None:
            return entries
        dt.update_incremental()  # another writer committed meanwhile: from the newer snapshot
    msg = f"the log of {dt.table_uri} kept moving while its history was read"
    raise LogMovingError(msg)


def data_version(dt: DeltaTable) -> int:
    """The version of ``dt``'s latest commit that changed its rows.

    Maintenance commits after it (:data:`MAINTENANCE_OPERATIONS`) are skipped: the stages
    compare versions with those their commits recorded (inputs read, outputs written), and a
    vacuum must not look like new data or a run that did not finish. Costs one commit file
    read when the latest commit is a write (the usual case), more after a vacuum.
    """
    latest = settled_history(dt, lambda _: 1)
    if not latest or latest[0].get("operation") not in MAINTENANCE_OPERATIONS:
        return dt.version()
    depth = 8
    while True:
        entries = settled_history(dt, lambda _, n=depth: n)  # newest first
        for entry in entries:
            if entry.get("operation") not in MAINTENANCE_OPERATIONS:
                return int(entry["version"])
        if len(entries) < depth:  # pragma: no cover - version 0 creates the table
            return dt.version()
        depth *= 4


def shards_committed_since(dt: DeltaTable, since_version: int) -> set[str] | None:
    """The shards named by the commits of ``dt`` after ``since_version`` (the log's tail only).

    None (the caller compares two snapshots instead) when a commit in between does not name
    its shards (a whole-table write, another tool's commit, a compaction), or when more than
    :data:`LOG_TAIL_MAX` commits passed. Maintenance commits (a vacuum's) name none and change
    none.
    """
    current = dt.version()
    if current <= since_version:
        return set()
    if current - since_version > LOG_TAIL_MAX:
        return None
    entries = snapshot_history(dt, current - since_version)
    if entries is None:  # the log moved on: the caller compares snapshots
        return None
    commits = {c.get("version"): c for c in entries}
    shards: set[str] = set()
    for version in range(since_version + 1, current + 1):
        if commits.get(version, {}).get("operation") in MAINTENANCE_OPERATIONS:
            continue
        named = commits.get(version, {}).get(SHARDS_KEY)
        if not isinstance(named, str):
            return None
        shards.update(json.loads(named))
    return shards


def discard_uncommitted(folder: Path) -> None:
    """Remove what a failed creation of the local table at ``folder`` left without a commit.

    deltalake makes ``_delta_log/`` before it writes commit 0; when that write fails (a full
    disk) the folder stays, and every reader of the table would fail on it ("no files in log
    segment") instead of finding no table. Nothing is removed once any commit or checkpoint
    file exists.
    """
    log = folder / "_delta_log"
    try:
        entries = list(log.iterdir()) if log.is_dir() else []
        if any(p.name.endswith((".json", ".parquet")) and p.name[0].isdigit() for p in entries):
            return
        for p in entries:  # staging files of the commit that failed
            if p.is_file():
                p.unlink()
        if log.is_dir():
            log.rmdir()
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    except OSError as exc:
        logger.warning("could not remove a failed table creation's folder %s: %s", folder, exc)
