"""Verify a near-duplicate candidate pair with local features: ORB keypoints + RANSAC.

Copy-detection systems check an embedding match geometrically: two versions of one photo share
many local features that one similarity transform maps onto each other; two different photos
that merely look alike (same garment type, same studio background) do not. This module decides
"same photo?" for a pair of images from their bytes:

1. decode safely (ingest's limits, EXIF orientation, RGB) → grayscale, resized so that its
   longer side is :data:`VERIFY_SIDE` px (small photos are upscaled: ORB's FAST corners and
   its 31 px patches need the resolution);
2. ORB keypoints + binary descriptors (:data:`ORB_FEATURES` at most);
3. brute-force Hamming 2-NN matches, Lowe's ratio test (:data:`LOWE_RATIO`);
4. RANSAC similarity transform (``cv2.estimateAffinePartial2D``: rotation, uniform scale,
   translation; reprojection error :data:`RANSAC_REPROJ_PX`) → inliers and inlier ratio;
5. aligned agreement (:func:`aligned_agreement`): the second image warped onto the first by
   that transform, the share of textured cells whose pixels correlate. RANSAC alone is fooled
   by different garments shot against one background (the background's keypoints match under
   the identity); the pixels of the garments then disagree;
6. verified when inliers ≥ :data:`MIN_INLIERS`, inliers / matches ≥ :data:`MIN_INLIER_RATIO`
   and agreement ≥ :data:`MIN_AGREEMENT`. ORB is not flip-invariant, so a pair that fails is
   tried again against the horizontally mirrored second image (``flipped``).

:func:`verify_pairs` runs it over many pairs with a ``uri -> bytes`` reader, caching each
image's features (LRU, bounded by a :class:`~curation_assets.lib.memory.MemoryBudget`); an
unreadable image makes its pairs "not verified" with the reason, never an exception.

Nothing here imports dagster; the dedup run uses it through
:mod:`~curation_assets.lib.dedup.verified` when ``verify_band`` is on (see README, "Choosing τ",
for what it measured on clothing-small).
"""

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from curation_assets.lib.ingest import DecodeLimits, decode_image
from curation_assets.lib.memory import MemoryBudget

logger = logging.getLogger(__name__)

#: Longer side (px) every image is resized to before ORB (up or down).
VERIFY_SIDE = 512
#: Most ORB keypoints kept per image.
ORB_FEATURES = 1000
#: Lowe's ratio test: best Hamming distance < this × second best.
LOWE_RATIO = 0.8
#: RANSAC reprojection error (px at :data:`VERIFY_SIDE`) for an inlier.
RANSAC_REPROJ_PX = 6.0
#: Least RANSAC inliers for "same photo". Calibrated with :data:`MIN_AGREEMENT` by
#: :func:`curation_assets.tools.bench_verify.calibrate_verify` (seed 0) on 300 photos of
#: clothing-small/train with 7 planted edits each: of 4 000 same-photo and 3 754
#: different-photo pairs with cosine ≥ 0.75, grid 8-40 inliers × agreement 0-0.9, the rule
#: "no different-photo pair verified, then the highest same-photo recall, then the strictest"
#: chose 25 inliers and agreement 0.6 (recall 0.999). Without the agreement test no inlier
#: count up to 40 separates them (10 different-photo pairs keep ≥ 40 inliers: garments shot
#: against one background). Held-out figures (test split): README, "Choosing τ".
MIN_INLIERS = 25
#: Least inliers / ratio-test matches for "same photo" (calibrated with :data:`MIN_INLIERS`).
MIN_INLIER_RATIO = 0.2
#: Side (px at :data:`VERIFY_SIDE`) of the cells compared after alignment.
AGREEMENT_CELL_PX = 32
#: Normalized cross-correlation at which an aligned cell agrees.
AGREEMENT_NCC = 0.5
#: Least share of agreeing cells for "same photo" (calibrated with :data:`MIN_INLIERS`; at 0.5
#: two different-photo pairs verified, 0.7-0.9 lose recall on watermarks and crops).
MIN_AGREEMENT = 0.6


