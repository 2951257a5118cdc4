"""Pixel-quality signals of a decoded image, their checks, and what the filter does with them.

**What is measured** (:func:`measure`, one row of ``image_quality`` per ingested image). Ingest
decodes every image fully once; the signals are taken from that decoded RGB image, never from a
second decode. The pixel signals are measured on a box-filtered reduction whose longer side is
at most :data:`MAX_MEASURED_SIDE` (Pillow's ``Image.reduce`` by an integer factor, which
averages blocks of pixels): exposure, entropy and colour barely change under block averaging,
and the reduction makes the cost independent of the resolution — a few hundred microseconds an
image against the milliseconds of the decode (``curation bench quality`` measures both).
Because blur is measured after the reduction, ``sharpness`` means "blurry at web-thumbnail
scale": a large photo with fine grain but soft at 256 px counts as soft, and a small image
reduced by 1 is judged at full resolution. Size and aspect come from the full image.

**Checks** (:data:`CHECKS`): each compares one signal with a default threshold, in one
direction, and has the reason a dropped row carries (``filter_rejections.category`` =
``quality_<check>``, ``score`` = the signal's value, ``threshold`` = the threshold). The
defaults flag clear failures, not taste; they were chosen on the demo corpus and the 3,781
photographs of clothing-small (README, "Pixel-quality signals"). Checks are always *reported*
(per-shard flag counts, worst examples) and drop nothing unless the filter's config turns them
on one by one (:func:`quality_rejections`).

Memory and cost: :func:`measure` holds the reduction (at most 256×256×3 bytes) and a float32
copy of its luma; :class:`QualityStats` holds fixed histograms and the ``worst`` rows per check.
"""

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
from PIL import Image, ImageChops

from curation_assets.lib.errors import ConfigError
from curation_assets.lib.tables import FILTER_REJECTIONS
from curation_assets.lib.tables.quality import IMAGE_QUALITY

MAX_MEASURED_SIDE = 256
"""Longest side of the reduction the pixel signals are measured on."""

SIGNALS: tuple[str, ...] = (
    "sharpness",
    "brightness",
    "entropy",
    "chroma",
    "aspect_ratio",
    "min_side",
)
"""The signal columns of ``image_quality``, in order."""


def measure(img: Image.Image) -> dict[str, float | int]:
    """The quality signals of one decoded image.

    Args:
        img: RGB PIL image (ingest's decoded image: EXIF-oriented, alpha on white), any size.

    Returns:
        ``sharpness`` (variance of the 4-neighbour Laplacian of the 0-255 luma; 0 for images
        under 3 px on a side), ``brightness`` (mean luma, BT.601 as Pillow's ``L`` mode),
        ``entropy`` (bits, of the 256-bin luma histogram: 0 for a flat image, 8 at most),
        ``chroma`` (mean of max−min over R, G, B: 0 for a gray image), ``aspect_ratio``
        (longer / shorter side, ≥ 1), ``min_side`` (px) and ``measured_side`` (longer side
        of the reduction).
    """
    if img.mode != "RGB":
        img = img.convert("RGB")
    w, h = img.size
    factor = max(1, math.ceil(max(w, h) / MAX_MEASURED_SIDE))
    small = img.reduce(factor) if factor > 1 else img
    gray = small.convert("L")
    hist = np.asarray(gray.histogram(), dtype=np.float64)
    luma = np.asarray(gray).astype(np.int16)  # the Laplacian of 0-255 fits in ±1020
    n = float(luma.size)
    p = hist[hist > 0] / n
    if luma.shape[0] >= 3 and luma.shape[1] >= 3:
        lap = (
            4 * luma[1:-1, 1:-1]
            - luma[:-2, 1:-1]
            - luma[2:, 1:-1]
            - luma[1:-1, :-2]
            - luma[1:-1, 2:]
        )
        sharpness = float(lap.var(dtype=np.float32))
    else:
        sharpness = 0.0
    # max - min over the channels with Pillow's C loops: numpy's reduction over a length-3
    # last axis cost ten times the decode of a 256 px JPEG
    r, g, b = small.split()
    spread = ImageChops.subtract(
        ImageChops.lighter(ImageChops.lighter(r, g), b),
        ImageChops.darker(ImageChops.darker(r, g), b),
    )
    chroma = float((np.asarray(spread.histogram(), dtype=np.float64) * np.arange(256)).sum() / n)
    return {
        "sharpness": sharpness,
        "brightness": float((hist * np.arange(256)).sum() / n),
        "entropy": float(max(0.0, -(p * np.log2(p)).sum())),
        "chroma": chroma,
        "aspect_ratio": max(w, h) / max(1, min(w, h)),
        "min_side": min(w, h),
        "measured_side": max(small.size),
    }


