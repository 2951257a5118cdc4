"""Re-weighting and export: sample_weights + bias_audit → curated_dataset (stages 7–8)."""

from pathlib import Path
from typing import Literal

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from curation_assets.defs.automation import eager_on
from curation_assets.defs.metadata import (
    markdown_bars,
    markdown_preview,
    table_metadata,
    table_schema,
)
from curation_assets.defs.resources import DeltaStorage, ImageEmbedder
from curation_assets.defs.retries import fail_fast_on_permanent_errors, transient_retry
from curation_assets.lib.audit import (
    DEFAULT_KEYWORDS,
    audit_markdown,
    bias_audit,
    concept_attributes,
    flag_shifts,
    keyword_attributes,
    metadata_attributes,
)
from curation_assets.lib.commits import current_commit, input_versions, record_commit
from curation_assets.lib.dedup_run import DEDUPLICATED_IMAGES
from curation_assets.lib.embed import IMAGE_EMBEDDINGS, embedding_matrix
from curation_assets.lib.export import (
    CURATED_DATASET,
    curated_rows,
    file_stamps,
    files_unchanged,
    publish_dir,
    sampling_stats,
    soft_cap_sampling,
    staging_dir,
    write_file_atomic,
    write_webdataset,
)
from curation_assets.lib.filter import FILTERED_IMAGES
from curation_assets.lib.images import SourceReader
from curation_assets.lib.settings import resolve_paths
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import RAW_IMAGES, Column, TableSpec
from curation_assets.lib.weights import (
    DEFAULT_C,
    DEFAULT_MIN_ESS_RATIO,
    DEFAULT_PCA_DIM,
    DEFAULT_W_MAX,
    DEFAULT_W_MIN,
    SAMPLE_WEIGHTS,
    fit_density_ratio,
    sample_weights,
    weight_checks,
)

GROUP = "weights"

BIAS_AUDIT = TableSpec(
    name="bias_audit",
    description="Share of each attribute value: unfiltered, filtered, filtered under weights.",
    partition_by=(),
    columns=(
        Column("attribute", pl.String, "metadata column, keyword:<word> or concept:<name>."),
        Column("value", pl.String, "The value (true for keywords and concepts)."),
        Column("share_unfiltered", pl.Float64, "Share among all ingested images."),
        Column("share_filtered", pl.Float64, "Share among the kept images."),
        Column("share_weighted", pl.Float64, "Share among the kept images under the weights."),
        Column("shift_filtered_pts", pl.Float64, "filtered − unfiltered, percentage points."),
        Column("shift_weighted_pts", pl.Float64, "weighted − unfiltered, percentage points."),
        Column("n_unfiltered", pl.Int64, "Unfiltered images with the value."),
        Column("n_filtered", pl.Int64, "Kept images with the value."),
    ),
)


def load_weight_inputs(
    store: DeltaStore, correct_for: str
) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    """The reference ("unfiltered") images, their embeddings and the kept mask.

    Args:
        store: Delta store.
        correct_for: ``filter`` (the reference is every embedded image except near duplicates
            dedup removed, so the weights undo only the safety filter's shift) or
            ``filter_and_dedup`` (every embedded image: the weights also undo dedup's shift,
            up-weighting images that had many copies).

    Returns:
        ``(frame, x, kept)``: frame has image_id, shard, source_uri, caption, width, height,
        format, kept; sorted by shard, image_id.
    """
    raw = store.read(
        RAW_IMAGES,
        columns=["image_id", "shard", "source_uri", "caption", "width", "height", "format"],
    )
    emb = store.scan(IMAGE_EMBEDDINGS).select("image_id", "shard", "embedding").collect()
    dedup = store.read(DEDUPLICATED_IMAGES, columns=["image_id", "shard", "kept"])
    frame = raw.join(emb, on=["image_id", "shard"], how="inner").join(
        dedup.rename({"kept": "dedup_kept"}), on=["image_id", "shard"], how="left"
    )
    if correct_for == "filter":
        frame = frame.filter(pl.col("dedup_kept").is_null() | pl.col("dedup_kept"))
    frame = frame.with_columns(kept=pl.col("dedup_kept").fill_null(False)).drop("dedup_kept")
    frame = frame.sort("shard", "image_id")
    x = embedding_matrix(frame["embedding"]) if frame.height else np.zeros((0, 1), np.float32)
    return frame.drop("embedding"), x, frame["kept"].to_numpy()


