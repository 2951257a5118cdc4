"""Rendering and writing: the bytes of every item, the shards on disk, ``ground_truth.json``."""

from __future__ import annotations

import io
import json
import math
import os
import struct
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from curation_assets.tools.demo.bases import Base, procedural_base
from curation_assets.tools.demo.layout import (
    GENERATOR_VERSION,
    GROUND_TRUTH_FILE,
    MANIFEST_IMAGES_DIR,
    SHARD_CSV,
    SHARD_FOLDER,
    SHARD_KINDS,
    SHARD_PARQUET,
    SHARD_TAR,
    SHARDS,
    SUCCESS_MARKER,
    seeded_rng,
)
from curation_assets.tools.demo.plan import Spec

_NOT_AN_IMAGE = (
    b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n"
    b"<body><h1>Not Found</h1><p>The requested image was not found.</p></body></html>\n"
)


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


def _render_special(rng: np.random.Generator, base: Base, spec: Spec) -> bytes:
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


def render_items(seed: int, bases: list[Base], specs: list[Spec]) -> None:
    """Fill in the bytes of every spec."""
    n_bombs = 0
    for spec in specs:
        rng = seeded_rng(seed, 4, spec.seq)
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
            img, _, _ = procedural_base(rng)
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


def name_items(root: Path, specs: list[Spec]) -> None:
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


def write_shards(root: Path, specs: list[Spec]) -> None:
    """Write the four shards under ``root`` (each under a temporary name, then renamed)."""
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


def _enumeration_key(spec: Spec) -> tuple[Any, ...]:
    """Order of the shard reader: folder by (dir parts, stem), tar and manifests by position."""
    shard_idx = SHARDS.index(spec.shard)
    if spec.shard == SHARD_FOLDER:
        return (shard_idx, Path(spec.relpath).with_suffix("").parts, spec.seq)
    return (shard_idx, (), spec.seq)


def write_ground_truth(root: Path, seed: int, n_base: int, specs: list[Spec]) -> None:
    """Write ``ground_truth.json``: one record per enumerable input, in enumeration order."""
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
