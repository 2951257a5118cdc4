"""Groups and the keep policy: connected components of the pair graph, one image kept per group.

Components, not pairs, decide. Near-duplicate chains (A~B and B~C with A≁C) form ONE component
with ONE kept image; every removed image records ``duplicate_of`` = the component's kept image
and its cosine similarity to *that* image, computed directly. Through a chain that similarity
may be below τ: it is reported as it is (``stats["removed_below_tau"]`` counts such rows), not
replaced by the similarity of the pair that linked it.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeAlias

import numpy as np
import polars as pl
import scipy.sparse
from scipy.sparse.csgraph import connected_components as _scipy_components

from curation_assets.lib.dedup.pairs import Pairs, Rows, exact_sims

#: Keep-policy criteria, applied in order; ties after all of them go to the lowest row.
POLICY_CRITERIA = ("resolution", "earliest", "smallest_id")
DEFAULT_POLICY: tuple[str, ...] = POLICY_CRITERIA


def connected_components(n: int, pairs: Pairs) -> np.ndarray:
    """Connected components of the pair graph on ``n`` rows.

    Returns:
        (n,) int64 canonical component id = the smallest row index in the component (a row
        without pairs is its own component). Canonical ids make full and incremental runs
        comparable and stay fixed for components that new rows do not touch.

    Memory: a sparse (n × n) graph with one entry per pair + a few (n,) arrays.
    """
    if len(pairs) and int(max(pairs.i.max(), pairs.j.max())) >= n:
        msg = f"pairs refer to row {int(pairs.j.max())} but n={n}; pass n = number of rows"
        raise ValueError(msg)
    graph = scipy.sparse.coo_matrix(
        (np.ones(len(pairs), dtype=np.int8), (pairs.i, pairs.j)), shape=(n, n)
    ).tocsr()
    _, labels = _scipy_components(graph, directed=False)
    _, first = np.unique(labels, return_index=True)
    return first[labels].astype(np.int64)


@dataclass
class ImageMeta:
    """Per-image fields the keep policy reads, (n,) each, in row order.

    Attributes:
        width: (n,) int64 pixels.
        height: (n,) int64 pixels.
        ingested_at: (n,) int64 nanoseconds since the epoch (missing → latest possible).
    """

    width: np.ndarray
    height: np.ndarray
    ingested_at: np.ndarray

    def __len__(self) -> int:
        """Number of images."""
        return int(self.width.shape[0])

    @classmethod
    def of(cls, meta: "MetaLike") -> "ImageMeta":
        """From an ImageMeta, a mapping or a polars frame with width/height/ingested_at."""
        if isinstance(meta, ImageMeta):
            return meta
        try:
            w, h, t = meta["width"], meta["height"], meta["ingested_at"]
        except (KeyError, pl.exceptions.ColumnNotFoundError) as exc:
            msg = f"meta lacks {exc}; expected columns width, height, ingested_at"
            raise ValueError(msg) from exc
        return cls(_as_int(w, 0), _as_int(h, 0), _as_time(t))

    def take(self, idx: np.ndarray) -> "ImageMeta":
        """Rows ``idx``."""
        return ImageMeta(self.width[idx], self.height[idx], self.ingested_at[idx])

    @staticmethod
    def concat(parts: Sequence["ImageMeta"]) -> "ImageMeta":
        """Rows of ``parts`` one after the other."""
        return ImageMeta(
            np.concatenate([p.width for p in parts]),
            np.concatenate([p.height for p in parts]),
            np.concatenate([p.ingested_at for p in parts]),
        )


#: What the functions accept as keep-policy fields: an :class:`ImageMeta`, or a mapping or
#: polars frame with width, height and ingested_at.
MetaLike: TypeAlias = ImageMeta | Mapping[str, Any] | pl.DataFrame


def _to_numpy(v: Any) -> np.ndarray:
    return v.to_numpy() if isinstance(v, pl.Series) else np.asarray(v)


def _as_int(v: Any, missing: int) -> np.ndarray:
    a = _to_numpy(v)
    if a.dtype.kind == "f" or a.dtype == object:
        a = np.where(np.isnan(a.astype(np.float64)), missing, a.astype(np.float64))
    return a.astype(np.int64)


def _as_time(v: Any) -> np.ndarray:
    a = _to_numpy(v)
    if a.dtype.kind == "M":
        nat = np.isnat(a)
        out = a.astype("datetime64[ns]").view(np.int64).copy()
        out[nat] = np.iinfo(np.int64).max
        return out
    return _as_int(a, np.iinfo(np.int64).max)


def as_ids(image_id: Any, n: int) -> np.ndarray:
    """(n,) ids as a numpy array (str for object arrays); raises unless there is one per row."""
    ids = _to_numpy(image_id)
    if ids.dtype == object:
        ids = ids.astype(str)
    if ids.shape != (n,):
        msg = f"image_id has shape {ids.shape}; expected ({n},), one id per row"
        raise ValueError(msg)
    return ids


def check_policy(policy: Sequence[str]) -> tuple[str, ...]:
    """The policy as a tuple; raises unless its criteria are distinct and known."""
    bad = [p for p in policy if p not in POLICY_CRITERIA]
    if bad or len(set(policy)) != len(policy):
        msg = (
            f"policy={tuple(policy)}: expected distinct criteria from {POLICY_CRITERIA} "
            "(applied in order; ties then go to the lowest row)"
        )
        raise ValueError(msg)
    return tuple(policy)


def _keepers(
    components: np.ndarray,
    meta: ImageMeta,
    image_id: np.ndarray,
    policy: Sequence[str],
) -> np.ndarray:
    """(m,) int64 local index of the kept row of each row's component (empty when m = 0)."""
    m = components.shape[0]
    if m == 0:
        return np.empty(0, dtype=np.int64)
    keys: list[np.ndarray] = [np.arange(m)]  # last tie-break: lowest row
    for criterion in reversed(check_policy(policy)):
        if criterion == "resolution":
            keys.append(-(meta.width * meta.height))
        elif criterion == "earliest":
            keys.append(meta.ingested_at)
        else:
            keys.append(image_id)
    keys.append(components)  # primary key
    order = np.lexsort(keys)
    comp_sorted = components[order]
    starts = np.flatnonzero(np.r_[True, comp_sorted[1:] != comp_sorted[:-1]])
    keeper_sorted = np.repeat(order[starts], np.diff(np.r_[starts, m]))
    keeper = np.empty(m, dtype=np.int64)
    keeper[order] = keeper_sorted
    return keeper


