"""Embedding throughput with 1, 2, 4 … engine workers sharing a machine's GPU (issue 14).

The measured work is the ``image_embeddings`` step's own, :class:`EmbedShardWork`: re-read each
image from its shard, decode and preprocess it on ``decode_threads`` threads, run the forward
pass in batches, write the shard's vectors as one Delta transaction and run the step's checks.
Only Dagster is left out (no run, no event log), so this runs wherever the library does.

Input: ``--synthetic N`` photo-like JPEGs of ``--size`` pixels made here (smooth colour fields
with shapes and sensor noise, so that decoding costs what a web photo's does), or the image
files under ``--images DIR``; either way split into ``--shards`` folder shards and ingested
once (the ingest step's code, in this process; its time is reported too).

First the decode ceiling: reading, hashing, decoding and preprocessing alone with each
configuration's decode-thread count, no model. Then each configuration
``engine/workers/decode_threads`` embeds every shard twice on the same
workers: the first pass (``cold``) includes starting the workers and loading the model in each,
the second (``warm``) is the steady state a long backfill sees. ``local/1/T`` is the step on
the local engine (one process). ``ray/W/T`` runs W shard tasks at once on a Ray cluster
(``--address``; ``start``, the default, starts a one-node cluster in this process over this
machine's CPUs and GPUs): on a GPU machine each task asks for ``gpus / W`` GPUs
(``gpus_per_task``), so W processes share the GPU, each with its model and T decode threads.

Run: ``curation bench embed-workers --synthetic 8192 --shards 32 --configs local/1/4 ray/1/4 ray/2/4
ray/4/4`` (prints JSON).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Config:
    """One measured configuration: engine, shard tasks at once, decode threads per task."""

    engine: str
    workers: int
    decode_threads: int

    @property
    def name(self) -> str:
        """``engine/workers/decode_threads``."""
        return f"{self.engine}/{self.workers}/{self.decode_threads}"


def parse_config(text: str) -> Config:
    """``local/1/4`` or ``ray/2/4`` → :class:`Config`.

    Raises:
        ValueError: On another form, or a local engine with more than one worker.
    """
    parts = text.split("/")
    if (
        len(parts) != 3
        or parts[0] not in ("local", "ray")
        or not all(p.isdigit() for p in parts[1:])
    ):
        raise ValueError(f"config {text!r}: expected local/1/THREADS or ray/WORKERS/THREADS")
    config = Config(parts[0], int(parts[1]), int(parts[2]))
    if config.workers < 1 or config.decode_threads < 1:
        raise ValueError(f"config {text!r}: workers and threads must be >= 1")
    if config.engine == "local" and config.workers != 1:
        raise ValueError(f"config {text!r}: the local engine runs one shard at a time")
    return config


def _photo(args: tuple[int, int, int, str]) -> None:
    """Write one photo-like JPEG: a smooth colour field, a few shapes, sensor noise."""
    from PIL import Image, ImageDraw

    seed, width, height, path = args
    rng = np.random.default_rng(seed)
    field = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(field).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = (
            int(rng.integers(width // 10, width // 3)),
            int(rng.integers(height // 10, height // 3)),
        )
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=colour)
        else:
            draw.rectangle((x0, y0, x0 + w, y0 + h), fill=colour)
    pixels = np.asarray(img, dtype=np.int16) + rng.normal(0, 6, (height, width, 3)).astype(np.int16)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)


def write_shards(
    root: Path,
    n_shards: int,
    *,
    synthetic: int = 0,
    size: tuple[int, int] = (640, 480),
    images: Path | None = None,
    processes: int = 0,
) -> int:
    """Fill ``root`` with ``n_shards`` folder shards; returns the number of image files."""
    dirs = [root / f"s{i:04d}" for i in range(n_shards)]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    if images is not None:
        exts = {".jpg", ".jpeg", ".png", ".webp"}
        files = sorted(p for p in images.rglob("*") if p.suffix.lower() in exts)
        for i, src in enumerate(files):
            shutil.copyfile(src, dirs[i % n_shards] / f"{i:07d}{src.suffix.lower()}")
        return len(files)
    jobs = [
        (i, size[0], size[1], str(dirs[i % n_shards] / f"{i:07d}.jpg")) for i in range(synthetic)
    ]
    with ProcessPoolExecutor(processes or os.cpu_count() or 1) as pool:
        list(pool.map(_photo, jobs, chunksize=64))
    return synthetic


def ingest_all(root: Path, delta_root: Path, threads: int) -> dict[str, Any]:
    """Ingest every shard under ``root`` with the ingest step's code; returns counts and time."""
    from curation_assets.lib.ingest import existing_lookup, ingest_shard, write_ingest
    from curation_assets.lib.shards import shard_info
    from curation_assets.lib.storage import DeltaStore

    store = DeltaStore(str(delta_root))
    t0 = time.perf_counter()
    raw = quarantined = 0
    for d in sorted(root.iterdir()):
        result = ingest_shard(
            shard_info(root, d.name), existing=existing_lookup(store, d.name), workers=threads
        )
        write_ingest(store, d.name, result)
        raw += result.raw.height
        quarantined += result.quarantine.height
    seconds = time.perf_counter() - t0
    return {
        "images": raw,
        "quarantined": quarantined,
        "seconds": round(seconds, 2),
        "images_per_s": round(raw / seconds, 1) if seconds else 0.0,
        "threads": threads,
    }


