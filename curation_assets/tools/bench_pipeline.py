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
    global_jobs: tuple[str, ...] = ("dedup_job", "weights_job"),
) -> dict[str, Any]:
    """Run the benchmark; returns a JSON-ready report (see the module docstring).

    Args:
        images_dir: Folder searched recursively for images.
        base_shards: Shards the base corpus is split into.
        new_share: Share of the images in the new shard.
        limit: Use at most this many images (sorted by path).
        work_dir: Where the home is built (default: a temporary folder, removed afterwards).
        global_jobs: Unpartitioned jobs run after the shards (full) and after the new shard.
    """
    import dagster as dg

    from curation_assets.definitions import build_defs
    from curation_assets.defs.partitions import SHARDS_PARTITION
    from curation_assets.lib.dedup_run import DEDUP_RUNS
    from curation_assets.lib.storage import DeltaStore

    images = list_images(images_dir, limit)
    tmp = Path(tempfile.mkdtemp(prefix="curation-bench-", dir=work_dir))
    try:
        home = tmp / "home"
        sources = home / "sources"
        base = split_into_shards(images, sources, base_shards, new_share)
        from curation_assets.cli import _prepare_home, step_errors

        paths = _prepare_home(str(home))
        defs = build_defs(str(paths.home))
        steps: dict[str, dict[str, float]] = {"full": {}, "incremental": {}}

        with dg.DagsterInstance.get() as instance:

            def execute(phase: str, job: str, **kw: Any) -> None:
                t0 = time.perf_counter()
                result = defs.resolve_job_def(job).execute_in_process(
                    instance=instance, raise_on_error=False, **kw
                )
                if not result.success:
                    msg = f"{job} {kw.get('partition_key', '')} failed: {step_errors(result)}"
                    raise RuntimeError(msg)
                key = job
                steps[phase][key] = steps[phase].get(key, 0.0) + time.perf_counter() - t0

            def phase(name: str, shards: list[str], centroids: bool) -> float:
                t0 = time.perf_counter()
                instance.add_dynamic_partitions(SHARDS_PARTITION, shards)
                for s in shards:
                    execute(name, "per_shard_job", partition_key=s)
                if centroids:
                    execute(name, "retrain_centroids_job")
                for s in shards:
                    execute(name, "assign_shard_job", partition_key=s)
                for job in global_jobs:
                    execute(name, job)
                return time.perf_counter() - t0

            full = phase("full", base, centroids=True)
            incremental = phase("incremental", ["new-000"], centroids=False)
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
