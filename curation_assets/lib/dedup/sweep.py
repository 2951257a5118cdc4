"""What a τ would remove, read from the stored pairs: the sweep behind "which τ do I choose?".

Every stored pair has cosine ≥ τ_min (``duplicate_pairs`` ∪ ``candidate_pairs``), so for any
τ ≥ τ_min the groups at τ are the connected components of the stored pairs ≥ τ. At τ,
``removed`` = images on pairs ≥ τ − groups (every group keeps exactly one image whatever the
keep policy) = the pairs ≥ τ that join two groups when pairs are added in decreasing
similarity, i.e. the edges ≥ τ of a maximum spanning forest. One scipy spanning forest and two
sorts give the whole curve (O(P log P), in C: a Python union–find took ~3 µs a pair, seconds per
run at 10⁶ pairs). No vector is read.

With a ground truth of near-duplicate groups (:func:`read_truth`: which images are versions of
one original), each τ also gets pair precision (stored pairs ≥ τ inside one true group ÷
pairs ≥ τ among images the truth knows) and pair recall (those ÷ every true pair among the
deduplicated images the truth knows). Recall counts only pairs the clusterings found: a true
pair the search missed is missed at every τ.
"""

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import minimum_spanning_tree

from curation_assets.lib.commits import last_commit
from curation_assets.lib.dedup.io import DEDUP_STAGE, stored_pairs
from curation_assets.lib.dedup.localgraph import graph_row_counts
from curation_assets.lib.errors import ConfigError
from curation_assets.lib.memory import MemoryBudget
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import (
    CANDIDATE_PAIRS,
    DEDUPLICATED_IMAGES,
    DUPLICATE_PAIRS,
    RAW_IMAGES,
)

#: Columns of a τ sweep (one row per τ, highest τ first).
SWEEP_SCHEMA = {
    "tau": pl.Float64,
    "pairs": pl.Int64,
    "groups": pl.Int64,
    "removed": pl.Int64,
    "true_pairs_found": pl.Int64,
    "precision": pl.Float64,
    "recall": pl.Float64,
}


#: What one stored pair costs a τ sweep read back from the tables: its two ids and shards
#: and its similarity (~200 B as polars holds them), the sort and the spanning forest.
SWEEP_PAIR_BYTES = 400

#: The columns of a stored pair a sweep and its borderline thumbnails read.
SWEEP_COLUMNS = ("image_id_a", "image_id_b", "similarity", "shard_a", "shard_b")


def committed_stored_pairs(
    store: DeltaStore, budget: MemoryBudget
) -> tuple[pl.DataFrame | None, int]:
    """The committed stored pairs (:data:`SWEEP_COLUMNS`) when a quarter of the budget holds them.

    What the asset sweeps after an update, which merged only the components it changed
    (:mod:`.localgraph`) and so holds no whole graph. Returns the pairs (None when they do not
    fit, or nothing is committed) and how many there are (when they do not fit: the rows in the
    Delta log, change rows not yet folded included, an upper bound).
    """
    commit = last_commit(store, DEDUP_STAGE)
    if commit is None:
        return None, 0
    specs = [s for s in (DUPLICATE_PAIRS, CANDIDATE_PAIRS) if s.name in commit.outputs]
    versions = {s.name: commit.outputs[s.name] for s in specs}
    # rows in the log: the pairs, plus any change rows not folded yet (an upper bound)
    n = sum(sum(graph_row_counts(store, s, versions[s.name])) for s in specs)
    if n * SWEEP_PAIR_BYTES > budget.bytes // 4:
        return None, n
    parts = [store.scan(s, version=versions[s.name]).select(SWEEP_COLUMNS) for s in specs]
    pairs = pl.concat(parts).collect().sort("image_id_a", "image_id_b")
    return pairs, pairs.height


def sweep_grid(floor: float, tau: float, step: float = 0.005) -> list[float]:
    """τ values from 1 down to ``floor`` by ``step``, with ``tau`` and ``floor`` included."""
    n = int(np.floor((1.0 - floor) / step + 1e-9))
    grid = {round(1.0 - i * step, 6) for i in range(n + 1)} | {round(tau, 6), round(floor, 6)}
    return sorted((t for t in grid if t >= floor - 1e-12), reverse=True)


