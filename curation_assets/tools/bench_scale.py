"""``curation bench scale``: the global stages at corpus scale, full run against a 1 % shard.

Writes synthetic CLIP-like embeddings (:func:`.synthetic.clip_like_embeddings`, planted
near-duplicate groups scattered over the shards) straight into the per-shard tables
(``raw_images``, ``image_embeddings``, ``filtered_images``; no image is decoded, a share of
each shard is filtered out), then runs the pipeline's own jobs — ``retrain_centroids_job``,
``assign_shard_job`` for every shard, ``dedup_job``, ``weights_job`` — each in a fresh process
whose wall time and peak RSS are measured. Then it lands one new shard of ``new_share`` of N and
runs what automation would run for it (its assignments, then the global jobs), then lands
``batch`` more such shards at once and runs the global jobs once for all of them (how batching
amortizes the reads over old rows every update pays), and prints all three, with the ratios of
the updates to the full run and the dedup's modes and recall.

Every job runs in process on an ephemeral Dagster instance (the stages plan from the Delta
tables, not from Dagster's event log), with the ``compute`` resource's memory budget taken
from ``$CURATION_MEMORY_BUDGET_MB``. A job's ``seconds_in_process`` is its run
(``execute_in_process``: the plan, the steps, Dagster's events and checks); the process start,
imports, definitions and the throwaway instance (``seconds_instance``) are in ``wall_s``
only.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curation_assets.lib.memory import ARROW_POOL_ENV
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import FILTERED_IMAGES, IMAGE_EMBEDDINGS, RAW_IMAGES

MODEL_ID = "synthetic:clip-like@bench"


def _rss_mb(field: str = "VmRSS") -> float:
    """This process's resident set (``VmRSS``) or its peak since exec (``VmHWM``), MiB.

    ``ru_maxrss`` is not used: Linux carries it across fork and exec, so a child started by a
    parent holding the corpus would report the parent's peak.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def write_shard(
    store: DeltaStore, shard: str, x: np.ndarray, *, filtered_share: float, rng: np.random.Generator
) -> int:
    """Write one synthetic shard's raw, embedding and filtered rows; returns the filtered rows."""
    n = x.shape[0]
    ids = [f"{shard}-{i:07d}" for i in range(n)]
    size = rng.choice([256, 512, 1024], n).astype(np.int32)
    at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=int(rng.integers(0, 10**6)))
    base = pl.DataFrame(
        {
            "image_id": ids,
            "shard": shard,
            "source_uri": [f"synthetic://{shard}/{i}" for i in range(n)],
            "caption": pl.Series([None] * n, dtype=pl.String),
            "width": size,
            "height": size,
        }
    )
    raw = base.with_columns(
        format=pl.lit("JPEG"),
        n_bytes=pl.lit(50_000, pl.Int64),
        n_frames=pl.lit(1, pl.Int32),
        ingested_at=pl.lit(at),
    )
    store.replace_shard(RAW_IMAGES, shard, RAW_IMAGES.conform(raw))
    emb = pl.DataFrame(
        {
            "image_id": ids,
            "shard": shard,
            "embedding": pl.Series(x, dtype=pl.List(pl.Float32)),
            "model_id": MODEL_ID,
            "dim": np.full(n, x.shape[1], np.int32),
        }
    )
    store.replace_shard(IMAGE_EMBEDDINGS, shard, IMAGE_EMBEDDINGS.conform(emb))
    keep = rng.random(n) < filtered_share
    store.replace_shard(FILTERED_IMAGES, shard, FILTERED_IMAGES.conform(base.filter(keep)))
    return int(keep.sum())