def _pass(engine: Any, work: Any, keys: list[str]) -> dict[str, Any]:
    """Embed every shard once on ``engine``; the figures of that pass."""
    t0 = time.perf_counter()
    results = list(engine.map_shards(work, keys, wants_gpu=True))
    wall = time.perf_counter() - t0
    rows = sum(r.value.rows for r in results)
    per_worker = Counter(f"{r.host}:{r.pid}" for r in results)
    failed = [c.name for r in results for c in r.value.checks if not c.passed]
    return {
        "wall_s": round(wall, 2),
        "images": rows,
        "images_per_s": round(rows / wall, 1) if wall else 0.0,
        "quarantined": sum(r.value.quarantined for r in results),
        "model_loads": sum(bool(r.value.model_loaded) for r in results),
        "workers_used": len(per_worker),
        "shards_per_worker": sorted(per_worker.values(), reverse=True),
        # where a shard task's time went: the embed loop (decode threads feeding the forward
        # pass, batches streamed into the Delta write) vs the rest (reading the shard's ids,
        # the commit, the quarantine write, the checks' read-back)
        "task_seconds_sum": round(sum(r.seconds for r in results), 2),
        "embed_loop_share": round(
            sum(r.value.seconds for r in results) / max(1e-9, sum(r.seconds for r in results)), 3
        ),
        "forward_share": round(
            sum(r.value.forward_seconds for r in results)
            / max(1e-9, sum(r.value.seconds for r in results)),
            3,
        ),
        "device": sorted({r.value.device for r in results}),
        "failed_checks": sorted(set(failed)),
    }


def decode_ceiling(
    source: Path, keys: list[str], spec: Any, thread_counts: Sequence[int]
) -> dict[str, float]:
    """Images/s of reading, hashing, decoding and preprocessing alone, per decode-thread count.

    The embed loop's pipeline without the model (``iter_prepared`` with the model's own
    preprocess): the most any configuration with that many decode threads can reach. A warm
    pass far below it is limited by the forward pass or the writes; near it, by decoding.
    """
    from dataclasses import replace

    from curation_assets.lib.embed import load_embedder
    from curation_assets.lib.images import iter_prepared
    from curation_assets.lib.ingest import DecodeLimits
    from curation_assets.lib.shards import ShardReader

    preprocess = load_embedder(replace(spec, device="cpu")).preprocess
    reader = ShardReader(root=str(source))
    out: dict[str, float] = {}
    for threads in thread_counts:
        items = (item for key in keys for item in reader.items(key))
        t0 = time.perf_counter()
        n = sum(
            p.value is not None
            for p in iter_prepared(
                items,
                preprocess,
                wanted=None,
                workers=threads,
                prefetch=4 * threads,
                limits=DecodeLimits(max_pixels=2**62),
            )
        )
        out[f"threads_{threads}"] = round(n / (time.perf_counter() - t0), 1)
    return out


def _engine(config: Config, address: str, gpus: int) -> Any:
    from curation_assets.lib.engine import LocalEngine, RayEngine

    if config.engine == "local":
        return LocalEngine()
    per_task = gpus / config.workers if gpus else 1.0
    if per_task > 1:
        per_task = float(int(per_task))
    return RayEngine(address, max_in_flight=config.workers, gpus_per_task=per_task)