@dataclass(frozen=True)
class VerifyParams:
    """The thresholds and sizes of one verification (defaults: the calibrated constants).

    Attributes:
        side: Longer side (px) images are resized to.
        n_features: Most ORB keypoints per image.
        lowe_ratio: Lowe's ratio-test bound.
        reproj_px: RANSAC reprojection error for an inlier (px at ``side``).
        min_inliers: Least inliers to verify.
        min_inlier_ratio: Least inliers / matches to verify.
        min_agreement: Least share of agreeing cells after alignment to verify.
        try_flip: Also match against the mirrored second image.
    """

    side: int = VERIFY_SIDE
    n_features: int = ORB_FEATURES
    lowe_ratio: float = LOWE_RATIO
    reproj_px: float = RANSAC_REPROJ_PX
    min_inliers: int = MIN_INLIERS
    min_inlier_ratio: float = MIN_INLIER_RATIO
    min_agreement: float = MIN_AGREEMENT
    try_flip: bool = True

    def __post_init__(self) -> None:
        """Reject values that cannot work (a configuration error names the fix)."""
        problems = []
        if self.side < 64:
            problems.append(f"side={self.side} (expected ≥ 64 px)")
        if self.n_features < 10:
            problems.append(f"n_features={self.n_features} (expected ≥ 10)")
        if not 0 < self.lowe_ratio <= 1:
            problems.append(f"lowe_ratio={self.lowe_ratio} (expected in (0, 1])")
        if not self.reproj_px > 0:
            problems.append(f"reproj_px={self.reproj_px} (expected > 0)")
        if self.min_inliers < 3:
            problems.append(f"min_inliers={self.min_inliers} (a similarity needs ≥ 3 points)")
        if not 0 <= self.min_inlier_ratio <= 1:
            problems.append(f"min_inlier_ratio={self.min_inlier_ratio} (expected in [0, 1])")
        if not 0 <= self.min_agreement <= 1:
            problems.append(f"min_agreement={self.min_agreement} (expected in [0, 1])")
        if problems:
            msg = "invalid verification parameters: " + "; ".join(problems)
            raise ValueError(msg)


@dataclass(frozen=True)
class Features:
    """ORB features of one image at the verification size.

    Attributes:
        points: (k, 2) float32 keypoint coordinates (x, y) in the resized image.
        descriptors: (k, 32) uint8 ORB descriptors (k may be 0).
    """

    points: np.ndarray
    descriptors: np.ndarray


@dataclass(frozen=True)
class ImageFeatures:
    """What verification needs of one image.

    Attributes:
        gray: (h, w) uint8 grayscale, longer side ``VerifyParams.side``.
        plain: ORB features of ``gray``.
        mirrored: ORB features of ``gray`` mirrored left-right (``plain`` when flips are off).
    """

    gray: np.ndarray
    plain: Features
    mirrored: Features

    @property
    def nbytes(self) -> int:
        """Bytes held (pixels, coordinates, descriptors)."""
        parts = (self.gray, self.plain.points, self.plain.descriptors)
        more = (self.mirrored.points, self.mirrored.descriptors)
        return sum(a.nbytes for a in parts + more)


@dataclass(frozen=True)
class Verification:
    """The verdict on one pair.

    Attributes:
        verified: Same photo: enough RANSAC inliers of one similarity transform, and the two
            images agree pixel by pixel once aligned by it.
        inliers: RANSAC inliers of the better orientation (0 when none was fitted).
        matches: Ratio-test matches of that orientation.
        inlier_ratio: ``inliers / matches`` (0.0 without matches).
        agreement: Share of the textured cells of the overlap whose aligned pixels correlate
            (see :func:`aligned_agreement`); 0.0 when no transform passed the inlier test.
        flipped: The numbers come from the mirrored second image.
        seconds: Wall time of this pair (reading and features included when not cached).
        error: Why the pair could not be checked (an unreadable image), else None; a pair with
            an error is never verified.
    """

    verified: bool
    inliers: int
    matches: int
    inlier_ratio: float
    agreement: float
    flipped: bool
    seconds: float
    error: str | None = None


