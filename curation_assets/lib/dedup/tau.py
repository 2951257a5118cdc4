"""The near-duplicate cosine threshold τ per embedding model, and how each was obtained."""

from curation_assets.lib.errors import ConfigError

#: Cosine τ for near-duplicates with open_clip ViT-B-32 image embeddings. NOT calibrated here
#: (no CLIP weights can be downloaded in this environment): 0.95 is the value commonly used in
#: practice for near-duplicate (not merely semantic) matches with CLIP ViT-B/32 image
#: embeddings (practitioner guidance puts near-duplicates at cosine 0.95-0.99; SemDeDup,
#: which calls pairs with cosine > 1 - eps duplicates, uses larger eps, i.e. lower thresholds,
#: to remove *semantic* duplicates). Re-calibrate with
#: :func:`curation_assets.tools.bench_dedup.calibrate_tau` once CLIP weights are available.
TAU_OPEN_CLIP_VIT_B_32 = 0.95

#: Cosine τ for timm tf_efficientnet_lite0 (ImageNet weights, 1280-d pooled features,
#: L2-normalized), calibrated in this repository with
#: :func:`curation_assets.tools.bench_dedup.bench_dedup_clothing` (seed 0) on the 341 real photos
#: of ``clothing-small/validation``. Each photo got 6 edited copies
#: (:func:`~curation_assets.tools.bench_dedup.plant_edits`: crop keeping 80-95 % of the area,
#: JPEG re-encode at quality 40-70, horizontal flip, saturation and brightness ×0.85-1.15,
#: rotation ±3-8°, resize to 0.5-0.8), all 2 387 images embedded with
#: ``load_embedder(EmbedderSpec())``. Positives: every pair of versions of one photo
#: (original-copy and copy-copy, 7 161 pairs); negatives: every pair of versions of two
#: different photos (2 840 530 pairs). τ was swept 0.70-0.99 by 0.005: F1 peaks on the plateau
#: 0.855-0.86 (0.965); 0.86 is its precision-side end. At τ = 0.86: pair precision 0.970,
#: pair recall 0.960 (original-copy 0.983, copy-copy 0.951); per edit, original-copy recall is
#: crop 0.974, JPEG 0.982, flip 1.0, colour 1.0, rotation 1.0, resize 0.944 — for this model
#: flips are NOT the hardest edit (median cosine 0.972): downscaling, JPEG and crops are
#: (median ≈ 0.95, 5th percentile 0.86-0.89). Different photos: median cosine 0.34,
#: 99.99th percentile 0.85, max 0.92; the 214 false pairs at 0.86 come from 16 pairs of
#: genuinely different garments shot on the same background, which ImageNet features do not
#: tell apart. Through the full dedup (components + keep policy) at 0.86: 99.3 % of copies
#: removed, 96.5 % of originals kept, 95.9 % of removed images point at their own photo
#: (7 components merge two photos). τ = 0.88 trades to 98.5 % / 98.2 % / 97.9 %.
TAU_EFFICIENTNET_LITE0 = 0.86

#: Default τ for CLIP-like embeddings (the production open_clip ViT-B-32 embedder, and the
#: synthetic benchmark). Prefer :func:`calibrated_tau` with the embeddings' ``model_id``.
DEFAULT_TAU = TAU_OPEN_CLIP_VIT_B_32

_TAU_BY_MODEL_PREFIX: dict[str, float] = {
    "timm:tf_efficientnet_lite0@": TAU_EFFICIENTNET_LITE0,
    "open_clip:ViT-B-32@": TAU_OPEN_CLIP_VIT_B_32,
}


def calibrated_tau(model_id: str) -> float:
    """The near-duplicate cosine threshold for embeddings of ``model_id``.

    Args:
        model_id: ``backend:model@weights`` as recorded with every embedding row
            (``Embedder.model_id``); the weights part is not checked.

    Returns:
        ``TAU_EFFICIENTNET_LITE0`` (0.86, calibrated here on real photos with planted edits)
        for ``timm:tf_efficientnet_lite0@...``; ``TAU_OPEN_CLIP_VIT_B_32`` (0.95, from
        practice, not calibrated here) for ``open_clip:ViT-B-32@...``.

    Raises:
        ValueError: For any other model: a threshold does not transfer between embedders.
    """
    for prefix, tau in _TAU_BY_MODEL_PREFIX.items():
        if model_id.startswith(prefix):
            return tau
    msg = (
        f"no calibrated near-duplicate tau for model_id={model_id!r} (known: "
        f"{sorted(_TAU_BY_MODEL_PREFIX)}); pass tau explicitly, calibrated with "
        "curation_assets.tools.bench_dedup.calibrate_tau on photos embedded by this model"
    )
    raise ConfigError(msg)
