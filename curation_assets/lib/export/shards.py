"""The export's files, one folder per shard (stage 8).

Layout under the export folder ``out``::

    out/shard=<key>                      -> .shards/<key>/<version>   (a relative symlink)
    out/.shards/<key>/<version>/curated_dataset.parquet
    out/.shards/<key>/<version>/curated-000000.tar ...     (only with WebDataset export)
    out/soft_cap_sample.parquet                             (only with Soft Cap Sampling)

A reader globs ``out/shard=*/curated_dataset.parquet`` (:func:`manifest_glob`, or
:func:`scan_manifest`) and ``out/shard=*/*.tar``; every manifest's parquet footer also lists
its shard's tars (:func:`webdataset_urls` reads them: the way to find the tars that works on
both layouts). A shard's files are written into a fresh
``<version>`` folder and published by swapping the ``shard=<key>`` symlink
(:func:`~curation_assets.lib.export.publish.publish_dir`), so a reader sees the shard's previous
complete folder or its new complete folder, never a mix, and a process killed while writing
leaves only an unpublished folder that the next write of that shard deletes. Writing one shard
touches nothing of another shard.

``out`` may also be an object-store URI (``s3://...``): every function here then hands over to
:mod:`.remote` (same names, no symlinks; ``options`` are the storage options).
"""

import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curation_assets.lib import objectstore as ost
from curation_assets.lib.export import remote
from curation_assets.lib.export.publish import publish_dir
from curation_assets.lib.images import SourceReader
from curation_assets.lib.objectstore import is_remote

SHARD_PREFIX = "shard="
"""Name of a shard's published folder: ``shard=<key>`` (hive style)."""
VERSIONS_DIR = ".shards"
"""Hidden folder holding the versions of every shard's folder."""
MANIFEST_NAME = remote.MANIFEST_NAME
"""The manifest file in each shard folder."""
LEGACY_FILES = ("curated_dataset.parquet", "webdataset")
"""Whole-corpus files of the earlier layout, removed once the per-shard layout is written."""


def check_shard_key(key: str) -> str:
    """``key`` if it can name a folder, else a ValueError that says why.

    Shard keys are source entry names (``shard-001.tar``); a key with a path separator, a
    leading dot or a NUL cannot be an export folder name.
    """
    if not key or key in (".", "..") or key.startswith(".") or any(c in key for c in "/\\\0"):
        msg = (
            f"shard key {key!r} cannot name an export folder (empty, '.'-prefixed, or holding "
            "'/', '\\\\' or NUL); rename the source entry"
        )
        raise ValueError(msg)
    return key


def shard_link(out: Path, key: str) -> Path:
    """The published folder (a symlink) of shard ``key``: ``out/shard=<key>``."""
    return out / f"{SHARD_PREFIX}{check_shard_key(key)}"


Out = Path | str
"""The export folder, or an object-store URI."""
NO_OPTIONS: Mapping[str, str] = {}


def manifest_glob(out: Out) -> str:
    """Glob of every shard's manifest: ``out/shard=*/curated_dataset.parquet``."""
    if is_remote(out):
        return f"{str(out).rstrip('/')}/{SHARD_PREFIX}*/{MANIFEST_NAME}"
    return str(Path(out) / f"{SHARD_PREFIX}*" / MANIFEST_NAME)


def scan_manifest(out: Out, options: Mapping[str, str] = NO_OPTIONS) -> pl.LazyFrame:
    """All published shard manifests as one lazy frame (the files, not the Delta table).

    Raises:
        FileNotFoundError: If no shard is published under ``out``.
    """
    if not published_shards(out, options):
        msg = f"no shard manifest under {out}; materialize curated_dataset first"
        raise FileNotFoundError(msg)
    return pl.scan_parquet(
        manifest_glob(out),
        hive_partitioning=False,
        storage_options=dict(options) if is_remote(out) and options else None,
    )