class WeightsConfig(dg.Config):
    """The density-ratio probe, the weight bounds and the bias audit."""

    correct_for: Literal["filter", "filter_and_dedup"] = Field(
        default="filter",
        description="filter: undo only the safety filter's shift (near duplicates removed by "
        "dedup are left out of the reference); filter_and_dedup: undo both.",
    )
    method: Literal["kept_vs_removed", "unfiltered_vs_filtered"] = Field(
        default="kept_vs_removed",
        description="Probe: kept vs removed images (default, better estimate) or DALL·E 2's "
        "unfiltered vs filtered; both estimate p_unfiltered(x)/p_filtered(x).",
    )
    C: float = Field(default=DEFAULT_C, description="Inverse L2 strength (smaller = weaker).")
    pca_dim: int = Field(default=DEFAULT_PCA_DIM, description="PCA components the probe sees.")
    w_min: float = Field(default=DEFAULT_W_MIN, description="Lower weight bound (≤ 1).")
    w_max: float = Field(default=DEFAULT_W_MAX, description="Upper weight bound (≥ 1).")
    min_ess_ratio: float = Field(
        default=DEFAULT_MIN_ESS_RATIO,
        description="Check: effective sample size / N must be at least this.",
    )
    seed: int = Field(default=0, description="Seed of the probe's sample, folds and PCA.")
    keywords: list[str] = Field(
        default_factory=list,
        description="Extra caption keywords to audit (each a whole word), beside the default "
        "people words (woman, man, ...).",
    )
    concepts: dict[str, str] = Field(
        default_factory=dict,
        description="Zero-shot concepts to audit, name → prompt (needs an embedder with a "
        "text tower, e.g. open_clip).",
    )
    max_shift_pts: float = Field(
        default=2.0, description="Check: weighted share within this many points of unfiltered."
    )
    min_support: int = Field(
        default=100, description="Audit check ignores values held by fewer unfiltered images."
    )


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "sample_weights",
            description=(
                "One training weight per kept image (filtered and deduplicated): the density "
                "ratio p_unfiltered(x)/p_filtered(x) from a deliberately weak, calibrated "
                "linear probe on the embeddings (DALL·E 2's fix for the bias a filter "
                "introduces), clipped to [w_min, w_max] and scaled to mean 1."
            ),
            deps=["deduplicated_images", "image_embeddings", "raw_images"],
            kinds={"deltalake", "scikitlearn"},
            group_name=GROUP,
            automation_condition=eager_on("deduplicated_images"),
            metadata={"dagster/column_schema": table_schema(SAMPLE_WEIGHTS)},
        ),
        dg.AssetSpec(
            "bias_audit",
            description=(
                "For every attribute (metadata, caption keywords, zero-shot concepts): its "
                "share before filtering, after, and after under the weights — did the filter "
                "shift it, and do the weights bring it back?"
            ),
            deps=["sample_weights", "raw_images"],
            kinds={"deltalake", "polars"},
            group_name=GROUP,
            automation_condition=eager_on("deduplicated_images"),
            metadata={"dagster/column_schema": table_schema(BIAS_AUDIT)},
        ),
    ],
    check_specs=[
        dg.AssetCheckSpec(
            "weights_finite_positive",
            asset="sample_weights",
            blocking=True,
            description="Every weight is finite and > 0.",
        ),
        dg.AssetCheckSpec(
            "weights_mean_one",
            asset="sample_weights",
            blocking=True,
            description="Weights average exactly 1.",
        ),
        dg.AssetCheckSpec(
            "weights_within_bounds",
            asset="sample_weights",
            blocking=True,
            description="Every weight lies in [w_min, w_max].",
        ),
        dg.AssetCheckSpec(
            "weights_ess_ratio",
            asset="sample_weights",
            description="WARN when the effective sample size / N is below the floor.",
        ),
        dg.AssetCheckSpec(
            "weighted_shares_near_unfiltered",
            asset="bias_audit",
            description="WARN when an attribute's weighted share stays more than max_shift_pts "
            "from its unfiltered share.",
        ),
    ],
    retry_policy=transient_retry,
)
def weights_and_audit(
    context: dg.AssetExecutionContext,
    config: WeightsConfig,
    delta: DeltaStorage,
    embedder: ImageEmbedder,
):
    """Fit the probe, weight the kept images, audit the attribute shares.

    Nothing is written when neither the inputs nor the configuration changed since the last
    commit: the committed tables are re-checked and their figures re-reported.
    """
    store = delta.store()
    inputs = input_versions(store, WEIGHTS_INPUTS)
    settings = config.model_dump()
    done = current_commit(store, WEIGHTS_STAGE, inputs=inputs, config=settings)
    if done is not None:
        context.log.info(
            f"weights: inputs and config unchanged since the commit of {done.committed_at}; "
            "nothing to do"
        )
        yield from _weight_results(delta, config, done.summary, up_to_date=True)
        return
    frame, x, kept = load_weight_inputs(store, config.correct_for)
    if not kept.any():
        msg = "no kept image: materialize deduplicated_images first"
        raise dg.Failure(msg, allow_retries=False)
    with fail_fast_on_permanent_errors():
        ids = frame["image_id"].to_list()  # order-independent: sample and folds follow the ids
        model = fit_density_ratio(
            x,
            kept,
            image_ids=ids,
            method=config.method,
            C=config.C,
            pca_dim=config.pca_dim or None,
            seed=config.seed,
        )
        sw = sample_weights(model, x, kept, w_min=config.w_min, w_max=config.w_max, image_ids=ids)
    kept_frame = frame.filter(pl.col("kept"))
    weights = sw.frame(kept_frame["image_id"].to_list(), kept_frame["shard"].to_list())
    stats = sw.stats
    context.log.info(
        f"weights: probe {model.status} AUC {model.auc}, ESS ratio {stats['ess_ratio']:.3f}, "
        f"clipped {stats['clipped_share']:.3%}"
    )

    attributes = metadata_attributes(
        frame.select("image_id", "width", "height", "caption", "format")
    )
    keywords = {**DEFAULT_KEYWORDS, **{k: (k,) for k in config.keywords}}
    attributes = attributes.join(
        keyword_attributes(frame.select("image_id", "caption"), keywords), on="image_id"
    )
    concept_note = "none configured"
    if config.concepts:
        model_ = embedder.load()
        if model_.has_text_tower:
            concepts = concept_attributes(
                x, frame["image_id"].to_list(), config.concepts, model_.encode_text
            )
            attributes = attributes.join(concepts, on="image_id")
            concept_note = ", ".join(config.concepts)
        else:
            concept_note = f"skipped: {model_.model_id} has no text tower"
            context.log.warning(f"zero-shot concepts {concept_note}")
    with fail_fast_on_permanent_errors():
        audit = bias_audit(attributes, weights.select("image_id", "weight"))
    # weights, then audit, then the commit row: a kill in between is rewritten by the re-run
    outputs = {
        SAMPLE_WEIGHTS.name: store.replace_table(SAMPLE_WEIGHTS, weights),
        BIAS_AUDIT.name: store.replace_table(BIAS_AUDIT, audit),
    }
    hist = stats["histogram"]
    labels = [
        f"{a:.2f}–{b:.2f}" for a, b in zip(hist["edges"][:-1], hist["edges"][1:], strict=True)
    ]
    summary = {
        "probe_status": model.status,
        "probe_reason": model.reason,
        "probe_auc": float(model.auc) if model.auc is not None else float("nan"),
        "probe_ece": float(model.ece) if model.ece is not None else float("nan"),
        "probe": {
            k: v for k, v in model.summary().items() if not isinstance(v, float) or np.isfinite(v)
        },
        "unfiltered_images": int(kept.size),
        "kept_images": int(kept.sum()),
        "ess": float(stats["ess"]),
        "ess_ratio": float(stats["ess_ratio"]),
        "clipped_share": float(stats["clipped_share"] or 0.0),
        "weight_min": float(stats["min"]),
        "weight_max": float(stats["max"]),
        "weight_p50": float(stats["p50"]),
        "weight_distribution": "Kept images by weight (log-spaced bins):\n\n"
        + markdown_bars(labels, hist["counts"], header=("weight", "images")),
        "correct_for": config.correct_for,
        "concepts": concept_note,
    }
    record_commit(
        store, WEIGHTS_STAGE, inputs=inputs, outputs=outputs, config=settings, summary=summary
    )
    yield from _weight_results(delta, config, summary, weights=weights, audit=audit)


