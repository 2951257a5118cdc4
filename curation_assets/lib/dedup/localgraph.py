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
untouched part's (streamed aggregates) plus the subgraph's, and the graph's tables are
rewritten by streaming their untouched rows from the committed files, the subgraph's rows
after them.

Not for a full run, a change of τ, τ_min, keep policy or band verification (every group is
re-decided: :mod:`.merge` on the whole graph), nor when a killed run left shards of
``deduplicated_images`` to rewrite (their decisions are read from the whole graph).

Memory: the affected subgraph, the ids of its members, and a batch of rows (plus the Delta
writer's own ~40 MB for a streamed table, measured flat from 10⁵ to 10⁶ pair rows), never the
graph. I/O: the graph's tables are still scanned (filtered, streamed) and rewritten whole on
each update, ∝ pairs.
"""

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
from deltalake import DeltaTable

from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import (
    CANDIDATE_PAIRS,
    DUPLICATE_MEMBERS,
    DUPLICATE_PAIRS,
    TableSpec,
)
from curation_assets.lib.vectors import vector_batches

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
    """

    pairs: pl.DataFrame
    members: pl.DataFrame
    components: pl.Series
    outputs: Mapping[str, int]

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
    pairs = (
        stored.filter(pl.col("image_id_a").is_in(ids) | pl.col("image_id_b").is_in(ids))
        .collect(engine="streaming")
        .sort("image_id_a", "image_id_b")
    )
    return LocalGraph(pairs, sub, components, dict(outputs))


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
    """The committed rows of ``spec`` that ``keep`` selects, a batch at a time.

    The files are listed now: the rows are read while Delta writes (from its own runtime,
    where opening a table again would fail).
    """
    options = store.storage_options or None
    table = DeltaTable(store.uri(spec.name), version=outputs[spec.name], storage_options=options)
    uris = table.file_uris()
    columns = tuple(spec.column_names)

    def rows() -> Iterator[pl.DataFrame]:
        batches = vector_batches(
            uris, store.storage_options, None, columns, batch_rows=REWRITE_BATCH_ROWS
        )
        for frame, _ in batches:
            kept = frame.filter(keep).select(columns)
            if kept.height:
                yield spec.conform(kept)

    return rows()


def _with(rows: Iterator[pl.DataFrame], last: pl.DataFrame) -> Iterator[pl.DataFrame]:
    yield from rows
    yield last


def write_local_graph(
    store: DeltaStore,
    local: LocalGraph,
    pairs: pl.DataFrame,
    band: pl.DataFrame,
    members: pl.DataFrame,
) -> dict[str, int]:
    """Rewrite the graph's tables: the untouched rows, streamed, then the subgraph's.

    Returns:
        Table → the Delta version written (``duplicate_pairs``, ``candidate_pairs``,
        ``duplicate_members``).
    """
    outside = ~local.touches()
    outputs = local.outputs
    versions = {
        DUPLICATE_PAIRS.name: store.replace_table(
            DUPLICATE_PAIRS,
            _with(_untouched_rows(store, DUPLICATE_PAIRS, outputs, outside), pairs),
        )
    }
    rest = (
        _untouched_rows(store, CANDIDATE_PAIRS, outputs, outside)
        if CANDIDATE_PAIRS.name in outputs
        else iter(())
    )
    versions[CANDIDATE_PAIRS.name] = store.replace_table(CANDIDATE_PAIRS, _with(rest, band))
    versions[DUPLICATE_MEMBERS.name] = store.replace_table(
        DUPLICATE_MEMBERS,
        _with(_untouched_rows(store, DUPLICATE_MEMBERS, outputs, ~local.affected()), members),
    )
    return versions
