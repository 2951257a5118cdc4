"""Synthetic CLIP-like image embeddings with planted near-duplicate groups (for benchmarks/tests).

Real CLIP image embeddings are not spread uniformly over the sphere: they sit in a narrow cone
(any two unrelated images have cosine ≈ 0.3-0.5, the "cone effect" of the modality gap), they
form topics (same-subject images clearly closer), and their variance is concentrated in a few
tens of directions (a decaying spectrum) rather than in all ``dim`` of them. Near-duplicates (crops,
re-encodes, colour shifts of one photo) are ≥ 0.9-0.95 apart, and an edit moves an image along
the same directions in which images of its topic vary (colour, framing), not along a random
direction. :func:`clip_like_embeddings` draws points with that geometry::

    x = normalize(a·g + b·t[topic] + c·D·z),        z ~ N(0, I_dim)
    dup member = normalize(base + eta_group·D·z')   (one member of each group is the base)

``g`` is the shared cone direction, ``t`` random unit topic centres, ``D`` a diagonal power-law
spectrum (variance of axis ``i`` ∝ 1/(i+1), normalised to total variance 1; effective dimension
≈ 30 at dim 512) and ``eta_group = dup_noise · U(0.5, 1.5)`` per group, so planted pairs range
from clearly above τ≈0.95 to a little below it, as real edits do. Topic sizes are log-normal
(some topics are far larger than others), so k-means clusters are unbalanced as on real data.

Measured at n = 100 000, dim = 512, seed 0: unrelated pairs have cosine 0.36 on average
(90th percentile 0.44); pairs in the same k-means cluster 0.60 (10th-90th percentile
0.38-0.74); the nearest non-duplicate neighbour of a row is at most 0.86; planted pairs span
0.93-0.999 (median 0.987; 2.6 % below 0.95). It is a model, not data: recall measured on it
depends on these choices (mostly the spectrum and ``dup_noise``), and the benchmark reports it
as such.

Everything is seeded; the output is generated in row chunks straight into the result matrix, so
memory is the (n, dim) float32 output plus the (groups, dim) group bases (about
``dup_fraction / 3`` of the output) plus one chunk.
"""

import logging
from collections.abc import Iterator

import numpy as np

logger = logging.getLogger(__name__)

#: Weights of the cone direction, the topic centre and the within-topic spread (see module doc).
CONE_WEIGHT = 0.60
TOPIC_WEIGHT = 0.55
SPREAD_WEIGHT = 0.60
#: Exponent of the within-topic variance spectrum (variance of axis i ∝ (i + 1) ** -SPECTRUM_DECAY).
SPECTRUM_DECAY = 1.0


def spectrum(dim: int, decay: float = SPECTRUM_DECAY) -> np.ndarray:
    """Per-axis standard deviations of the within-topic spread.

    Returns:
        (dim,) float32 with ``sum(s**2) == 1``; variance of axis ``i`` ∝ ``(i + 1) ** -decay``.
    """
    var = (np.arange(1, dim + 1, dtype=np.float64)) ** -decay
    return np.sqrt(var / var.sum()).astype(np.float32)


