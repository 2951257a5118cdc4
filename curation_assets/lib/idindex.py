"""Which shard holds an image: a point-lookup index of ``raw_images``' ids.

Ingest asks, for each shard it writes, which of the shard's image_ids another shard already
holds (each such file becomes an ``exact_duplicates`` row), and its ``image_ids_unique`` check
asks again after the write. Answered by a scan of ``raw_images``' id column, each question
costs the corpus, and the corpus grows with every shard: ingesting S shards of N images in all
reads ~S·N/2 ids (10⁹ images in 10⁵ shards: ~5·10¹³). This index answers one in
O(ids asked · log N), plus the shards written since its last answer.

What it is: a SQLite database (write-ahead log) holding ``image_id, shard, source_uri`` of
every ``raw_images`` row, with B-trees on image_id and on shard, as of one version of that
table, which it records with the table's Delta id. It is derived data, a cache: never the only
copy of anything; it can be deleted at any time (the next question rebuilds it: rows appended a
group of shards at a time, then the B-trees sorted once). Every answer is exact, equal to the
scan's as of the version it names, because a question first brings the index up to date from
the Delta log:

* :meth:`IdIndex.refresh`, under SQLite's write lock: the shards of ``raw_images`` changed
  since the recorded version (:meth:`~.storage.DeltaStore.changed_shards`, from the log's
  tail) have their rows deleted and read again, shard-pruned, as of the table's current
  version, which is then recorded. The cost is the shards written since the index last
  answered (usually one: the shard ingested just before), not the corpus. One SQLite
  transaction: a killed refresh leaves the state before it.
* :meth:`IdIndex.lookup`, in one read transaction (a consistent snapshot, concurrent refreshes
  notwithstanding): the recorded version and the rows holding the ids asked.

When the log cannot say what changed (a recorded version that cannot be loaded any more, a
table created anew, an index of an older :data:`FORMAT`), the index is rebuilt from the table.

Where: ``<root>/_index/raw_image_ids.sqlite3`` beside the tables of a local root. For an
object-store root, a local folder per root URI (``$CURATION_INDEX_DIR``, default
``~/.cache/curation_assets/index``): each machine keeps its own copy, each exact by the rule
above, and a machine's first question builds its copy (once, streamed).

Cost (``curation bench lookup``, README): a lookup of 10⁴ ids 0.25 s at 10⁷ images (the scan
4.8 s); a refresh after a 10⁴-image shard ~1.5–3 s (each new id lands in a B-tree page of its
own, written to the log then checkpointed: ∝ the shard, × log N); a build ~12 s per 10⁶ images.
Disk: ~220 bytes an image (64-character ids, a shard key, a source path, the two B-trees; 10⁹
images need ~220 GB of local disk; a rebuild's sort spills to SQLite's temporary folder).
Memory: SQLite's page cache (:data:`CACHE_MB`), the ids asked, and one group of shards' rows
(≤ :data:`REFRESH_ROWS`) while refreshing.
"""

import contextlib
import hashlib
import logging
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from curation_assets.lib.deltalog import data_version
from curation_assets.lib.memory import shard_batches
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import RAW_IMAGES

logger = logging.getLogger(__name__)

#: Folder of the index under a local root.
INDEX_FOLDER = "_index"
#: The index's file name.
FILE_NAME = "raw_image_ids.sqlite3"
#: Environment variable naming the folder of the indexes of object-store roots.
INDEX_DIR_ENV = "CURATION_INDEX_DIR"
#: Version of the index's schema; an index of another one is rebuilt.
FORMAT = 3
#: SQLite page cache per connection, MiB.
CACHE_MB = 64
#: Rows of ``raw_images`` read at a time while refreshing (a group of whole shards, or one).
REFRESH_ROWS = 500_000
#: How long a refresh waits for another process's refresh to commit, seconds.
BUSY_TIMEOUT_S = 600.0
#: What a lookup returns, in this order.
COLUMNS = ("image_id", "shard", "source_uri")

