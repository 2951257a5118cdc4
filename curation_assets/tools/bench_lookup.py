"""``curation bench lookup``: ingest's exact-duplicate lookup, scan against the image-id index.

Writes ``raw_images`` of N synthetic images in S shards (ids are sha256 hex, as ingest makes
them; no pixels), then a new shard of ``--shard-rows`` ids of which ``--dup-share`` are copies
of images in random old shards. Each phase runs in a fresh process (its peak RSS is its own):

* ``scan``: :func:`~curation_assets.lib.ingest.lookup_elsewhere`, every shard's ids read;
* ``index_build``: the index's first refresh (the whole table, once per root and machine);
* ``index_lookup``: :func:`~curation_assets.lib.ingest.lookup_now` with nothing changed;
* ``land_and_lookup``: the new shard's rows written to ``raw_images``, then the lookup of
  another shard's ids (as the ``image_ids_unique`` check or the next shard does): the refresh
  reads the one shard written.

Each lookup phase checks its rows against the scan's. Prints JSON: per phase the median wall
seconds of ``--repeats`` runs and the largest peak RSS above the interpreter, the index's
disk bytes per image, and the ratios scan / index.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import polars as pl

#: Rows of synthetic ``raw_images`` written per Delta commit.
_WRITE_ROWS = 200_000


def _ids(start: int, n: int) -> list[str]:
    return [hashlib.sha256(str(i).encode()).hexdigest() for i in range(start, start + n)]


def _raw(shard: str, ids: list[str]) -> pl.DataFrame:
    import polars as pl

    from curation_assets.lib.tables import RAW_IMAGES

    n = len(ids)
    frame = pl.DataFrame(
        {
            "image_id": ids,
            "shard": [shard] * n,
            "source_uri": [f"/data/{shard}.tar#{i:06d}.jpg" for i in range(n)],
            "format": ["JPEG"] * n,
        }
    )
    missing = [c for c in RAW_IMAGES.column_names if c not in frame.columns]
    return RAW_IMAGES.conform(frame.with_columns(pl.lit(None).alias(c) for c in missing))


def build(root: str, n: int, shards: int) -> None:
    """``raw_images`` of ``n`` images in ``shards`` shards (one commit per shard)."""
    import numpy as np

    from curation_assets.lib.storage import DeltaStore
    from curation_assets.lib.tables import RAW_IMAGES

    store = DeltaStore(root)
    edges = np.linspace(0, n, shards + 1).astype(int)
    for s in range(shards):
        lo, hi = int(edges[s]), int(edges[s + 1])
        frames = (
            _raw(f"old-{s:05d}", _ids(a, min(_WRITE_ROWS, hi - a)))
            for a in range(lo, hi, _WRITE_ROWS)
        )
        store.replace_shard(RAW_IMAGES, f"old-{s:05d}", frames)


def asked_ids(n: int, rows: int, dup_share: float, seed: int) -> list[str]:
    """``rows`` ids: ``dup_share`` of them held by old shards, the rest new."""
    import numpy as np

    rng = np.random.default_rng(seed)
    dups = int(rows * dup_share)
    old = sorted(int(i) for i in rng.choice(n, dups, replace=False))
    fresh = _ids(n + 10**9 + seed * rows, rows - dups)
    return [hashlib.sha256(str(i).encode()).hexdigest() for i in old] + fresh


def _phase(root: str, phase: str, ids: list[str], shard: str, queue: Any) -> None:
    import polars as pl

    from curation_assets.lib.idindex import IdIndex
    from curation_assets.lib.ingest import lookup_elsewhere, lookup_now
    from curation_assets.lib.storage import DeltaStore
    from curation_assets.lib.tables import RAW_IMAGES
    from curation_assets.tools.bench_scale import _rss_mb

    store = DeltaStore(root)
    store.version(RAW_IMAGES.name)  # the interpreter and the Delta client loaded
    base = _rss_mb("VmHWM")
    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    if phase == "scan":
        rows = lookup_elsewhere(store, shard, ids, store.version(RAW_IMAGES.name))
    elif phase == "index_build":
        refreshed = IdIndex(store).refresh()
        rows = pl.DataFrame()
        out = {"rows_indexed": refreshed.rows, "shards_read": refreshed.shards}
    elif phase == "land":
        store.replace_shard(RAW_IMAGES, shard, _raw(shard, ids))
        rows = pl.DataFrame()
    else:
        got = lookup_now(store, shard, ids)
        rows = got.rows
        out = {
            "method": got.method,
            "shards_read": got.metadata.get("index_shards_refreshed"),
            "rows_read": got.metadata.get("index_rows_refreshed"),
        }
    seconds = time.perf_counter() - t0
    digest = hashlib.sha256(
        json.dumps(sorted(rows.select("image_id", "shard", "source_uri").rows())).encode()
        if rows.height
        else b""
    ).hexdigest()
    queue.put(
        {
            "seconds": seconds,
            "peak_mb": _rss_mb("VmHWM") - base,
            "found": rows.height,
            "digest": digest,
            **out,
        }
    )


def run_phase(root: str, phase: str, ids: list[str], shard: str) -> dict[str, Any]:
    """One phase in a fresh (spawned) process."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_phase, args=(root, phase, ids, shard, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def bench_lookup(
    n: int,
    *,
    shards: int,
    shard_rows: int,
    dup_share: float,
    repeats: int,
    seed: int,
    home: str | None,
) -> dict[str, Any]:
    """Run the phases (module docstring); returns the JSON report."""
    from curation_assets.lib.idindex import IdIndex
    from curation_assets.lib.storage import DeltaStore

    folder = Path(home or tempfile.mkdtemp(prefix="bench_lookup_"))
    root = str(folder / "delta")
    t0 = time.perf_counter()
    build(root, n, shards)
    build_s = time.perf_counter() - t0
    ids = asked_ids(n, shard_rows, dup_share, seed)
    phases: dict[str, list[dict[str, Any]]] = {}
    for _ in range(repeats):
        IdIndex(DeltaStore(root)).path.unlink(missing_ok=True)
        phases.setdefault("index_build", []).append(run_phase(root, "index_build", [], ""))
        for phase in ("scan", "index_lookup"):
            phases.setdefault(phase, []).append(run_phase(root, phase, ids, "new-0"))
    landed = []
    for r in range(repeats):
        shard_ids = asked_ids(n, shard_rows, dup_share, seed + 1 + r)
        run_phase(root, "land", shard_ids, f"landed-{r}")
        # the next shard's lookup (its ids overlap the landed one's): the refresh reads one
        landed.append(run_phase(root, "index_lookup", shard_ids, f"next-{r}"))
        check = run_phase(root, "scan", shard_ids, f"next-{r}")
        if check["digest"] != landed[-1]["digest"]:
            msg = f"the index answered {landed[-1]['found']} rows, the scan {check['found']}"
            raise AssertionError(msg)
    phases["land_and_lookup"] = landed
    digests = {p["digest"] for p in phases["scan"] + phases["index_lookup"]}
    if len(digests) != 1:
        msg = "the index and the scan found different rows"
        raise AssertionError(msg)
    index = IdIndex(DeltaStore(root))
    disk = sum(
        os.path.getsize(p)
        for p in index.path.parent.iterdir()
        if p.name.startswith(index.path.name)
    )

    def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
        out = {
            "seconds_median": round(statistics.median(r["seconds"] for r in runs), 4),
            "seconds": [round(r["seconds"], 4) for r in runs],
            "peak_mb_above_interpreter": round(max(r["peak_mb"] for r in runs), 1),
        }
        for key in ("found", "shards_read", "rows_read", "rows_indexed", "method"):
            if key in runs[-1]:
                out[key] = runs[-1][key]
        return out

    report = {
        "n": n,
        "shards": shards,
        "shard_rows": shard_rows,
        "dup_share": dup_share,
        "build_raw_images_s": round(build_s, 1),
        "phases": {k: summary(v) for k, v in phases.items()},
        "index_disk_bytes": disk,
        "index_bytes_per_image": round(disk / max(index.rows(), 1), 1),
        "home": str(folder),
    }
    scan = report["phases"]["scan"]["seconds_median"]
    report["scan_over_index_lookup"] = round(
        scan / report["phases"]["index_lookup"]["seconds_median"], 1
    )
    report["scan_over_land_and_lookup"] = round(
        scan / report["phases"]["land_and_lookup"]["seconds_median"], 1
    )
    return report