def build_corpus(
    delta_root: str,
    n: int,
    shards: int,
    dim: int,
    *,
    new_share: float,
    new_shards: int,
    seed: int,
) -> tuple[list[str], list[str], dict[str, Any]]:
    """Write ``shards`` base shards of ``n`` rows in all; return them and the new shards' names.

    ``new_shards`` new shards of ``new_share`` · n rows each are drawn with the corpus (their
    planted duplicates have copies in the base shards) but written only by
    :func:`land_new_shard` (saved beside the Delta root until then).

    Memory: the draw streams (:func:`~.synthetic.iter_clip_like_embeddings`): one shard's rows
    and the planted groups' bases, never the corpus (10M × 512 is 20 GB of float32).
    """
    from curation_assets.tools.synthetic import iter_clip_like_embeddings

    n_new = max(1, round(n * new_share))
    t0 = time.perf_counter()
    store = DeltaStore(delta_root)
    rng = np.random.default_rng(seed)
    names = [f"base-{s:05d}" for s in range(shards)]
    new = [f"new-{s:05d}" for s in range(new_shards)]
    ends = [
        *np.linspace(0, n, shards + 1).astype(int)[1:],
        *(n + n_new * (s + 1) for s in range(new_shards)),
    ]
    filtered = groups = 0
    parts: list[np.ndarray] = []
    done = 0  # rows drawn into finished shards and parts

    def finish(i: int) -> None:
        nonlocal filtered
        x = np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
        parts.clear()
        if i < shards:
            filtered += write_shard(store, names[i], x, filtered_share=0.9, rng=rng)
        else:
            np.save(Path(delta_root).parent / f"{new[i - shards]}.npy", x)

    i = 0
    for _, chunk, group in iter_clip_like_embeddings(ends[-1], dim, dup_fraction=0.1, seed=seed):
        groups = max(groups, int(group.max()) + 1)
        while True:
            while i < len(ends) and done == ends[i]:
                finish(i)
                i += 1
            if not len(chunk):
                break
            take = min(len(chunk), ends[i] - done)
            parts.append(chunk[:take])
            chunk = chunk[take:]
            done += take
    while i < len(ends):
        finish(i)
        i += 1
    info = {
        "rows": n,
        "filtered_rows": filtered,
        "rows_per_new_shard": n_new,
        "planted_groups": groups,
        "seconds_write": round(time.perf_counter() - t0, 1),
    }
    return names, new, info


def land_new_shard(delta_root: str, name: str, seed: int) -> int:
    """Write a new shard saved by :func:`build_corpus`."""
    x = np.load(Path(delta_root).parent / f"{name}.npy")
    return write_shard(
        DeltaStore(delta_root), name, x, filtered_share=0.9, rng=np.random.default_rng(seed + 1)
    )


def run_step(home: Path, job: str, partitions: list[str] | None = None) -> dict[str, Any]:
    """Run ``job`` (for each of ``partitions``) in a fresh process: wall time and peak RSS."""
    cmd = [sys.executable, "-m", "curation_assets.tools.bench_scale", str(home), job]
    if partitions:
        (home / "partitions.json").write_text(json.dumps(partitions))
        cmd.append(str(home / "partitions.json"))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        msg = f"{job} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        raise RuntimeError(msg)
    out = json.loads(lines[-1])
    out["wall_s"] = round(wall, 2)
    return out


def _child(home: str, job: str, partitions_file: str | None) -> None:
    """Inside the fresh process: execute the job in process, print its figures as JSON."""
    import dagster as dg

    from curation_assets.definitions import build_defs

    defs = build_defs(home)
    target = defs.resolve_job_def(job)
    baseline = _rss_mb()
    keys: list[str] = json.loads(Path(partitions_file).read_text()) if partitions_file else []
    t_instance = time.perf_counter()
    metadata: dict[str, Any] = {}
    with dg.DagsterInstance.ephemeral() as instance:
        if keys:
            instance.add_dynamic_partitions("shards", keys)
        # the run's own seconds start here: creating this throwaway instance (~0.4 s) is the
        # harness's, as the process start is (a deployment's run worker loads its instance)
        t0 = time.perf_counter()
        instance_s = t0 - t_instance
        for key in keys or [None]:
            result = target.execute_in_process(
                instance=instance,
                partition_key=key,
                raise_on_error=True,
                run_config=_RUN_CONFIG.get(job, {}),
            )
            for event in result.get_asset_materialization_events():
                mat = event.step_materialization_data.materialization
                if mat.asset_key.to_user_string() == "deduplicated_images":
                    metadata = {
                        k: v.value
                        for k, v in mat.metadata.items()
                        if k in _DEDUP_FIGURES or (k.startswith("recall_") and k != "recall_curve")
                    }
    peak = _rss_mb("VmHWM")
    sys.stdout.write(
        json.dumps(
            {
                "job": job,
                "runs": max(1, len(keys)),
                "seconds_in_process": round(time.perf_counter() - t0, 2),
                "seconds_instance": round(instance_s, 2),
                "baseline_rss_mb": round(baseline, 1),
                "peak_rss_mb": round(peak, 1),
                "peak_above_baseline_mb": round(peak - baseline, 1),
                **({"dedup": metadata} if metadata else {}),
            },
            default=str,
        )
        + "\n"
    )