def tau_sweep(
    pairs: pl.DataFrame, taus: Sequence[float], truth: pl.DataFrame | None = None
) -> pl.DataFrame:
    """Pairs, groups and removed images at each τ of ``taus`` (and precision/recall with truth).

    Args:
        pairs: Stored pairs (image_id_a, image_id_b, similarity), every one ≥ min(taus).
        taus: Thresholds to report (each should be ≥ the floor the pairs were stored at).
        truth: Optional (image_id, group): images of one group are versions of one original.
            Only images present here count for precision and recall.

    Returns:
        :data:`SWEEP_SCHEMA` rows, highest τ first (precision/recall null without truth).
    """
    order = pairs.sort("similarity", descending=True)
    a, b = _codes(order)
    sim = order["similarity"].to_numpy().astype(np.float64)
    n_nodes = int(max(a.max(), b.max())) + 1 if sim.size else 0
    # images touched by the pairs ≥ t: those whose first pair (in this order) is among them
    seq = np.empty(2 * sim.size, np.int64)
    seq[0::2], seq[1::2] = a, b
    first = np.sort(np.unique(seq, return_index=True)[1] // 2)
    # groups joined by the pairs ≥ t = edges ≥ t of a maximum spanning forest (Kruskal's
    # joins; the count per threshold is the same for every such forest): scipy's minimum
    # forest of 2 - similarity (> 0: scipy drops zero weights), in C, not a Python loop
    forest = (
        minimum_spanning_tree(
            coo_matrix((2.0 - sim, (a, b)), shape=(n_nodes, n_nodes)).tocsr()
        ).data
        if sim.size
        else np.zeros(0)
    )
    joins = np.sort(2.0 - forest)[::-1]
    good, known, total_true = _truth_flags(order, truth)
    good_at, known_at = np.cumsum(good), np.cumsum(known)
    rows = []
    for t in sorted(taus, reverse=True):
        n = int(np.searchsorted(-sim, -t, side="right"))  # pairs with similarity ≥ t
        removed = int(np.searchsorted(-joins, -t, side="right"))
        images = int(np.searchsorted(first, n, side="left"))
        found = int(good_at[n - 1]) if n and truth is not None else 0
        considered = int(known_at[n - 1]) if n and truth is not None else 0
        rows.append(
            {
                "tau": float(t),
                "pairs": n,
                "groups": images - removed,
                "removed": removed,
                "true_pairs_found": found if truth is not None else None,
                "precision": (found / considered if considered else None)
                if truth is not None
                else None,
                "recall": (found / total_true if total_true else None)
                if truth is not None
                else None,
            }
        )
    return pl.DataFrame(rows, schema=SWEEP_SCHEMA, orient="row")


def _codes(order: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Both ends of each pair as int64 codes of their image ids (a dense rank: one sort)."""
    both = pl.concat([order["image_id_a"], order["image_id_b"]]).rank("dense")
    codes = both.to_numpy().astype(np.int64) - 1
    return codes[: order.height], codes[order.height :]


def _truth_flags(
    order: pl.DataFrame, truth: pl.DataFrame | None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Per pair: inside one true group; both ends known to the truth. And all true pairs."""
    if truth is None or order.is_empty():
        n = order.height
        total = 0 if truth is None else _true_pair_count(truth)
        return np.zeros(n, np.int64), np.zeros(n, np.int64), total
    g = truth.select("image_id", "group").unique("image_id")
    joined = order.select("image_id_a", "image_id_b").with_row_index("_k")
    joined = joined.join(
        g.rename({"image_id": "image_id_a", "group": "ga"}), on="image_id_a", how="left"
    )
    joined = joined.join(
        g.rename({"image_id": "image_id_b", "group": "gb"}), on="image_id_b", how="left"
    )
    joined = joined.sort("_k")
    known = (joined["ga"].is_not_null() & joined["gb"].is_not_null()).to_numpy()
    good = known & (joined["ga"] == joined["gb"]).fill_null(False).to_numpy()
    return good.astype(np.int64), known.astype(np.int64), _true_pair_count(truth)


def _true_pair_count(truth: pl.DataFrame) -> int:
    sizes = truth.unique("image_id").group_by("group").len()["len"].to_numpy().astype(np.int64)
    return int((sizes * (sizes - 1) // 2).sum())


def pairs_at(pairs: pl.DataFrame, tau: float, n: int = 3) -> pl.DataFrame:
    """The ``n`` stored pairs just above τ and the ``n`` just below it (the borderline)."""
    above = pairs.filter(pl.col("similarity") >= tau).sort("similarity").head(n)
    below = pairs.filter(pl.col("similarity") < tau).sort("similarity", descending=True).head(n)
    return pl.concat([above.sort("similarity", descending=True), below])


def read_truth(path: Path, store: DeltaStore, shards: Sequence[str] | None = None) -> pl.DataFrame:
    """Ground-truth near-duplicate groups as (image_id, group), restricted to deduplicated images.

    Two formats: a CSV with a ``group`` column and ``image_id`` or ``source_uri`` (optionally
    ``shard``), or a JSON document whose ``items`` carry ``source_uri``, ``shard`` and
    ``base_id`` (the demo's ``ground_truth.json``: versions of one base photo are one group).
    source_uri is mapped to image_id through ``raw_images`` of the truth's shards only.

    Raises:
        ConfigError: If the file is missing or lacks the columns.
    """
    if not path.is_file():
        raise ConfigError(f"ground-truth file {path} does not exist")
    if path.suffix.lower() == ".json":
        items = json.loads(path.read_text(encoding="utf-8")).get("items") or []
        rows = [
            {"source_uri": i["source_uri"], "shard": i.get("shard"), "group": i["base_id"]}
            for i in items
            if i.get("base_id") is not None and i.get("source_uri")
        ]
    else:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    cols = set(rows[0]) if rows else set()
    if "group" not in cols or not cols & {"image_id", "source_uri"}:
        msg = (
            f"{path}: expected a 'group' column and 'image_id' or 'source_uri' (CSV), or JSON "
            f"items with source_uri and base_id; found {sorted(cols) or 'no rows'}"
        )
        raise ConfigError(msg)
    frame = pl.DataFrame(rows, schema={c: pl.String for c in rows[0]})
    if shards is None and "shard" in frame.columns:
        shards = sorted({s for s in frame["shard"].to_list() if s})
    if "image_id" not in frame.columns:
        uris = store.read(RAW_IMAGES, shards=shards, columns=["image_id", "source_uri"])
        frame = frame.join(uris, on="source_uri", how="inner")
    dedup = store.read(DEDUPLICATED_IMAGES, shards=shards, columns=["image_id"])
    return frame.join(dedup, on="image_id", how="semi").select("image_id", "group").unique()


def committed_sweep(
    store: DeltaStore, *, truth: pl.DataFrame | None = None, step: float = 0.01
) -> tuple[pl.DataFrame, dict[str, float]]:
    """The τ sweep of the last committed dedup run, from its stored pairs only.

    Returns:
        The sweep (:func:`tau_sweep` over :func:`sweep_grid`) and the run's ``tau``,
        ``tau_min``, ``pairs`` and ``candidate_pairs``.

    Raises:
        ConfigError: If no dedup run was committed yet.
    """
    commit = last_commit(store, DEDUP_STAGE)
    if commit is None:
        raise ConfigError("no dedup run committed yet: materialize deduplicated_images first")
    tau = float(commit.config["tau"])
    floor = float(commit.config.get("tau_min", tau))
    stored = stored_pairs(store, commit.outputs)
    strong = int((stored["similarity"] >= tau).sum())
    about = {
        "tau": tau,
        "tau_min": floor,
        "pairs": strong,
        "candidate_pairs": stored.height - strong,
    }
    return tau_sweep(stored, sweep_grid(floor, tau, step), truth), about