WEIGHTS_STAGE = "weights"
WEIGHTS_INPUTS = (DEDUPLICATED_IMAGES.name, IMAGE_EMBEDDINGS.name, RAW_IMAGES.name)


def _weight_results(
    delta: DeltaStorage,
    config: WeightsConfig,
    summary: dict,
    *,
    weights: pl.DataFrame | None = None,
    audit: pl.DataFrame | None = None,
    up_to_date: bool = False,
):
    """The two materializations and their checks, from a run's summary and its tables.

    The checks always run on the tables themselves (read back when not given), so a run
    with nothing to do still verifies what is stored.
    """
    store = delta.store()
    if weights is None:
        weights = store.read(SAMPLE_WEIGHTS)
    if audit is None:
        audit = store.read(BIAS_AUDIT)
    with fail_fast_on_permanent_errors():
        flagged = flag_shifts(
            audit, max_shift_pts=config.max_shift_pts, min_support=config.min_support
        )
    checks = {
        c.name: c
        for c in weight_checks(
            weights["weight"].to_numpy(),
            min_ess_ratio=config.min_ess_ratio,
            w_min=config.w_min,
            w_max=config.w_max,
        )
    }
    plain = {
        k: v for k, v in summary.items() if k not in ("probe", "weight_distribution", "concepts")
    }
    yield dg.MaterializeResult(
        asset_key="sample_weights",
        metadata=table_metadata(
            SAMPLE_WEIGHTS,
            delta.uri(SAMPLE_WEIGHTS),
            weights.height,
            up_to_date=up_to_date,
            **plain,
            probe=dg.MetadataValue.json(summary["probe"]),
            weight_distribution=dg.MetadataValue.md(summary["weight_distribution"]),
        ),
        check_results=[
            dg.AssetCheckResult(
                check_name=name,
                asset_key="sample_weights",
                passed=checks[name].passed,
                severity=dg.AssetCheckSeverity.WARN
                if name == "weights_ess_ratio"
                else dg.AssetCheckSeverity.ERROR,
                description=checks[name].description,
                metadata={"value": checks[name].value if checks[name].value is not None else "n/a"},
            )
            for name in (
                "weights_finite_positive",
                "weights_mean_one",
                "weights_within_bounds",
                "weights_ess_ratio",
            )
        ],
    )
    yield dg.MaterializeResult(
        asset_key="bias_audit",
        metadata=table_metadata(
            BIAS_AUDIT,
            delta.uri(BIAS_AUDIT),
            audit.height,
            up_to_date=up_to_date,
            flagged=flagged.height,
            concepts=summary["concepts"],
            shares=dg.MetadataValue.md(audit_markdown(audit, flagged=flagged)),
        ),
        check_results=[
            dg.AssetCheckResult(
                check_name="weighted_shares_near_unfiltered",
                asset_key="bias_audit",
                passed=flagged.height == 0,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "flagged": markdown_preview(
                        flagged.select(
                            "attribute", "value", "shift_filtered_pts", "shift_weighted_pts"
                        )
                        if flagged.height
                        else flagged
                    ),
                    "max_shift_pts": config.max_shift_pts,
                },
            )
        ],
    )


