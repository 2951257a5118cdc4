"""The export stage (8): the training-ready manifest and its optional extras.

* :mod:`.manifest` — the rows of the ``curated_dataset`` table
  (:data:`~curation_assets.lib.tables.CURATED_DATASET`): every kept image with its sample
  weight (:func:`curated_rows`).
* :mod:`.sampling` — FLYT's Soft Cap Sampling of a multiset over the weights
  (:func:`soft_cap_sampling`).
* :mod:`.webdataset` — WebDataset tar shards of the images (:func:`write_webdataset`).
* :mod:`.publish` — files and folders published atomically, and their stamps.
* :mod:`.shards` — the per-shard layout of the files (``export/shard=<key>/``), each shard's
  folder written and published as a whole.
* :mod:`.run` — the stage over Delta and files, shard by shard: which shards changed, their
  rows and files rewritten, the order of writes, the commit. Imported
  by its path (it reads and writes Delta through :mod:`curation_assets.lib.storage`; the
  upstream tables' specs come from :mod:`curation_assets.lib.tables`, so it imports no torch).
"""

from curation_assets.lib.export.manifest import (
    curated_rows,
    one_row_per_kept_image,
)
from curation_assets.lib.export.publish import (
    file_stamps,
    files_unchanged,
    publish_dir,
    staging_dir,
    write_file_atomic,
)
from curation_assets.lib.export.sampling import (
    DEFAULT_PENALTY,
    sampling_stats,
    soft_cap_sampling,
)
from curation_assets.lib.export.webdataset import (
    DEFAULT_SHARD_SIZE,
    ExportFailure,
    WebDatasetExport,
    image_extension,
    write_webdataset,
)

__all__ = [
    "DEFAULT_PENALTY",
    "DEFAULT_SHARD_SIZE",
    "ExportFailure",
    "WebDatasetExport",
    "curated_rows",
    "file_stamps",
    "files_unchanged",
    "image_extension",
    "one_row_per_kept_image",
    "publish_dir",
    "sampling_stats",
    "soft_cap_sampling",
    "staging_dir",
    "write_file_atomic",
    "write_webdataset",
]
