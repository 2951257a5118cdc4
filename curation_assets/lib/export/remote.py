"""The export's per-shard files on an object store (``s3://``), through ``lib/objectstore``.

Same names as the local layout (:mod:`.shards`) without the symlinks an object store lacks::

    out/shard=<key>/curated_dataset.parquet
    out/shard=<key>/curated-000000.tar ...        (only with WebDataset export)
    out/soft_cap_sample.parquet                   (only with Soft Cap Sampling)

A reader globs ``out/shard=*/curated_dataset.parquet`` as locally. A shard's files are built in
a local temporary folder with the same writers as the local layout, then uploaded: the tars
first, the manifest last, then the shard's objects the new version does not have are deleted.
Each object is one PUT (a reader sees an old or a new object, never a part), but unlike the
local symlink swap the *folder* is not replaced atomically: a reader listing a shard while it
is rewritten may see new tars beside the old manifest for that moment. The Delta table
``curated_dataset`` is still written after the files (see :mod:`.run`), so a shard present in
Delta always has its files. A shard's stamp is its manifest's size and modification time
(object stores: the upload time, to the second or better).
"""

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from curation_assets.lib import objectstore as ost
from curation_assets.lib.export.webdataset import write_webdataset
from curation_assets.lib.images import SourceReader

# the same names as .shards (which imports this module, so they cannot be imported from it)
SHARD_PREFIX = "shard="
MANIFEST_NAME = "curated_dataset.parquet"


def shard_uri(out: str, key: str) -> str:
    """The prefix of shard ``key``'s files: ``out/shard=<key>``."""
    return ost.join(out, f"{SHARD_PREFIX}{key}")


def published_shards(out: str, options: Mapping[str, str]) -> set[str]:
    """Keys of the shards with files under ``out`` (one listing; reads no file)."""
    return {
        name.removeprefix(SHARD_PREFIX)
        for name in ost.list_names(out, options)
        if name.startswith(SHARD_PREFIX)
    }


def shard_stamp(out: str, key: str, options: Mapping[str, str]) -> dict[str, Any] | None:
    """The shard's manifest size and modification time (None when it has no manifest)."""
    st = ost.stat(ost.join(shard_uri(out, key), MANIFEST_NAME), options)
    if st is None:
        return None
    return {"version": "", "manifest": [st.size, st.mtime_ns]}


def stage_shard_files(
    folder: Path,
    rows: pl.DataFrame,
    *,
    webdataset: bool,
    shard_size: int,
    reader: SourceReader | None,
) -> dict[str, Any]:
    """Write one shard's manifest (and WebDataset tars) into a local ``folder``.

    The files both export targets publish: a local folder swaps ``folder`` in by a symlink
    rename, an object store uploads its files (manifest last).

    Returns:
        ``webdataset_shards``, ``webdataset_samples`` and ``failures`` (rows whose bytes could
        not be exported, as dicts).
    """
    rows.write_parquet(folder / MANIFEST_NAME)
    summary: dict[str, Any] = {"webdataset_shards": 0, "webdataset_samples": 0, "failures": []}
    if webdataset and reader is not None:
        export = write_webdataset(rows, reader.read, folder, shard_size=shard_size)
        summary.update(
            webdataset_shards=len(export.shards),
            webdataset_samples=export.n_written,
            failures=export.failures_frame().to_dicts(),
        )
    return summary


def write_shard_files(
    out: str,
    key: str,
    rows: pl.DataFrame,
    *,
    webdataset: bool,
    shard_size: int,
    reader: SourceReader | None,
    options: Mapping[str, str],
) -> dict[str, Any]:
    """Build one shard's manifest (and tars) locally, upload them (manifest last), prune.

    Returns and raises as :func:`curation_assets.lib.export.shards.write_shard_files`.

    Memory: the shard's rows plus one image at a time; local disk: the shard's files, once.
    """
    prefix = shard_uri(out, key)
    before = set(ost.list_names(prefix, options))
    with tempfile.TemporaryDirectory(prefix="curation-export-") as tmp:
        staged = Path(tmp)
        summary = stage_shard_files(
            staged, rows, webdataset=webdataset, shard_size=shard_size, reader=reader
        )
        names = sorted(p.name for p in staged.iterdir() if p.is_file())
        for name in [n for n in names if n != MANIFEST_NAME] + [MANIFEST_NAME]:
            ost.upload(staged / name, ost.join(prefix, name), options)
    for stale in before - set(names):
        ost.delete_file(ost.join(prefix, stale), options)
    summary["stamp"] = shard_stamp(out, key, options)
    return summary


def remove_shard_files(out: str, key: str, options: Mapping[str, str]) -> bool:
    """Delete every object of shard ``key``. Whether any existed."""
    return ost.delete_tree(shard_uri(out, key), options)


def remove_legacy_files(out: str, names: tuple[str, ...], options: Mapping[str, str]) -> list[str]:
    """Delete the whole-corpus files/folders ``names`` of the earlier layout under ``out``."""
    removed = []
    for name in names:
        uri = ost.join(out, name)
        if ost.delete_file(uri, options) or ost.delete_tree(uri, options):
            removed.append(uri)
    return removed


def write_file(uri: str, write: Any, options: Mapping[str, str]) -> str:
    """Write one file with ``write(local_path)`` into a temporary folder, then upload it."""
    with tempfile.TemporaryDirectory(prefix="curation-export-") as tmp:
        local = Path(tmp) / Path(uri).name
        write(local)
        ost.upload(local, uri, options)
    return uri