#: Synthetic vectors have no calibrated τ: the 512-d CLIP value from practice.
_RUN_CONFIG = {"dedup_job": {"ops": {"deduplicate": {"config": {"tau": 0.95}}}}}
_DEDUP_FIGURES = {
    "mode",
    "mode_reason",
    "images",
    "removed",
    "new_images",
    "search",
    "units_searched",
    "units_total",
    "largest_unit_rows",
    "units_engine",
    "units_ray_nodes",
    "rewritten_shards",
    "patched_shards",
    "patched_rows",
    "dedup_seconds",
    "dedup_seconds_layout",
    "dedup_seconds_search",
    "dedup_seconds_staging",
    "staged_rows",
    "dedup_seconds_merge",
    "dedup_seconds_recall",
}


def bench_scale(
    n: int,
    *,
    shards: int = 100,
    dim: int = 512,
    new_share: float = 0.01,
    batch: int = 4,
    seed: int = 0,
    home: str | None = None,
    jobs: tuple[str, ...] = ("dedup_job", "weights_job"),
) -> dict[str, Any]:
    """Full run, one new shard, then ``batch`` new shards at once; the figures as a dict.

    Each new shard holds ``new_share`` · N rows. The batched update shows how one update over
    several shards (automation batches what landed between ticks) amortizes the reads over
    old rows that every update pays (see the module doc). ``batch=0`` skips it.
    """
    root = Path(home) if home else Path(tempfile.mkdtemp(prefix="bench-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    delta_root = str(root / "delta")
    names, new, info = build_corpus(
        delta_root, n, shards, dim, new_share=new_share, new_shards=1 + batch, seed=seed
    )
    report: dict[str, Any] = {
        "n": n,
        "shards": shards,
        "dim": dim,
        "memory_budget_mb": os.environ.get("CURATION_MEMORY_BUDGET_MB", "default"),
        "engine": os.environ.get("CURATION_ENGINE") or "local",
        # polars' allocator (its jemalloc, decay 0.5-1 s) keeps freed pages: its settings move
        # every peak
        "polars_allocator": os.environ.get("_RJEM_MALLOC_CONF") or "default",
        # pyarrow's pool (memory.use_arrow_pool): mimalloc kept a streamed read's batches
        "arrow_pool": os.environ.get(ARROW_POOL_ENV) or "default",
        "corpus": info,
        "home": str(root),
    }
    full: dict[str, Any] = {"retrain_centroids_job": run_step(root, "retrain_centroids_job")}
    full["assign_shard_job"] = run_step(root, "assign_shard_job", names)
    for job in jobs:
        full[job] = run_step(root, job)
    inc = _update(root, delta_root, new[:1], jobs, seed)
    report["full"] = full
    report["incremental"] = inc
    report["global_steps"] = _ratios(full, inc, jobs)
    if batch:
        batched = _update(root, delta_root, new[1:], jobs, seed)
        report[f"incremental_{batch}_shards"] = batched
        ratios = _ratios(full, batched, jobs)
        ratios["per_shard_in_process_s"] = round(ratios["incremental_in_process_s"] / batch, 2)
        report[f"global_steps_{batch}_shards"] = ratios
    return report


def _update(
    root: Path, delta_root: str, shards: list[str], jobs: tuple[str, ...], seed: int
) -> dict[str, Any]:
    """Land ``shards`` and run what automation would: their assignments, then the global jobs."""
    for name in shards:
        land_new_shard(delta_root, name, seed)
    out: dict[str, Any] = {"assign_shard_job": run_step(root, "assign_shard_job", shards)}
    for job in jobs:
        out[job] = run_step(root, job)
    return out


def _ratios(full: dict[str, Any], inc: dict[str, Any], jobs: tuple[str, ...]) -> dict[str, Any]:
    """The global jobs of an update against the full run: wall and in-process seconds."""
    full_wall = sum(full[j]["wall_s"] for j in jobs)
    inc_wall = sum(inc[j]["wall_s"] for j in jobs)
    full_work = sum(full[j]["seconds_in_process"] for j in jobs)
    inc_work = sum(inc[j]["seconds_in_process"] for j in jobs)
    return {
        "full_wall_s": round(full_wall, 2),
        "incremental_wall_s": round(inc_wall, 2),
        "incremental_over_full": round(inc_wall / full_wall, 3) if full_wall else None,
        # without the fresh process's start (imports, definitions): the jobs' own work
        "full_in_process_s": round(full_work, 2),
        "incremental_in_process_s": round(inc_work, 2),
        "incremental_over_full_in_process": round(inc_work / full_work, 3) if full_work else None,
        "per_job_in_process_ratio": {
            j: round(inc[j]["seconds_in_process"] / full[j]["seconds_in_process"], 3)
            for j in jobs
            if full[j]["seconds_in_process"]
        },
    }


if __name__ == "__main__":  # the fresh process of run_step
    _child(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
