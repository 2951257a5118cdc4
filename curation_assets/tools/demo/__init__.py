"""A deterministic demo corpus: four shards of real and procedural images with ground truth.

:func:`build_demo_corpus` writes a source root that exercises every path of the pipeline:

* ``shard-000/`` — a folder shard (``.jpg``/``.png``/a few ``.webp`` plus specials), with a
  nested ``sub/`` folder, ``name.txt`` caption sidecars and a ``_SUCCESS`` marker;
* ``shard-001.tar`` — a WebDataset-style tar (``sampleNNNNNN.jpg`` + optional ``.txt``/``.json``);
* ``shard-002.csv`` / ``shard-003.parquet`` — manifests (``path``, ``caption``) whose images
  live under ``_manifest_images/<shard stem>/`` (ignored by shard discovery);
* ``ground_truth.json`` — one record per enumerable input (see :func:`load_ground_truth`).

Content: ``n_base`` distinct base images (about a third cut from the photographs bundled with
scikit-image, the rest procedural), planted near duplicates (crop, re-encode, flip, colour
shift, rotate, resize), planted byte-identical duplicates, planted corrupt inputs (truncated,
empty, not an image, missing, orphan sidecar, decompression bomb) and a few unusual but valid
encodings (EXIF-rotated JPEG, animated GIF, RGBA, palette, grayscale and 16-bit PNG).

Nothing is downloaded: only image files present in the installed scikit-image wheel's data
folder are read (missing ones are skipped). The same ``seed`` gives byte-identical files.
"""

from __future__ import annotations

import colorsys
import io
import json
import logging
import math
import os
import shutil
import struct
import tarfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

logger = logging.getLogger(__name__)

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

# Photographs bundled with scikit-image: (file, caption subject, most crops to take).
_PHOTOS: tuple[tuple[str, str, int], ...] = (
    ("astronaut.png", "an astronaut in a spacesuit", 16),
    ("chelsea.png", "a tabby cat", 8),
    ("coffee.png", "a cup of coffee", 14),
    ("rocket.jpg", "a rocket on the launch pad", 8),
    ("motorcycle_left.png", "a motorcycle in a workshop", 16),
    ("hubble_deep_field.jpg", "a deep field of distant galaxies", 12),
    ("retina.jpg", "a retinal fundus photograph", 6),
    ("ihc.png", "a stained tissue sample", 12),
    ("color.png", "a colour test chart", 2),
    ("logo.png", "the scikit-image logo", 4),
    ("camera.png", "a cameraman with a tripod", 12),
    ("coins.png", "old coins", 8),
    ("moon.png", "the surface of the moon", 4),
    ("cell.png", "cells under a microscope", 6),
    ("clock_motion.png", "a motion-blurred clock", 3),
    ("brick.png", "a brick wall", 5),
    ("grass.png", "a patch of grass", 5),
    ("gravel.png", "gravel", 5),
    ("page.png", "a printed page", 4),
    ("text.png", "handwritten text", 4),
)
_PHOTO_CELL_PX = 128
_MIN_PATCH_STD = 16.0
_MIN_PATCH_EDGE = 2.5
_PHOTOGRAPHERS = ("A. Ansel", "B. Brandt", "C. Cartier", "D. Doisneau", "E. Erwitt", "F. Fan Ho")
_LICENSES = ("CC0", "CC-BY-4.0")
_CAPTION_SUFFIXES = ("", "", "", "", " — demo set", " (café series)", " ✨")
_NOT_AN_IMAGE = (
    b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n"
    b"<body><h1>Not Found</h1><p>The requested image was not found.</p></body></html>\n"
)


# --------------------------------------------------------------------------- public API


@dataclass(frozen=True)
class DemoCorpus:
    """A demo source root built by :func:`build_demo_corpus`.

    Attributes:
        root: The source root (absolute).
        ground_truth_path: Path of ``ground_truth.json``.
        shards: Shard names (entries under ``root``), sorted.
    """

    root: Path
    ground_truth_path: Path
    shards: list[str]

    def load_items(self) -> pl.DataFrame:
        """The ground-truth items as a frame (see :func:`load_ground_truth`)."""
        return load_ground_truth(self.ground_truth_path)

    @property
    def items(self) -> pl.DataFrame:
        """The ground-truth items as a frame (same as :meth:`load_items`)."""
        return self.load_items()


ITEM_SCHEMA: dict[str, Any] = {
    "shard": pl.String,
    "source_uri": pl.String,
    "relpath": pl.String,
    "kind": pl.String,
    "base_id": pl.Int64,
    "edit": pl.String,
    "duplicate_of": pl.String,
    "corrupt": pl.String,
    "caption": pl.String,
    "attr_source": pl.String,
    "attr_palette": pl.String,
    "attr_orientation": pl.String,
    "special": pl.List(pl.String),
}
"""Columns of the frame returned by :func:`load_ground_truth`."""


def load_ground_truth(path: Path) -> pl.DataFrame:
    """Load ``ground_truth.json`` as one row per enumerable input.

    Columns are :data:`ITEM_SCHEMA`: the JSON item fields, with ``attributes`` flattened into
    ``attr_source``, ``attr_palette`` and ``attr_orientation`` (null for corrupt items) and
    ``special`` as a list of strings. ``relpath`` is the input relative to the root
    (``shard-001.tar#member`` for tar members).

    Args:
        path: Path of a ``ground_truth.json`` written by :func:`build_demo_corpus`.

    Returns:
        The items in enumeration order (shard by shard).
    """
    doc = json.loads(path.read_text(encoding="utf-8"))
    rows = []
    for item in doc["items"]:
        attrs = item.get("attributes") or {}
        rows.append(
            {
                "shard": item["shard"],
                "source_uri": item["source_uri"],
                "relpath": item.get("relpath"),
                "kind": item["kind"],
                "base_id": item.get("base_id"),
                "edit": item.get("edit"),
                "duplicate_of": item.get("duplicate_of"),
                "corrupt": item.get("corrupt"),
                "caption": item.get("caption"),
                "attr_source": attrs.get("source"),
                "attr_palette": attrs.get("palette"),
                "attr_orientation": attrs.get("orientation"),
                "special": list(item.get("special") or []),
            }
        )
    return pl.DataFrame(rows, schema=ITEM_SCHEMA)


