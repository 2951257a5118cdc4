"""The part of the committed pair graph an update can change: read, merged and written alone.

An incremental run's new pairs all touch a redone shard (new, changed or gone), so the groups
whose decisions can change are the *affected* components: those holding a member of a redone
shard, an endpoint of a stored pair that touches a redone shard (the merge drops that pair:
its other side may leave the graph) or an old endpoint of a new pair. Every other member keeps
its row and its decision; every stored pair with no endpoint among the affected members keeps
its row; and no pair that groups (≥ τ) joins an affected component to another one (a band
pair in [τ_min, τ) may: it stays as it is unless dropped, and a dropped pair's two sides are
both affected). So :func:`~.merge.merge` run on the affected subgraph gives the decisions it
gives on the whole graph (tested, table for table), the whole graph's figures are the
untouched part's (streamed aggregates) plus the subgraph's, and the subgraph's rows are
appended to the graph's tables as change rows, with a tombstone for each of its committed
rows that is gone (merge-on-read: :func:`~curation_assets.lib.revisions.graph_merged`; every
reader through :class:`~curation_assets.lib.storage.DeltaStore` sees the merged table). Once
a table's change rows would reach
:data:`~curation_assets.lib.revisions.GRAPH_FOLD_SHARE` of its base rows, it is rewritten
instead (a fold): its untouched rows streamed from the committed files, the subgraph's after
them.

Not for a full run, a change of τ, τ_min, keep policy or band verification (every group is
re-decided: :mod:`.merge` on the whole graph), nor when a killed run left shards of
``deduplicated_images`` to rewrite (their decisions are read from the whole graph).

Memory: the affected subgraph, the ids of its members, the tables' change rows (at most the
fold share of them) and, in a fold, a batch of rows (plus the Delta writer's own ~40 MB for a
streamed table, measured flat from 10⁵ to 10⁶ pair rows), never the graph. I/O: the graph's
tables are still scanned (filtered, streamed) on each update, ∝ pairs; written ∝ the subgraph,
plus a rewrite ∝ pairs once per ~``GRAPH_FOLD_SHARE`` / (subgraph share) updates.
"""

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable

from curation_assets.lib import objectstore as ost
from curation_assets.lib.memory import MemoryBudget
from curation_assets.lib.revisions import DELETED, GRAPH_FOLD_SHARE, REVISION, newest_per_key
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import (
    CANDIDATE_PAIRS,
    DUPLICATE_MEMBERS,
    DUPLICATE_PAIRS,
    Column,
    TableSpec,
)
from curation_assets.lib.vectors import vector_batches

#: Bytes a graph table's change row costs a reader (its keys and values in the merge's join).
CHANGE_ROW_BYTES = 512

#: Rows streamed at a time when the untouched part of a table is rewritten (~100 B each).
REWRITE_BATCH_ROWS = 65_536


@dataclass(frozen=True)
class LocalGraph:
    """The affected part of a committed pair graph (:func:`local_graph`).

    Attributes:
        pairs: The stored pairs (``duplicate_pairs`` and ``candidate_pairs``) with an endpoint
            among ``members``, sorted by (image_id_a, image_id_b).
        members: The committed ``duplicate_members`` rows of the affected components.
        components: Their component ids.
        outputs: The commit's outputs the graph was read as of.
        band_keys: The keys (image_id_a, image_id_b) of the ``pairs`` read from
            ``candidate_pairs`` (the rest are ``duplicate_pairs``').
    """

    pairs: pl.DataFrame
    members: pl.DataFrame
    components: pl.Series
    outputs: Mapping[str, int]
    band_keys: pl.DataFrame = field(
        default_factory=lambda: CANDIDATE_PAIRS.empty().select(CANDIDATE_PAIRS.change_key)
    )

    def touches(self) -> pl.Expr:
        """True for a pair with an endpoint among the affected members."""
        ids = self.members["image_id"].implode()
        return pl.col("image_id_a").is_in(ids) | pl.col("image_id_b").is_in(ids)

    def affected(self) -> pl.Expr:
        """True for a member of an affected component."""
        return pl.col("component_id").is_in(self.components.implode())


def _scan(store: DeltaStore, spec: TableSpec, outputs: Mapping[str, int]) -> pl.LazyFrame:
    return store.scan(spec, version=outputs[spec.name])


def _stored(store: DeltaStore, outputs: Mapping[str, int]) -> pl.LazyFrame:
    """Every stored pair as of ``outputs`` (commits before τ_min stored no band)."""
    parts = [_scan(store, DUPLICATE_PAIRS, outputs)]
    if CANDIDATE_PAIRS.name in outputs:
        parts.append(_scan(store, CANDIDATE_PAIRS, outputs))
    return pl.concat(parts)