def quality_frame(rows: Sequence[Mapping[str, object]]) -> pl.DataFrame:
    """``image_quality`` rows (each: ``image_id``, ``shard`` and :func:`measure`'s keys)."""
    return IMAGE_QUALITY.conform(pl.DataFrame(list(rows), schema=IMAGE_QUALITY.schema))


# ------------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class QualityCheck:
    """One check: a signal compared with a threshold in one direction.

    Attributes:
        name: Check name (``blurry``); the filter's category is ``quality_<name>``.
        signal: Column of ``image_quality`` it reads.
        direction: ``below``: flagged when value < threshold; ``above``: when value > it.
        default: Default threshold.
        reason: What a flagged image is, for people (shown with the value and threshold).
    """

    name: str
    signal: str
    direction: Literal["below", "above"]
    default: float
    reason: str

    @property
    def category(self) -> str:
        """The ``filter_rejections.category`` of a row this check drops."""
        return f"quality_{self.name}"

    def flagged(self, threshold: float | None = None) -> pl.Expr:
        """Polars expression: True where the signal fails the check at ``threshold``."""
        t = self.default if threshold is None else threshold
        col = pl.col(self.signal)
        return col < t if self.direction == "below" else col > t

    def describe(self, threshold: float | None = None) -> str:
        """``sharpness < 30`` — the rule at ``threshold`` (default: the default)."""
        t = self.default if threshold is None else threshold
        return f"{self.signal} {'<' if self.direction == 'below' else '>'} {t:g}"


CHECKS: Mapping[str, QualityCheck] = {
    c.name: c
    for c in (
        QualityCheck(
            "blurry",
            "sharpness",
            "below",
            30.0,
            "blurry or featureless: little high-frequency detail at thumbnail scale",
        ),
        QualityCheck("too_dark", "brightness", "below", 25.0, "underexposed: mean luma very low"),
        QualityCheck(
            "too_bright", "brightness", "above", 240.0, "overexposed or blank: mean luma near white"
        ),
        QualityCheck(
            "low_entropy",
            "entropy",
            "below",
            3.0,
            "low information: few distinct gray levels (flat fills, logos, blank frames)",
        ),
        QualityCheck(
            "odd_aspect", "aspect_ratio", "above", 3.0, "odd aspect ratio: banner or strip"
        ),
        QualityCheck("tiny", "min_side", "below", 64.0, "tiny: shorter side below 64 px"),
        QualityCheck(
            "grayscale", "chroma", "below", 3.0, "near-grayscale: almost no colour in any pixel"
        ),
    )
}
"""The checks with their documented default thresholds, by name (report order)."""


def resolve_thresholds(
    overrides: Mapping[str, float] | None = None, enabled: Iterable[str] = ()
) -> dict[str, float]:
    """Every check's threshold: the defaults with ``overrides`` applied.

    Raises:
        ConfigError: If an override or an enabled check names no check (lists the checks).
    """
    overrides = dict(overrides or {})
    unknown = sorted((set(overrides) | set(enabled)) - set(CHECKS))
    if unknown:
        msg = (
            f"unknown quality checks {unknown}; the checks are {', '.join(CHECKS)} "
            "(see curation_assets/lib/quality/signals.py for what each measures)"
        )
        raise ConfigError(msg)
    return {name: float(overrides.get(name, c.default)) for name, c in CHECKS.items()}


def quality_rejections(
    quality: pl.DataFrame, enabled: Sequence[str], thresholds: Mapping[str, float] | None = None
) -> pl.DataFrame:
    """The filter's rejection rows for the enabled checks: one per flagged image and check.

    Args:
        quality: The shard's ``image_quality`` rows.
        enabled: Names of the checks that drop (:data:`CHECKS`); none by default.
        thresholds: Overrides of the default thresholds, by check name.

    Returns:
        :data:`FILTER_REJECTIONS` rows: ``category = quality_<check>``, ``score`` = the
        signal's value, ``threshold`` = the threshold it failed, sorted by image_id, category.

    Raises:
        ConfigError: If a check name is unknown.
    """
    limits = resolve_thresholds(thresholds, enabled)
    frames = [
        quality.filter(CHECKS[name].flagged(limits[name])).select(
            "image_id",
            "shard",
            category=pl.lit(CHECKS[name].category),
            score=pl.col(CHECKS[name].signal).cast(pl.Float32),
            threshold=pl.lit(limits[name], dtype=pl.Float64),
        )
        for name in dict.fromkeys(enabled)
    ]
    if not frames:
        return FILTER_REJECTIONS.empty()
    return FILTER_REJECTIONS.conform(pl.concat(frames)).sort("image_id", "category")