def build_demo_corpus(dest: Path, *, seed: int = 0, n_base: int = 360) -> DemoCorpus:
    """Create (or reuse) the demo source root ``dest``.

    When ``dest/ground_truth.json`` already records the same generator version, ``seed`` and
    ``n_base`` (and all shards exist), nothing is rewritten. Otherwise the corpus's own entries
    (the four shards, ``_manifest_images`` and ``ground_truth.json``) are replaced; other
    entries under ``dest`` are left alone. Shards are written under temporary names and renamed
    when complete; ``ground_truth.json`` is written last.

    Args:
        dest: Source root to create.
        seed: Non-negative seed of every random choice; the same seed gives byte-identical
            files.
        n_base: Number of distinct base images (at least 24).

    Returns:
        The corpus.

    Raises:
        ValueError: If ``seed`` is negative or ``n_base`` too small to plant every kind of item.
    """
    if seed < 0:
        msg = f"seed={seed} must be non-negative"
        raise ValueError(msg)
    if n_base < MIN_N_BASE:
        msg = f"n_base={n_base} is too small; use at least {MIN_N_BASE}"
        raise ValueError(msg)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    gt_path = root / GROUND_TRUTH_FILE
    corpus = DemoCorpus(root, gt_path, sorted(SHARDS))
    if _is_complete(root, seed=seed, n_base=n_base):
        logger.info(
            "demo corpus at %s is complete (seed=%d, n_base=%d); reusing", root, seed, n_base
        )
        return corpus
    started = time.perf_counter()
    _remove_own_entries(root)
    bases = _make_bases(seed, n_base)
    specs = _plan(seed, bases)
    _render(seed, bases, specs)
    _name(root, specs)
    _write(root, specs)
    _write_ground_truth(root, seed, n_base, specs)
    logger.info(
        "built demo corpus at %s: %d bases, %d items in %.1fs",
        root,
        n_base,
        len(specs),
        time.perf_counter() - started,
    )
    return corpus


# ------------------------------------------------------------------------------ helpers


def _is_complete(root: Path, *, seed: int, n_base: int) -> bool:
    gt = root / GROUND_TRUTH_FILE
    if not gt.is_file():
        return False
    try:
        doc = json.loads(gt.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    same = (
        isinstance(doc, dict)
        and doc.get("generator_version") == GENERATOR_VERSION
        and doc.get("seed") == seed
        and doc.get("n_base") == n_base
    )
    if not same:
        logger.info("demo corpus at %s was built with other settings; rebuilding", root)
        return False
    return all((root / s).exists() for s in SHARDS)


def _remove_own_entries(root: Path) -> None:
    names = [*SHARDS, MANIFEST_IMAGES_DIR, GROUND_TRUTH_FILE]
    names += [f"{n}.tmp" for n in names]
    # The ground truth goes first so that a half-removed corpus is never taken as complete.
    for name in sorted(names, key=lambda n: not n.startswith(GROUND_TRUTH_FILE)):
        p = root / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, *key])


def _orientation(w: int, h: int) -> str:
    """``square`` when the sides differ by at most 5 % of the longer one."""
    if abs(w - h) <= 0.05 * max(w, h):
        return "square"
    return "landscape" if w > h else "portrait"


def _palette_of(img: Image.Image) -> str:
    """``warm`` when mean red is at least mean blue, else ``cool``."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float64)
    return "warm" if arr[..., 0].mean() >= arr[..., 2].mean() else "cool"


def _resize_long(img: Image.Image, long_side: int) -> Image.Image:
    w, h = img.size
    s = long_side / max(w, h)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return img.resize(size, Image.Resampling.LANCZOS)


# -------------------------------------------------------------------------------- bases


@dataclass
class _Base:
    base_id: int
    image: Image.Image
    source: str
    style: str
    subject: str
    ext: str
    quality: int
    attributes: dict[str, str] = field(default_factory=dict)


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return round(r * 255), round(g * 255), round(b * 255)


PROCEDURAL_COOL_BIAS = 0.7
"""Share of procedural palettes drawn from cool hues only (the rest from any hue).