def local_graph(
    store: DeltaStore,
    outputs: Mapping[str, int],
    redone: Collection[str],
    unit_pairs: Sequence[pl.DataFrame],
) -> LocalGraph:
    """Read the components an update can change (the module docstring), streamed and filtered.

    Args:
        store: Where the tables live.
        outputs: The committed outputs (table → version) the update builds on.
        redone: The shards whose old rows the merge drops.
        unit_pairs: The update's new pairs (the units' rows, as :func:`~.merge.merge` takes).
    """
    gone = sorted(redone)
    stored = _stored(store, outputs)
    members = _scan(store, DUPLICATE_MEMBERS, outputs)
    dropped = (
        stored.filter(pl.col("shard_a").is_in(gone) | pl.col("shard_b").is_in(gone))
        .select("image_id_a", "image_id_b")
        .collect(engine="streaming")
    )
    ends = [p[c] for p in unit_pairs if p.height for c in ("image_id_a", "image_id_b")]
    seeds = pl.concat(
        [*ends, dropped["image_id_a"], dropped["image_id_b"]], how="vertical"
    ).unique()
    components = (
        members.filter(pl.col("shard").is_in(gone) | pl.col("image_id").is_in(seeds.implode()))
        .select("component_id")
        .unique()
        .collect(engine="streaming")["component_id"]
        .sort()
    )
    sub = (
        members.filter(pl.col("component_id").is_in(components.implode()))
        .collect(engine="streaming")
        .sort("image_id", "shard")
    )
    ids = sub["image_id"].implode()
    touching = pl.col("image_id_a").is_in(ids) | pl.col("image_id_b").is_in(ids)
    strong = _scan(store, DUPLICATE_PAIRS, outputs).filter(touching).collect(engine="streaming")
    band = (
        _scan(store, CANDIDATE_PAIRS, outputs).filter(touching).collect(engine="streaming")
        if CANDIDATE_PAIRS.name in outputs
        else CANDIDATE_PAIRS.empty()
    )
    pairs = pl.concat([strong, band]).sort("image_id_a", "image_id_b")
    keys = list(CANDIDATE_PAIRS.change_key)
    return LocalGraph(pairs, sub, components, dict(outputs), band.select(keys))


def untouched_stats(
    store: DeltaStore, local: LocalGraph, tau: float, n_clusterings: int
) -> dict[str, Any]:
    """The :func:`~.merge.merge` figures of the graph outside ``local`` (streamed aggregates).

    ``components_with_duplicates`` counts kept members of groups of two or more (each group
    keeps exactly one image: the ``one_kept_per_group`` check), so no set of ids is held.
    """
    outside = ~local.touches()
    by_bits = (
        _scan(store, DUPLICATE_PAIRS, local.outputs)
        .filter(outside)
        .group_by("found_by")
        .agg(pl.len().alias("n"))
        .collect(engine="streaming")
    )
    bits = by_bits["found_by"].to_numpy().astype(np.int64)
    n = by_bits["n"].to_numpy().astype(np.int64)
    ones = np.array([bin(int(b)).count("1") for b in bits], dtype=np.int64)
    band = 0
    if CANDIDATE_PAIRS.name in local.outputs:
        band = int(
            _scan(store, CANDIDATE_PAIRS, local.outputs)
            .filter(outside)
            .select(pl.len())
            .collect(engine="streaming")
            .item()
        )
    removed = ~pl.col("kept")
    grouped = pl.col("component_size") > 1
    members = (
        _scan(store, DUPLICATE_MEMBERS, local.outputs)
        .filter(~local.affected())
        .select(
            pl.len().alias("members"),
            grouped.sum().alias("images_on_pairs"),
            removed.sum().alias("removed"),
            (pl.col("kept") & grouped).sum().alias("components_with_duplicates"),
            pl.col("component_size").max().alias("largest_component"),
            (removed & (pl.col("similarity") < tau)).fill_null(False).sum().alias("below"),
        )
        .collect(engine="streaming")
        .row(0, named=True)
    )
    return {
        "pairs": int(n.sum()),
        "candidate_pairs": band,
        "members": int(members["members"]),
        "images_on_pairs": int(members["images_on_pairs"] or 0),
        "removed": int(members["removed"] or 0),
        "components_with_duplicates": int(members["components_with_duplicates"] or 0),
        "largest_component": int(members["largest_component"] or 0),
        "removed_below_tau": int(members["below"] or 0),
        "found_by_count": [int(n[ones == k].sum()) for k in range(1, n_clusterings + 1)],
        "pairs_per_clustering": [int(n[(bits >> c) & 1 == 1].sum()) for c in range(n_clusterings)],
    }


