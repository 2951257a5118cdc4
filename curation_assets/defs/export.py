"""Export: the training-ready curated_dataset, and optional extras (stage 8)."""

from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

from curation_assets.defs.automation import eager_on
from curation_assets.defs.metadata import markdown_preview, table_metadata, table_schema
from curation_assets.defs.resources import Compute, DeltaStorage
from curation_assets.defs.retries import fail_fast, transient_retry
from curation_assets.defs.weights import GROUP  # the export is shown in the weights group
from curation_assets.lib.commits import Settings, last_commit, settings_in_force
from curation_assets.lib.compaction import live_row_counts
from curation_assets.lib.export import DEFAULT_PENALTY, DEFAULT_SHARD_SIZE
from curation_assets.lib.export.run import (
    EXPORT_STAGE,
    ExportOutcome,
    export_location,
    export_root,
    run_export,
)
from curation_assets.lib.export.shards import manifest_glob
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import CURATED_DATASET


class ExportConfig(dg.Config):
    """The training manifest, optional Soft Cap Sampling and optional WebDataset shards."""

    export_dir: str = Field(
        default="",
        description="Folder or object-store URI (s3://bucket/prefix) for the per-shard manifests "
        "and tars; empty = the home's export root ($CURATION_EXPORT_ROOT, else "
        "$CURATION_HOME/export, or <delta root>/_export for an object-store Delta root).",
    )
    soft_cap_samples: int | None = Field(
        default=None,
        description="Soft Cap Sampling (FLYT): draw this many samples over log-weights with a "
        "repetition penalty and write the multiset; 0 = off. Unset = as the last run (off on "
        "the first).",
    )
    penalty: float | None = Field(
        default=None,
        description=f"Soft Cap Sampling repetition penalty. Unset = as the last run "
        f"({DEFAULT_PENALTY} on the first).",
    )
    seed: int | None = Field(
        default=None, description="Seed of the sampling. Unset = as the last run (0 on the first)."
    )
    webdataset: bool | None = Field(
        default=None,
        description="Also write WebDataset tar shards. Unset = as the last run (off on the "
        "first), so an automated run keeps tars a user turned on; turning it off removes them.",
    )
    shard_size: int | None = Field(
        default=None,
        description=f"Samples per WebDataset shard. Unset = as the last run "
        f"({DEFAULT_SHARD_SIZE} on the first); a change rewrites every shard.",
    )


EXPORT_DEFAULTS = {
    "soft_cap_samples": 0,
    "penalty": DEFAULT_PENALTY,
    "seed": 0,
    "webdataset": False,
    "shard_size": DEFAULT_SHARD_SIZE,
}
"""The export's sticky settings and their first-run values (:func:`settings_in_force`)."""