def _failed(t0: float, error: str) -> Verification:
    return Verification(False, 0, 0, 0.0, 0.0, False, time.perf_counter() - t0, error)


def load_gray(data: bytes, side: int = VERIFY_SIDE) -> np.ndarray:
    """Decode image bytes safely and return a grayscale image whose longer side is ``side``.

    Args:
        data: Encoded image (any format Pillow reads).
        side: Longer side of the result, px.

    Returns:
        (h, w) uint8 grayscale, ``max(h, w) == side``.

    Raises:
        ValueError: If the bytes do not decode (the message starts with ingest's reason code:
            ``not_an_image``, ``truncated``, ``decompression_bomb``, ``zero_byte``…).
    """
    decoded = decode_image(data, DecodeLimits())
    if decoded.image is None:
        reason, detail = decoded.error or ("not_an_image", "")
        msg = f"{reason}: {detail}"
        raise ValueError(msg)
    gray = decoded.image.convert("L")
    w, h = gray.size
    scale = side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size != (w, h):
        resample = Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.LANCZOS
        gray = gray.resize(size, resample)
    return np.asarray(gray, dtype=np.uint8)


def orb_features(gray: np.ndarray, n_features: int = ORB_FEATURES) -> Features:
    """ORB keypoints and descriptors of a grayscale image.

    Args:
        gray: (h, w) uint8.
        n_features: Most keypoints kept.

    Returns:
        :class:`Features` (possibly with 0 keypoints: a flat image has no corners).
    """
    orb = cv2.ORB.create(nfeatures=n_features, edgeThreshold=15, patchSize=31, fastThreshold=10)
    keypoints, descriptors = orb.detectAndCompute(gray, None)
    if descriptors is None or not keypoints:
        return Features(np.empty((0, 2), np.float32), np.empty((0, 32), np.uint8))
    points = np.asarray([kp.pt for kp in keypoints], dtype=np.float32)
    return Features(points, descriptors)


def image_features(data: bytes, params: VerifyParams = VerifyParams()) -> ImageFeatures:  # noqa: B008
    """Decode an image and compute its features (and its mirror's when ``params.try_flip``).

    Raises:
        ValueError: If the bytes do not decode (see :func:`load_gray`).
    """
    gray = load_gray(data, params.side)
    plain = orb_features(gray, params.n_features)
    if not params.try_flip:
        return ImageFeatures(gray, plain, plain)
    mirrored = orb_features(np.ascontiguousarray(gray[:, ::-1]), params.n_features)
    return ImageFeatures(gray, plain, mirrored)


def match_features(
    a: Features, b: Features, params: VerifyParams
) -> tuple[int, int, np.ndarray | None]:
    """Ratio-test matches of ``a`` to ``b`` and RANSAC inliers of one similarity transform.

    Returns:
        ``(inliers, matches, model)``: ``model`` is the (2, 3) float64 similarity mapping
        points of ``a`` onto ``b`` (None, with 0 inliers, when fewer than 3 matches or no fit).
    """
    if len(a.descriptors) < 2 or len(b.descriptors) < 2:
        return 0, 0, None
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    knn = matcher.knnMatch(a.descriptors, b.descriptors, k=2)
    good = [m[0] for m in knn if len(m) == 2 and m[0].distance < params.lowe_ratio * m[1].distance]
    if len(good) < 3:
        return 0, len(good), None
    src = a.points[[m.queryIdx for m in good]].reshape(-1, 1, 2)
    dst = b.points[[m.trainIdx for m in good]].reshape(-1, 1, 2)
    model, mask = cv2.estimateAffinePartial2D(
        src,
        dst,
        method=cv2.RANSAC,
        ransacReprojThreshold=params.reproj_px,
        maxIters=2000,
        confidence=0.995,
    )
    if model is None or mask is None:
        return 0, len(good), None
    return int(mask.sum()), len(good), model