#: Figures that add up over disjoint parts of the graph.
_SUMS = (
    "pairs",
    "candidate_pairs",
    "images_on_pairs",
    "removed",
    "components_with_duplicates",
    "removed_below_tau",
)


def whole_stats(untouched: Mapping[str, Any], sub: Mapping[str, Any]) -> dict[str, Any]:
    """The whole graph's figures from the untouched part's and the re-merged subgraph's.

    What only the run did (``new_pairs``, ``promoted_pairs``,
    ``previously_kept_now_removed``) is the subgraph's.
    """
    out = dict(sub)
    for key in _SUMS:
        out[key] = int(untouched.get(key, 0)) + int(sub.get(key, 0))
    out["largest_component"] = max(
        int(untouched.get("largest_component", 0)), int(sub.get("largest_component", 0))
    )
    for key in ("found_by_count", "pairs_per_clustering"):
        a, b = list(untouched.get(key, [])), list(sub.get(key, []))
        width = max(len(a), len(b))
        a, b = a + [0] * (width - len(a)), b + [0] * (width - len(b))
        out[key] = [int(x) + int(y) for x, y in zip(a, b, strict=True)]
    return out


def _untouched_rows(
    store: DeltaStore, spec: TableSpec, outputs: Mapping[str, int], keep: pl.Expr
) -> Iterator[pl.DataFrame]:
    """The committed rows of ``spec`` that ``keep`` selects, merged, a batch at a time.

    Merged as :func:`~curation_assets.lib.revisions.graph_merged` reads them.
    The files are listed now: the rows are read while Delta writes (from its own runtime,
    where opening a table again would fail). The change rows (files with
    :data:`~curation_assets.lib.revisions.DELETED`, at most ``GRAPH_FOLD_SHARE`` of the base
    rows) are read first and held; the base files are streamed.
    """
    options = store.storage_options or None
    table = DeltaTable(store.uri(spec.name), version=outputs[spec.name], storage_options=options)
    uris = table.file_uris()
    columns = tuple(spec.column_names)
    keys = list(spec.change_key)

    def rows() -> Iterator[pl.DataFrame]:
        base, changes = _split_files(uris, store.storage_options)
        latest = _latest_changes(changes, store.storage_options, spec)
        changed = latest.select(keys)
        batches = vector_batches(
            base, store.storage_options, None, columns, batch_rows=REWRITE_BATCH_ROWS
        )
        for frame, _ in batches:
            kept = frame.select(columns)
            if changed.height:
                kept = kept.join(changed, on=keys, how="anti", maintain_order="left")
            kept = kept.filter(keep)
            if kept.height:
                yield spec.conform(kept)
        live = latest.filter(~pl.col(DELETED)).select(columns).filter(keep)
        if live.height:
            yield spec.conform(live)

    return rows()