The photographs lean warm (skin, coffee, a tabby cat) and procedural images then lean cool,
so the demo's stand-in unwanted category (photographs) correlates with the ``palette``
attribute: filtering it moves the warm share by more than ten points, a bias for the
re-weighting stage to undo."""


def _random_palette(rng: np.random.Generator, n: int = 5) -> list[tuple[int, int, int]]:
    cool = float(rng.random()) < PROCEDURAL_COOL_BIAS
    h0 = float(rng.uniform(0.45, 0.72)) if cool else float(rng.random())
    schemes = (
        (0.0, 0.06, -0.06, 0.12),  # analogous
        (0.0, 0.5, 0.04, 0.46),  # complementary
        (0.0, 1 / 3, 2 / 3),  # triad
        (0.0, 0.42, 0.58),  # split complementary
    )
    offsets = schemes[int(rng.integers(len(schemes)))]
    colors = []
    for i in range(n):
        h = h0 + offsets[i % len(offsets)] + float(rng.normal(0, 0.02))
        colors.append(_hsv(h, float(rng.uniform(0.35, 1.0)), float(rng.uniform(0.25, 1.0))))
    return colors


def _colormap(values: np.ndarray, colors: list[tuple[int, int, int]]) -> Image.Image:
    """Map ``values`` in [0, 1] through a gradient of ``colors``."""
    stops = np.linspace(0.0, 1.0, len(colors))
    table = np.asarray(colors, dtype=np.float64)
    out = np.stack([np.interp(values, stops, table[:, c]) for c in range(3)], axis=-1)
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


def _smooth_noise(rng: np.random.Generator, w: int, h: int, octaves: int = 4) -> np.ndarray:
    """Fractal value noise in [0, 1] (bicubic-upsampled random grids, Perlin-like)."""
    total = np.zeros((h, w), dtype=np.float32)
    cells = float(rng.uniform(2.0, 5.0))
    persistence = float(rng.uniform(0.4, 0.65))
    amp = 1.0
    for o in range(octaves):
        gw = max(2, round(cells * 2**o * w / max(w, h)) + 1)
        gh = max(2, round(cells * 2**o * h / max(w, h)) + 1)
        grid = rng.random((gh, gw), dtype=np.float32)
        up = Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC)
        total += amp * np.asarray(up, dtype=np.float32)
        amp *= persistence
    lo, hi = float(total.min()), float(total.max())
    return (total - lo) / (hi - lo) if hi > lo else np.zeros_like(total)


def _procedural_size(rng: np.random.Generator) -> tuple[int, int]:
    long_side = int(rng.integers(160, 321))
    if rng.random() < 0.2:
        return long_side, long_side
    aspect = math.exp(float(rng.uniform(math.log(1.15), math.log(1.9))))
    short = round(long_side / aspect)
    return (long_side, short) if rng.random() < 0.55 else (short, long_side)


def _gradient(
    rng: np.random.Generator, w: int, h: int, colors: list[tuple[int, int, int]]
) -> Image.Image:
    angle = float(rng.uniform(0, 2 * math.pi))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = xx * math.cos(angle) + yy * math.sin(angle)
    if rng.random() < 0.3:  # radial
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        t = np.hypot(xx - cx, yy - cy)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return _colormap(t, colors)


_SHAPE_KINDS = ("ellipse", "rect", "polygon", "line", "arc")
_SHAPE_P = (0.3, 0.25, 0.25, 0.12, 0.08)
_SHAPE_WORDS = {
    "ellipse": "circles",
    "rect": "rectangles",
    "polygon": "polygons",
    "line": "lines",
    "arc": "arcs",
}


def _draw_shapes(
    rng: np.random.Generator, img: Image.Image, colors: list[tuple[int, int, int]], n: int
) -> list[str]:
    """Draw ``n`` random shapes on ``img`` (in place); returns the shape kinds drawn."""
    draw = ImageDraw.Draw(img)
    w, h = img.size
    m = min(w, h)
    kinds = []
    for _ in range(n):
        kind = _SHAPE_KINDS[int(rng.choice(len(_SHAPE_KINDS), p=_SHAPE_P))]
        kinds.append(kind)
        color = colors[int(rng.integers(len(colors)))]
        outline = colors[int(rng.integers(len(colors)))] if rng.random() < 0.4 else None
        width = int(rng.integers(2, max(3, m // 40) + 2))
        cx, cy = float(rng.uniform(-0.05, 1.05)) * w, float(rng.uniform(-0.05, 1.05)) * h
        r = float(rng.uniform(0.06, 0.35)) * m
        rx, ry = r * float(rng.uniform(0.5, 1.5)), r * float(rng.uniform(0.5, 1.5))
        box = (cx - rx, cy - ry, cx + rx, cy + ry)
        if kind == "ellipse":
            draw.ellipse(box, fill=color, outline=outline, width=width)
        elif kind == "rect":
            draw.rectangle(box, fill=color, outline=outline, width=width)
        elif kind == "polygon":
            k = int(rng.integers(3, 8))
            angles = np.sort(rng.uniform(0, 2 * math.pi, k))
            radii = rng.uniform(0.5, 1.0, k) * r
            pts = [
                (cx + float(rr * math.cos(a)), cy + float(rr * math.sin(a)))
                for a, rr in zip(angles, radii, strict=True)
            ]
            draw.polygon(pts, fill=color, outline=outline)
        elif kind == "line":
            pts = [(float(rng.uniform(0, w)), float(rng.uniform(0, h))) for _ in range(3)]
            draw.line(pts, fill=color, width=width * 2)
        else:
            start = float(rng.uniform(0, 360))
            draw.arc(box, start, start + float(rng.uniform(90, 300)), fill=color, width=width * 2)
    return kinds


def _describe_shapes(kinds: list[str]) -> str:
    seen = sorted({_SHAPE_WORDS[k] for k in kinds})
    return " and ".join(seen[:2]) if len(seen) <= 2 else f"{', '.join(seen[:-1])} and {seen[-1]}"


def _procedural_base(rng: np.random.Generator) -> tuple[Image.Image, str, str]:
    """One procedural image: ``(image, style, subject)``."""
    w, h = _procedural_size(rng)
    colors = _random_palette(rng)
    style = ("shapes", "noise_shapes", "texture")[int(rng.choice(3, p=[0.45, 0.25, 0.3]))]
    if style == "texture":
        noise = _smooth_noise(rng, w, h, octaves=int(rng.integers(3, 6)))
        variant = int(rng.integers(3))
        if variant == 0:
            values, name = noise, "cloudy"
        else:
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            freq = float(rng.uniform(0.03, 0.12))
            turb = float(rng.uniform(3.0, 10.0))
            if variant == 1:
                a = float(rng.uniform(0, math.pi))
                phase = (xx * math.cos(a) + yy * math.sin(a)) * freq
                name = "marbled"
            else:
                cx, cy = rng.uniform(0, w), rng.uniform(0, h)
                phase = np.hypot(xx - cx, yy - cy) * freq
                name = "wood-grain"
            values = 0.5 + 0.5 * np.sin(phase + turb * noise)
        stops = [colors[i] for i in rng.permutation(len(colors))[: int(rng.integers(3, 6))]]
        return _colormap(values, stops), style, f"{name} texture"
    scale = 2  # draw at 2x and downsample for smooth edges
    big_w, big_h = w * scale, h * scale
    order = rng.permutation(len(colors))
    bg_colors = [colors[int(i)] for i in order[:2]]
    fg_colors = [colors[int(i)] for i in order[2:]] + [_hsv(float(rng.random()), 0.8, 0.9)]
    if style == "shapes":
        canvas = _gradient(rng, big_w, big_h, bg_colors)
    else:
        noise = _smooth_noise(rng, big_w // 4, big_h // 4, octaves=4)
        canvas = _colormap(noise, [*bg_colors, colors[int(order[2])]]).resize(
            (big_w, big_h), Image.Resampling.BICUBIC
        )
    n_shapes = int(rng.integers(3, 13)) if style == "shapes" else int(rng.integers(2, 7))
    kinds = _draw_shapes(rng, canvas, fg_colors, n_shapes)
    img = canvas.resize((w, h), Image.Resampling.LANCZOS)
    return img, style, _describe_shapes(kinds)


def _skimage_data_dir() -> Path | None:
    try:
        import skimage.data
    except ImportError:  # pragma: no cover - scikit-image is a dependency
        return None
    return Path(os.path.dirname(skimage.data.__file__))


def _load_photos() -> dict[str, tuple[Image.Image, str, int]]:
    """The bundled photographs that exist: name -> (image in RGB or L, subject, max crops)."""
    folder = _skimage_data_dir()
    photos: dict[str, tuple[Image.Image, str, int]] = {}
    if folder is None:
        return photos
    for name, subject, cap in _PHOTOS:
        path = folder / name
        if not path.is_file():
            logger.debug("skimage data file %s not present; skipped", name)
            continue
        try:
            with Image.open(path) as im:
                im.load()
                img = im.copy()
        except Exception as exc:  # a damaged data file must not stop the demo
            logger.warning("cannot read %s: %s", path, exc)
            continue
        if img.mode in ("RGBA", "LA", "P"):
            rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(white, rgba).convert("RGB")
        elif img.mode not in ("RGB", "L"):
            img = img.convert("RGB")
        photos[name] = (img, subject, cap)
    return photos


def _is_detailed(img: Image.Image) -> bool:
    """Whether a crop has enough contrast and detail to be a picture of its own."""
    g = np.asarray(img.convert("L").resize((64, 64), Image.Resampling.BILINEAR), dtype=np.float64)
    return g.std() >= _MIN_PATCH_STD and np.abs(np.diff(g, axis=1)).mean() >= _MIN_PATCH_EDGE


@dataclass(frozen=True)
class _Patch:
    photo: str
    box: tuple[int, int, int, int]


def _photo_patches(
    rng: np.random.Generator, photos: dict[str, tuple[Image.Image, str, int]]
) -> list[_Patch]:
    """Non-overlapping blocks of a grid over each photo (1 or 2 cells each), shuffled."""
    patches: list[_Patch] = []
    for name in sorted(photos):
        img, _, cap = photos[name]
        w, h = img.size
        cell = max(_PHOTO_CELL_PX, min(w, h) // 5)
        cols, rows = max(1, w // cell), max(1, h // cell)
        cw, ch = w // cols, h // rows
        free = {(r, c) for r in range(rows) for c in range(cols)}
        blocks: list[tuple[int, int, int, int]] = []
        for idx in rng.permutation(rows * cols):
            r, c = divmod(int(idx), cols)
            if (r, c) not in free:
                continue
            free.discard((r, c))
            r1, c1 = r, c
            if rng.random() < 0.3:
                nbrs = [(r, c + 1), (r + 1, c)]
                nbr = nbrs[int(rng.integers(2))]
                if nbr in free:
                    free.discard(nbr)
                    r1, c1 = nbr
            blocks.append((c * cw, r * ch, (c1 + 1) * cw, (r1 + 1) * ch))
        kept = 0
        for x0, y0, x1, y1 in blocks:
            if kept >= cap:
                break
            # A random sub-rectangle (75-100 % per side) at a random position in the block.
            bw, bh = x1 - x0, y1 - y0
            sw, sh = round(bw * rng.uniform(0.75, 1.0)), round(bh * rng.uniform(0.75, 1.0))
            ox, oy = int(rng.integers(0, bw - sw + 1)), int(rng.integers(0, bh - sh + 1))
            box = (x0 + ox, y0 + oy, x0 + ox + sw, y0 + oy + sh)
            if _is_detailed(img.crop(box)):
                patches.append(_Patch(name, box))
                kept += 1
    order = rng.permutation(len(patches))
    return [patches[int(i)] for i in order]


def _patch_image(
    rng: np.random.Generator, photos: dict[str, tuple[Image.Image, str, int]], patch: _Patch
) -> tuple[Image.Image, str]:
    img, subject, _ = photos[patch.photo]
    crop = img.crop(patch.box)
    if crop.mode == "L":  # tint grayscale photos with a random duotone
        crop = ImageOps.autocontrast(crop, cutoff=1)
        hue = float(rng.random())
        dark = _hsv(hue, float(rng.uniform(0.4, 0.9)), float(rng.uniform(0.05, 0.3)))
        light = _hsv(hue + float(rng.uniform(-0.08, 0.08)), float(rng.uniform(0.1, 0.5)), 0.97)
        crop = ImageOps.colorize(crop, black=dark, white=light)
        subject = f"a toned photo of {subject}"
    return crop.convert("RGB"), subject


def _photo_long_side(rng: np.random.Generator, img: Image.Image) -> int:
    """Longer side for a photo base: 160-320 px, upscaling a crop by at most 1.6x."""
    return min(int(rng.integers(160, 321)), max(160, round(1.6 * max(img.size))))


def _make_bases(seed: int, n_base: int) -> list[_Base]:
    rng = _rng(seed, 1)
    photos = _load_photos()
    patches = _photo_patches(rng, photos) if photos else []
    n_photo_target = round(n_base * PHOTO_FRACTION)
    n_mosaic = round(n_photo_target * MOSAIC_FRACTION)
    n_single = n_photo_target - n_mosaic
    if n_single + 2 * n_mosaic > len(patches):
        n_mosaic = max(0, min(n_mosaic, (len(patches) - n_single) // 2))
        n_single = min(n_single, len(patches) - 2 * n_mosaic)
        logger.info(
            "only %d photo patches available: %d single crops, %d mosaics",
            len(patches),
            n_single,
            n_mosaic,
        )
    kinds = ["single"] * n_single + ["mosaic"] * n_mosaic
    kinds += ["procedural"] * (n_base - len(kinds))
    kinds = [kinds[int(i)] for i in rng.permutation(len(kinds))]
    pool = list(patches)
    bases: list[_Base] = []
    for base_id, kind in enumerate(kinds):
        brng = _rng(seed, 2, base_id)
        if kind == "single":
            img, subject = _patch_image(brng, photos, pool.pop())
            img = _resize_long(img, _photo_long_side(brng, img))
            base = _Base(base_id, img, "photo", "photo", subject, "jpg", 90)
        elif kind == "mosaic":
            first = pool.pop()
            j = next(
                (k for k in range(len(pool) - 1, -1, -1) if pool[k].photo != first.photo), None
            )
            second = pool.pop(j) if j is not None else pool.pop()
            a, sa = _patch_image(brng, photos, first)
            b, sb = _patch_image(brng, photos, second)
            if brng.random() < 0.7:  # side by side
                hh = min(a.height, b.height)
                a = a.resize((max(1, round(a.width * hh / a.height)), hh), Image.Resampling.LANCZOS)
                b = b.resize((max(1, round(b.width * hh / b.height)), hh), Image.Resampling.LANCZOS)
                img = Image.new("RGB", (a.width + b.width, hh))
                img.paste(a, (0, 0))
                img.paste(b, (a.width, 0))
            else:  # stacked
                ww = min(a.width, b.width)
                a = a.resize((ww, max(1, round(a.height * ww / a.width))), Image.Resampling.LANCZOS)
                b = b.resize((ww, max(1, round(b.height * ww / b.width))), Image.Resampling.LANCZOS)
                img = Image.new("RGB", (ww, a.height + b.height))
                img.paste(a, (0, 0))
                img.paste(b, (0, a.height))
            img = _resize_long(img, _photo_long_side(brng, img))
            base = _Base(base_id, img, "photo", "mosaic", f"a collage of {sa} and {sb}", "jpg", 90)
        else:
            img, style, subject = _procedural_base(brng)
            ext = "png" if style == "shapes" else "jpg"
            base = _Base(base_id, img, "procedural", style, subject, ext, 92)
        if base.ext == "jpg":
            base.quality = int(brng.integers(85, 96))
            if base.source == "photo" and brng.random() < 0.08:
                base.ext = "png"
        base.attributes = {
            "source": base.source,
            "palette": _palette_of(base.image),
            "orientation": _orientation(*base.image.size),
        }
        bases.append(base)
    return bases


# -------------------------------------------------------------------------------- plan


@dataclass
class _Spec:
    """One enumerable input to write."""

    shard: str
    kind: str
    base_id: int | None = None
    edit: str | None = None
    corrupt: str | None = None
    special: list[str] = field(default_factory=list)
    ext: str = "jpg"
    caption: str | None = None
    meta: dict[str, str] | None = None
    subdir: str = ""
    dup_of: _Spec | None = None
    same_path: bool = False
    exif_orientation: int = 0
    attributes: dict[str, str] = field(default_factory=dict)
    data: bytes | None = None
    seq: int = -1
    relpath: str = ""
    source_uri: str = ""


def _caption_for(rng: np.random.Generator, base: _Base) -> str:
    tone = "warm" if base.attributes["palette"] == "warm" else "cool"
    if base.style == "photo":
        templates = ("{s}", "a close-up of {s}", "detail from a photo of {s}", "{s}, cropped")
    elif base.style == "mosaic":
        templates = ("{s}", "two photos side by side: {s}")
    elif base.style == "texture":
        templates = ("a {t}-toned {s}", "{s} in {t} colours", "seamless {t} {s}")
    else:
        templates = ("abstract {t} composition of {s}", "{s} on a {t} background", "{t} {s}")
    text = templates[int(rng.integers(len(templates)))].format(s=base.subject, t=tone)
    return text + _CAPTION_SUFFIXES[int(rng.integers(len(_CAPTION_SUFFIXES)))]


def _assign_caption(rng: np.random.Generator, spec: _Spec, base: _Base | None) -> None:
    """Caption (and tar metadata) for an image spec, according to its shard's conventions."""
    if base is None:
        return
    if spec.shard in (SHARD_CSV, SHARD_PARQUET):
        spec.caption = _caption_for(rng, base) if rng.random() < 0.6 else None
        return
    spec.caption = _caption_for(rng, base) if rng.random() < 1 / 3 else None
    if spec.shard == SHARD_TAR and rng.random() < 0.3:
        spec.meta = {
            "license": _LICENSES[int(rng.integers(len(_LICENSES)))],
            "photographer": _PHOTOGRAPHERS[int(rng.integers(len(_PHOTOGRAPHERS)))],
        }