class ExportConfig(dg.Config):
    """The training manifest, optional Soft Cap Sampling and optional WebDataset shards."""

    export_dir: str = Field(
        default="",
        description="Folder for the parquet manifest and shards; empty = $CURATION_HOME/export.",
    )
    soft_cap_samples: int = Field(
        default=0,
        description="Soft Cap Sampling (FLYT): draw this many samples over log-weights with a "
        "repetition penalty and write the multiset; 0 = off.",
    )
    penalty: float = Field(default=0.15, description="Soft Cap Sampling repetition penalty.")
    seed: int = Field(default=0, description="Seed of the sampling.")
    webdataset: bool = Field(default=False, description="Also write WebDataset tar shards.")
    shard_size: int = Field(default=10_000, description="Samples per WebDataset shard.")


@dg.asset(
    description=(
        "The training-ready manifest: every kept image with image_id, source_uri, caption and "
        "its sample weight, as a Delta table and a parquet file; optionally a Soft Cap "
        "Sampling multiset (FLYT) and WebDataset shards of the images."
    ),
    deps=["sample_weights", "deduplicated_images", "filtered_images"],
    kinds={"deltalake", "parquet"},
    group_name=GROUP,
    automation_condition=eager_on("sample_weights"),
    metadata={"dagster/column_schema": table_schema(CURATED_DATASET)},
    check_specs=[
        dg.AssetCheckSpec(
            "one_row_per_kept_image",
            asset="curated_dataset",
            blocking=True,
            description="Exactly the kept images, each once, each with a finite weight.",
        ),
        dg.AssetCheckSpec(
            "every_image_exported",
            asset="curated_dataset",
            description="WARN when WebDataset export could not read some images (listed).",
        ),
    ],
    retry_policy=transient_retry,
)
def curated_dataset(
    context: dg.AssetExecutionContext, config: ExportConfig, delta: DeltaStorage
) -> dg.MaterializeResult:
    """Join kept images with their weights and write the manifest (and optional extras).

    Files first (each appears atomically: a renamed file, a symlink swapped to a complete
    WebDataset folder), then the Delta table, then the commit row. Nothing is written when the
    inputs, the configuration and the files are as the last commit left them.
    """
    store = delta.store()
    inputs = input_versions(store, EXPORT_INPUTS)
    out = Path(config.export_dir) if config.export_dir else resolve_paths().home / "export"
    settings = {**config.model_dump(), "export_dir": str(out.resolve())}
    kept_ids = store.read(DEDUPLICATED_IMAGES, columns=["image_id", "kept"]).filter("kept")
    images = store.read(FILTERED_IMAGES).join(kept_ids.select("image_id"), on="image_id")
    done = current_commit(store, EXPORT_STAGE, inputs=inputs, config=settings)
    if done is not None and files_unchanged(done.summary["files"]):
        context.log.info(
            f"export: inputs, config and files unchanged since the commit of "
            f"{done.committed_at}; nothing to do"
        )
        rows = store.read(CURATED_DATASET)
        return _export_result(delta, rows, images, done.summary, up_to_date=True)
    weights = store.read(SAMPLE_WEIGHTS, columns=["image_id", "weight"])
    with fail_fast_on_permanent_errors():
        rows = curated_rows(images, weights)
    out.mkdir(parents=True, exist_ok=True)
    manifest = write_file_atomic(out / "curated_dataset.parquet", rows.write_parquet)
    summary: dict = {"files": {}, "extra": {"manifest": str(manifest)}, "failures": []}
    if config.soft_cap_samples:
        counts = soft_cap_sampling(
            rows["weight"].to_numpy(),
            config.soft_cap_samples,
            penalty=config.penalty,
            seed=config.seed,
        )
        sample = (
            rows.select("image_id", "source_uri", "caption", "weight")
            .with_columns(count=pl.Series(counts, dtype=pl.Int64))
            .filter(pl.col("count") > 0)
        )
        sample_path = write_file_atomic(out / "soft_cap_sample.parquet", sample.write_parquet)
        summary["extra"]["soft_cap_sample"] = str(sample_path)
        summary["soft_cap_stats"] = {
            k: v
            for k, v in sampling_stats(counts, rows["weight"].to_numpy()).items()
            if k != "count_histogram"
        }
    if config.webdataset:
        link = out / "webdataset"
        staged = staging_dir(link)
        with SourceReader() as reader:
            export = write_webdataset(rows, reader.read, staged, shard_size=config.shard_size)
        publish_dir(staged, link)
        failures = export.failures_frame()
        summary["extra"].update(
            webdataset_shards=len(export.shards),
            webdataset_samples=export.n_written,
            webdataset_dir=str(link),
        )
        summary["failures"] = failures.to_dicts()
        if failures.height:
            context.log.warning(f"{failures.height} images could not be exported")
    summary["files"] = file_stamps([Path(p) for k, p in summary["extra"].items() if k in FILE_KEYS])
    outputs = {CURATED_DATASET.name: store.replace_table(CURATED_DATASET, rows)}
    record_commit(
        store, EXPORT_STAGE, inputs=inputs, outputs=outputs, config=settings, summary=summary
    )
    return _export_result(delta, rows, images, summary)