#: The lookup: each id asked, sought in the B-tree. ``CROSS JOIN`` fixes the loop order: with
#: a plain join SQLite's planner (no statistics on the temporary table) scanned ``ids`` whole
#: and probed the ids asked (0.61 s against 0.05 s at 10⁶ images, 10⁴ ids asked).
LOOKUP_SQL = (
    "SELECT ids.image_id, ids.shard, ids.source_uri FROM asked "
    "CROSS JOIN ids ON ids.image_id = asked.image_id "
    "WHERE ids.shard IS NOT ? ORDER BY ids.image_id, ids.shard"
)

#: Nullable as in ``raw_images`` (another writer's null never matches an id asked, as in the
#: scan, and never fails a refresh).
_IDS_TABLE = "CREATE TABLE IF NOT EXISTS ids (image_id TEXT, shard TEXT, source_uri TEXT)"
_SCHEMA = f"""
{_IDS_TABLE};
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""
#: The B-trees a lookup and a refresh search by. A rebuild drops them, appends every row, then
#: makes them again (SQLite sorts each once, externally), instead of inserting each row at a
#: random place of a growing tree (measured at 10⁷ images: still running after 5 minutes, the
#: page cache thrashing, against ~10 s per 10⁶ images in 10⁶ rows).
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS ids_by_image ON ids (image_id)",
    "CREATE INDEX IF NOT EXISTS ids_by_shard ON ids (shard)",
)


def index_path(store: DeltaStore) -> Path:
    """Where ``store``'s index lives (the module docstring)."""
    if store.is_local:
        return Path(store.uri(INDEX_FOLDER)) / FILE_NAME
    base = os.environ.get(INDEX_DIR_ENV) or str(Path.home() / ".cache/curation_assets/index")
    digest = hashlib.sha256(store.root_uri.rstrip("/").encode()).hexdigest()[:16]
    return Path(base).expanduser() / digest / FILE_NAME


@dataclass(frozen=True)
class Refreshed:
    """What one :meth:`IdIndex.refresh` did.

    Attributes:
        version: The ``raw_images`` version the index holds now (None: no table yet).
        shards: Shards whose rows were read again.
        rows: Rows inserted.
        seconds: Wall time, waiting for another refresh included.
        reason: Why it was rebuilt from the whole table ('' when it was not).
    """

    version: int | None
    shards: int
    rows: int
    seconds: float
    reason: str = ""

    @property
    def rebuilt(self) -> bool:
        """Whether the index was rebuilt (first use, or the log could not say what changed)."""
        return bool(self.reason)


@dataclass(frozen=True)
class _State:
    version: int | None
    table_id: str
    format: int


def _table_now(store: DeltaStore) -> tuple[str, int | None]:
    """``raw_images``' Delta id (new when it is created anew) and data version; ('', None)."""
    try:
        table = DeltaTable(
            store.uri(RAW_IMAGES.name), storage_options=store.storage_options or None
        )
    except TableNotFoundError:
        return "", None
    return str(table.metadata().id), data_version(table)