def _normalize_rows(x: np.ndarray) -> None:
    """L2-normalize the rows of a float32 matrix in place."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    np.maximum(norms, np.float32(1e-12), out=norms)
    x /= norms[:, None]


def default_n_topics(n: int) -> int:
    """Topics for ``n`` points: ``round(sqrt(n) / 4)``, at least 1 (250 at 1M, 79 at 100k).

    Fewer topics than :func:`curation_assets.lib.cluster.default_k` clusters (about a quarter),
    so k-means has to cut through dense topics, as it does on real, continuous data, instead of
    finding perfectly separated blobs (which would make every duplicate pair trivially share a
    cluster and overstate recall).
    """
    return max(1, round(float(np.sqrt(n)) / 4.0))


def iter_clip_like_embeddings(
    n: int,
    dim: int,
    *,
    n_topics: int | None = None,
    dup_fraction: float = 0.1,
    dup_group_size: tuple[int, int] = (2, 4),
    dup_noise: float = 0.15,
    seed: int = 0,
    chunk_rows: int = 16_384,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Draw CLIP-like unit vectors with planted near-duplicate groups, one chunk at a time.

    The rows :func:`clip_like_embeddings` returns (bit-identical), as ``(start, x, group)``
    chunks of ``chunk_rows`` rows in row order, so a corpus larger than memory is written as
    it is drawn.

    Args:
        n: Number of rows.
        dim: Embedding dimension (≥ 2).
        n_topics: Topic centres; None → :func:`default_n_topics`.
        dup_fraction: Fraction of rows that belong to a planted near-duplicate group (the
            group's original included), in [0, 1).
        dup_group_size: Inclusive (min, max) group size; sizes are uniform in that range.
        dup_noise: Typical edit size ``eta``: a copy's cosine to its original is about
            ``1/sqrt(1 + eta**2)`` (0.15 → 0.989; per group eta is scaled by U(0.5, 1.5), so
            copy-to-copy cosines span ≈ 0.95-0.995 and a few planted pairs fall below 0.95).
        seed: Seed of every random draw (same seed and chunk_rows → bit-identical output).
        chunk_rows: Rows generated per step (bounds the temporary memory; part of the
            random stream, so keep it fixed when comparing runs).

    Yields:
        ``(start, x, group)``: the chunk's first row, ``x`` (m, dim) float32 L2-normalized rows
        and ``group`` (m,) int64, the planted group of each row or -1 for rows that are not
        planted duplicates. Group members are scattered at random row positions.

    Raises:
        ValueError: On a parameter outside its range (the message names it and the fix).

    Memory: group bases (``≈ 4·dim·n·dup_fraction/3`` bytes) + one chunk (``≈ 12·chunk_rows·dim``
    bytes) + a few (n,) integer arrays: 10M × 512 draws in ~1 GB.
    """
    lo, hi = dup_group_size
    if n < 1 or dim < 2:
        msg = f"n={n}, dim={dim}: expected n >= 1 and dim >= 2"
        raise ValueError(msg)
    if not 0.0 <= dup_fraction < 1.0:
        msg = f"dup_fraction={dup_fraction}: expected a fraction in [0, 1), e.g. 0.1"
        raise ValueError(msg)
    if not 2 <= lo <= hi:
        msg = f"dup_group_size={dup_group_size}: expected (min, max) with 2 <= min <= max"
        raise ValueError(msg)
    if dup_noise < 0.0:
        msg = f"dup_noise={dup_noise}: expected >= 0 (0 plants exact copies)"
        raise ValueError(msg)
    n_topics = default_n_topics(n) if n_topics is None else int(n_topics)
    if n_topics < 1:
        msg = f"n_topics={n_topics}: expected >= 1 (or None for the default)"
        raise ValueError(msg)

    rng = np.random.default_rng(seed)
    s = spectrum(dim)
    cone = rng.standard_normal(dim, dtype=np.float32)
    cone /= np.linalg.norm(cone)
    centres = rng.standard_normal((n_topics, dim), dtype=np.float32)
    _normalize_rows(centres)
    # Log-normal topic sizes: realistic imbalance (a few big topics, a long tail).
    weights = rng.lognormal(0.0, 1.0, n_topics)
    topic = rng.choice(n_topics, size=n, p=weights / weights.sum()).astype(np.int32)

    # Planted groups: consecutive sizes until dup_fraction·n rows are used, at random rows.
    budget = int(dup_fraction * n)
    sizes: list[int] = []
    while budget >= lo:
        size = min(int(rng.integers(lo, hi + 1)), budget)
        sizes.append(size)
        budget -= size
    n_groups = len(sizes)
    group = np.full(n, -1, dtype=np.int64)
    rows = rng.permutation(n)[: sum(sizes)]
    starts = np.cumsum([0, *sizes])
    group[rows] = np.repeat(np.arange(n_groups, dtype=np.int64), sizes)
    is_original = np.zeros(n, dtype=bool)
    is_original[rows[starts[:-1]]] = True
    eta = (dup_noise * rng.uniform(0.5, 1.5, n_groups)).astype(np.float32)

    def draw(topics: np.ndarray) -> np.ndarray:
        """Unnormalised points of the given topics: (m, dim) float32."""
        out = rng.standard_normal((len(topics), dim), dtype=np.float32)
        out *= SPREAD_WEIGHT * s
        out += TOPIC_WEIGHT * centres[topics]
        out += CONE_WEIGHT * cone
        return out

    # Each group's base is one draw from its (first member's) topic.
    first_topic = topic[rows[starts[:-1]]] if n_groups else np.empty(0, np.int32)
    bases = draw(first_topic) if n_groups else np.empty((0, dim), np.float32)
    if n_groups:
        topic[rows] = np.repeat(first_topic, sizes)

    logger.info(
        "synthetic embeddings: n=%d dim=%d topics=%d planted groups=%d (%d rows) seed=%d",
        n,
        dim,
        n_topics,
        n_groups,
        int(sum(sizes)),
        seed,
    )
    for start in range(0, n, chunk_rows):
        stop = min(n, start + chunk_rows)
        out = np.empty((stop - start, dim), dtype=np.float32)
        g = group[start:stop]
        plain = g < 0
        out[plain] = draw(topic[start:stop][plain])
        dup_rows = np.flatnonzero(~plain)
        if dup_rows.size:
            gid = g[dup_rows]
            noise = rng.standard_normal((dup_rows.size, dim), dtype=np.float32)
            noise *= s
            noise *= eta[gid][:, None]
            noise[is_original[start:stop][dup_rows]] = 0.0
            noise += bases[gid]
            out[dup_rows] = noise
        _normalize_rows(out)
        yield start, out, g.copy()


def clip_like_embeddings(
    n: int,
    dim: int,
    *,
    n_topics: int | None = None,
    dup_fraction: float = 0.1,
    dup_group_size: tuple[int, int] = (2, 4),
    dup_noise: float = 0.15,
    seed: int = 0,
    chunk_rows: int = 16_384,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw CLIP-like unit vectors with planted near-duplicate groups, all at once.

    The parameters are :func:`iter_clip_like_embeddings`' (see there).

    Returns:
        ``(x, group)``: ``x`` (n, dim) float32, L2-normalized rows; ``group`` (n,) int64, the
        planted group of each row or -1 for rows that are not planted duplicates. Group members
        are scattered at random row positions.

    Memory: the output (``4·n·dim`` bytes) + what the chunked draw holds.
    """
    x = np.empty((max(n, 0), max(dim, 0)), dtype=np.float32)
    group = np.empty(max(n, 0), dtype=np.int64)
    for start, chunk, g in iter_clip_like_embeddings(
        n,
        dim,
        n_topics=n_topics,
        dup_fraction=dup_fraction,
        dup_group_size=dup_group_size,
        dup_noise=dup_noise,
        seed=seed,
        chunk_rows=chunk_rows,
    ):
        x[start : start + len(chunk)] = chunk
        group[start : start + len(chunk)] = g
    return x, group