@dg.asset(
    description=(
        "The training-ready manifest: every kept image with image_id, source_uri, caption and "
        "its sample weight, as a Delta table partitioned by shard and one folder per shard "
        "(export/shard=<key>/curated_dataset.parquet, plus WebDataset tars when enabled); "
        "optionally a Soft Cap Sampling multiset (FLYT). A new or changed shard rewrites only "
        "its own rows and files."
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
            description="Every rewritten shard lists its kept images, each once, each with a "
            "finite weight; every shard's Delta row count equals its recorded count.",
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
    context: dg.AssetExecutionContext,
    config: ExportConfig,
    delta: DeltaStorage,
    compute: Compute,
) -> dg.MaterializeResult:
    """Rewrite the manifest rows and files of the shards whose inputs changed.

    Which shards: those whose ``sample_weights``, ``deduplicated_images`` or
    ``filtered_images`` rows changed since the versions the last commit read (Delta logs
    only), plus any whose files are missing. Per shard: its folder is published (symlink swap),
    then its Delta rows replaced; the commit row last (see ``lib/export/run.py``). A shard that
    only lost images (dedup removed some of its kept images in place) is republished from its
    own files less them and its Delta rows are deleted by tombstones (``shards_drop_patched``;
    ``lib/export/drops.py``). Global figures (rows, weight sum, ESS) are sums of per-shard
    figures.

    Memory: one shard's kept rows at a time (~512 B each, checked against ``compute``'s
    budget); with Soft Cap Sampling, four columns of every manifest row (~256 B each, checked).
    """
    store = delta.store()
    out = export_root(config.export_dir or delta.export_root)
    given = {**config.model_dump(), "export_dir": export_location(out)}
    last = last_commit(store, EXPORT_STAGE)
    in_force = settings_in_force(given, last.config if last else None, EXPORT_DEFAULTS)
    context.log.info(f"export settings: {in_force.describe()}")
    settings = in_force.values
    outcome = run_export(
        store,
        out,
        settings,
        soft_cap_samples=settings["soft_cap_samples"],
        penalty=settings["penalty"],
        seed=settings["seed"],
        webdataset=settings["webdataset"],
        shard_size=settings["shard_size"],
        budget=compute.budget(),
    )
    if outcome.up_to_date:
        context.log.info("export: inputs, config and files unchanged since the last commit")
    else:
        context.log.info(f"export: {outcome.plan.reason}")
    figures = outcome.summary["totals"]
    if figures["failures"]:
        context.log.warning(f"{figures['failures']} images could not be exported")
    return _export_result(store, delta, out, outcome, in_force)


def _export_result(
    store: DeltaStore,
    delta: DeltaStorage,
    out: Path | str,
    outcome: ExportOutcome,
    in_force: Settings,
) -> dg.MaterializeResult:
    """The materialization and checks of the export, from per-shard figures."""
    summary, written = outcome.summary, outcome.written
    figures = summary["totals"]
    extra: dict = {
        "export_dir": dg.MetadataValue.path(str(out)),
        "manifest": dg.MetadataValue.path(manifest_glob(out)),
        "shards": figures["shards"],
        "shards_rewritten": len(written.written) if written else 0,
        "shards_removed": len(written.removed) if written else 0,
        "shards_drop_patched": len(written.patched) if written else 0,
        "plan": outcome.plan.reason,
        "settings": dg.MetadataValue.json(in_force.chosen | {"export_dir": str(out)}),
        "settings_kept_from_last_run": ", ".join(in_force.inherited) or "none",
        "weight_sum": figures["weight_sum"],
        "ess": figures["ess"],
        "ess_ratio": figures["ess_ratio"],
    }
    if figures["webdataset_shards"]:
        extra["webdataset_shards"] = figures["webdataset_shards"]
        extra["webdataset_samples"] = figures["webdataset_samples"]
    if "soft_cap" in summary:
        extra["soft_cap_sample"] = dg.MetadataValue.path(summary["soft_cap"]["soft_cap_sample"])
        extra["soft_cap_stats"] = dg.MetadataValue.json(summary["soft_cap"]["soft_cap_stats"])
    recorded = {k: int(e["rows"]) for k, e in summary["shards"].items()}
    counted = live_row_counts(store, CURATED_DATASET)
    counts_match = counted == recorded
    rows_ok = written.rows_ok if written else True
    failures = pl.DataFrame(summary["failures"])
    preview = store.scan(CURATED_DATASET).select("image_id", "caption", "weight").head(10)
    return dg.MaterializeResult(
        metadata=table_metadata(
            CURATED_DATASET,
            delta.uri(CURATED_DATASET),
            figures["rows"],
            up_to_date=outcome.up_to_date,
            preview=markdown_preview(preview.collect()),
            **extra,
        ),
        check_results=[
            dg.AssetCheckResult(
                check_name="one_row_per_kept_image",
                passed=rows_ok and counts_match,
                metadata={
                    "kept_images_in_rewritten_shards": written.kept_images if written else 0,
                    "rows": figures["rows"],
                    "delta_rows_match_recorded": counts_match,
                },
            ),
            dg.AssetCheckResult(
                check_name="every_image_exported",
                passed=figures["failures"] == 0,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "failures": figures["failures"],
                    "examples": markdown_preview(failures) if failures.height else "none",
                    "webdataset": figures["webdataset_shards"] > 0,
                },
            ),
        ],
    )


defs = dg.Definitions(assets=[curated_dataset])