EXPORT_STAGE = "export"
EXPORT_INPUTS = (SAMPLE_WEIGHTS.name, DEDUPLICATED_IMAGES.name, FILTERED_IMAGES.name)
FILE_KEYS = ("manifest", "soft_cap_sample", "webdataset_dir")


def _export_result(
    delta: DeltaStorage,
    rows: pl.DataFrame,
    images: pl.DataFrame,
    summary: dict,
    *,
    up_to_date: bool = False,
) -> dg.MaterializeResult:
    """The materialization and checks of the export, checked on the rows themselves."""
    extra: dict = {
        k: dg.MetadataValue.path(v) if k in FILE_KEYS or k.endswith("_dir") else v
        for k, v in summary["extra"].items()
    }
    if "soft_cap_stats" in summary:
        extra["soft_cap_stats"] = dg.MetadataValue.json(summary["soft_cap_stats"])
    failures = pl.DataFrame(summary["failures"])
    w = rows["weight"].to_numpy()
    ok = (
        rows.height == images.height
        and rows["image_id"].n_unique() == rows.height
        and bool(np.isfinite(w).all())
    )
    return dg.MaterializeResult(
        metadata=table_metadata(
            CURATED_DATASET,
            delta.uri(CURATED_DATASET),
            rows.height,
            up_to_date=up_to_date,
            weight_sum=float(w.sum()),
            preview=markdown_preview(rows.select("image_id", "caption", "weight")),
            **extra,
        ),
        check_results=[
            dg.AssetCheckResult(
                check_name="one_row_per_kept_image",
                passed=ok,
                metadata={"kept_images": images.height, "rows": rows.height},
            ),
            dg.AssetCheckResult(
                check_name="every_image_exported",
                passed=failures.height == 0,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "failures": markdown_preview(failures) if failures.height else "none",
                    "webdataset": "webdataset_dir" in summary["extra"],
                },
            ),
        ],
    )


weights_job = dg.define_asset_job(
    name="weights_job",
    selection=["sample_weights", "bias_audit", "curated_dataset"],
    description="Fit the sample weights, audit the shift and export the curated dataset.",
)

defs = dg.Definitions(assets=[weights_and_audit, curated_dataset], jobs=[weights_job])