def bench(
    configs: Sequence[Config],
    *,
    work_dir: Path,
    synthetic: int = 0,
    size: tuple[int, int] = (640, 480),
    images: Path | None = None,
    shards: int = 16,
    spec_kwargs: dict[str, Any] | None = None,
    batch_size: int = 0,
    address: str = "start",
    ingest_threads: int = 0,
) -> dict[str, Any]:
    """Run each configuration twice (cold, warm) over the same ingested shards; return figures."""
    import torch

    from curation_assets.lib.embed import EmbedderSpec, EmbedShardWork
    from curation_assets.lib.shards import ShardReader

    cpus = os.cpu_count() or 1
    gpus = torch.cuda.device_count()
    source, delta = work_dir / "src", work_dir / "delta"
    t0 = time.perf_counter()
    n_files = write_shards(source, shards, synthetic=synthetic, size=size, images=images)
    made_s = time.perf_counter() - t0
    ingest = ingest_all(source, delta, ingest_threads or cpus)
    keys = sorted(d.name for d in source.iterdir())
    spec = EmbedderSpec(**(spec_kwargs or {}))
    out: dict[str, Any] = {
        "machine": {
            "cpus": cpus,
            "gpus": [torch.cuda.get_device_name(i) for i in range(gpus)],
            "torch": torch.__version__,
        },
        "input": {
            "files": n_files,
            "shards": len(keys),
            "made_s": round(made_s, 1),
            "size": f"{size[0]}x{size[1]}" if images is None else str(images),
        },
        "ingest": ingest,
        "embedder": {
            "backend": spec.backend,
            "model": spec.model_name,
            "pretrained": spec.pretrained,
            "precision": spec.precision,
        },
        "configs": {},
    }
    out["decode_ceiling"] = decode_ceiling(
        source, keys, spec, sorted({c.decode_threads for c in configs})
    )
    if any(c.engine == "ray" for c in configs):
        import ray

        if address == "start":
            # a throwaway one-node cluster: without this Ray 2.60 writes ~/.ray/auth_token,
            # after which drivers fail to reach loopback clusters started with `ray start`
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            ray.init(num_cpus=cpus, num_gpus=gpus, include_dashboard=False, log_to_driver=False)
            address = "auto"
        out["ray"] = {"version": ray.__version__, "address": address}
    for config in configs:
        work = EmbedShardWork(
            root_uri=str(delta),
            storage_options={},
            source=ShardReader(root=str(source)),
            spec=spec,
            batch_size=batch_size,
            workers=config.decode_threads,
            norm_tolerance=1e-3,
            progress_every_s=60.0,
        )
        engine = _engine(config, address, gpus)
        cold = _pass(engine, work, keys)
        warm = _pass(engine, work, keys)
        out["configs"][config.name] = {
            "gpus_per_task": getattr(engine, "gpus_per_task", None),
            "cold": cold,
            "warm": warm,
        }
        # as it goes, so that a run cut short still says what it measured
        sys.stderr.write(f"{config.name} {json.dumps(out['configs'][config.name])}\n")
        sys.stderr.flush()
    base = out["configs"].get(next((c.name for c in configs if c.engine == "ray"), ""), None)
    for entry in out["configs"].values():
        if base is not None:
            entry["warm_speedup_vs_first_ray"] = round(
                entry["warm"]["images_per_s"] / max(1e-9, base["warm"]["images_per_s"]), 2
            )
    return out


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.partition("x")
    return int(w), int(h)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The bench's options (shared by ``curation bench embed-workers`` and ``python -m``)."""
    p.add_argument(
        "--configs",
        nargs="+",
        default=["local/1/4", "ray/1/4", "ray/2/4", "ray/4/4"],
        help="engine/workers/decode_threads, e.g. local/1/4 ray/2/4",
    )
    p.add_argument("--synthetic", type=int, default=2048, help="photo-like JPEGs to make")
    p.add_argument("--size", type=_size, default=(640, 480), help="their size, WxH")
    p.add_argument("--images", type=Path, help="use this folder's image files instead")
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--backend", default="timm", choices=["timm", "open_clip"])
    p.add_argument("--model", default=None, help="model name (default: the backend's default)")
    p.add_argument(
        "--pretrained",
        default="default",
        help="'default' (the backend's offline weights), 'none' (random weights: "
        "same speed, vectors meaningless) or a tag/checkpoint path",
    )
    p.add_argument("--model-config", default=None, help="open_clip model-config JSON")
    p.add_argument("--batch-size", type=int, default=0, help="0 = auto (128 on GPU, 16 on CPU)")
    p.add_argument("--address", default="start", help="Ray address, or 'start' (one node here)")
    p.add_argument("--work-dir", type=Path, help="default: a new temporary folder (removed)")
    p.add_argument("--out", type=Path, help="also write the JSON here")


def run(args: argparse.Namespace) -> int:
    """Run the bench from parsed arguments; print JSON."""
    from curation_assets.lib.embed import (
        DEFAULT_OPEN_CLIP_MODEL,
        DEFAULT_TIMM_MODEL,
        EFFICIENTNET_LITE0_PACKAGE,
    )

    model = args.model or (
        DEFAULT_TIMM_MODEL if args.backend == "timm" else DEFAULT_OPEN_CLIP_MODEL
    )
    pretrained: str | None = args.pretrained
    if pretrained == "default":
        pretrained = EFFICIENTNET_LITE0_PACKAGE if args.backend == "timm" else None
    elif pretrained == "none":
        pretrained = None
    spec_kwargs = {
        "backend": args.backend,
        "model_name": model,
        "pretrained": pretrained,
        "model_config": args.model_config,
    }
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-embed-"))
    try:
        result = bench(
            [parse_config(c) for c in args.configs],
            work_dir=work_dir,
            synthetic=0 if args.images else args.synthetic,
            size=args.size,
            images=args.images,
            shards=args.shards,
            spec_kwargs=spec_kwargs,
            batch_size=args.batch_size,
            address=args.address,
        )
    finally:
        if args.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)
    text = json.dumps(result, indent=1)
    print(text)  # noqa: T201 (the command's output)
    if args.out:
        args.out.write_text(text)
    return 0


def main() -> int:
    """``python -m curation_assets.tools.bench_embed`` (no Dagster needed)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_arguments(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
