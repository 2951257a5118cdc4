"""Data shared by the dedup lib tests: synthetic embeddings, and tiny Delta tables to run on."""

from datetime import UTC, datetime, timedelta
from functools import cache

import numpy as np
import polars as pl

from curation_assets.lib.cluster import (
    assign,
    assignments_frame,
    centroids_version,
    load_centroids,
    train_clusterings,
)
from curation_assets.lib.dedup import DedupOutcome, ImageMeta, Pairs, run_dedup_stage
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import (
    DEDUP_RUNS,
    DEDUPLICATED_IMAGES,
    DUPLICATE_PAIRS,
    FILTERED_IMAGES,
    IMAGE_EMBEDDINGS,
    N_CLUSTERINGS,
    RAW_IMAGES,
    assignments_spec,
    centroids_spec,
)
from curation_assets.tools.synthetic import clip_like_embeddings

TAU = 0.95

# ------------------------------------------------------------------- arrays (algorithm tests)


@cache
def clustered_data() -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """3000 CLIP-like rows with planted groups, and their assignments in N_CLUSTERINGS clusterings.

    Cached: computed once per test session; callers must not modify the arrays.
    """
    x, group = clip_like_embeddings(3000, 48, seed=11, dup_fraction=0.2)
    models = train_clusterings(x, 16, niter=5)
    assignments = [assign(x, m.centroids)[0] for m in models]
    return x, group, assignments


def random_meta(n: int, seed: int) -> ImageMeta:
    rng = np.random.default_rng(seed)
    return ImageMeta(
        width=rng.choice([256, 512, 1024], n).astype(np.int64),
        height=rng.choice([256, 512], n).astype(np.int64),
        ingested_at=rng.integers(0, 10, n).astype(np.int64),
    )


def scrambled_ids(n: int) -> np.ndarray:
    return np.array([f"{(i * 7919) % 100003:06d}" for i in range(n)])


def brute_pairs(x: np.ndarray, tau: float) -> set[tuple[int, int]]:
    s = x @ x.T
    ii, jj = np.nonzero(np.triu(s >= tau, 1))
    return set(zip(ii.tolist(), jj.tolist(), strict=True))


def pair_set(p: Pairs) -> set[tuple[int, int]]:
    return set(zip(p.i.tolist(), p.j.tolist(), strict=True))


def chain() -> np.ndarray:
    """A~B (14°), B~C (14°), A!~C (28°: cos 0.883 < 0.95), D unrelated; unit vectors."""
    e = np.eye(8, dtype=np.float32)

    def at(deg: float) -> np.ndarray:
        r = np.deg2rad(deg)
        return np.cos(r) * e[0] + np.sin(r) * e[1]

    return np.stack([at(0), at(14), at(28), e[5]]).astype(np.float32)


# -------------------------------------------------------------- Delta tables (run/plan tests)

MODEL = "test:model@none"
DIM = 16
POLICY = ("resolution", "earliest", "smallest_id")


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def vectors(n: int, n_dups: int, seed: int) -> np.ndarray:
    """``n`` random unit vectors; the last ``n_dups`` are tiny perturbations of the first."""
    rng = np.random.default_rng(seed)
    x = unit(rng.normal(size=(n, DIM)))
    if n_dups:
        x[n - n_dups :] = unit(x[:n_dups] + 0.01 * rng.normal(size=(n_dups, DIM)))
    return x


def write_centroids(store: DeltaStore, seed: int = 123) -> None:
    rng = np.random.default_rng(seed)
    for c in range(N_CLUSTERINGS):
        cent = unit(rng.normal(size=(3, DIM)))
        store.replace_table(
            centroids_spec(c),
            pl.DataFrame(
                {
                    "centroid_id": np.arange(3, dtype=np.int32),
                    "centroid": pl.Series(list(cent), dtype=pl.List(pl.Float32)),
                    "train_size": np.ones(3, np.int64),
                    "version": centroids_version(cent),
                    "seed": c,
                    "model_id": MODEL,
                    "trained_at": datetime(2026, 1, 1, tzinfo=UTC),
                }
            ),
        )


def add_shard(
    store: DeltaStore, shard: str, x: np.ndarray, *, start: int = 0, assign_rows: bool = True
) -> list[str]:
    """Write a shard's raw, embedding, filtered and (unless told not to) assignment rows."""
    n = x.shape[0]
    ids = [f"{shard}-{start + i:04d}" for i in range(n)]
    at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=start)
    base = {
        "image_id": ids,
        "shard": shard,
        "source_uri": [f"/nowhere/{i}.jpg" for i in ids],
        "caption": None,
        "width": np.full(n, 64, np.int32),
        "height": np.full(n, 64, np.int32),
    }
    raw = pl.DataFrame(
        {
            **base,
            "format": "JPEG",
            "n_bytes": np.full(n, 100, np.int64),
            "n_frames": np.ones(n, np.int32),
            "ingested_at": at,
        },
        schema_overrides={"caption": pl.String},
    )
    store.replace_shard(RAW_IMAGES, shard, RAW_IMAGES.conform(raw))
    emb = pl.DataFrame(
        {
            "image_id": ids,
            "shard": shard,
            "embedding": pl.Series(list(x), dtype=pl.List(pl.Float32)),
            "model_id": MODEL,
            "dim": np.full(n, DIM, np.int32),
        }
    )
    store.replace_shard(IMAGE_EMBEDDINGS, shard, IMAGE_EMBEDDINGS.conform(emb))
    filtered = pl.DataFrame(base, schema_overrides={"caption": pl.String})
    store.replace_shard(FILTERED_IMAGES, shard, FILTERED_IMAGES.conform(filtered))
    if assign_rows:
        assign_shard_rows(store, shard, ids, x)
    return ids


def assign_shard_rows(store: DeltaStore, shard: str, ids: list[str], x: np.ndarray) -> None:
    """Write the shard's assignments to the stored centroids of every clustering."""
    for c in range(N_CLUSTERINGS):
        cent = load_centroids(store, c)
        assert cent is not None
        cluster, cos = assign(x, cent.matrix, top=1)
        store.replace_shard(
            assignments_spec(c),
            shard,
            assignments_frame(ids, shard, cluster[:, 0], cos[:, 0], cent.version),
        )


def run_and_write(store: DeltaStore, **kwargs) -> DedupOutcome:
    """One dedup run at τ = 0.95 with :data:`POLICY`, written and committed."""
    return run_dedup_stage(store, **{"tau": 0.95, "policy": POLICY, **kwargs})


def dedup_tables(store: DeltaStore) -> dict[str, pl.DataFrame]:
    return {
        DEDUPLICATED_IMAGES.name: store.read(DEDUPLICATED_IMAGES).sort("image_id"),
        DUPLICATE_PAIRS.name: store.read(DUPLICATE_PAIRS).sort("image_id_a", "image_id_b"),
    }


def table_versions(store: DeltaStore) -> dict[str, int | None]:
    names = [DEDUPLICATED_IMAGES.name, DUPLICATE_PAIRS.name, DEDUP_RUNS.name, "stage_commits"]
    return {t: store.version(t) for t in names}
