"""``curation bench incremental``: time a full run against the update for one new small shard.

The corpus (a folder of images) is split into ``base_shards`` folder shards holding all but
``new_share`` of the images, plus one new shard with the rest (≈ 1 % by default). The full run
materializes everything for the base shards from scratch (ingest → embed → score → filter per
shard, then centroids, assignments and dedup); the incremental update then lands the new shard
and runs only what automation would run for it: the per-shard job for that shard, its
assignments and the (incremental) global updates. Both use the same in-process Dagster
executor, so the ratio compares like with like.
"""

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


def list_images(images_dir: Path, limit: int | None = None) -> list[Path]:
    """Image files under ``images_dir`` (recursive, sorted by path), at most ``limit``.

    Raises:
        ValueError: If fewer than 20 are found (too few to split into shards).
    """
    images = sorted(
        p for p in images_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )[:limit]
    if len(images) < 20:
        msg = f"{images_dir}: found {len(images)} images; need at least 20"
        raise ValueError(msg)
    return images


def split_into_shards(
    images: list[Path], root: Path, base_shards: int, new_share: float
) -> list[str]:
    """Copy ``images`` into folder shards under ``root``: base shards plus ``new-000``.

    The last ``new_share`` of the images (at least one) go to ``new-000``; the others are dealt
    round-robin into ``base-000``.. (copies keep their modification times, so a shard is ready
    for the sensor at once). Returns the base shard names.
    """
    n_new = max(1, round(len(images) * new_share))
    base, new = images[: len(images) - n_new], images[len(images) - n_new :]
    names = []
    for s in range(base_shards):
        name = f"base-{s:03d}"
        (root / name).mkdir(parents=True)
        for p in base[s::base_shards]:
            shutil.copy2(p, root / name / f"{p.parent.name}_{p.name}")
        names.append(name)
    (root / "new-000").mkdir()
    for p in new:
        shutil.copy2(p, root / "new-000" / f"{p.parent.name}_{p.name}")
    return names


def bench_incremental(
    images_dir: Path,
    *,
    base_shards: int = 9,
    new_share: float = 0.01,
    limit: int | None = None,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """Run the benchmark; returns a JSON-ready report (see the module docstring).

    Both phases go through :class:`curation_assets.runner.Runner`: ``per_shard_job`` for each
    of the phase's shards, then the runner's global tail (centroids when missing, assignments
    of the shards not assigned yet, dedup, weights + export).

    Args:
        images_dir: Folder searched recursively for images.
        base_shards: Shards the base corpus is split into.
        new_share: Share of the images in the new shard.
        limit: Use at most this many images (sorted by path).
        work_dir: Where the home is built (default: a temporary folder, removed afterwards).

    Raises:
        RuntimeError: When a run of a phase failed (with its step errors).
    """
    from curation_assets.lib.storage import DeltaStore
    from curation_assets.lib.tables import DEDUP_RUNS
    from curation_assets.runner import open_runner, prepare_home

    images = list_images(images_dir, limit)
    tmp = Path(tempfile.mkdtemp(prefix="curation-bench-", dir=work_dir))
    try:
        home = tmp / "home"
        sources = home / "sources"
        base = split_into_shards(images, sources, base_shards, new_share)
        paths = prepare_home(str(home))
        steps: dict[str, dict[str, float]] = {}

        with open_runner(paths) as runner:

            def phase(name: str, shards: list[str]) -> float:
                t0 = time.perf_counter()
                runner.job_seconds = {}  # wall seconds per job, of this phase
                runner.register(shards)
                runner.per_shard(shards)
                if not runner.failures:
                    runner.cluster_and_dedup(shards)
                if runner.failures:
                    raise RuntimeError(f"{name}: runs failed: {runner.failures}")
                steps[name] = runner.job_seconds
                return time.perf_counter() - t0

            full = phase("full", base)
            incremental = phase("incremental", ["new-000"])
        runs = DeltaStore(paths.delta_root).read(DEDUP_RUNS).sort("run_at")
        n_new = len(list((sources / "new-000").iterdir()))
        return {
            "images": len(images),
            "base_shards": base_shards,
            "new_shard_images": n_new,
            "new_share": round(n_new / len(images), 4),
            "full_seconds": round(full, 2),
            "incremental_seconds": round(incremental, 2),
            "incremental_over_full": round(incremental / full, 4),
            "steps_seconds": {k: {j: round(v, 2) for j, v in d.items()} for k, d in steps.items()},
            "dedup_runs": [
                {k: r[k] for k in ("mode", "reason", "images", "new_images", "seconds")}
                for r in runs.iter_rows(named=True)
            ],
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
