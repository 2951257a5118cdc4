"""The export's per-shard files on an object store (``s3://``), through ``lib/objectstore``.

An object store has no rename and no symlink, so a shard is published by one PUT, its
manifest's, and the manifest names the tars it goes with::

    out/shard=<key>/curated_dataset.parquet              the manifest: written last, one PUT
    out/shard=<key>/<version>/curated-000000.tar ...     (only with WebDataset export)
    out/soft_cap_sample.parquet                          (only with Soft Cap Sampling)

A shard's files are built in a local temporary folder with the same writers as the local
layout, the tars are uploaded under a fresh ``<version>`` prefix (no reader is pointed at it
yet), then the manifest, whose parquet footer lists the tars (:data:`TARS_KEY`, paths relative
to the shard's prefix): a reader sees the previous manifest and its tars, or the new manifest
and its tars, never a mix. Only then are the previous version's objects deleted. A process
killed before the manifest's PUT leaves an unreferenced ``<version>`` prefix that the next
write of the shard deletes. A reader globs ``out/shard=*/curated_dataset.parquet`` as locally
and takes the tars from the manifests (:func:`~.shards.webdataset_urls`), not from a listing.
The Delta table ``curated_dataset`` is written after the files (see :mod:`.run`), so a shard
present in Delta always has its files. A shard's stamp is its manifest's size and
modification time (object stores: the upload time, to the second or better).
"""

import json
import tempfile
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import polars as pl

from curation_assets.lib import objectstore as ost
from curation_assets.lib.export.webdataset import copy_webdataset, write_webdataset
from curation_assets.lib.images import SourceReader

# the same names as .shards (which imports this module, so they cannot be imported from it)
SHARD_PREFIX = "shard="
MANIFEST_NAME = "curated_dataset.parquet"
TARS_KEY = "curation.webdataset_tars"
"""Key of the manifest's parquet footer entry listing the shard's tars (a JSON list of paths
relative to the shard's folder or prefix); the same in the local and the object-store layout."""


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
    tar_folder: str = "",
) -> dict[str, Any]:
    """Write one shard's WebDataset tars, then its manifest, into a local ``folder``.

    The files both export targets publish: a local folder swaps ``folder`` in by a symlink
    rename, an object store uploads the tars, then the manifest. The tars go into
    ``folder/tar_folder``; the manifest's footer lists them relative to ``folder``
    (:data:`TARS_KEY`).

    Returns:
        ``webdataset_shards``, ``webdataset_samples``, ``failures`` (rows whose bytes could
        not be exported, as dicts) and ``tars`` (the manifest's list).
    """
    summary: dict[str, Any] = {"webdataset_shards": 0, "webdataset_samples": 0, "failures": []}
    tars: list[str] = []
    if webdataset and reader is not None:
        where = folder / tar_folder if tar_folder else folder
        where.mkdir(parents=True, exist_ok=True)
        export = write_webdataset(rows, reader.read, where, shard_size=shard_size)
        tars = [f"{tar_folder}/{p.name}" if tar_folder else p.name for p, _ in export.shards]
        summary.update(
            webdataset_shards=len(export.shards),
            webdataset_samples=export.n_written,
            failures=export.failures_frame().to_dicts(),
        )
    rows.write_parquet(folder / MANIFEST_NAME, metadata={TARS_KEY: json.dumps(tars)})
    summary["tars"] = tars
    return summary


