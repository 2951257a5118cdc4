"""Export: the training-ready curated_dataset, and optional extras (stage 8)."""

from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from curation_assets.defs.automation import eager_on
from curation_assets.defs.metadata import markdown_preview, table_metadata, table_schema
from curation_assets.defs.resources import DeltaStorage
from curation_assets.defs.retries import fail_fast_on_permanent_errors, transient_retry
from curation_assets.defs.weights import GROUP
from curation_assets.lib.commits import current_commit, input_versions, record_commit
from curation_assets.lib.dedup_run import DEDUPLICATED_IMAGES
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
from curation_assets.lib.filtering import FILTERED_IMAGES
from curation_assets.lib.labels import SourceReader
from curation_assets.lib.settings import resolve_paths
from curation_assets.lib.weights import SAMPLE_WEIGHTS


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


defs = dg.Definitions(assets=[curated_dataset])
