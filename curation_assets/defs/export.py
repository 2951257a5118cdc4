"""Export: the training-ready curated_dataset, and optional extras (stage 8)."""

import dagster as dg
import polars as pl
from pydantic import Field

from curation_assets.defs.automation import eager_on
from curation_assets.defs.metadata import markdown_preview, table_metadata, table_schema
from curation_assets.defs.resources import DeltaStorage
from curation_assets.defs.retries import fail_fast, transient_retry
from curation_assets.defs.weights import GROUP  # the export is shown in the weights group
from curation_assets.lib.commits import current_commit, input_versions, record_commit
from curation_assets.lib.export import (
    DEFAULT_PENALTY,
    DEFAULT_SHARD_SIZE,
    curated_rows,
    files_unchanged,
    one_row_per_kept_image,
)
from curation_assets.lib.export.run import (
    EXPORT_INPUTS,
    EXPORT_STAGE,
    FILE_KEYS,
    export_root,
    kept_images,
    write_export_files,
)
from curation_assets.lib.tables import CURATED_DATASET, SAMPLE_WEIGHTS


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
    penalty: float = Field(
        default=DEFAULT_PENALTY, description="Soft Cap Sampling repetition penalty."
    )
    seed: int = Field(default=0, description="Seed of the sampling.")
    webdataset: bool = Field(default=False, description="Also write WebDataset tar shards.")
    shard_size: int = Field(default=DEFAULT_SHARD_SIZE, description="Samples per WebDataset shard.")


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
@fail_fast
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
    out = export_root(config.export_dir)
    settings = {**config.model_dump(), "export_dir": str(out.resolve())}
    images = kept_images(store)
    done = current_commit(store, EXPORT_STAGE, inputs=inputs, config=settings)
    if done is not None and files_unchanged(done.summary["files"]):
        context.log.info(
            f"export: inputs, config and files unchanged since the commit of "
            f"{done.committed_at}; nothing to do"
        )
        rows = store.read(CURATED_DATASET)
        return _export_result(delta, rows, images, done.summary, up_to_date=True)
    weights = store.read(SAMPLE_WEIGHTS, columns=["image_id", "weight"])
    rows = curated_rows(images, weights)
    summary = write_export_files(
        rows,
        out,
        soft_cap_samples=config.soft_cap_samples,
        penalty=config.penalty,
        seed=config.seed,
        webdataset=config.webdataset,
        shard_size=config.shard_size,
    )
    if summary["failures"]:
        context.log.warning(f"{len(summary['failures'])} images could not be exported")
    outputs = {CURATED_DATASET.name: store.replace_table(CURATED_DATASET, rows)}
    record_commit(
        store, EXPORT_STAGE, inputs=inputs, outputs=outputs, config=settings, summary=summary
    )
    return _export_result(delta, rows, images, summary)


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
    return dg.MaterializeResult(
        metadata=table_metadata(
            CURATED_DATASET,
            delta.uri(CURATED_DATASET),
            rows.height,
            up_to_date=up_to_date,
            weight_sum=float(rows["weight"].to_numpy().sum()),
            preview=markdown_preview(rows.select("image_id", "caption", "weight")),
            **extra,
        ),
        check_results=[
            dg.AssetCheckResult(
                check_name="one_row_per_kept_image",
                passed=one_row_per_kept_image(rows, images),
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