def _split_files(uris: Sequence[str], options: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """(base files, change files): a change file's rows carry ``deleted`` (footers only)."""
    base: list[str] = []
    changes: list[str] = []
    for uri in uris:
        fs, path = ost.filesystem(uri, options)
        with fs.open_input_file(path) as fh:
            names = pq.read_schema(fh).names
        (changes if DELETED in names else base).append(uri)
    return base, changes


def _latest_changes(
    uris: Sequence[str], options: Mapping[str, str], spec: TableSpec
) -> pl.DataFrame:
    """The newest change row of each key in the change files (tombstones included)."""
    keys = list(spec.change_key)
    columns = (*spec.column_names, REVISION, DELETED)
    frames = [frame.select(columns) for frame, _ in vector_batches(uris, options, None, columns)]
    if not frames:
        return spec.empty().with_columns(
            pl.lit(None, pl.Int64).alias(REVISION), pl.lit(None, pl.Boolean).alias(DELETED)
        )
    return newest_per_key(pl.concat(frames).lazy(), keys).collect()


def _with(rows: Iterator[pl.DataFrame], last: pl.DataFrame) -> Iterator[pl.DataFrame]:
    yield from rows
    yield last


def graph_row_counts(
    store: DeltaStore, spec: TableSpec, version: int | None = None
) -> tuple[int, int]:
    """(base rows, change rows) of a graph table at ``version`` (None: the latest).

    From the Delta log only: a change row's file has ``revision`` statistics; a base file has
    not (its rows have no revision). A file written without statistics counts as base rows.
    """
    options = store.storage_options or None
    table = DeltaTable(store.uri(spec.name), version=version, storage_options=options)
    actions = pa.table(table.get_add_actions(flatten=True))
    counts = [int(n or 0) for n in actions.column("num_records").to_pylist()]
    column = f"min.{REVISION}"
    if column not in actions.column_names:
        return sum(counts), 0
    stamped = [v is not None for v in actions.column(column).to_pylist()]
    changes = sum(n for n, s in zip(counts, stamped, strict=True) if s)
    return sum(counts) - changes, changes


def append_graph_changes(
    store: DeltaStore, spec: TableSpec, rows: pl.DataFrame, gone: pl.DataFrame
) -> int:
    """Append ``rows`` as change rows of a graph table, and a tombstone for each key of ``gone``.

    One commit; every row stamped with the Delta version it makes (``revision``) and
    ``deleted`` (:func:`~curation_assets.lib.revisions.graph_merged` reads them). The table
    must exist. Returns the version committed.
    """
    keys = list(spec.change_key)
    nulls = [pl.lit(None, c.dtype).alias(c.name) for c in spec.columns if c.name not in keys]
    options = store.storage_options or None
    revision = DeltaTable(store.uri(spec.name), storage_options=options).version() + 1
    frame = pl.concat(
        [
            spec.conform(rows).with_columns(pl.lit(False).alias(DELETED)),
            spec.conform(gone.select(keys).with_columns(nulls)).with_columns(
                pl.lit(True).alias(DELETED)
            ),
        ]
    ).with_columns(pl.lit(revision, pl.Int64).alias(REVISION))
    version = store.append(_stamped(spec), frame)
    assert version is not None  # the table exists
    return version


def _stamped(spec: TableSpec) -> TableSpec:
    """``spec`` with the change rows' two hidden columns."""
    hidden = (
        Column(REVISION, pl.Int64, "Delta version that appended the row (null: a base row)."),
        Column(DELETED, pl.Boolean, "True in a tombstone (null: a base row)."),
    )
    return replace(spec, columns=(*spec.columns, *hidden))


def _appends(
    store: DeltaStore, spec: TableSpec, outputs: Mapping[str, int], rows: int, cap: int
) -> bool:
    """Whether ``rows`` change rows are appended to ``spec`` rather than the table rewritten.

    Not when the commit did not record the table, when it was written since the commit (a
    killed run's rows, which readers of a later version would see), nor when the change rows
    would reach :data:`~curation_assets.lib.revisions.GRAPH_FOLD_SHARE` of the base rows, or
    ``cap`` (the table is folded: rewritten whole, streamed).
    """
    version = outputs.get(spec.name)
    if version is None or store.version(spec.name) != version:
        return False
    base, changes = graph_row_counts(store, spec, version)
    return changes + rows < min(GRAPH_FOLD_SHARE * base, cap)


def write_local_graph(
    store: DeltaStore,
    local: LocalGraph,
    pairs: pl.DataFrame,
    band: pl.DataFrame,
    members: pl.DataFrame,
    budget: MemoryBudget | None = None,
) -> dict[str, int]:
    """Write the re-decided subgraph: its rows appended as changes, or the tables rewritten.

    ``budget`` caps a table's change rows at an eighth of it, :data:`CHANGE_ROW_BYTES` a row
    (what a reader's merge holds; 524k rows at 2 GiB), beside the fold share.

    Each table takes the subgraph's rows and a tombstone for each committed key of the
    subgraph that is not among them (an image that left the graph, a pair that was dropped),
    in one append (:meth:`~curation_assets.lib.storage.DeltaStore.append_graph_changes`):
    cost ∝ the subgraph. A table is instead rewritten whole — its untouched rows streamed from
    the committed files, the subgraph's after them — when :func:`_appends` says so (a fold).

    Returns:
        Table → the Delta version written (``duplicate_pairs``, ``candidate_pairs``,
        ``duplicate_members``).
    """
    outputs = local.outputs
    pair_keys = list(DUPLICATE_PAIRS.change_key)
    member_keys = list(DUPLICATE_MEMBERS.change_key)
    # the committed pairs the subgraph replaces, each from its own table
    old_band = local.band_keys.select(pair_keys)
    old_pairs = local.pairs.select(pair_keys).join(old_band, on=pair_keys, how="anti")
    parts = (
        (DUPLICATE_PAIRS, pairs, old_pairs, ~local.touches()),
        (CANDIDATE_PAIRS, band, old_band, ~local.touches()),
        (DUPLICATE_MEMBERS, members, local.members.select(member_keys).unique(), ~local.affected()),
    )
    cap = (budget or MemoryBudget()).rows(CHANGE_ROW_BYTES, share=1 / 8)
    versions: dict[str, int] = {}
    for spec, rows, old, keep in parts:
        keys = list(spec.change_key)
        gone = old.join(rows.select(keys), on=keys, how="anti")
        if _appends(store, spec, outputs, rows.height + gone.height, cap):
            version = append_graph_changes(store, spec, rows, gone)
        else:
            rest = _untouched_rows(store, spec, outputs, keep) if spec.name in outputs else iter(())
            version = store.replace_table(spec, _with(rest, rows))
        versions[spec.name] = version
    return versions
