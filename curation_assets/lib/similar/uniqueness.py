"""Per-image uniqueness: cosine distance to the k-th nearest other image in the index.

**The score.** ``uniqueness = 1 − cos(x, k-th nearest other image)``, k = 5 by default: 0 when
k exact copies exist, larger the emptier x's neighbourhood (FiftyOne's uniqueness and
fastdup's outliers measure the same thing). The k-th neighbour rather than the nearest one
(k = 1) so that a small group of near-duplicates does not look "common": an image with two
planted copies still scores by the rest of its neighbourhood. The image itself is excluded
by id.

**As of scoring, not kept current.** A shard's rows are scored when its index is built,
against every shard indexed at that moment (``index_images`` records how many images that
was). Images that arrive later can only *lower* an old row's score (a closer neighbour can
appear, none can vanish unless a shard is re-ingested). Keeping old rows exact would mean
finding every old row a new image lands closer to than its current k-th neighbour and
rewriting those rows' shards: at 10⁹ images a new shard's neighbours are spread over most
old shards, so each new shard would rewrite most of the table, which breaks the rule that a
new shard costs what the shard costs. So an old row's score is an upper bound that is exact
for the corpus of its ``index_images``; re-materializing ``image_uniqueness`` for old shards
(a backfill, e.g. after the corpus grew tenfold) refreshes them at the cost of one search per
image. In a first run every shard is indexed before any is scored, so all rows see the whole
corpus.

Search is approximate (``nprobe`` of ``nlist`` lists): a missed neighbour can only make the
score larger. ``nprobe = nlist`` is exact (tested against brute force).
"""

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl

from curation_assets.lib.checks import Check
from curation_assets.lib.similar.index import Neighbours
from curation_assets.lib.tables.similar import IMAGE_UNIQUENESS

#: Default neighbour rank the score is measured to.
DEFAULT_K = 5


def uniqueness_frame(
    image_ids: Sequence[str],
    shard: str,
    hits: Neighbours,
    *,
    k: int,
    model_id: str,
    scored_at: datetime,
) -> pl.DataFrame:
    """The ``image_uniqueness`` rows of one shard from a search of its own vectors.

    Args:
        image_ids: The shard's ids, in the order of the queries.
        shard: The shard.
        hits: :func:`~curation_assets.lib.similar.index.search` with ``k + 1`` neighbours
            (one of them is normally the image itself).
        k: The neighbour rank scored.
        model_id: Embedding model.
        scored_at: Timestamp of the rows.
    """
    n = len(image_ids)
    score = np.empty(n, dtype=np.float32)
    found = np.empty(n, dtype=np.int32)
    nearest_id: list[str | None] = []
    nearest_sim = np.full(n, np.nan, dtype=np.float32)
    for i, own in enumerate(image_ids):
        others = [j for j, other in enumerate(hits.image_ids[i]) if other != own][:k]
        found[i] = len(others)
        if others:
            sims = hits.similarity[i, others]
            score[i] = 1.0 - float(sims[-1])
            nearest_id.append(hits.image_ids[i][others[0]])
            nearest_sim[i] = float(sims[0])
        else:  # the only image of the corpus: nothing is like it
            score[i] = 2.0
            nearest_id.append(None)
    return pl.DataFrame(
        {
            "image_id": list(image_ids),
            "shard": shard,
            "uniqueness": np.clip(score, 0.0, 2.0),
            "k": k,
            "neighbours_found": found,
            "nearest_id": nearest_id,
            "nearest_similarity": nearest_sim,
            "index_images": hits.index_images,
            "model_id": model_id,
            "scored_at": scored_at,
        },
        schema_overrides={"nearest_id": pl.String},
    ).pipe(IMAGE_UNIQUENESS.conform)


def brute_force_uniqueness(x: np.ndarray, k: int) -> np.ndarray:
    """Reference: ``1 − cos`` to the k-th nearest *other* row of ``x`` (n, d), exactly (n²)."""
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    kth = -np.sort(-sims, axis=1)[:, k - 1]
    return (1.0 - kth).astype(np.float32)


QUANTILES = (0.0, 0.01, 0.1, 0.5, 0.9, 0.99, 1.0)


def uniqueness_figures(frame: pl.DataFrame) -> dict[str, Any]:
    """Distribution of one shard's scores: quantiles, mean, rows with fewer than k neighbours."""
    u = frame["uniqueness"].to_numpy()
    if not u.size:
        return {"images": 0}
    q = np.quantile(u, QUANTILES)
    pairs = zip(QUANTILES, q, strict=True)
    named = {f"uniqueness_p{round(p * 100):02d}": round(float(v), 4) for p, v in pairs}
    return {
        "images": int(u.size),
        "uniqueness_mean": round(float(u.mean()), 4),
        **named,
        "short_of_k": int((frame["neighbours_found"] < frame["k"]).sum()),
        "index_images": int(frame["index_images"][0]),
    }


def histogram(frame: pl.DataFrame, bins: int = 10) -> tuple[list[str], list[int]]:
    """Labels (``lo–hi``) and counts of the scores, for a bar chart."""
    u = frame["uniqueness"].to_numpy()
    if not u.size:
        return [], []
    counts, edges = np.histogram(u, bins=bins, range=(0.0, max(float(u.max()), 1e-6)))
    return [f"{edges[i]:.3f}–{edges[i + 1]:.3f}" for i in range(bins)], [int(c) for c in counts]


def extremes(frame: pl.DataFrame, n: int = 4) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The ``n`` most and ``n`` least unique rows (ties broken by image_id)."""
    most = frame.sort(["uniqueness", "image_id"], descending=[True, False]).head(n)
    least = frame.sort(["uniqueness", "image_id"]).head(n)
    return most, least


def uniqueness_check(frame: pl.DataFrame, n_embedded: int) -> Check:
    """Every embedded image of the shard has one finite score in [0, 2]."""
    u = frame["uniqueness"].to_numpy()
    finite = bool(np.isfinite(u).all() and ((u >= 0) & (u <= 2)).all())
    unique = frame["image_id"].n_unique() == frame.height
    passed = finite and unique and frame.height == n_embedded
    return Check(
        name="every_image_scored",
        asset="image_uniqueness",
        passed=passed,
        metadata={"embedded": n_embedded, "scored": frame.height, "finite_in_range": finite},
        description=None
        if passed
        else f"{frame.height} scores for {n_embedded} embedded images (finite: {finite})",
    )