# ------------------------------------------------------------------------- statistics

HIST_EDGES: Mapping[str, tuple[float, ...]] = {
    "sharpness": (0, 5, 10, 20, 30, 50, 100, 200, 500, 1000, 2000, 5000, math.inf),
    "brightness": (0, 16, 25, 48, 80, 112, 144, 176, 208, 240, 256),
    "entropy": (0, 1, 2, 3, 4, 5, 6, 6.5, 7, 7.5, 8.01),
    "chroma": (0, 1, 3, 6, 12, 24, 48, 96, 256),
    "aspect_ratio": (1, 1.25, 1.5, 2, 3, 4, 6, 10, math.inf),
    "min_side": (0, 32, 64, 128, 256, 512, 1024, 2048, math.inf),
}
"""Fixed histogram bin edges per signal (left-closed; the default thresholds are edges), so
that per-shard histograms add up to a corpus histogram without re-reading rows."""


@dataclass
class QualityStats:
    """Mergeable statistics of ``image_quality`` rows (one shard, or many merged).

    Attributes:
        n: Rows described.
        hist: Counts per signal over :data:`HIST_EDGES`.
        flags: Rows flagged per check at ``thresholds``.
        thresholds: The threshold of each check.
        worst: Up to ``k`` most extreme rows per check, flagged or not (``check``,
            ``image_id``, ``shard``, ``value``), most extreme first.
        k: Rows kept per check in ``worst``.
    """

    n: int
    hist: dict[str, np.ndarray]
    flags: dict[str, int]
    thresholds: dict[str, float]
    worst: pl.DataFrame
    k: int = 4

    def merge(self, other: "QualityStats") -> "QualityStats":
        """These statistics plus ``other``'s (same thresholds and ``k``)."""
        return QualityStats(
            self.n + other.n,
            {s: self.hist[s] + other.hist[s] for s in SIGNALS},
            {c: self.flags[c] + other.flags[c] for c in CHECKS},
            self.thresholds,
            _top_k(pl.concat([self.worst, other.worst]), self.k),
            self.k,
        )


WORST_SCHEMA = pl.Schema(
    {"check": pl.String, "image_id": pl.String, "shard": pl.String, "value": pl.Float64}
)


def _top_k(worst: pl.DataFrame, k: int) -> pl.DataFrame:
    out = []
    for name, check in CHECKS.items():
        rows = worst.filter(pl.col("check") == name)
        descending = check.direction == "above"
        out.append(rows.sort(["value", "image_id"], descending=[descending, False]).head(k))
    return pl.concat(out) if out else pl.DataFrame(schema=WORST_SCHEMA)


def quality_stats(
    quality: pl.DataFrame, thresholds: Mapping[str, float] | None = None, *, k: int = 4
) -> QualityStats:
    """Histograms, flag counts and the ``k`` worst rows per check of ``quality``.

    Args:
        quality: ``image_quality`` rows.
        thresholds: Threshold overrides by check (default: :data:`CHECKS`' defaults).
        k: Most extreme rows kept per check.
    """
    limits = resolve_thresholds(thresholds)
    hist = {}
    for s in SIGNALS:
        values = quality[s].cast(pl.Float64).to_numpy()
        counts, _ = np.histogram(np.clip(values, 0, 1e12), bins=np.asarray(HIST_EDGES[s]))
        hist[s] = counts.astype(np.int64)
    flags = {
        name: int(quality.select(c.flagged(limits[name]).sum()).item() or 0)
        for name, c in CHECKS.items()
    }
    worst = pl.concat(
        [
            quality.select(
                check=pl.lit(name),
                image_id="image_id",
                shard="shard",
                value=pl.col(c.signal).cast(pl.Float64),
            )
            for name, c in CHECKS.items()
        ]
    )
    return QualityStats(quality.height, hist, flags, limits, _top_k(worst, k), k)


def hist_quantile(counts: np.ndarray, edges: Sequence[float], q: float) -> float:
    """The ``q`` quantile of a histogram, interpolated linearly inside its bin (an estimate).

    An open last bin (``inf`` edge) reports its left edge.
    """
    total = int(counts.sum())
    if total == 0:
        return math.nan
    target = q * total
    cum = 0
    for i, c in enumerate(counts):
        if c and cum + c >= target:
            lo, hi = edges[i], edges[i + 1]
            if math.isinf(hi):
                return float(lo)
            return float(lo + (hi - lo) * (target - cum) / c)
        cum += int(c)
    return float(edges[-2])