def aligned_agreement(gray_a: np.ndarray, gray_b: np.ndarray, model: np.ndarray) -> float:
    """How much of image ``a`` image ``b`` reproduces once aligned by ``model``.

    ``b`` is warped into ``a``'s frame; both are blurred (σ = 1.5 px, against JPEG and
    resampling noise) and cut into :data:`AGREEMENT_CELL_PX` cells. A cell counts when it lies
    inside the overlap and has texture in ``a`` (standard deviation ≥ 4 grey levels: flat wall
    or sky says nothing); it agrees when the normalized cross-correlation of the two is ≥
    :data:`AGREEMENT_NCC` (invariant to brightness and contrast changes). A copy agrees almost
    everywhere (a watermark spoils a few cells); two garments photographed against the same
    background share keypoints on the background — a valid transform with many inliers — but
    disagree where the garments are.

    Args:
        gray_a: (h, w) uint8.
        gray_b: (h', w') uint8.
        model: (2, 3) similarity mapping ``a``'s pixel coordinates onto ``b``'s.

    Returns:
        Agreeing cells / counted cells (0.0 when no cell counts).
    """
    h, w = gray_a.shape
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpAffine(gray_b, model, (w, h), flags=flags, borderValue=0)
    inside = cv2.warpAffine(
        np.ones_like(gray_b), model, (w, h), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP
    )
    a = cv2.GaussianBlur(gray_a.astype(np.float32), (0, 0), 1.5)
    b = cv2.GaussianBlur(warped.astype(np.float32), (0, 0), 1.5)
    c = AGREEMENT_CELL_PX
    rows, cols = h // c, w // c
    if rows == 0 or cols == 0:
        return 0.0

    def cells(x: np.ndarray) -> np.ndarray:
        return x[: rows * c, : cols * c].reshape(rows, c, cols, c).swapaxes(1, 2).reshape(-1, c * c)

    ca, cb = cells(a), cells(b)
    full = cells(inside.astype(np.float32)).min(axis=1) > 0
    ca = ca - ca.mean(axis=1, keepdims=True)
    cb = cb - cb.mean(axis=1, keepdims=True)
    sa, sb = np.sqrt((ca**2).mean(axis=1)), np.sqrt((cb**2).mean(axis=1))
    counted = full & (sa >= 4.0)
    if not counted.any():
        return 0.0
    ncc = (ca * cb).mean(axis=1) / np.maximum(sa * sb, 1e-6)
    return float((ncc[counted] >= AGREEMENT_NCC).mean())


def verify_features(
    a: ImageFeatures,
    b: ImageFeatures,
    params: VerifyParams = VerifyParams(),  # noqa: B008
) -> tuple[bool, int, int, float, bool]:
    """Verdict from two images' features (as :func:`image_features` returns them).

    The plain orientation is tried first; the mirrored second image only when the plain one
    does not verify (and ``params.try_flip``). The figures returned are those of the
    orientation that verified, else of the one with more inliers.

    Returns:
        ``(verified, inliers, matches, agreement, flipped)``.
    """
    best: tuple[bool, int, int, float, bool] = (False, 0, 0, 0.0, False)
    orientations = [(a.plain, b.plain, b.gray, False)]
    if params.try_flip:
        orientations.append((a.plain, b.mirrored, np.ascontiguousarray(b.gray[:, ::-1]), True))
    for fa, fb, gray_b, flipped in orientations:
        inliers, matches, model = match_features(fa, fb, params)
        agreement = 0.0
        enough = inliers >= params.min_inliers and inliers >= params.min_inlier_ratio * matches
        if enough and model is not None:
            agreement = aligned_agreement(a.gray, gray_b, model)
        verified = enough and agreement >= params.min_agreement
        out = (verified, inliers, matches, agreement, flipped)
        if verified:
            return out
        if inliers > best[1]:
            best = out
    return best


