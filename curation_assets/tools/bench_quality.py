"""``curation bench quality``: the cost of the pixel-quality signals against the decode.

Ingest decodes every image once; the signals (:func:`curation_assets.lib.quality.signals.measure`)
are computed on that decoded image. This benchmark reads a folder, tar or manifest, and per
image times the decode (``decode_image``: what ingest pays anyway) and ``measure`` on its
result, in one thread, interleaved, so both see the same load; each is timed ``repeats``
times and the fastest kept (on a shared machine, the minimum is the least disturbed figure).
``resize`` re-encodes every image as a JPEG (quality 90) with that longer side first, to see
the cost at web-photo sizes when the corpus at hand is thumbnails. It also prints the signals'
distribution and the flag counts at the default thresholds: the figures the defaults were
chosen from.
"""

import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from PIL import Image

from curation_assets.lib.ingest import decode_image
from curation_assets.lib.quality.signals import CHECKS, SIGNALS, measure, quality_frame
from curation_assets.lib.shards import inspect_shard, iter_items


def _resized(data: bytes, px: int) -> bytes:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    scale = px / max(img.size)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def bench_quality(
    images: Path, *, limit: int | None = None, repeats: int = 3, resize: int | None = None
) -> dict[str, Any]:
    """Per-image decode and signal times (µs) and the signals' distribution.

    Args:
        images: Folder (searched recursively), tar or manifest of images.
        limit: Use at most this many inputs.
        repeats: Timings per image (the fastest counts).
        resize: Re-encode each image with this longer side first (None: as found).

    Returns:
        JSON-ready: ``images``, ``decode_us`` / ``signals_us`` (median, mean, p95),
        ``signals_over_decode`` (ratio of the means), ``quantiles`` per signal (p1, p5, p50,
        p95, p99), ``flagged_at_defaults`` per check.
    """
    shard = inspect_shard(images, min_age_s=0.0)
    if shard is None or not shard.ready:
        msg = f"{images} is not a folder, tar or manifest of images"
        raise ValueError(msg)
    decode_us: list[float] = []
    signal_us: list[float] = []
    rows: list[dict[str, object]] = []
    for i, item in enumerate(iter_items(shard)):
        if limit is not None and i >= limit:
            break
        if item.data is None or item.error is not None:
            continue
        data = _resized(item.data, resize) if resize else item.data
        best_decode = best_signals = float("inf")
        signals: dict[str, float | int] = {}
        for _ in range(repeats):
            t0 = time.perf_counter()
            decoded = decode_image(data)
            t1 = time.perf_counter()
            if decoded.image is None:
                break
            signals = measure(decoded.image)
            t2 = time.perf_counter()
            best_decode = min(best_decode, t1 - t0)
            best_signals = min(best_signals, t2 - t1)
        if not signals:
            continue
        decode_us.append(best_decode * 1e6)
        signal_us.append(best_signals * 1e6)
        rows.append({"image_id": str(i), "shard": shard.key, **signals})
    q = quality_frame(rows)

    def summary(values: list[float]) -> dict[str, float]:
        arr = np.asarray(values or [np.nan])
        return {
            "median": round(float(np.median(arr)), 1),
            "mean": round(float(arr.mean()), 1),
            "p95": round(float(np.percentile(arr, 95)), 1),
        }

    quantiles = {
        s: {
            f"p{p}": round(float(np.percentile(q[s].cast(pl.Float64).to_numpy(), p)), 2)
            for p in (1, 5, 50, 95, 99)
        }
        for s in SIGNALS
        if q.height
    }
    flagged = {
        f"{name} ({c.describe()})": int(q.select(c.flagged().sum()).item() or 0)
        for name, c in CHECKS.items()
    }
    return {
        "images": q.height,
        "resized_to": resize,
        "repeats": repeats,
        "decode_us": summary(decode_us),
        "signals_us": summary(signal_us),
        "signals_over_decode": round(float(np.mean(signal_us) / np.mean(decode_us)), 4)
        if decode_us
        else None,
        "quantiles": quantiles,
        "flagged_at_defaults": flagged,
    }