def _plan(seed: int, bases: list[_Base]) -> list[_Spec]:
    """Decide every item: shard, kind, edit, format, caption and order."""
    rng = _rng(seed, 3)
    n = len(bases)
    # Originals: a balanced split of the bases over the shards.
    order = rng.permutation(n)
    cuts = np.cumsum([round(s * n) for s in SHARD_SHARES[:-1]])
    base_shard: dict[int, str] = {}
    for k, chunk in enumerate(np.split(order, cuts)):
        for b in chunk:
            base_shard[int(b)] = SHARDS[k]
    originals: dict[int, _Spec] = {}
    for base in bases:
        shard = base_shard[base.base_id]
        ext = base.ext
        if shard == SHARD_FOLDER and rng.random() < 0.06:
            ext = "webp"
        spec = _Spec(shard, "original", base.base_id, ext=ext)
        if shard == SHARD_FOLDER and rng.random() < 0.25:
            spec.subdir = "sub"
        originals[base.base_id] = spec

    # Specials: valid but unusual encodings of some originals.
    wanted = (
        ("exif_rotated", SHARD_FOLDER, 6),
        ("exif_rotated", SHARD_TAR, 8),
        ("animated_gif", SHARD_FOLDER, 0),
        ("16bit", SHARD_FOLDER, 0),
        ("grayscale", SHARD_TAR, 0),
        ("rgba", SHARD_CSV, 0),
        ("palette", SHARD_PARQUET, 0),
    )
    special_ext = {"animated_gif": "gif", "16bit": "png", "grayscale": "png", "rgba": "png"}
    taken: set[int] = set()
    for tag, shard, orient in wanted:
        cands = [
            b.base_id
            for b in bases
            if base_shard[b.base_id] == shard
            and b.base_id not in taken
            and (tag != "exif_rotated" or b.attributes["orientation"] != "square")
        ]
        bid = cands[int(rng.integers(len(cands)))]
        taken.add(bid)
        spec = originals[bid]
        spec.special = [tag]
        spec.ext = special_ext.get(tag, "png" if tag == "palette" else "jpg")
        if tag == "exif_rotated":
            spec.exif_orientation = orient

    seq: list[_Spec] = []
    near: list[_Spec] = []
    lo, hi = NEAR_DUP_COPIES
    for base in bases:
        orig = originals[base.base_id]
        seq.append(orig)
        if rng.random() >= NEAR_DUP_BASE_FRACTION:
            continue
        n_copies = int(rng.integers(lo, hi + 1))
        edits = rng.choice(len(EDITS), size=n_copies, replace=False)
        for e in edits:
            edit = EDITS[int(e)]
            if rng.random() < NEAR_DUP_SAME_SHARD:
                shard = orig.shard
            else:
                others = [s for s in SHARDS if s != orig.shard]
                shard = others[int(rng.integers(len(others)))]
            ext = "jpg" if edit == "reencode" else base.ext
            copy = _Spec(shard, "near_duplicate", base.base_id, edit=edit, ext=ext, dup_of=orig)
            if shard == SHARD_FOLDER and rng.random() < 0.25:
                copy.subdir = "sub"
            seq.append(copy)
            near.append(copy)
    for spec in seq:
        _assign_caption(rng, spec, bases[spec.base_id] if spec.base_id is not None else None)

    # Corrupt inputs, spread over the shards, at random positions.
    corrupt = (
        (SHARD_FOLDER, "truncated", "jpg"),
        (SHARD_FOLDER, "zero_byte", "png"),
        (SHARD_FOLDER, "not_an_image", "jpg"),
        (SHARD_FOLDER, "orphan_sidecar", "txt"),
        (SHARD_FOLDER, "decompression_bomb", "png"),
        (SHARD_TAR, "truncated", "png"),
        (SHARD_TAR, "zero_byte", "jpg"),
        (SHARD_TAR, "not_an_image", "jpg"),
        (SHARD_CSV, "missing_file", "jpg"),
        (SHARD_CSV, "truncated", "png"),
        (SHARD_CSV, "not_an_image", "jpg"),
        (SHARD_PARQUET, "missing_file", "png"),
        (SHARD_PARQUET, "zero_byte", "webp"),
        (SHARD_PARQUET, "decompression_bomb", "png"),
    )
    for shard, what, ext in corrupt:
        spec = _Spec(shard, "corrupt", corrupt=what, ext=ext)
        if shard == SHARD_FOLDER and rng.random() < 0.3:
            spec.subdir = "sub"
        seq.insert(int(rng.integers(0, len(seq) + 1)), spec)

    # Exact duplicates: byte copies of originals, inserted after them (so that the copy, not
    # the original, is the later one in enumeration order when both are in one shard).
    exact = (
        (SHARD_FOLDER, SHARD_FOLDER, False),
        (SHARD_FOLDER, SHARD_FOLDER, False),
        (SHARD_FOLDER, SHARD_FOLDER, False),
        (SHARD_TAR, SHARD_TAR, False),
        (SHARD_TAR, SHARD_TAR, False),
        (SHARD_FOLDER, SHARD_TAR, False),
        (SHARD_TAR, SHARD_FOLDER, False),
        (SHARD_CSV, SHARD_CSV, True),
        (SHARD_PARQUET, SHARD_PARQUET, True),
        (SHARD_CSV, SHARD_CSV, False),
        (SHARD_PARQUET, SHARD_CSV, False),
        (SHARD_FOLDER, SHARD_PARQUET, False),
    )
    used: set[int] = set(taken)
    for src_shard, dst_shard, same_path in exact:
        cands = [
            s
            for s in originals.values()
            if s.shard == src_shard and s.base_id not in used and s.subdir == ""
        ]
        orig = cands[int(rng.integers(len(cands)))]
        assert orig.base_id is not None
        used.add(orig.base_id)
        dup = _Spec(dst_shard, "exact_duplicate", orig.base_id, ext=orig.ext, dup_of=orig)
        dup.same_path = same_path
        if dst_shard == SHARD_FOLDER and rng.random() < 0.5:
            dup.subdir = "sub"
        _assign_caption(rng, dup, bases[orig.base_id])
        pos = seq.index(orig)
        seq.insert(int(rng.integers(pos + 1, len(seq) + 1)), dup)

    for i, spec in enumerate(seq):
        spec.seq = i
        if spec.base_id is not None:
            spec.attributes = dict(bases[spec.base_id].attributes)
    return seq


