import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from curation_assets.lib.dedup.verify import (
    Verification,
    VerifyParams,
    aligned_agreement,
    image_features,
    load_gray,
    match_features,
    verify_pair,
    verify_pairs,
)
from curation_assets.lib.memory import MemoryBudget


def _textured(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A photo-like image with many corners: random rectangles and ellipses on a colour field."""
    rng = np.random.default_rng(seed)
    field = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(field).resize(size, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    w, h = size
    for _ in range(60):
        x0, y0 = int(rng.integers(0, w - 10)), int(rng.integers(0, h - 10))
        x1 = x0 + int(rng.integers(6, 50))
        y1 = y0 + int(rng.integers(6, 50))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        if rng.random() < 0.5:
            draw.rectangle((x0, y0, x1, y1), fill=colour, outline=(0, 0, 0))
        else:
            draw.ellipse((x0, y0, x1, y1), fill=colour, outline=(255, 255, 255))
    return img


def _jpeg(img: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _edits(img: Image.Image) -> dict[str, bytes]:
    w, h = img.size
    return {
        "crop": _jpeg(img.crop((20, 15, 20 + int(w * 0.85), 15 + int(h * 0.85)))),
        "rotate": _jpeg(img.rotate(6, resample=Image.Resampling.BILINEAR, fillcolor=(90, 90, 90))),
        "flip": _jpeg(ImageOps.mirror(img)),
        "jpeg": _jpeg(img, quality=40),
        "resize": _jpeg(img.resize((int(w * 0.6), int(h * 0.6)), Image.Resampling.BICUBIC)),
    }


@pytest.mark.parametrize("edit", ["crop", "rotate", "flip", "jpeg", "resize"])
def test_an_edited_copy_verifies(edit):
    img = _textured(0)
    result = verify_pair(_jpeg(img), _edits(img)[edit])
    assert result.error is None
    assert result.verified, result
    assert result.flipped is (edit == "flip")
    assert result.inliers >= VerifyParams().min_inliers and result.agreement > 0.8


def test_two_different_images_do_not_verify():
    for seed in (1, 2, 3):
        result = verify_pair(_jpeg(_textured(0)), _jpeg(_textured(seed)))
        assert not result.verified and result.error is None
        assert result.inliers < VerifyParams().min_inliers


def test_same_background_different_subject_has_inliers_but_does_not_verify():
    """Two garments shot on one background: the background matches, the subject does not."""
    background = _textured(7)
    a, b = background.copy(), background.copy()
    a.paste(_textured(8, (240, 180)), (40, 30))
    b.paste(_textured(9, (240, 180)), (40, 30))
    result = verify_pair(_jpeg(a), _jpeg(b))
    assert result.inliers >= VerifyParams().min_inliers  # RANSAC alone would call it a copy
    assert not result.verified and result.agreement < VerifyParams().min_agreement


def test_aligned_agreement_of_an_image_with_itself_and_with_another():
    gray = load_gray(_jpeg(_textured(0)))
    identity = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert aligned_agreement(gray, gray, identity) == 1.0
    other = load_gray(_jpeg(_textured(5)))
    assert aligned_agreement(gray, other, identity) < 0.3
    flat = np.full_like(gray, 128)
    assert aligned_agreement(flat, flat, identity) == 0.0  # no textured cell counts


def test_load_gray_resizes_the_longer_side_both_ways():
    assert max(load_gray(_jpeg(_textured(0, (100, 60))), side=256).shape) == 256
    assert load_gray(_jpeg(_textured(0, (1000, 600))), side=256).shape == (154, 256)


def test_unreadable_image_is_not_verified_and_says_why():
    good = _jpeg(_textured(0))
    result = verify_pair(good, b"not an image at all")
    assert isinstance(result, Verification)
    assert not result.verified and result.error is not None
    assert result.error.startswith("image b unreadable: not_an_image")
    truncated = verify_pair(good[: len(good) // 2], good)
    assert not truncated.verified and truncated.error is not None
    assert truncated.error.startswith("image a unreadable: truncated")


def test_a_flat_image_has_no_features_and_does_not_verify():
    flat = _jpeg(Image.new("RGB", (200, 200), (120, 130, 140)))
    feats = image_features(flat)
    assert len(feats.plain.descriptors) == 0
    assert match_features(feats.plain, feats.plain, VerifyParams()) == (0, 0, None)
    result = verify_pair(flat, flat)
    assert not result.verified and result.error is None


def test_verify_pairs_reads_each_image_once_and_reports_errors_per_pair():
    img = _textured(0)
    store = {"a": _jpeg(img), **_edits(img), "other": _jpeg(_textured(4)), "bad": b"\x00" * 10}
    reads: list[str] = []

    def reader(uri: str) -> bytes:
        reads.append(uri)
        if uri == "missing":
            msg = f"{uri} does not exist"
            raise FileNotFoundError(msg)
        return store[uri]

    pairs = [("a", "crop"), ("a", "flip"), ("a", "other"), ("a", "bad"), ("missing", "a")]
    pairs += [("a", "rotate"), ("bad", "crop")]
    out = list(verify_pairs(pairs, reader, budget=MemoryBudget(64)))
    assert [r.verified for r in out] == [True, True, False, False, False, True, False]
    assert out[2].error is None
    assert out[3].error is not None and "'bad' unreadable" in out[3].error
    assert out[4].error is not None and "FileNotFoundError" in out[4].error
    assert out[6].error is not None and "'bad' unreadable" in out[6].error
    assert sorted(reads) == sorted(set(reads))  # every uri read once (all fit the cache)


def test_verify_pairs_cache_is_bounded_by_the_budget():
    img = _textured(0)
    store = {str(k): _jpeg(img.rotate(k)) for k in range(6)}
    reads: list[str] = []

    def reader(uri: str) -> bytes:
        reads.append(uri)
        return store[uri]

    # A budget whose quarter holds two images' features: the LRU must evict and re-read.
    params = VerifyParams()
    per_image = params.side * params.side + 2 * params.n_features * 40 + 1024
    budget = MemoryBudget(2.5 * 4 * per_image / 2**20)
    pairs = [(str(k), str((k + 1) % 6)) for k in range(6)] * 2
    out = list(verify_pairs(pairs, reader, budget=budget))
    assert all(r.verified for r in out)
    assert len(reads) > len(store)


def test_invalid_parameters_are_a_clear_error():
    with pytest.raises(ValueError, match="min_inliers=2"):
        VerifyParams(min_inliers=2)
    with pytest.raises(ValueError, match="lowe_ratio=1.5"):
        VerifyParams(lowe_ratio=1.5)
