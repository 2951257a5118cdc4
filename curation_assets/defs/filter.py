"""Filter stage: per shard, classifier_scores → filtered_images + filter_rejections."""

from typing import Any

import dagster as dg
import polars as pl
from pydantic import Field

from curation_assets.defs.metadata import markdown_preview, table_metadata, table_schema
from curation_assets.defs.partitions import ShardLoop, shard_backfill_policy, shards_partitions
from curation_assets.defs.resources import Categories, DeltaStorage, ImageEmbedder
from curation_assets.defs.retries import fail_fast, transient_retry
from curation_assets.lib.commits import record_settings, recorded_settings, settings_in_force
from curation_assets.lib.filter import (
    clip_floor_scores,
    clip_score_floor,
    filter_summary,
    split_by_scores,
)
from curation_assets.lib.quality.signals import CHECKS, quality_rejections, resolve_thresholds
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import (
    CLASSIFIER_SCORES,
    FILTER_REJECTIONS,
    FILTERED_IMAGES,
    RAW_IMAGES,
)
from curation_assets.lib.tables.quality import IMAGE_QUALITY

GROUP = "classify"
"""The filter assets stay in the classify group of the UI, where they have always been."""

_CHECKS_DOC = "; ".join(f"{n}: {c.describe()}" for n, c in CHECKS.items())


class FilterConfig(dg.Config):
    """Which pixel-quality checks drop images (none by default: they are only reported).

    Both settings are sticky: unset, a run uses the settings last in force
    (``stage_settings``), so a choice made for one run applies to every later shard, the
    ones automation filters included.
    """

    quality_drop: list[str] | None = Field(
        default=None,
        description="Pixel-quality checks that remove the images they flag, e.g. "
        f"['blurry', 'tiny']. Checks and default rules: {_CHECKS_DOC}. A removed image's "
        "filter_rejections row has category quality_<check>, its value and the threshold. "
        "Unset = as in force (none on the first run); [] turns them all off.",
    )
    quality_thresholds: dict[str, float] | None = Field(
        default=None,
        description="Threshold overrides by check name, e.g. {'blurry': 50}; the direction of "
        "each check stays as documented. Unset = as in force; {} = the documented defaults.",
    )


FILTER_STAGE = "filter"
FILTER_DEFAULTS: dict[str, Any] = {"quality_drop": [], "quality_thresholds": {}}
"""The filter's sticky settings and their first-run values."""


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "filtered_images",
            description=(
                "Images of the shard that no category removes: every score below its "
                "threshold (and image–caption similarity above the floor, when set)."
            ),
            deps=["classifier_scores", "raw_images", "image_quality"],
            kinds={"deltalake", "polars"},
            group_name=GROUP,
            partitions_def=shards_partitions,
            metadata={"dagster/column_schema": table_schema(FILTERED_IMAGES)},
        ),
        dg.AssetSpec(
            "filter_rejections",
            description="Why each removed image was removed: category (or quality_<check> "
            "for an enabled pixel-quality check), score and threshold.",
            deps=["classifier_scores", "raw_images", "image_quality"],
            kinds={"deltalake", "polars"},
            group_name=GROUP,
            partitions_def=shards_partitions,
            metadata={"dagster/column_schema": table_schema(FILTER_REJECTIONS)},
        ),
    ],
    check_specs=[
        dg.AssetCheckSpec(
            "every_image_kept_or_rejected",
            asset="filtered_images",
            blocking=True,
            description="Each raw image of the shard is in exactly one of the two tables.",
        )
    ],
    retry_policy=transient_retry,
    backfill_policy=shard_backfill_policy,
)
@fail_fast
def filter_shard(
    context: dg.AssetExecutionContext,
    config: FilterConfig,
    delta: DeltaStorage,
    categories: Categories,
    embedder: ImageEmbedder,
):
    """Split each shard of the run into filtered_images and filter_rejections."""
    store = delta.store()
    in_force = settings_in_force(
        config.model_dump(), recorded_settings(store, FILTER_STAGE), FILTER_DEFAULTS
    )
    drop: list[str] = list(in_force.values["quality_drop"])
    thresholds = resolve_thresholds(dict(in_force.values["quality_thresholds"]), drop)
    context.log.info(f"filter settings: {in_force.describe()}")
    floor = clip_score_floor(categories.load())
    rules = [CHECKS[n].describe(thresholds[n]) for n in drop]
    shards = ShardLoop(context, ["filtered_images", "filter_rejections"])

    def filter_one(key: str) -> None:
        raw = store.read(RAW_IMAGES, shards=[key])
        scores = store.read(CLASSIFIER_SCORES, shards=[key])
        clip = clip_floor_scores(store, key, raw, floor, embedder.load)
        if clip.unavailable:
            context.log.warning(f"min_clip_score {floor} {clip.note}")
        quality, unmeasured = _quality_rejections(store, key, raw, drop, thresholds)
        if unmeasured:
            context.log.warning(
                f"{key}: {unmeasured} images have no image_quality row (ingested before the "
                "signals existed): the quality checks keep them; re-materialize raw_images"
            )
        kept, rejections = split_by_scores(
            raw, scores, clip_scores=clip.scores, clip_floor=floor, quality=quality
        )
        store.replace_shard(FILTERED_IMAGES, key, kept)
        store.replace_shard(FILTER_REJECTIONS, key, rejections)
        summary = filter_summary(raw, kept, rejections)
        context.log.info(
            f"{key}: kept {kept.height}, removed {summary.removed} {summary.by_category}"
        )
        metadata = {
            "filtered_images": table_metadata(
                FILTERED_IMAGES,
                delta.uri(FILTERED_IMAGES),
                kept.height,
                removed=summary.removed,
                removed_share=summary.removed_share,
                clip_score_floor=clip.note,
                quality_checks_dropping=", ".join(rules) or "none (reported only)",
                settings_kept_from_last_run=", ".join(in_force.inherited) or "none",
                quality_unmeasured=unmeasured,
            ),
            "filter_rejections": table_metadata(
                FILTER_REJECTIONS,
                delta.uri(FILTER_REJECTIONS),
                rejections.height,
                by_category=dg.MetadataValue.json(summary.by_category),
                preview=markdown_preview(rejections),
            ),
        }
        check = dg.AssetCheckResult(
            check_name="every_image_kept_or_rejected",
            asset_key="filtered_images",
            passed=summary.every_image_kept_or_rejected,
            metadata={"raw_images": raw.height, "kept": kept.height, "removed": summary.removed},
        )
        shards.done(key, metadata, [check])

    yield from shards.run(filter_one)
    record_settings(store, FILTER_STAGE, in_force.chosen)


def _quality_rejections(
    store: DeltaStore,
    key: str,
    raw: pl.DataFrame,
    drop: list[str],
    thresholds: dict[str, float],
) -> tuple[pl.DataFrame | None, int]:
    """The enabled quality checks' rejections of shard ``key`` and the images without signals.

    Reads ``image_quality`` only when a check is enabled.
    """
    if not drop:
        return None, 0
    rows = store.read(IMAGE_QUALITY, shards=[key]).join(
        raw.select("image_id"), on="image_id", how="semi"
    )
    return quality_rejections(rows, drop, thresholds), raw.height - rows.height


defs = dg.Definitions(assets=[filter_shard])
