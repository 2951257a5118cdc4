"""Shared fixtures: real images made on the fly, resources rooted in tmp_path."""

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FIXTURES = Path(__file__).parent / "fixtures"
TINY_CLIP_CONFIG = FIXTURES / "tiny-clip-test.json"
CLOTHING = Path(
    os.environ.get(
        "CURATION_CLOTHING_DIR",
        Path(__file__).resolve().parents[2] / "shared" / "datasets" / "clothing-small",
    )
)


def image_bytes(seed: int, size: tuple[int, int] = (96, 72), fmt: str = "JPEG") -> bytes:
    """A distinct, real (decodable) image: smooth random colour field, as bytes."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def write_images(folder: Path, n: int, *, start: int = 0, ext: str = "jpg") -> list[Path]:
    """Write ``n`` distinct images into ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    fmt = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[ext]
    paths = []
    for i in range(start, start + n):
        p = folder / f"img{i:04d}.{ext}"
        p.write_bytes(image_bytes(i, fmt=fmt))
        paths.append(p)
    return paths


def age(path: Path, seconds: float = 3600.0) -> None:
    """Make a file (and a folder's files) look older than the sensor's quiet period."""
    targets = [path, *path.rglob("*")] if path.is_dir() else [path]
    for p in targets:
        st = p.stat()
        os.utime(p, (st.st_atime - seconds, st.st_mtime - seconds))


@pytest.fixture
def clothing_dir() -> Path:
    """The shared clothing-small photographs; skips when absent."""
    if not (CLOTHING / "test").is_dir():
        pytest.skip(f"{CLOTHING} not present")
    return CLOTHING


@pytest.fixture
def tiny_clip_config() -> Path:
    """A tiny open_clip model config (random weights; exercises the real code path)."""
    return TINY_CLIP_CONFIG