# ------------------------------------------------------------------------------ render


def _encode(img: Image.Image, ext: str, quality: int = 92, **extra: Any) -> bytes:
    buf = io.BytesIO()
    if ext == "jpg":
        img.save(buf, "JPEG", quality=quality, subsampling="4:2:0", optimize=False, **extra)
    elif ext == "png":
        img.save(buf, "PNG", compress_level=6, optimize=False, **extra)
    elif ext == "webp":
        img.save(buf, "WEBP", quality=80, method=4, **extra)
    elif ext == "gif":
        img.save(buf, "GIF", **extra)
    else:  # pragma: no cover - plan only uses the formats above
        msg = f"unknown extension {ext}"
        raise ValueError(msg)
    return buf.getvalue()


def _edit(rng: np.random.Generator, img: Image.Image, edit: str) -> tuple[Image.Image, int | None]:
    """Apply a near-duplicate edit; returns the image and a JPEG quality override."""
    w, h = img.size
    if edit == "crop":
        area = float(rng.uniform(0.80, 0.95))
        fw = min(1.0, math.sqrt(area) * float(rng.uniform(0.96, 1.04)))
        fh = min(1.0, area / fw)
        cw, ch = max(1, round(w * fw)), max(1, round(h * fh))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return img.crop((x0, y0, x0 + cw, y0 + ch)), None
    if edit == "reencode":
        return img, int(rng.integers(40, 71))
    if edit == "flip":
        return ImageOps.mirror(img), None
    if edit == "color_shift":
        out = img
        enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
        chosen = rng.choice(3, size=int(rng.integers(1, 4)), replace=False)
        for k in sorted(int(c) for c in chosen):
            delta = float(rng.uniform(0.10, 0.20)) * (1 if rng.random() < 0.5 else -1)
            out = enhancers[k](out).enhance(1.0 + delta)
        return out, None
    if edit == "rotate":
        angle = float(rng.uniform(3.0, 8.0)) * (1 if rng.random() < 0.5 else -1)
        rot = img.rotate(angle, resample=Image.Resampling.BICUBIC, expand=False)
        t = math.radians(abs(angle))
        s = min(w / (w * math.cos(t) + h * math.sin(t)), h / (w * math.sin(t) + h * math.cos(t)))
        cw, ch = int(w * s), int(h * s)
        x0, y0 = (w - cw) // 2 + 1, (h - ch) // 2 + 1
        return rot.crop((x0, y0, x0 + cw - 2, y0 + ch - 2)), None
    if edit == "resize":
        f = float(rng.uniform(0.5, 0.8))
        size = (max(1, round(w * f)), max(1, round(h * f)))
        return img.resize(size, Image.Resampling.LANCZOS), None
    msg = f"unknown edit {edit}"  # pragma: no cover
    raise ValueError(msg)


