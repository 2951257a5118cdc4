"""Pixel-quality signals on synthetic images whose answer is known; the filter's rejections."""

import math

import numpy as np
import polars as pl
import pytest
from PIL import Image, ImageFilter

from curation_assets.lib.errors import ConfigError
from curation_assets.lib.quality.signals import (
    CHECKS,
    HIST_EDGES,
    hist_quantile,
    measure,
    quality_frame,
    quality_rejections,
    quality_stats,
)


def _noise(size=(200, 150), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _photo_like(seed=0) -> Image.Image:
    """A smooth colour field with hard-edged shapes: sharp, colourful, mid exposure."""
    rng = np.random.default_rng(seed)
    small = rng.integers(40, 220, (6, 6, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((240, 180), Image.Resampling.BICUBIC)
    arr = np.asarray(img).copy()
    arr[40:80, 30:200] = (250, 30, 30)
    arr[100:140, 60:120] = (20, 20, 200)
    return Image.fromarray(arr)


def _flags(img: Image.Image) -> set[str]:
    q = quality_frame([{"image_id": "x", "shard": "s", **measure(img)}])
    return {name for name, c in CHECKS.items() if q.select(c.flagged()).item()}


def test_a_black_image_is_dark_flat_and_gray():
    s = measure(Image.new("RGB", (120, 90)))
    assert s["brightness"] == 0 and s["entropy"] == 0 and s["chroma"] == 0
    assert s["sharpness"] == 0
    assert _flags(Image.new("RGB", (120, 90))) == {"too_dark", "low_entropy", "grayscale", "blurry"}


def test_a_white_image_is_too_bright():
    assert "too_bright" in _flags(Image.new("RGB", (120, 90), (255, 255, 255)))
    assert "too_dark" not in _flags(Image.new("RGB", (120, 90), (255, 255, 255)))


def test_noise_has_high_entropy_and_a_flat_image_low():
    assert measure(_noise())["entropy"] > 7.5
    assert measure(Image.new("RGB", (100, 100), (90, 140, 30)))["entropy"] < 0.01


def test_blurring_lowers_the_laplacian_variance():
    sharp = _photo_like()
    blurred = sharp.filter(ImageFilter.GaussianBlur(4))
    assert measure(blurred)["sharpness"] < measure(sharp)["sharpness"] / 5
    assert "blurry" in _flags(blurred) and "blurry" not in _flags(sharp)


def test_a_photo_like_image_passes_every_check():
    assert _flags(_photo_like()) == set()


def test_a_1x20_strip_is_odd_and_tiny():
    s = measure(Image.new("RGB", (1, 20), (200, 10, 10)))
    assert s["aspect_ratio"] == 20 and s["min_side"] == 1 and s["sharpness"] == 0
    assert {"odd_aspect", "tiny"} <= _flags(Image.new("RGB", (1, 20), (200, 10, 10)))


def test_a_gray_image_is_grayscale_and_a_coloured_one_is_not():
    gray = _photo_like().convert("L").convert("RGB")
    assert measure(gray)["chroma"] == 0
    assert "grayscale" in _flags(gray) and "grayscale" not in _flags(_photo_like())


def test_large_images_are_measured_on_a_reduction_of_at_most_256_px():
    big = _photo_like().resize((2000, 1500))
    s = measure(big)
    assert s["measured_side"] <= 256 and s["min_side"] == 1500
    assert s["aspect_ratio"] == pytest.approx(2000 / 1500)


def _frame() -> pl.DataFrame:
    imgs = {
        "dark": Image.new("RGB", (100, 100), (5, 5, 5)),
        "ok": _photo_like(),
        "strip": Image.new("RGB", (300, 20), (200, 10, 10)),
    }
    return quality_frame([{"image_id": k, "shard": "s", **measure(v)} for k, v in imgs.items()])


def test_rejections_only_for_enabled_checks_with_value_and_threshold():
    q = _frame()
    assert quality_rejections(q, []).is_empty()
    rej = quality_rejections(q, ["too_dark", "tiny"], {"tiny": 30})
    assert rej.select("image_id", "category").rows() == [
        ("dark", "quality_too_dark"),
        ("strip", "quality_tiny"),
    ]
    dark = rej.row(0, named=True)
    assert dark["score"] < dark["threshold"] == CHECKS["too_dark"].default
    assert rej.row(1, named=True)["threshold"] == 30 and rej.row(1, named=True)["score"] == 20


def test_unknown_check_names_are_a_config_error():
    with pytest.raises(ConfigError, match="unknown quality checks.*blurry"):
        quality_rejections(_frame(), ["blury"])
    with pytest.raises(ConfigError, match="unknown quality checks"):
        quality_stats(_frame(), {"nope": 1.0})


def test_stats_merge_like_the_concatenated_rows():
    q = _frame()
    a, b = q.head(1), q.tail(2)
    merged = quality_stats(a, k=2).merge(quality_stats(b, k=2))
    whole = quality_stats(q, k=2)
    assert merged.n == whole.n == 3 and merged.flags == whole.flags
    for s, counts in whole.hist.items():
        assert np.array_equal(merged.hist[s], counts) and counts.sum() == 3
    assert merged.worst.sort("check", "image_id").equals(whole.worst.sort("check", "image_id"))
    darkest = whole.worst.filter(pl.col("check") == "too_dark")["image_id"][0]
    assert darkest == "dark"


def test_hist_quantile_interpolates_within_a_bin():
    edges = HIST_EDGES["brightness"]
    counts = np.zeros(len(edges) - 1, dtype=np.int64)
    counts[0] = 10  # all in [0, 16)
    assert hist_quantile(counts, edges, 0.5) == pytest.approx(8.0)
    assert math.isnan(hist_quantile(np.zeros_like(counts), edges, 0.5))
