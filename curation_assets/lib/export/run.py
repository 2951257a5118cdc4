"""The export stage over Delta and files: its inputs and the files it writes (stage 8).

The ``curated_dataset`` asset runs, in order: :func:`kept_images` (what the manifest lists),
:func:`~curation_assets.lib.export.manifest.curated_rows` (joined with ``sample_weights``),
:func:`write_export_files` (the files, each published atomically, and the summary recorded
with the stage's commit), then the Delta table and the commit row. :func:`export_root` is the
folder the files go to.
"""

from pathlib import Path
from typing import Any

import polars as pl

from curation_assets.lib.export.publish import (
    file_stamps,
    publish_dir,
    staging_dir,
    write_file_atomic,
)
from curation_assets.lib.export.sampling import sampling_stats, soft_cap_sampling
from curation_assets.lib.export.webdataset import write_webdataset
from curation_assets.lib.images import SourceReader
from curation_assets.lib.settings import resolve_paths
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import DEDUPLICATED_IMAGES, FILTERED_IMAGES, SAMPLE_WEIGHTS

EXPORT_STAGE = "export"
"""The stage's name in ``stage_commits``."""
EXPORT_INPUTS = (SAMPLE_WEIGHTS.name, DEDUPLICATED_IMAGES.name, FILTERED_IMAGES.name)
"""The tables whose versions the stage's commit records."""
FILE_KEYS = ("manifest", "soft_cap_sample", "webdataset_dir")
"""Keys of the summary's ``extra`` that are files the commit stamps (size, mtime)."""


def export_root(export_dir: str) -> Path:
    """The export folder: ``export_dir``, or ``$CURATION_HOME/export`` when it is empty."""
    return Path(export_dir) if export_dir else resolve_paths().home / "export"


def kept_images(store: DeltaStore) -> pl.DataFrame:
    """The filtered images dedup kept (``filtered_images`` rows): what the manifest lists."""
    kept_ids = store.read(DEDUPLICATED_IMAGES, columns=["image_id", "kept"]).filter("kept")
    return store.read(FILTERED_IMAGES).join(kept_ids.select("image_id"), on="image_id")


def write_export_files(
    rows: pl.DataFrame,
    out: Path,
    *,
    soft_cap_samples: int,
    penalty: float,
    seed: int,
    webdataset: bool,
    shard_size: int,
) -> dict[str, Any]:
    """Write the parquet manifest and the optional extras into ``out``, each atomically.

    Args:
        rows: The :data:`~curation_assets.lib.tables.CURATED_DATASET` rows.
        out: The export folder (created).
        soft_cap_samples: Draws of the Soft Cap Sampling multiset
            (``soft_cap_sample.parquet``: image_id, source_uri, caption, weight, count); 0 = none.
        penalty: Its repetition penalty.
        seed: Its seed.
        webdataset: Also write WebDataset shards to ``out/webdataset`` (a symlink swapped to a
            complete folder).
        shard_size: Samples per WebDataset shard.

    Returns:
        The summary recorded with the commit: ``extra`` (paths and counts, by name),
        ``failures`` (rows the WebDataset export could not read, as dicts), ``files`` (the
        stamps of the files in ``extra``, see :data:`FILE_KEYS`) and, with sampling,
        ``soft_cap_stats``.
    """
    out.mkdir(parents=True, exist_ok=True)
    manifest = write_file_atomic(out / "curated_dataset.parquet", rows.write_parquet)
    summary: dict[str, Any] = {"files": {}, "extra": {"manifest": str(manifest)}, "failures": []}
    if soft_cap_samples:
        counts = soft_cap_sampling(
            rows["weight"].to_numpy(), soft_cap_samples, penalty=penalty, seed=seed
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
    if webdataset:
        link = out / "webdataset"
        staged = staging_dir(link)
        with SourceReader() as reader:
            export = write_webdataset(rows, reader.read, staged, shard_size=shard_size)
        publish_dir(staged, link)
        summary["extra"].update(
            webdataset_shards=len(export.shards),
            webdataset_samples=export.n_written,
            webdataset_dir=str(link),
        )
        summary["failures"] = export.failures_frame().to_dicts()
    summary["files"] = file_stamps([Path(p) for k, p in summary["extra"].items() if k in FILE_KEYS])
    return summary
