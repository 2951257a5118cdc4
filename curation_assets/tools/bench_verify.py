"""Benchmark: does verifying borderline pairs with local features lift near-duplicate recall?

``curation bench verify``: on real photos (clothing-small) with planted edits — the six of
:func:`~curation_assets.tools.bench_dedup.plant_edits` plus a :func:`watermark` — embed every
version with the project's default offline embedder, find every pair with cosine ≥ τ_min
(exhaustive; a few thousand images), verify each with
:mod:`curation_assets.lib.dedup.verify` (ORB + RANSAC + aligned agreement), and score pair
precision/recall against the planted truth (versions of one photo are the positives):

* ``tau``: cosine ≥ τ, no verification (what dedup does);
* ``tau_min``: cosine ≥ τ_min, no verification;
* ``tau_plus_verified_band``: cosine ≥ τ, plus the band [τ_min, τ) pairs that verify;
* ``verified_all``: every pair ≥ τ_min that verifies (verification as a filter too);

and the same per edit kind, the time per verified pair, and — the question asked — the best
recall a plain threshold reaches at the precision of ``tau_plus_verified_band``.

The thresholds of :mod:`~curation_assets.lib.dedup.verify` are calibrated on one split
(``train``, a seeded sample of photos: :func:`calibrate_verify`) and every figure is reported on
another (``test``: neither τ, calibrated on ``validation``, nor the verification thresholds
saw it).
"""

import io
import os
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

# faiss through cluster.py, which configures OpenBLAS before faiss is first imported.
from curation_assets.lib.cluster import BLAS_CONFIG, faiss
from curation_assets.lib.dedup import calibrated_tau, exhaustive_pairs
from curation_assets.lib.dedup import verify as vf
from curation_assets.tools.bench_dedup import EDIT_KINDS, plant_edits
from curation_assets.tools.bench_ivf import sgemm_gflops

#: Edit kinds of this benchmark: plant_edits' six, then a watermark.
EDITS = (*EDIT_KINDS, "watermark")
#: Calibration looks at every pair down to this cosine (wider than the band: more negatives).
CALIBRATION_FLOOR = 0.75
#: Most pairs of each class (same photo / different photos) measured in calibration.
CALIBRATION_MAX_PAIRS = 4000
#: Threshold grid of the calibration.
CALIBRATION_MIN_INLIERS = (8, 10, 12, 15, 20, 25, 30, 40)
CALIBRATION_MIN_AGREEMENT = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9)


