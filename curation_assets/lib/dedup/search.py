"""A run's pair search: which work, staged where, run on which engine.

* Incremental, new rows within their budget share: the one-pass search (:mod:`.newrows`), one
  engine task per bucket of clustering 0 (per chunk of new rows, when their indexes outgrow
  a quarter of the budget), reading only ``dedup_members``.
* Full, or incremental with more new rows than fit: the (clustering, bucket) units
  (:mod:`.units`), all of them or those the new rows touched. Clustering 0's units read
  ``dedup_members``; each other clustering's are first staged in the scratch folder as parquet
  files (:func:`~.layout.stage`), searched, then cleared (:func:`~.layout.clear_scratch`) before the
  next clustering is staged: the layout peaks at two copies of each vector, not one per
  clustering.

Each clustering's units are one :meth:`~curation_assets.lib.engine.LocalEngine.map_shards`
call, so on Ray they run in parallel within a clustering (the staging is the run's own
process: a streaming read and write of one copy).
"""

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from itertools import groupby
from typing import TYPE_CHECKING, Any

import polars as pl

from curation_assets.lib.dedup.layout import LaidOut, Layout, clear_scratch, stage
from curation_assets.lib.dedup.newrows import NewRows, NewRowsWork, chunk_rows, forget_indexes
from curation_assets.lib.dedup.units import UnitResult, UnitWork, unit_key
from curation_assets.lib.memory import MemoryBudget
from curation_assets.lib.storage import DeltaStore

if TYPE_CHECKING:
    from curation_assets.lib.engine import LocalEngine, RayEngine


@dataclass
class Searched:
    """What the search found, and what it did.

    Attributes:
        how: ``new_rows`` (one pass) or ``units``.
        keys: The engine keys run (buckets, or ``"c:b"`` units).
        results: One per key, sorted by (clustering, bucket).
        nodes: Ray node ids that ran them (none locally).
        staged_rows: Rows staged in the scratch folder (every clustering summed).
        seconds_staging: Time spent staging and clearing.
    """

    how: str
    keys: list[str]
    results: list[UnitResult]
    nodes: list[str] = field(default_factory=list)
    staged_rows: int = 0
    seconds_staging: float = 0.0

    @property
    def comparisons(self) -> int:
        """Vector comparisons made, every key summed."""
        return sum(int(r.stats.get("comparisons", 0)) for r in self.results)


def search(
    store: DeltaStore,
    layout: Layout,
    laid: LaidOut,
    tau: float,
    *,
    full: bool,
    block: int,
    version: int,
    engine: "LocalEngine | RayEngine",
    budget: MemoryBudget,
    say: Callable[[str], None],
) -> Searched:
    """Search a run's pairs (module docstring): every unit when ``full``, else the new rows.

    Args:
        store: Where the tables live.
        layout: The layout in force.
        laid: What :func:`~.layout.lay_out` did (its kept new rows, which the one-pass search
            takes: :meth:`~.layout.LaidOut.take_new_rows`; the units they touched).
        tau: Similarity floor of the search.
        full: Search every unit.
        block: Tile edge of the within-cluster search.
        version: The ``dedup_members`` version every task reads (the layout as just written).
        engine: Where the tasks run.
        budget: The memory budget: sizes the chunks of new rows indexed at a time
            (:func:`~.newrows.chunk_rows`) and the rows per group of staged files (1/16).
        say: Progress lines.

    Memory: that of one task (one bucket), the results (∝ pairs; each image on a pair once,
    with its vector), and while staging one bucket of clustering 0 + 1/16 of the budget.
    """
    options = dict(store.storage_options)
    kept = None if full else laid.take_new_rows()
    if kept is not None:
        new = NewRows.of(kept, layout.ks)
        del kept  # NewRows holds its own copy, sorted and as arrays
        step = chunk_rows(budget, new.x.shape[1] if len(new) else 1, len(layout.ks))
        chunks = tuple((lo, min(lo + step, len(new))) for lo in range(0, len(new), step))
        work = NewRowsWork(store.root_uri, options, tau, new, version, chunks)
        keys = work.keys(layout.buckets[0])
        got = _Collected()
        try:
            got.add(engine.map_shards(work, keys))
        finally:
            forget_indexes()
        if len(chunks) > 1:
            say(f"new rows searched in {len(chunks)} chunks of ≤ {step} (the budget's quarter)")
        return got.searched("new_rows", keys)
    units = layout.units() if full else sorted(laid.touched)
    query = None if full else frozenset(laid.ready)
    got = _Collected()
    keys: list[str] = []
    staged, seconds, scratch = 0, 0.0, False
    try:
        for c, of_c in groupby(units, key=lambda unit: unit[0]):
            buckets = [b for _, b in of_c]
            if c:
                t0 = time.perf_counter()
                scratch = True
                rows = stage(
                    store,
                    layout,
                    c,
                    version=version,
                    buckets=None if full else set(buckets),
                    max_bytes=budget.bytes // 16,
                )
                staged += rows
                seconds += time.perf_counter() - t0
                say(f"staged clustering {c}: {rows} rows in {time.perf_counter() - t0:.1f}s")
            work = UnitWork(store.root_uri, options, tau, query, block, version)
            c_keys = [unit_key(c, b) for b in buckets]
            got.add(engine.map_shards(work, c_keys))
            keys += c_keys
    finally:
        if scratch:  # searched, or failed: its files go either way
            t0 = time.perf_counter()
            clear_scratch(store)
            seconds += time.perf_counter() - t0
    return got.searched("units", keys, staged, seconds)


@dataclass
class _Collected:
    """The tasks' results as they arrive, each image's endpoint row kept once.

    Every unit an image's pairs are found in returns its row (vector included): held as
    returned, a full run would hold C copies of every image on a pair until the merge (5 GB
    at 10M × 512). The rows of one image are the same in every unit, so the first to arrive
    is kept and the merge (which keeps one row per image) gets the same rows. The kept rows
    are copied out: a polars filter keeps every row's bytes alive (measured at 3M: ~0.3 GB
    more per clustering).
    """

    results: list[UnitResult] = field(default_factory=list)
    nodes: set[str] = field(default_factory=set)
    seen: set[str] = field(default_factory=set)

    def add(self, done: Iterable[Any]) -> None:
        """Take the engine's results (:class:`~curation_assets.lib.engine.ShardResult`)."""
        for r in done:
            value: UnitResult = r.value
            ids = value.endpoints["image_id"].to_list()
            fresh = [i not in self.seen for i in ids]
            self.seen.update(ids)
            if not all(fresh):
                kept = value.endpoints.filter(pl.Series(fresh, dtype=pl.Boolean))
                # a filter keeps polars' binary buffers of every row alive (its rows are views
                # into them): through Arrow only the kept rows' bytes are copied and held
                compact = pl.DataFrame(kept.to_arrow()).cast(kept.schema)
                value = replace(value, endpoints=compact)
            self.results.append(value)
            if r.node_id is not None:
                self.nodes.add(r.node_id)

    def searched(
        self, how: str, keys: list[str], staged: int = 0, seconds: float = 0.0
    ) -> Searched:
        """The :class:`Searched`, results in (clustering, bucket) order."""
        results = sorted(self.results, key=lambda r: (r.clustering, r.bucket))
        return Searched(how, keys, results, sorted(self.nodes), staged, seconds)