class IdIndex:
    """The index of one store's ``raw_images`` (the module docstring).

    Args:
        store: The Delta root whose ``raw_images`` it indexes.
        path: The SQLite file (default :func:`index_path`).
    """

    def __init__(self, store: DeltaStore, path: Path | None = None) -> None:
        self.store = store
        self.path = path or index_path(store)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA cache_size=-{CACHE_MB * 1024}")
            conn.executescript(_SCHEMA)
            yield conn
        finally:
            conn.close()

    @staticmethod
    def _state(conn: sqlite3.Connection) -> _State:
        values = dict(conn.execute("SELECT key, value FROM state").fetchall())
        version = values.get("version", "")
        return _State(
            int(version) if version.lstrip("-").isdigit() else None,
            values.get("table_id", ""),
            int(values.get("format", "0")),
        )

    def refresh(self) -> Refreshed:
        """Bring the index to ``raw_images``' current version (the module docstring)."""
        t0 = time.perf_counter()
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")  # one refresh at a time; readers go on
            try:
                version, shards, rows, reason = self._refresh(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        seconds = time.perf_counter() - t0
        if reason:
            logger.info(
                "image-id index %s rebuilt (%s): %d rows of %d shards in %.1fs",
                self.path,
                reason,
                rows,
                shards,
                seconds,
            )
        return Refreshed(version, shards, rows, seconds, reason)

    def _refresh(self, conn: sqlite3.Connection) -> tuple[int | None, int, int, str]:
        store = self.store
        state = self._state(conn)
        table_id, current = _table_now(store)
        changed: set[str] | None = None
        reason = ""
        if state.format != FORMAT:
            reason = "first use" if state.format == 0 else f"index format {state.format}"
        elif state.table_id != table_id:
            reason = "raw_images was created anew"
        elif state.version is not None and current is not None and state.version > current:
            reason = f"recorded version {state.version} is ahead of the table's {current}"
        elif state.version == current:
            return current, 0, 0, ""
        else:
            try:
                changed = store.changed_shards(RAW_IMAGES.name, state.version)
            except Exception as exc:  # noqa: BLE001  (an old version that cannot be loaded)
                reason = f"the log since version {state.version} could not be read: {exc}"
        counts: dict[str, int] | None = None
        if changed is None:  # rebuild: rows appended, the B-trees made once at the end
            conn.execute("DROP TABLE IF EXISTS ids")
            conn.execute(_IDS_TABLE)
            counts = {} if current is None else store.shard_row_counts(RAW_IMAGES.name, current)
            changed = set(counts)
        else:
            conn.executemany("DELETE FROM ids WHERE shard = ?", ((s,) for s in sorted(changed)))
        rows = 0
        if current is not None:
            for group in _groups(store, sorted(changed), current, counts):
                frame = store.read(
                    RAW_IMAGES, shards=group, columns=list(COLUMNS), version=current
                ).sort("image_id")  # each B-tree page visited once, in key order
                conn.executemany(
                    "INSERT INTO ids (image_id, shard, source_uri) VALUES (?, ?, ?)",
                    frame.iter_rows(),
                )
                rows += frame.height
        for statement in _INDEXES:
            conn.execute(statement)
        conn.executemany(
            "INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)",
            [
                ("version", "" if current is None else str(current)),
                ("table_id", table_id),
                ("format", str(FORMAT)),
            ],
        )
        return current, len(changed), rows, reason

    def lookup(
        self, image_ids: Sequence[str], *, exclude_shard: str | None = None
    ) -> tuple[pl.DataFrame, int | None, Refreshed]:
        """The ``raw_images`` rows holding ``image_ids``, outside ``exclude_shard``.

        Refreshes first, then reads in one snapshot.

        Returns:
            ``(rows, version, refreshed)``: rows (:data:`COLUMNS`, sorted by image_id, shard)
            exactly as in ``raw_images`` at ``version`` (≥ ``refreshed.version``: another
            process may have refreshed in between), and what the refresh did.
        """
        refreshed = self.refresh()
        with self._connect() as conn:
            conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS asked (image_id TEXT PRIMARY KEY) WITHOUT ROWID"
            )
            conn.execute("BEGIN")
            try:
                version = self._state(conn).version  # the snapshot starts at this read
                conn.executemany(
                    "INSERT OR IGNORE INTO asked (image_id) VALUES (?)", ((i,) for i in image_ids)
                )
                found = conn.execute(LOOKUP_SQL, (exclude_shard,)).fetchall()
            finally:
                conn.execute("ROLLBACK")  # nothing to keep: the temp rows go
        frame = pl.DataFrame(found, schema=dict.fromkeys(COLUMNS, pl.String), orient="row")
        return frame, version, refreshed

    def rows(self) -> int:
        """Rows the index holds (as of its last refresh)."""
        with self._connect() as conn:
            return int(conn.execute("SELECT count(*) FROM ids").fetchone()[0])


def _groups(
    store: DeltaStore, shards: list[str], version: int, counts: dict[str, int] | None
) -> list[list[str]]:
    """``shards`` in groups of ≤ :data:`REFRESH_ROWS` rows (a larger shard alone).

    ``counts``: rows per shard when the caller has them (None: read from the log if needed).
    """
    if len(shards) <= 1:  # the usual refresh: no need to count from the log
        return [shards] if shards else []
    if counts is None:
        counts = store.shard_row_counts(RAW_IMAGES.name, version)
    return shard_batches(counts, shards, REFRESH_ROWS)