def published_shards(out: Out, options: Mapping[str, str] = NO_OPTIONS) -> set[str]:
    """Keys of the shard folders published under ``out`` (by listing it; reads no file)."""
    if is_remote(out):
        return remote.published_shards(str(out), options)
    out = Path(out)
    if not out.is_dir():
        return set()
    return {
        p.name.removeprefix(SHARD_PREFIX)
        for p in out.iterdir()
        if p.name.startswith(SHARD_PREFIX) and (p.is_symlink() or p.is_dir())
    }


def webdataset_urls(out: Out, options: Mapping[str, str] = NO_OPTIONS) -> list[str]:
    """Paths/URIs of the WebDataset tars of every published shard, in shard and tar order.

    Read from the manifests' footers (one small read per shard, no listing of the tars), so on
    an object store it names exactly the tars of the published manifests, never those of a
    version still being uploaded or already replaced. Works on both layouts.
    """
    urls = []
    for key in sorted(published_shards(out, options)):
        folder = remote.shard_uri(str(out), key)
        manifest = ost.join(folder, MANIFEST_NAME)
        urls += [ost.join(folder, name) for name in remote.manifest_tars(manifest, options)]
    return urls


def shard_stamp(
    out: Out, key: str, options: Mapping[str, str] = NO_OPTIONS
) -> dict[str, Any] | None:
    """What identifies a published shard folder: its version and its manifest's size/mtime.

    None when the shard is not published or its manifest is missing.
    """
    if is_remote(out):
        return remote.shard_stamp(str(out), check_shard_key(key), options)
    link = shard_link(Path(out), key)
    manifest = link / MANIFEST_NAME
    try:
        st = manifest.stat()
        version = os.readlink(link) if link.is_symlink() else ""
    except OSError:
        return None
    return {"version": version, "manifest": [int(st.st_size), int(st.st_mtime_ns)]}


def write_shard_files(
    out: Out,
    key: str,
    rows: pl.DataFrame,
    *,
    webdataset: bool,
    shard_size: int,
    reader: SourceReader | None,
    options: Mapping[str, str] = NO_OPTIONS,
) -> dict[str, Any]:
    """Write one shard's manifest (and WebDataset tars) and publish them together.

    Versions of the shard left by killed runs are deleted first; the previous published
    version is deleted after the swap. Other shards' folders are not touched.

    Args:
        out: The export folder.
        key: The shard.
        rows: The shard's :data:`~curation_assets.lib.tables.CURATED_DATASET` rows (≥ 1).
        webdataset: Also write WebDataset tars of the shard's images.
        shard_size: Samples per tar.
        reader: Reads the images' bytes (required with ``webdataset``).
        options: Storage options when ``out`` is an object store.

    Returns:
        ``stamp`` (:func:`shard_stamp`), ``webdataset_shards``, ``webdataset_samples`` and
        ``failures`` (rows whose bytes could not be exported, as dicts).

    Memory: the shard's rows (given) plus one image's bytes at a time.
    """
    if webdataset and reader is None:
        msg = "write_shard_files(webdataset=True) needs a reader of the image bytes"
        raise ValueError(msg)
    if is_remote(out):
        return remote.write_shard_files(
            str(out),
            check_shard_key(key),
            rows,
            webdataset=webdataset,
            shard_size=shard_size,
            reader=reader,
            options=options,
        )
    out = Path(out)

    def stage(staged: Path) -> dict[str, Any]:
        return remote.stage_shard_files(
            staged, rows, webdataset=webdataset, shard_size=shard_size, reader=reader
        )

    return _publish_local(out, key, stage)


def rewrite_shard_files(
    out: Out,
    key: str,
    drop: set[str],
    *,
    shard_size: int,
    options: Mapping[str, str] = NO_OPTIONS,
) -> dict[str, Any]:
    """Republish a published shard less the ``drop`` images, from its own files.

    No Delta row or source image is read: the manifest is filtered as it streams and the
    tars' other samples are copied (:func:`~.remote.restage_shard_files`); the result is what
    :func:`write_shard_files` writes for the shard's rows less ``drop`` (byte for byte, tars
    included). Published as :func:`write_shard_files` publishes.

    Returns:
        As :func:`write_shard_files`, plus ``weight``: the new manifest's weights.

    Memory: a streaming batch of manifest rows and one tar member.
    """
    if is_remote(out):
        key = check_shard_key(key)
        return remote.rewrite_shard_files(
            str(out), key, drop, shard_size=shard_size, options=options
        )
    out = Path(out)
    src = shard_link(out, key).resolve()

    def stage(staged: Path) -> dict[str, Any]:
        return remote.restage_shard_files(src, staged, drop, shard_size=shard_size)

    return _publish_local(out, key, stage)