def watermark(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A stock-photo watermark: semi-transparent white text with a dark outline.

    "© PHOTO STOCK" in a font 1/9-1/6 of the width high, at a random place in the middle
    third, opacity 0.4-0.7, plus a small opaque "sample" tag in a random corner.
    """
    w, h = image.size
    base = image.convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    size = max(8, round(w * rng.uniform(1 / 9, 1 / 6)))
    font = ImageFont.load_default(size=size)
    text = "© PHOTO STOCK"
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font, stroke_width=2)
    tw, th = right - left, bottom - top
    x = int(rng.uniform(0, max(1, w - tw)))
    y = int(rng.uniform(h / 3, max(h / 3 + 1, 2 * h / 3 - th)))
    alpha = int(255 * rng.uniform(0.4, 0.7))
    draw.text(
        (x - left, y - top),
        text,
        font=font,
        fill=(255, 255, 255, alpha),
        stroke_width=2,
        stroke_fill=(0, 0, 0, alpha // 2),
    )
    tag_font = ImageFont.load_default(size=max(6, size // 2))
    corner = int(rng.integers(4))
    tx = 4 if corner in (0, 2) else max(0, w - 4 - size * 3)
    ty = 4 if corner in (0, 1) else max(0, h - 4 - size)
    draw.text((tx, ty), "sample", font=tag_font, fill=(255, 255, 255, 255))
    return Image.alpha_composite(base, layer).convert("RGB")


def planted_corpus(photos_dir: Path, *, seed: int = 0, photos: int | None = None) -> dict[str, Any]:
    """Every photo of a folder (or a seeded sample) and one edited copy per kind in EDITS.

    Each version is stored JPEG-encoded at quality 95 (as a corpus holds its images), and the
    embedder and the verifier both read those bytes.

    Args:
        photos_dir: Folder searched recursively for ``*.jpg``.
        seed: Seeds the sample of photos and the edit parameters.
        photos: Use a seeded random sample of this many photos (None: all).

    Returns:
        ``{"images": list[bytes], "photo": (m,) int64, "kind": (m,) str, "photos": int,
        "paths": list[str]}``.

    Raises:
        ValueError: If the folder holds no ``*.jpg``.
    """
    paths = sorted(photos_dir.rglob("*.jpg"))
    if not paths:
        msg = f"no *.jpg under {photos_dir}; point --clothing at clothing-small"
        raise ValueError(msg)
    rng = np.random.default_rng(seed)
    if photos is not None and photos < len(paths):
        paths = [paths[i] for i in np.sort(rng.choice(len(paths), size=photos, replace=False))]
    images: list[bytes] = []
    photo: list[int] = []
    kind: list[str] = []
    for p_idx, path in enumerate(paths):
        with Image.open(path) as im:
            original = ImageOps.exif_transpose(im).convert("RGB")
        versions = [("original", original), *plant_edits(original, rng)]
        versions.append(("watermark", watermark(original, rng)))
        for name, img in versions:
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=95)
            images.append(buf.getvalue())
            photo.append(p_idx)
            kind.append(name)
    return {
        "images": images,
        "photo": np.asarray(photo, dtype=np.int64),
        "kind": np.asarray(kind),
        "photos": len(paths),
        "paths": [str(p) for p in paths],
    }


def embed_images(images: list[bytes], batch_size: int = 32) -> tuple[np.ndarray, str]:
    """Embed encoded images with the default offline embedder (``EmbedderSpec()``).

    Returns:
        ``(vectors, model_id)``: (m, dim) float32 L2-normalized, and the embedder's id.
    """
    import torch

    from curation_assets.lib.embed import EmbedderSpec, load_embedder

    embedder = load_embedder(EmbedderSpec())
    out: list[np.ndarray] = []
    for start in range(0, len(images), batch_size):
        batch = []
        for data in images[start : start + batch_size]:
            with Image.open(io.BytesIO(data)) as im:
                batch.append(embedder.preprocess(im.convert("RGB")))
        out.append(embedder.encode_images(torch.stack(batch)))
    return np.concatenate(out), embedder.model_id


def _measure(
    images: list[bytes], i: np.ndarray, j: np.ndarray, params: vf.VerifyParams
) -> np.ndarray:
    """Per pair and orientation (plain, mirrored): inliers, matches, agreement.

    Agreement is computed whenever RANSAC fitted a model with ≥ the smallest grid inliers.

    Returns:
        (len(i), 2, 3) float64.
    """
    feats: dict[int, vf.ImageFeatures] = {}

    def get(k: int) -> vf.ImageFeatures:
        if k not in feats:
            feats[k] = vf.image_features(images[k], params)
        return feats[k]

    out = np.zeros((len(i), 2, 3))
    for row, (a_idx, b_idx) in enumerate(zip(i.tolist(), j.tolist(), strict=True)):
        a, b = get(a_idx), get(b_idx)
        for o, (fb, gray_b) in enumerate(
            ((b.plain, b.gray), (b.mirrored, np.ascontiguousarray(b.gray[:, ::-1])))
        ):
            inliers, matches, model = vf.match_features(a.plain, fb, params)
            agreement = 0.0
            if model is not None and inliers >= min(CALIBRATION_MIN_INLIERS):
                agreement = vf.aligned_agreement(a.gray, gray_b, model)
            out[row, o] = (inliers, matches, agreement)
    return out


def calibrate_verify(
    clothing_dir: Path, *, split: str = "train", photos: int = 300, seed: int = 0
) -> dict[str, Any]:
    """Choose ``MIN_INLIERS`` / ``MIN_AGREEMENT`` on one split; the held-out report uses another.

    A seeded sample of ``photos`` photos of ``split`` with planted edits is embedded; every
    pair with cosine ≥ :data:`CALIBRATION_FLOOR` is a calibration pair (at most
    :data:`CALIBRATION_MAX_PAIRS` per class, seeded sample): same photo or not. Each is
    measured once in both orientations; the grid of ``min_inliers`` × ``min_agreement``
    (``min_inlier_ratio`` and the sizes at their module values) is scored by the verified
    share of same-photo pairs (recall) and the number of different-photo pairs verified
    (false). The rule: fewest false verifications, then highest recall, then the strictest
    ``min_agreement``, then the strictest ``min_inliers`` (precision first: on a tie the
    thresholds keep the most margin against different photos).

    Returns:
        The grid (``sweep``), the ``chosen`` thresholds, the module's constants and whether
        they are the chosen ones, and the calibration set's size.
    """
    t0 = time.perf_counter()
    corpus = planted_corpus(clothing_dir / split, seed=seed, photos=photos)
    v, model_id = embed_images(corpus["images"])
    embed_s = time.perf_counter() - t0
    pairs = exhaustive_pairs(v, CALIBRATION_FLOOR)
    same = corpus["photo"][pairs.i] == corpus["photo"][pairs.j]
    rng = np.random.default_rng(seed)
    keep = []
    for cls in (same, ~same):
        rows = np.flatnonzero(cls)
        if rows.size > CALIBRATION_MAX_PAIRS:
            rows = rng.choice(rows, size=CALIBRATION_MAX_PAIRS, replace=False)
        keep.append(np.sort(rows))
    rows = np.concatenate(keep)
    base = vf.VerifyParams()
    t1 = time.perf_counter()
    m = _measure(corpus["images"], pairs.i[rows], pairs.j[rows], base)
    measure_s = time.perf_counter() - t1
    is_same = same[rows]
    sweep = []
    for mi in CALIBRATION_MIN_INLIERS:
        for ma in CALIBRATION_MIN_AGREEMENT:
            passes = (
                (m[:, :, 0] >= mi)
                & (m[:, :, 0] >= base.min_inlier_ratio * m[:, :, 1])
                & (m[:, :, 2] >= ma)
            )
            ok = np.asarray(passes.any(axis=1), dtype=bool)
            sweep.append(
                {
                    "min_inliers": mi,
                    "min_agreement": ma,
                    "recall_same_photo": round(float(ok[is_same].mean()), 4),
                    "false_verified": int(ok[~is_same].sum()),
                }
            )
    best = min(
        sweep,
        key=lambda r: (
            r["false_verified"],
            -r["recall_same_photo"],
            -r["min_agreement"],
            -r["min_inliers"],
        ),
    )
    chosen = {"min_inliers": best["min_inliers"], "min_agreement": best["min_agreement"]}
    constants = {"min_inliers": vf.MIN_INLIERS, "min_agreement": vf.MIN_AGREEMENT}
    return {
        "split": split,
        "photos": corpus["photos"],
        "images": len(corpus["images"]),
        "model_id": model_id,
        "floor": CALIBRATION_FLOOR,
        "pairs_same_photo": int(is_same.sum()),
        "pairs_different_photos": int((~is_same).sum()),
        "pairs_above_floor": len(pairs),
        "embed_s": round(embed_s, 1),
        "measure_s": round(measure_s, 1),
        "rule": "fewest different-photo pairs verified, then highest same-photo recall, "
        "then the strictest min_agreement, then the strictest min_inliers",
        "chosen": {**chosen, **{k: best[k] for k in ("recall_same_photo", "false_verified")}},
        "module_constants": constants,
        "constants_are_chosen": constants == chosen,
        "sweep": sweep,
    }


def _score(pred: np.ndarray, truth: np.ndarray, positives: int) -> dict[str, Any]:
    tp = int((pred & truth).sum())
    fp = int((pred & ~truth).sum())
    return {
        "pairs": tp + fp,
        "true_pairs": tp,
        "false_pairs": fp,
        "precision": round(tp / (tp + fp), 4) if tp + fp else None,
        "recall": round(tp / positives, 4) if positives else None,
    }


def _equal_precision(
    sim: np.ndarray, truth: np.ndarray, positives: int, precision: float, tau_min: float
) -> dict[str, Any]:
    """The best recall of a plain threshold τ' ≥ τ_min whose precision is ≥ ``precision``."""
    best: dict[str, Any] = {"tau": None, "recall": 0.0, "precision": None}
    for t in np.round(np.arange(tau_min, 1.0, 0.0025), 4):
        s = _score(sim >= t, truth, positives)
        if (
            s["precision"] is not None
            and s["precision"] >= precision
            and s["recall"] > best["recall"]
        ):
            best = {"tau": float(t), "recall": s["recall"], "precision": s["precision"]}
    return best


def bench_verify(
    clothing_dir: Path,
    *,
    split: str = "test",
    seed: int = 0,
    tau: float | None = None,
    band: float = 0.05,
    photos: int | None = None,
    calibrate: bool = True,
    calibrate_split: str = "train",
    calibrate_photos: int = 300,
) -> dict[str, Any]:
    """Pair precision/recall with and without verifying the band [τ_min, τ), held out.

    Args:
        clothing_dir: The clothing-small folder (``train``/``validation``/``test`` inside).
        split: The held-out split the figures are measured on.
        seed: Seeds the photo samples and the edits.
        tau: Cosine threshold (None: the embedder's calibrated τ).
        band: τ_min = τ − band (the dedup default is 0.05).
        photos: Use a seeded sample of this many photos of ``split`` (None: all).
        calibrate: Also rerun :func:`calibrate_verify` on ``calibrate_split``.
        calibrate_split: The calibration split.
        calibrate_photos: Photos sampled for calibration.

    Returns:
        A JSON-serializable dict (see the module docstring).

    Raises:
        FileNotFoundError: If ``clothing_dir/split`` is not a folder.
    """
    if not (clothing_dir / split).is_dir():
        msg = (
            f"{clothing_dir / split} is not a folder: pass --clothing pointing at "
            "clothing-small (with train/, validation/, test/ inside)"
        )
        raise FileNotFoundError(msg)
    if calibrate and calibrate_split == split:
        msg = f"calibrate_split={calibrate_split!r} equals split: report on a held-out split"
        raise ValueError(msg)
    gflops_start = sgemm_gflops()
    cal = None
    if calibrate:
        cal = calibrate_verify(
            clothing_dir, split=calibrate_split, photos=calibrate_photos, seed=seed
        )
    t0 = time.perf_counter()
    corpus = planted_corpus(clothing_dir / split, seed=seed + 1, photos=photos)
    v, model_id = embed_images(corpus["images"])
    embed_s = time.perf_counter() - t0
    tau = calibrated_tau(model_id) if tau is None else tau
    tau_min = round(tau - band, 6)
    photo, kind = corpus["photo"], corpus["kind"]
    pairs = exhaustive_pairs(v, tau_min)
    truth = photo[pairs.i] == photo[pairs.j]
    versions = len(EDITS) + 1
    positives = corpus["photos"] * versions * (versions - 1) // 2
    sim = pairs.sim.astype(np.float64)

    params = vf.VerifyParams()
    reader = corpus["images"].__getitem__
    t1 = time.perf_counter()
    results = list(
        vf.verify_pairs(
            ((str(a), str(b)) for a, b in zip(pairs.i.tolist(), pairs.j.tolist(), strict=True)),
            lambda uri: reader(int(uri)),
            params=params,
        )
    )
    verify_s = time.perf_counter() - t1
    verified = np.asarray([r.verified for r in results], dtype=bool)
    errors = [r.error for r in results if r.error]
    in_band = sim < tau
    methods = {
        "tau": sim >= tau,
        "tau_min": np.ones_like(truth),
        "tau_plus_verified_band": (sim >= tau) | (in_band & verified),
        "verified_all": verified,
    }
    scores = {name: _score(pred, truth, positives) for name, pred in methods.items()}
    combo_precision = scores["tau_plus_verified_band"]["precision"] or 0.0
    plain = _equal_precision(sim, truth, positives, combo_precision, tau_min)
    lift = (scores["tau_plus_verified_band"]["recall"] or 0.0) - plain["recall"]
    # The same question without the watermark copies (the edit the embedder misses most):
    # how much of the lift is the watermarks'.
    nw = (kind[pairs.i] != "watermark") & (kind[pairs.j] != "watermark")
    positives_nw = corpus["photos"] * (versions - 1) * (versions - 2) // 2
    scores_nw = {n: _score(p[nw], truth[nw], positives_nw) for n, p in methods.items()}
    plain_nw = _equal_precision(
        sim[nw],
        truth[nw],
        positives_nw,
        scores_nw["tau_plus_verified_band"]["precision"] or 0.0,
        tau_min,
    )
    false_verified = np.flatnonzero(verified & ~truth)[:20]
    paths = corpus["paths"]

    per_edit: dict[str, Any] = {}
    for name in EDITS:
        # original–copy pair of this edit: one per photo (i < j: the original comes first)
        oc = truth & (kind[pairs.i] == "original") & (kind[pairs.j] == name)
        touching = (kind[pairs.i] == name) | (kind[pairs.j] == name)
        per_edit[name] = {
            "original_copy_pairs_planted": corpus["photos"],
            "in_band": int((oc & in_band).sum()),
            "band_verified": int((oc & in_band & verified).sum()),
            **{
                f"recall_{m}": round(float((oc & pred).sum()) / corpus["photos"], 4)
                for m, pred in methods.items()
            },
            "false_pairs_touching": {
                m: int((touching & ~truth & pred).sum()) for m, pred in methods.items()
            },
        }
    seconds = np.asarray([r.seconds for r in results])
    band_rows = np.flatnonzero(in_band)
    return {
        "benchmark": "verify",
        "photos_dir": str(clothing_dir / split),
        "split": split,
        "photos": corpus["photos"],
        "images": len(corpus["images"]),
        "edits": list(EDITS),
        "model_id": model_id,
        "seed": seed,
        "tau": tau,
        "tau_min": tau_min,
        "planted_pairs": positives,
        "pairs_at_tau_min": len(pairs),
        "band_pairs": int(in_band.sum()),
        "band_true_pairs": int((in_band & truth).sum()),
        "band_verified": int((in_band & verified).sum()),
        "band_verified_true": int((in_band & verified & truth).sum()),
        "verify_errors": len(errors),
        "scores": scores,
        "scores_without_watermark": scores_nw,
        "plain_tau_at_equal_precision_without_watermark": plain_nw,
        "recall_lift_at_equal_precision_without_watermark": round(
            (scores_nw["tau_plus_verified_band"]["recall"] or 0.0) - plain_nw["recall"], 4
        ),
        "false_verified_examples": [
            {
                "a": f"{paths[photo[pairs.i[r]]]} ({kind[pairs.i[r]]})",
                "b": f"{paths[photo[pairs.j[r]]]} ({kind[pairs.j[r]]})",
                "cosine": round(float(sim[r]), 4),
                "inliers": results[r].inliers,
                "agreement": round(results[r].agreement, 3),
            }
            for r in false_verified.tolist()
        ],
        "plain_tau_at_equal_precision": plain,
        "recall_lift_at_equal_precision": round(lift, 4),
        "verdict": (
            f"verifying the band lifts pair recall by {lift:+.4f} over the best plain τ' "
            f"(τ' = {plain['tau']}) at precision ≥ {combo_precision}"
            if plain["tau"] is not None
            else "no plain τ' reaches the verified method's precision"
        ),
        "per_edit": per_edit,
        "verify_params": {k: getattr(params, k) for k in params.__dataclass_fields__},
        "verify_s": round(verify_s, 2),
        "verify_ms_per_pair": round(1000 * verify_s / max(len(results), 1), 2),
        "verify_ms_per_band_pair_median": (
            round(1000 * float(np.median(seconds[band_rows])), 2) if band_rows.size else None
        ),
        "verify_note": (
            "verify_ms_per_pair: all pairs ≥ τ_min, each image read and featurized once "
            "(LRU cache), so it includes the features; the band-pair median is of per-pair "
            "times (features counted on the pair that first touched the image)"
        ),
        "embed_s": round(embed_s, 1),
        "calibration": cal,
        "cpu_count": os.cpu_count(),
        "faiss_threads": faiss.omp_get_max_threads(),
        "opencv_threads": cv2.getNumThreads(),
        "blas": BLAS_CONFIG,
        "sgemm_gflops": gflops_start,
        "sgemm_gflops_end": sgemm_gflops(),
    }
