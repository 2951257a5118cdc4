"""Layout of the demo corpus: shard names, item kinds, planting rates, shared helpers."""

from __future__ import annotations

import numpy as np
from PIL import Image

GENERATOR_VERSION = 2
"""Bump when the generated content changes; an existing corpus with another version is rebuilt."""

SHARD_FOLDER = "shard-000"
SHARD_TAR = "shard-001.tar"
SHARD_CSV = "shard-002.csv"
SHARD_PARQUET = "shard-003.parquet"
SHARDS: tuple[str, ...] = (SHARD_FOLDER, SHARD_TAR, SHARD_CSV, SHARD_PARQUET)
SHARD_KINDS: dict[str, str] = {
    SHARD_FOLDER: "folder",
    SHARD_TAR: "tar",
    SHARD_CSV: "manifest",
    SHARD_PARQUET: "manifest",
}
MANIFEST_IMAGES_DIR = "_manifest_images"
GROUND_TRUTH_FILE = "ground_truth.json"
SUCCESS_MARKER = "_SUCCESS"

ITEM_KINDS = ("original", "near_duplicate", "exact_duplicate", "corrupt")
EDITS = ("crop", "reencode", "flip", "color_shift", "rotate", "resize")
CORRUPT_KINDS = (
    "truncated",
    "zero_byte",
    "not_an_image",
    "missing_file",
    "orphan_sidecar",
    "decompression_bomb",
)
SPECIAL_TAGS = ("exif_rotated", "animated_gif", "rgba", "palette", "grayscale", "16bit")

PHOTO_FRACTION = 1 / 3
"""Share of base images cut from photographs (the rest are procedural)."""
MOSAIC_FRACTION = 0.2
"""Share of photo bases that are a two-photo mosaic instead of a single crop."""
NEAR_DUP_BASE_FRACTION = 0.45
"""Share of bases that get planted near duplicates."""
NEAR_DUP_COPIES = (1, 3)
"""Inclusive range of edited copies per selected base."""
NEAR_DUP_SAME_SHARD = 0.5
"""Probability that an edited copy lands in its original's shard."""
SHARD_SHARES = (0.35, 0.25, 0.2, 0.2)
"""How base originals are split over :data:`SHARDS`."""
MIN_N_BASE = 24


def seeded_rng(seed: int, *key: int) -> np.random.Generator:
    """The generator of one step (``key``) of the corpus built with ``seed``."""
    return np.random.default_rng([seed, *key])


def orientation_of(w: int, h: int) -> str:
    """``square`` when the sides differ by at most 5 % of the longer one."""
    if abs(w - h) <= 0.05 * max(w, h):
        return "square"
    return "landscape" if w > h else "portrait"


def palette_of(img: Image.Image) -> str:
    """``warm`` when mean red is at least mean blue, else ``cool``."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float64)
    return "warm" if arr[..., 0].mean() >= arr[..., 2].mean() else "cool"


def resize_long(img: Image.Image, long_side: int) -> Image.Image:
    """``img`` resized (Lanczos) so that its longer side is ``long_side``."""
    w, h = img.size
    s = long_side / max(w, h)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return img.resize(size, Image.Resampling.LANCZOS)