def _render_special(rng: np.random.Generator, base: _Base, spec: _Spec) -> bytes:
    img = base.image
    tag = spec.special[0]
    if tag == "exif_rotated":
        orient = spec.exif_orientation
        # Stored pixels are rotated so that applying the EXIF orientation gives ``img``:
        # exif_transpose uses ROTATE_270 for orientation 6 and ROTATE_90 for 8.
        stored = img.transpose(
            Image.Transpose.ROTATE_90 if orient == 6 else Image.Transpose.ROTATE_270
        )
        exif = Image.Exif()
        exif[0x0112] = orient
        return _encode(stored, "jpg", base.quality, exif=exif.tobytes())
    if tag == "animated_gif":
        frames = [
            ImageEnhance.Brightness(img)
            .enhance(1.0 + 0.06 * i)
            .quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
            for i in range(3)
        ]
        return _encode(
            frames[0], "gif", save_all=True, append_images=frames[1:], duration=120, loop=0
        )
    if tag == "rgba":
        w, h = img.size
        mask = Image.new("L", (w, h), 0)
        m = round(0.08 * min(w, h))
        ImageDraw.Draw(mask).rounded_rectangle((m, m, w - m, h - m), radius=2 * m, fill=255)
        rgba = img.convert("RGBA")
        rgba.putalpha(mask)
        return _encode(rgba, "png")
    if tag == "palette":
        pal = img.quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        return _encode(pal, "png")
    if tag == "grayscale":
        return _encode(img.convert("L"), "png")
    if tag == "16bit":
        gray = np.asarray(img.convert("L"), dtype=np.uint16) * 257
        gray = gray + rng.integers(0, 200, gray.shape, dtype=np.uint16)
        arr = np.minimum(gray, 65535).astype(np.uint16)
        return _encode(Image.fromarray(arr), "png")
    msg = f"unknown special {tag}"  # pragma: no cover
    raise ValueError(msg)