def verify_pair(
    data_a: bytes,
    data_b: bytes,
    params: VerifyParams = VerifyParams(),  # noqa: B008
) -> Verification:
    """Are two encoded images versions of the same photo? Never raises for bad image bytes.

    Memory: two decoded images at ``params.side`` and their features (a few MB).

    Args:
        data_a: First image, encoded.
        data_b: Second image, encoded.
        params: Thresholds and sizes.

    Returns:
        The :class:`Verification`; an undecodable image gives ``verified=False`` and
        ``error="image a unreadable: <reason>: <detail>"`` (or ``b``).
    """
    t0 = time.perf_counter()
    feats = []
    for name, data in (("a", data_a), ("b", data_b)):
        try:
            feats.append(image_features(data, params))
        except (ValueError, cv2.error) as exc:
            return _failed(t0, f"image {name} unreadable: {exc}")
    return _verdict(feats[0], feats[1], params, t0)


def _verdict(a: ImageFeatures, b: ImageFeatures, params: VerifyParams, t0: float) -> Verification:
    verified, inliers, matches, agreement, flipped = verify_features(a, b, params)
    ratio = inliers / matches if matches else 0.0
    seconds = time.perf_counter() - t0
    return Verification(verified, inliers, matches, ratio, agreement, flipped, seconds)


class _FeatureCache:
    """LRU of image features by uri; an unreadable uri caches its error message."""

    def __init__(self, reader: Callable[[str], bytes], params: VerifyParams, capacity: int) -> None:
        self.reader = reader
        self.params = params
        self.capacity = max(2, capacity)
        self._items: OrderedDict[str, ImageFeatures | str] = OrderedDict()
        self.computed = 0

    def get(self, uri: str) -> ImageFeatures | str:
        hit = self._items.get(uri)
        if hit is not None:
            self._items.move_to_end(uri)
            return hit
        value: ImageFeatures | str
        try:
            value = image_features(self.reader(uri), self.params)
        # The reader is the caller's (files, tar members, object stores): any failure to read
        # one image is that image's problem, reported on its pairs, not the batch's.
        except Exception as exc:
            value = f"{type(exc).__name__}: {exc}"
        self.computed += 1
        self._items[uri] = value
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return value


def verify_pairs(
    pairs: Iterable[tuple[str, str]],
    reader: Callable[[str], bytes],
    *,
    params: VerifyParams = VerifyParams(),  # noqa: B008
    budget: MemoryBudget | None = None,
) -> Iterator[Verification]:
    """Verify pairs of images named by uri, in order, one :class:`Verification` per pair.

    Each image is read and featurized once while it stays in an LRU cache whose size comes
    from ``budget`` (a quarter of it; ~340 KB per image at the defaults: the 512 px
    grayscale image and the features of it and its mirror), so memory is bounded
    whatever the number of pairs; order the pairs by their first uri for the most cache hits.
    A reader error or an undecodable image makes every pair touching that image
    ``verified=False`` with ``error`` naming the image and the reason; nothing is raised.

    Args:
        pairs: ``(uri_a, uri_b)`` pairs.
        reader: ``uri -> bytes`` (e.g. :class:`curation_assets.lib.images.SourceReader`).
        params: Thresholds and sizes.
        budget: Memory budget (default :class:`MemoryBudget`'s default).

    Yields:
        One :class:`Verification` per pair; ``seconds`` includes the reads and features the
        pair caused (cache misses).
    """
    budget = budget or MemoryBudget()
    per_image = params.side * params.side + 2 * params.n_features * (32 + 8) + 1024
    cache = _FeatureCache(reader, params, budget.rows(per_image, share=0.25))
    done = failed = 0
    for uri_a, uri_b in pairs:
        t0 = time.perf_counter()
        done += 1
        a, b = cache.get(uri_a), cache.get(uri_b)
        if isinstance(a, str) or isinstance(b, str):
            which, reason = (uri_a, a) if isinstance(a, str) else (uri_b, b)
            failed += 1
            yield _failed(t0, f"image {which!r} unreadable: {reason}")
            continue
        try:
            yield _verdict(a, b, params, t0)
        except cv2.error as exc:  # a degenerate geometry OpenCV refuses: this pair's problem
            failed += 1
            yield _failed(t0, f"OpenCV failed on ({uri_a!r}, {uri_b!r}): {exc}")
    logger.info(
        "verified %d pairs (%d could not be checked), %d images featurized",
        done,
        failed,
        cache.computed,
    )