def cmd_bench_lookup(args: argparse.Namespace) -> int:
    """`curation bench lookup`: print the JSON report."""
    report = bench_lookup(
        args.n,
        shards=args.shards,
        shard_rows=args.shard_rows,
        dup_share=args.dup_share,
        repeats=args.repeats,
        seed=args.seed,
        home=args.home,
    )
    print(json.dumps(report, indent=2))  # noqa: T201 (the command's output)
    return 0


def add_bench_lookup_parser(bench_sub: Any) -> None:
    """Add ``lookup`` to the ``curation bench`` subcommands."""
    bl = bench_sub.add_parser(
        "lookup", help="ingest's exact-duplicate lookup: raw_images scan vs the image-id index"
    )
    bl.add_argument("--n", type=int, default=1_000_000, help="images in raw_images")
    bl.add_argument("--shards", type=int, default=100, help="shards they are in")
    bl.add_argument("--shard-rows", type=int, default=10_000, help="ids one lookup asks")
    bl.add_argument("--dup-share", type=float, default=0.1, help="share of them held elsewhere")
    bl.add_argument("--repeats", type=int, default=3)
    bl.add_argument("--seed", type=int, default=0)
    bl.add_argument("--home", help="work folder (default: a new temporary folder, kept)")
    bl.set_defaults(func=cmd_bench_lookup)
