"""Base images: procedural ones and crops of the photographs bundled with scikit-image."""

from __future__ import annotations

import colorsys
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from curation_assets.tools.demo.layout import (
    MOSAIC_FRACTION,
    PHOTO_FRACTION,
    orientation_of,
    palette_of,
    resize_long,
    seeded_rng,
)

logger = logging.getLogger(__name__)

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


@dataclass
class Base:
    """One distinct base image and what is known about it (the ground truth's attributes)."""

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


def procedural_base(rng: np.random.Generator) -> tuple[Image.Image, str, str]:
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


def make_bases(seed: int, n_base: int) -> list[Base]:
    """``n_base`` base images: about :data:`PHOTO_FRACTION` photo crops, the rest procedural."""
    rng = seeded_rng(seed, 1)
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
    bases: list[Base] = []
    for base_id, kind in enumerate(kinds):
        brng = seeded_rng(seed, 2, base_id)
        if kind == "single":
            img, subject = _patch_image(brng, photos, pool.pop())
            img = resize_long(img, _photo_long_side(brng, img))
            base = Base(base_id, img, "photo", "photo", subject, "jpg", 90)
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
            img = resize_long(img, _photo_long_side(brng, img))
            base = Base(base_id, img, "photo", "mosaic", f"a collage of {sa} and {sb}", "jpg", 90)
        else:
            img, style, subject = procedural_base(brng)
            ext = "png" if style == "shapes" else "jpg"
            base = Base(base_id, img, "procedural", style, subject, ext, 92)
        if base.ext == "jpg":
            base.quality = int(brng.integers(85, 96))
            if base.source == "photo" and brng.random() < 0.08:
                base.ext = "png"
        base.attributes = {
            "source": base.source,
            "palette": palette_of(base.image),
            "orientation": orientation_of(*base.image.size),
        }
        bases.append(base)
    return bases