def _publish_local(out: Path, key: str, stage: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """Stage a shard's files into a fresh version folder and publish it by the symlink swap.

    Versions of the shard left by killed runs are deleted first; the previous published one
    after the swap (:func:`~.publish.publish_dir`).
    """
    link = shard_link(out, key)
    versions = out / VERSIONS_DIR / key
    versions.mkdir(parents=True, exist_ok=True)
    current = link.resolve() if link.is_symlink() else None
    for old in versions.iterdir():
        if old.resolve() != current:
            shutil.rmtree(old, ignore_errors=True)  # never published: a killed run's
    staged = versions / uuid.uuid4().hex[:12]
    staged.mkdir()
    summary = stage(staged)
    publish_dir(staged, link)
    summary["stamp"] = shard_stamp(out, key)
    return summary


def shard_entry(weight: np.ndarray, files: Mapping[str, Any]) -> dict[str, Any]:
    """A shard's entry in the export's commit: its manifest's ``weight`` column and files.

    ``rows``, ``weight_sum``, ``weight_sq_sum`` (the global figures are their sums),
    ``webdataset_shards``, ``webdataset_samples``, ``failures`` and ``stamp`` from what
    :func:`write_shard_files` (or :func:`rewrite_shard_files`) returned.
    """
    w = np.asarray(weight, dtype=np.float64)
    return {
        "rows": int(w.size),
        "weight_sum": float(w.sum()),
        "weight_sq_sum": float((w * w).sum()),
        "webdataset_shards": files["webdataset_shards"],
        "webdataset_samples": files["webdataset_samples"],
        "failures": len(files["failures"]),
        "stamp": files["stamp"],
    }


def remove_shard_files(out: Out, key: str, options: Mapping[str, str] = NO_OPTIONS) -> bool:
    """Unpublish shard ``key`` (the symlink first, then its versions). Whether any existed."""
    if is_remote(out):
        return remote.remove_shard_files(str(out), check_shard_key(key), options)
    out = Path(out)
    link = shard_link(out, key)
    existed = False
    if link.is_symlink() or link.is_file():
        link.unlink()
        existed = True
    elif link.is_dir():
        shutil.rmtree(link)
        existed = True
    versions = out / VERSIONS_DIR / key
    if versions.exists():
        shutil.rmtree(versions, ignore_errors=True)
        existed = True
    return existed


def remove_stale_links(out: Out) -> None:
    """Delete temporary symlinks a killed publish left (``.shard=<key>.<pid>.link``)."""
    if is_remote(out):
        return  # no symlinks on an object store
    out = Path(out)
    if out.is_dir():
        for p in out.glob(f".{SHARD_PREFIX}*.link"):
            p.unlink(missing_ok=True)


def remove_legacy_files(out: Out, options: Mapping[str, str] = NO_OPTIONS) -> list[str]:
    """Remove the whole-corpus files of the earlier layout (manifest, WebDataset folder).

    Returns:
        The paths removed.
    """
    if is_remote(out):
        return remote.remove_legacy_files(str(out), LEGACY_FILES, options)
    out = Path(out)
    removed = []
    for name in LEGACY_FILES:
        path = out / name
        if path.is_symlink():
            target = path.resolve()
            path.unlink()
            if target.is_dir() and target.parent == out.resolve():
                shutil.rmtree(target, ignore_errors=True)
            removed.append(str(path))
        elif path.is_dir():
            shutil.rmtree(path)
            removed.append(str(path))
        elif path.exists():
            path.unlink()
            removed.append(str(path))
    for staged in out.glob(".webdataset-*") if out.is_dir() else []:
        shutil.rmtree(staged, ignore_errors=True)
    return removed
