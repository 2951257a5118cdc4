"""What a person reads about pixel quality: distributions, flag counts, the worst examples.

Used by the ``image_quality`` asset (one shard's metadata: its own rows, already in memory) and
by ``curation quality`` (:func:`corpus_stats`: the chosen shards one at a time, merged through
:class:`~curation_assets.lib.quality.signals.QualityStats`, so memory is one shard's signal
columns plus fixed histograms, whatever the corpus size).
"""

import base64
import html
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import polars as pl

from curation_assets.lib.images import SourceReader, make_thumbnail
from curation_assets.lib.quality.signals import (
    CHECKS,
    HIST_EDGES,
    SIGNALS,
    QualityStats,
    hist_quantile,
    quality_stats,
)
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import RAW_IMAGES
from curation_assets.lib.tables.quality import IMAGE_QUALITY

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def _fmt(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def quantile_markdown(quality: pl.DataFrame) -> str:
    """Exact quantiles of every signal of ``quality`` as a markdown table (one row a signal)."""
    if quality.is_empty():
        return "_no images_"
    head = "| signal | " + " | ".join(f"p{round(q * 100)}" for q in QUANTILES) + " |"
    lines = [head, "|---|" + "---:|" * len(QUANTILES)]
    for s in SIGNALS:
        col = quality[s].cast(pl.Float64)
        values = [col.quantile(q, "linear") for q in QUANTILES]
        cells = [_fmt(math.nan if v is None else float(v)) for v in values]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stats_markdown(stats: QualityStats) -> str:
    """Flag counts per check at its threshold, then each signal's histogram, as markdown."""
    lines = ["| check | rule | flagged | share | reason |", "|---|---|---:|---:|---|"]
    for name, c in CHECKS.items():
        k = stats.flags[name]
        share = f"{k / stats.n:.2%}" if stats.n else "n/a"
        rule = c.describe(stats.thresholds[name])
        lines.append(f"| {name} | `{rule}` | {k} | {share} | {c.reason} |")
    lines.append("")
    for s in SIGNALS:
        edges, counts = HIST_EDGES[s], stats.hist[s]
        top = max(int(counts.max()) if counts.size else 0, 1)
        lines += [f"**{s}**", "", "| bin | images | |", "|---|---:|---|"]
        for i, n in enumerate(counts):
            bar = "█" * round(24 * int(n) / top)
            lines.append(f"| [{edges[i]:g}, {edges[i + 1]:g}) | {int(n)} | `{bar}` |")
        lines.append("")
    return "\n".join(lines)


def approx_quantiles(stats: QualityStats) -> dict[str, dict[str, float]]:
    """Quantiles of every signal estimated from the merged histograms (bin resolution)."""
    return {
        s: {
            f"p{round(q * 100)}": round(hist_quantile(stats.hist[s], HIST_EDGES[s], q), 3)
            for q in QUANTILES
        }
        for s in SIGNALS
    }


def _thumb(read: Callable[[str], bytes], uri: str | None, px: int) -> str | None:
    """Base64 JPEG thumbnail of ``uri``, or None when it cannot be read."""
    if uri is None:
        return None
    try:
        return base64.b64encode(make_thumbnail(read(uri), px, quality=70)).decode("ascii")
    except Exception:  # a moved file must not hide the other examples
        return None


def worst_examples(
    worst: pl.DataFrame,
    uris: pl.DataFrame,
    read: Callable[[str], bytes],
    *,
    thresholds: Mapping[str, float] | None = None,
    px: int = 80,
) -> list[tuple[str, str, list[tuple[str | None, str]]]]:
    """The most extreme images per check: ``(check, rule, [(thumbnail b64 | None, caption)])``.

    Args:
        worst: :attr:`QualityStats.worst` rows (``check``, ``image_id``, ``value``).
        uris: ``image_id, source_uri`` of those images.
        read: ``source_uri -> bytes``.
        thresholds: Thresholds by check, to mark which examples are flagged (``✗``).
        px: Longest side of a thumbnail.
    """
    rows = worst.join(uris.unique("image_id"), on="image_id", how="left", maintain_order="left")
    out = []
    for name, c in CHECKS.items():
        mine = rows.filter(pl.col("check") == name)
        if mine.is_empty():
            continue
        limit = (thresholds or {}).get(name, c.default)
        cells = []
        for rec in mine.iter_rows(named=True):
            flagged = rec["value"] < limit if c.direction == "below" else rec["value"] > limit
            caption = f"{rec['value']:.4g}{' ✗' if flagged else ''} {rec['image_id'][:8]}"
            cells.append((_thumb(read, rec["source_uri"], px), caption))
        out.append((name, c.describe(limit), cells))
    return out


def worst_markdown(
    worst: pl.DataFrame,
    uris: pl.DataFrame,
    read: Callable[[str], bytes],
    *,
    thresholds: Mapping[str, float] | None = None,
    px: int = 80,
) -> str:
    """:func:`worst_examples` as markdown (thumbnails as inline base64 JPEG).

    Per check, a row of thumbnails over each image's value (flagged ones marked) and id.
    """
    if worst.is_empty():
        return "_no images_"
    out = []
    for name, rule, cells in worst_examples(worst, uris, read, thresholds=thresholds, px=px):
        images = [
            f"![{name}](data:image/jpeg;base64,{b64})" if b64 else "unreadable" for b64, _ in cells
        ]
        out += [f"**{name}** (`{rule}` is flagged ✗)", ""]
        out += ["| " + " | ".join(images) + " |", "|" + "---|" * len(images)]
        out += ["| " + " | ".join(caption for _, caption in cells) + " |", ""]
    return "\n".join(out)


def corpus_stats(
    store: DeltaStore,
    shards: Sequence[str] | None = None,
    *,
    thresholds: Mapping[str, float] | None = None,
    k: int = 4,
) -> tuple[QualityStats, list[str]]:
    """Merged :class:`QualityStats` over ``shards`` (default: every shard of image_quality).

    Reads one shard's signal columns at a time. Returns the statistics and the shards read.

    Raises:
        FileNotFoundError: If ``image_quality`` does not exist yet (nothing ingested since the
            signals were added).
    """
    if not store.exists(IMAGE_QUALITY.name):
        msg = (
            f"no image_quality table at {store.uri(IMAGE_QUALITY.name)}: ingest a shard "
            "first (shards ingested before the quality signals existed need their "
            "raw_images re-materialized)"
        )
        raise FileNotFoundError(msg)
    if shards is None:
        shards = sorted(store.shard_row_counts(IMAGE_QUALITY.name))  # from the Delta log
    total = quality_stats(IMAGE_QUALITY.empty(), thresholds, k=k)
    for shard in shards:
        rows = store.read(IMAGE_QUALITY, shards=[shard])
        total = total.merge(quality_stats(rows, thresholds, k=k))
    return total, list(shards)


def worst_uris(store: DeltaStore, worst: pl.DataFrame) -> pl.DataFrame:
    """``image_id, source_uri`` of the ``worst`` rows, read from their own shards only."""
    if worst.is_empty():
        return pl.DataFrame(schema={"image_id": pl.String, "source_uri": pl.String})
    shards = sorted(set(worst["shard"].to_list()))
    raw = store.read(RAW_IMAGES, shards=shards, columns=["image_id", "source_uri"])
    return raw.join(worst.select("image_id").unique(), on="image_id", how="semi")


def quality_text(stats: QualityStats, shards: Sequence[str], uris: pl.DataFrame) -> str:
    """The plain-text report ``curation quality`` prints."""
    lines = [f"image_quality: {stats.n} images in {len(shards)} shards", ""]
    lines.append(f"{'check':<12} {'rule':<22} {'flagged':>8} {'share':>7}  reason")
    for name, c in CHECKS.items():
        n = stats.flags[name]
        share = f"{n / stats.n:.2%}" if stats.n else "n/a"
        rule = c.describe(stats.thresholds[name])
        lines.append(f"{name:<12} {rule:<22} {n:>8} {share:>7}  {c.reason}")
    lines += ["", "distribution (quantiles estimated from fixed histogram bins):"]
    for s, qs in approx_quantiles(stats).items():
        lines.append(f"  {s:<13} " + "  ".join(f"{k}={_fmt(v)}" for k, v in qs.items()))
    where = dict(uris.iter_rows())
    lines += ["", "most extreme images per check (value, image_id, source_uri):"]
    for name in CHECKS:
        mine = stats.worst.filter(pl.col("check") == name)
        if mine.is_empty():
            continue
        lines.append(f"  {name}:")
        for rec in mine.iter_rows(named=True):
            uri = where.get(rec["image_id"], "?")
            lines.append(f"    {rec['value']:>10.4g}  {rec['image_id'][:12]}  {uri}")
    return "\n".join(lines)


def quality_html(stats: QualityStats, uris: pl.DataFrame, path: Path, *, px: int = 160) -> Path:
    """An HTML contact sheet of the most extreme images per check (thumbnails inline).

    Returns:
        ``path``, written (its folder is created).
    """
    with SourceReader() as read:
        examples = worst_examples(stats.worst, uris, read, thresholds=stats.thresholds, px=px)
    parts = [
        "<!doctype html><meta charset='utf-8'><title>image quality</title>",
        "<style>figure{display:inline-block;margin:6px;font:12px sans-serif}</style>",
        f"<h1>image_quality: {stats.n} images</h1>",
    ]
    for name, rule, cells in examples:
        flagged = stats.flags[name]
        parts.append(f"<h2>{html.escape(name)}: {html.escape(rule)} ({flagged} flagged)</h2>")
        for b64, caption in cells:
            img = f"<img src='data:image/jpeg;base64,{b64}'>" if b64 else "unreadable"
            parts.append(f"<figure>{img}<figcaption>{html.escape(caption)}</figcaption></figure>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


__all__ = [
    "approx_quantiles",
    "corpus_stats",
    "quality_html",
    "quality_text",
    "quantile_markdown",
    "stats_markdown",
    "worst_examples",
    "worst_markdown",
    "worst_uris",
]