class KeepChoice(NamedTuple):
    """What the keep policy decided, (n,) each.

    Attributes:
        kept: bool, True for the one kept image of each component.
        duplicate_of: int64 row of the component's kept image for removed rows, -1 if kept.
        similarity: float32 cosine to the kept image for removed rows (may be < τ through a
            chain), NaN for kept rows.
    """

    kept: np.ndarray
    duplicate_of: np.ndarray
    similarity: np.ndarray


def choose(
    rows: Rows,
    idx: np.ndarray,
    components: np.ndarray,
    meta: ImageMeta,
    image_id: np.ndarray,
    policy: Sequence[str],
) -> KeepChoice:
    """Keep choice for the global rows ``idx`` (whole components), arrays aligned with idx."""
    keeper = idx[_keepers(components, meta, image_id, policy)]
    kept = keeper == idx
    dup_of = np.where(kept, -1, keeper).astype(np.int64)
    sim = np.full(idx.shape[0], np.nan, dtype=np.float32)
    removed = np.flatnonzero(~kept)
    sim[removed] = exact_sims(rows, idx[removed], keeper[removed])
    return KeepChoice(kept, dup_of, sim)


def choose_kept(
    components: np.ndarray,
    *,
    x: np.ndarray,
    width: np.ndarray,
    height: np.ndarray,
    ingested_at: np.ndarray,
    image_id: np.ndarray,
    policy: Sequence[str] = DEFAULT_POLICY,
) -> KeepChoice:
    """Keep one image per component by a deterministic policy.

    Args:
        components: (n,) component id per row (:func:`connected_components`).
        x: (n, d) float32, L2-normalized: to report each removed row's cosine to its kept one.
        width: (n,) pixels.
        height: (n,) pixels.
        ingested_at: (n,) datetime64 or int (earlier = smaller); missing counts as latest.
        image_id: (n,) str (or int) stable ids; smaller wins under ``smallest_id``.
        policy: Criteria in order, from ``resolution`` (largest ``width·height`` wins),
            ``earliest`` (smallest ``ingested_at`` wins) and ``smallest_id``. Remaining ties go
            to the lowest row, so the choice is always deterministic.

    Returns:
        :class:`KeepChoice` (kept, duplicate_of, similarity), (n,) each.
    """
    comp = np.asarray(components, dtype=np.int64)
    n = comp.shape[0]
    meta = ImageMeta(_as_int(width, 0), _as_int(height, 0), _as_time(ingested_at))
    if len(meta) != n or meta.height.shape != (n,) or meta.ingested_at.shape != (n,):
        msg = f"width/height/ingested_at must be ({n},) like components"
        raise ValueError(msg)
    src = Rows([x])
    if src.n != n:
        msg = f"x has {src.n} rows but components has {n}; pass the embeddings of these rows"
        raise ValueError(msg)
    return choose(src, np.arange(n), comp, meta, as_ids(image_id, n), policy)


def component_sizes(comp: np.ndarray) -> np.ndarray:
    """(n,) int64 size of each row's component."""
    return np.bincount(comp, minlength=comp.shape[0])[comp].astype(np.int64)


def decision_summary(
    res_kept: np.ndarray,
    similarity: np.ndarray,
    comp: np.ndarray,
    size: np.ndarray,
    tau: float,
) -> dict[str, Any]:
    """Counts of kept/removed rows and components, the statistics dedup and its increments share."""
    removed = ~res_kept
    sims = similarity[removed]
    roots = comp == np.arange(comp.shape[0])
    return {
        "images": int(comp.shape[0]),
        "kept": int(res_kept.sum()),
        "removed": int(removed.sum()),
        "components": int(roots.sum()),
        "components_with_duplicates": int((roots & (size > 1)).sum()),
        "largest_component": int(size.max()) if size.size else 0,
        "removed_below_tau": int((sims < np.float32(tau)).sum()),
        "min_similarity_to_kept": float(sims.min()) if sims.size else None,
    }