def _bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit grayscale PNG of ``width x height`` zeros, streamed through zlib."""

    def chunk(tag: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(tag + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", crc)

    row = bytes(1 + (width + 7) // 8)  # filter byte 0 + packed bits
    rows_per_block = 256
    block = row * rows_per_block
    comp = zlib.compressobj(9)
    parts = []
    for start in range(0, height, rows_per_block):
        n = min(rows_per_block, height - start)
        parts.append(comp.compress(block if n == rows_per_block else row * n))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def _render(seed: int, bases: list[_Base], specs: list[_Spec]) -> None:
    """Fill in the bytes of every spec."""
    n_bombs = 0
    for spec in specs:
        rng = _rng(seed, 4, spec.seq)
        if spec.kind == "original":
            base = bases[spec.base_id or 0]
            if spec.special:
                spec.data = _render_special(rng, base, spec)
            else:
                spec.data = _encode(base.image, spec.ext, base.quality)
        elif spec.kind == "near_duplicate":
            base = bases[spec.base_id or 0]
            img, quality = _edit(rng, base.image, spec.edit or "")
            spec.data = _encode(img, spec.ext, quality or base.quality)
        elif spec.kind == "exact_duplicate":
            continue  # copied below, once every original has bytes
        elif spec.corrupt == "truncated":
            img, _, _ = _procedural_base(rng)
            full = _encode(img, spec.ext, 90)
            spec.data = full[: int(len(full) * float(rng.uniform(0.4, 0.6)))]
        elif spec.corrupt == "zero_byte":
            spec.data = b""
        elif spec.corrupt == "not_an_image":
            spec.data = _NOT_AN_IMAGE + f"request {spec.seq}\n".encode()
        elif spec.corrupt == "orphan_sidecar":
            spec.data = b"a caption whose image was never uploaded\n"
        elif spec.corrupt == "decompression_bomb":
            side = 30000 + 2000 * n_bombs  # distinct bytes per bomb
            spec.data = _bomb_png(side, 30000)
            n_bombs += 1
        elif spec.corrupt == "missing_file":
            spec.data = None
    for spec in specs:
        if spec.kind == "exact_duplicate":
            assert spec.dup_of is not None
            spec.data = spec.dup_of.data


# ---------------------------------------------------------------------------- naming


def _name(root: Path, specs: list[_Spec]) -> None:
    """Give every spec its relative path and source_uri (as the ingest stage names it)."""
    tar_path = root / SHARD_TAR
    for spec in specs:
        if spec.same_path:
            continue
        stem = f"img_{spec.seq:05d}"
        if spec.shard == SHARD_FOLDER:
            parts = [SHARD_FOLDER, *([spec.subdir] if spec.subdir else []), f"{stem}.{spec.ext}"]
            spec.relpath = "/".join(parts)
            spec.source_uri = str(root.joinpath(*parts))
        elif spec.shard == SHARD_TAR:
            member = f"sample{spec.seq:06d}.{spec.ext}"
            spec.relpath = f"{SHARD_TAR}#{member}"
            spec.source_uri = f"{tar_path}#{member}"
        else:
            folder = spec.shard.rsplit(".", 1)[0]
            spec.relpath = f"{MANIFEST_IMAGES_DIR}/{folder}/{stem}.{spec.ext}"
            spec.source_uri = str((root / spec.relpath).resolve())
    for spec in specs:
        if spec.same_path:
            assert spec.dup_of is not None
            spec.relpath = spec.dup_of.relpath
            spec.source_uri = spec.dup_of.source_uri


# ----------------------------------------------------------------------------- writing


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _write(root: Path, specs: list[_Spec]) -> None:
    # Manifest images first: they must exist before a manifest refers to them.
    for spec in specs:
        in_manifest = spec.shard in (SHARD_CSV, SHARD_PARQUET)
        if in_manifest and not spec.same_path and spec.data is not None:
            p = root / spec.relpath
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(spec.data)

    # Folder shard, built under a name discovery ignores, then renamed.
    staging = root / f"{SHARD_FOLDER}.tmp"
    staging.mkdir()
    for spec in specs:
        if spec.shard != SHARD_FOLDER:
            continue
        rel = Path(spec.relpath).relative_to(SHARD_FOLDER)
        p = staging / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        assert spec.data is not None
        p.write_bytes(spec.data)
        if spec.caption is not None:
            p.with_suffix(".txt").write_text(spec.caption + "\n", encoding="utf-8")
    (staging / SUCCESS_MARKER).write_bytes(b"")
    staging.rename(root / SHARD_FOLDER)

    # Tar shard: members of one key consecutive, in key order, fixed metadata.
    tmp = root / f"{SHARD_TAR}.tmp"
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for spec in specs:
            if spec.shard != SHARD_TAR:
                continue
            member = spec.relpath.split("#", 1)[1]
            key = member.split(".", 1)[0]
            assert spec.data is not None
            tar.addfile(_tar_info(member, len(spec.data)), io.BytesIO(spec.data))
            if spec.caption is not None:
                txt = (spec.caption + "\n").encode("utf-8")
                tar.addfile(_tar_info(f"{key}.txt", len(txt)), io.BytesIO(txt))
            if spec.meta:
                js = json.dumps(spec.meta, sort_keys=True).encode("utf-8")
                tar.addfile(_tar_info(f"{key}.json", len(js)), io.BytesIO(js))
    os.replace(tmp, root / SHARD_TAR)

    # Manifests: path relative to the manifest's folder (the root).
    for shard in (SHARD_CSV, SHARD_PARQUET):
        rows = [s for s in specs if s.shard == shard]
        frame = pl.DataFrame(
            {"path": [s.relpath for s in rows], "caption": [s.caption for s in rows]},
            schema={"path": pl.String, "caption": pl.String},
        )
        tmp = root / f"{shard}.tmp"
        if shard == SHARD_CSV:
            frame.with_columns(pl.col("caption").fill_null("")).write_csv(tmp)
        else:
            frame.write_parquet(tmp, compression="zstd", statistics=False)
        os.replace(tmp, root / shard)


def _enumeration_key(spec: _Spec) -> tuple[Any, ...]:
    """Order of the shard reader: folder by (dir parts, stem), tar and manifests by position."""
    shard_idx = SHARDS.index(spec.shard)
    if spec.shard == SHARD_FOLDER:
        return (shard_idx, Path(spec.relpath).with_suffix("").parts, spec.seq)
    return (shard_idx, (), spec.seq)


def _write_ground_truth(root: Path, seed: int, n_base: int, specs: list[_Spec]) -> None:
    items = []
    for spec in sorted(specs, key=_enumeration_key):
        base_id = spec.base_id if spec.kind != "corrupt" else None
        items.append(
            {
                "shard": spec.shard,
                "source_uri": spec.source_uri,
                "relpath": spec.relpath,
                "kind": spec.kind,
                "base_id": base_id,
                "edit": spec.edit,
                "duplicate_of": spec.dup_of.source_uri if spec.dup_of is not None else None,
                "corrupt": spec.corrupt,
                "caption": spec.caption,
                "attributes": {} if spec.kind == "corrupt" else dict(spec.attributes),
                "special": list(spec.special),
            }
        )
    shards = {
        s: {"kind": SHARD_KINDS[s], "n_items": sum(1 for i in items if i["shard"] == s)}
        for s in SHARDS
    }
    doc = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "n_base": n_base,
        "root": str(root),
        "shards": shards,
        "items": items,
    }
    tmp = root / f"{GROUND_TRUTH_FILE}.tmp"
    tmp.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, root / GROUND_TRUTH_FILE)


DEMO_CATEGORY = "demo_photograph"
"""The demo's stand-in unwanted category (see configs/categories.yaml): real photographs."""