def restage_shard_files(
    src: Path, folder: Path, drop: set[str], *, shard_size: int, tar_folder: str = ""
) -> dict[str, Any]:
    """Stage into ``folder`` a published shard's files (local copy ``src``) less ``drop``.

    What :func:`stage_shard_files` would write for the shard's rows less the ``drop`` images,
    without those rows or the images' sources: the manifest is filtered as it streams, the
    tars' other samples are copied member by member (:func:`~.webdataset.copy_webdataset`).
    The source shard must have no export failures (a failed row would not be retried).

    Returns:
        As :func:`stage_shard_files` (``failures`` empty), plus ``weight``: the new
        manifest's weights.

    Memory: a streaming batch of manifest rows, one tar member, the new manifest's weights.
    """
    summary: dict[str, Any] = {"webdataset_shards": 0, "webdataset_samples": 0, "failures": []}
    tars: list[str] = []
    old = manifest_tars(str(src / MANIFEST_NAME), {})
    if old:
        where = folder / tar_folder if tar_folder else folder
        export = copy_webdataset([src / t for t in old], drop, where, shard_size=shard_size)
        tars = [f"{tar_folder}/{p.name}" if tar_folder else p.name for p, _ in export.shards]
        summary.update(webdataset_shards=len(export.shards), webdataset_samples=export.n_written)
    pl.scan_parquet(src / MANIFEST_NAME).filter(
        ~pl.col("image_id").is_in(sorted(drop))
    ).sink_parquet(folder / MANIFEST_NAME, metadata={TARS_KEY: json.dumps(tars)})
    weight = pl.read_parquet(folder / MANIFEST_NAME, columns=["weight"])["weight"].to_numpy()
    summary.update(tars=tars, weight=weight)
    return summary


def manifest_tars(manifest: str, options: Mapping[str, str]) -> list[str]:
    """The tars a shard's manifest (a path or URI) names, relative to its folder.

    Reads the parquet footer only. A manifest written before the footer entry existed names
    none.
    """
    remote = ost.is_remote(manifest)
    meta = pl.read_parquet_metadata(
        manifest, storage_options=dict(options) if remote and options else None
    )
    return list(json.loads(meta.get(TARS_KEY, "[]")))


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
    """Upload one shard's tars under a fresh version, then its manifest; delete the rest.

    Returns and raises as :func:`curation_assets.lib.export.shards.write_shard_files`.

    Memory: the shard's rows plus one image at a time; local disk: the shard's files, once.
    """

    def stage(staged: Path, version: str) -> dict[str, Any]:
        return stage_shard_files(
            staged,
            rows,
            webdataset=webdataset,
            shard_size=shard_size,
            reader=reader,
            tar_folder=version,
        )

    return publish_staged(out, key, stage, options)


def rewrite_shard_files(
    out: str, key: str, drop: set[str], *, shard_size: int, options: Mapping[str, str]
) -> dict[str, Any]:
    """Republish shard ``key`` less the ``drop`` images, from its published files.

    Downloads its manifest and tars, restages them (:func:`restage_shard_files`) and
    publishes them as :func:`write_shard_files` does. Local disk: the shard's files, twice.
    """
    prefix = shard_uri(out, key)
    with tempfile.TemporaryDirectory(prefix="curation-export-src-") as tmp:
        src = Path(tmp)
        ost.download(ost.join(prefix, MANIFEST_NAME), src / MANIFEST_NAME, options)
        for name in manifest_tars(str(src / MANIFEST_NAME), {}):
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            ost.download(ost.join(prefix, name), src / name, options)

        def stage(staged: Path, version: str) -> dict[str, Any]:
            return restage_shard_files(src, staged, drop, shard_size=shard_size, tar_folder=version)

        return publish_staged(out, key, stage, options)


def publish_staged(
    out: str,
    key: str,
    stage: Callable[[Path, str], dict[str, Any]],
    options: Mapping[str, str],
) -> dict[str, Any]:
    """Stage a shard's files locally (``stage(folder, version)``), upload, delete the rest.

    The tars under the fresh ``version`` prefix first, then the manifest (the publication);
    then the earlier and killed versions' objects.
    """
    prefix = shard_uri(out, key)
    before = set(ost.list_names(prefix, options))
    version = f"v-{uuid.uuid4().hex[:12]}"
    with tempfile.TemporaryDirectory(prefix="curation-export-") as tmp:
        staged = Path(tmp)
        summary = stage(staged, version)
        for name in summary["tars"]:  # nothing names them until the manifest is up
            ost.upload(staged / name, ost.join(prefix, name), options)
        ost.upload(staged / MANIFEST_NAME, ost.join(prefix, MANIFEST_NAME), options)
    for stale in sorted(before - {MANIFEST_NAME, version}):  # earlier and killed versions
        uri = ost.join(prefix, stale)
        if not ost.delete_tree(uri, options):
            ost.delete_file(uri, options)
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
