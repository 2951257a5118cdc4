"""The training manifest: one row per kept image with its sample weight (stage 8).

:data:`~curation_assets.lib.tables.CURATED_DATASET` is the ``curated_dataset`` Delta table
(also written as ``curated_dataset.parquet``); :func:`curated_rows` builds it from the kept
images and ``sample_weights``, and :func:`one_row_per_kept_image` is the invariant its asset
check asserts.
"""

import numpy as np
import polars as pl

from curation_assets.lib.tables import CURATED_DATASET


def curated_rows(images: pl.DataFrame, weights: pl.DataFrame) -> pl.DataFrame:
    """Join the kept images with their weights into :data:`CURATED_DATASET` rows.

    Args:
        images: The kept images (``filtered_images`` columns: image_id, shard, source_uri,
            caption, width, height), one row per image.
        weights: ``sample_weights`` rows (image_id, weight).

    Returns:
        :data:`CURATED_DATASET` rows sorted by ``image_id``.

    Raises:
        ValueError: If an image has no weight or a weight no image (the two tables come from
            different snapshots: re-materialize sample_weights), or ids repeat.
    """
    for frame, what in ((images, "images"), (weights, "weights")):
        if "image_id" not in frame.columns:
            msg = f"{what} lack an image_id column; it has {frame.columns}"
            raise ValueError(msg)
        if frame["image_id"].n_unique() != frame.height:
            msg = f"{what} have duplicate image_ids; expected one row per kept image"
            raise ValueError(msg)
    w = weights.select("image_id", "weight")
    no_weight = images.join(w, on="image_id", how="anti").height
    no_image = w.join(images.select("image_id"), on="image_id", how="anti").height
    if no_weight or no_image:
        msg = (
            f"{no_weight} kept images have no weight and {no_image} weights have no kept image; "
            "sample_weights is stale: re-materialize it after deduplicated_images"
        )
        raise ValueError(msg)
    return CURATED_DATASET.conform(images.join(w, on="image_id", how="inner")).sort("image_id")


def one_row_per_kept_image(rows: pl.DataFrame, images: pl.DataFrame) -> bool:
    """Whether ``rows`` hold exactly as many rows as ``images``, each id once, weights finite.

    Args:
        rows: :data:`CURATED_DATASET` rows.
        images: The kept images they should list.
    """
    w = rows["weight"].to_numpy()
    return (
        rows.height == images.height
        and rows["image_id"].n_unique() == rows.height
        and bool(np.isfinite(w).all())
    )