def write_seed_labels(
    corpus: DemoCorpus, *, n_pos: int = 80, n_neg: int = 200, seed: int = 0
) -> Path:
    """Write a CSV of seed labels for :data:`DEMO_CATEGORY`, drawn from the ground truth.

    Labels are taken only from original images (not their copies), ``n_pos`` photographs and
    ``n_neg`` procedural images chosen at random with ``seed``. The file lives under
    ``<root>/_labels/`` (ignored by shard discovery) and has the columns ``source_uri,
    category, label`` that ``curation labels import`` reads.

    Returns:
        The CSV path.
    """
    gt = corpus.load_items().filter(pl.col("kind") == "original")
    rng = np.random.default_rng(seed)
    picks = []
    for source, n, label in (("photo", n_pos, 1), ("procedural", n_neg, 0)):
        pool = gt.filter(pl.col("attr_source") == source)["source_uri"].unique().sort()
        chosen = rng.choice(pool.len(), size=min(n, pool.len()), replace=False)
        picks.append(pl.DataFrame({"source_uri": pool.gather(np.sort(chosen)), "label": label}))
    out = corpus.root / "_labels" / "seed_labels.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    labels = pl.concat(picks).select("source_uri", category=pl.lit(DEMO_CATEGORY), label="label")
    labels.write_csv(out)
    return out
