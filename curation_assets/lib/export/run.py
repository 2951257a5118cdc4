"""The export stage over Delta and files, shard by shard (stage 8).

A new shard costs what the shard costs. :func:`plan_export` reads only Delta logs, the last
commit and the export folder's listing to decide which shards to rewrite: those whose rows
changed in any input since the versions the last commit read (``DeltaStore.changed_shards``),
those of ``curated_dataset`` changed since the commit (a killed run's), and those whose files
are missing or changed. Every other shard is neither read nor written; its figures come from the
commit. A full rewrite happens only on the first run, after a change of the file settings, or
when an input is not partitioned by shard. A shard whose only change is kept images leaving it
(dedup flipped them in place, the weights stage tombstoned their rows) is *drop-patched*
(:mod:`.drops`): republished from its own files less those images, its Delta rows deleted by
tombstones, none of its inputs or image sources read.

**Order of writes** (:func:`export_shards`), per batch of shards (as many as the memory budget
holds): every shard's folder with kept images is published first (a complete new folder, a
symlink swap), then ONE Delta transaction replaces the batch's rows (and empties the shards
that lost every kept image), then the emptied shards' folders are removed. So every shard
present in the Delta table has its complete folder published at every moment (a reader that
sees a shard in Delta may read its folder at once; a folder may briefly be newer than its
rows). After all batches, the optional Soft Cap Sampling file, then ONE commit row
(:func:`~curation_assets.lib.commits.record_commit`) with the input versions and the per-shard
figures. A process killed anywhere leaves shards written by a run no commit records; they
differ from the commit (as inputs, as ``curated_dataset`` shards, or as folders), so the next
run rewrites them and converges to the clean result. Delta-first per shard was rejected: it
would let a reader of the Delta table find a shard whose folder is older or missing.
"""

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from deltalake import DeltaTable

from curation_assets.lib import memory
from curation_assets.lib import objectstore as ost
from curation_assets.lib.commits import (
    Commit,
    current_commit,
    input_versions,
    last_commit,
    record_commit,
)
from curation_assets.lib.compaction import drop_changes, fold
from curation_assets.lib.errors import ConfigError
from curation_assets.lib.export import remote
from curation_assets.lib.export.drops import drop_only, export_drops
from curation_assets.lib.export.manifest import curated_rows, one_row_per_kept_image
from curation_assets.lib.export.publish import file_stamps, files_unchanged, write_file_atomic
from curation_assets.lib.export.sampling import sampling_stats, soft_cap_sampling
from curation_assets.lib.export.shards import (
    Out,
    published_shards,
    remove_legacy_files,
    remove_shard_files,
    remove_stale_links,
    shard_entry,
    shard_stamp,
    write_shard_files,
)
from curation_assets.lib.images import SourceReader
from curation_assets.lib.memory import MemoryBudget
from curation_assets.lib.objectstore import is_remote, storage_options_from_env
from curation_assets.lib.settings import resolve_paths
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import (
    CURATED_DATASET,
    DEDUPLICATED_IMAGES,
    FILTERED_IMAGES,
    SAMPLE_WEIGHTS,
)

logger = logging.getLogger(__name__)

EXPORT_STAGE = "export"
"""The stage's name in ``stage_commits``."""
EXPORT_INPUTS = (SAMPLE_WEIGHTS.name, DEDUPLICATED_IMAGES.name, FILTERED_IMAGES.name)
"""The tables whose versions the stage's commit records (all partitioned by shard)."""
LAYOUT = "shard_folders/v1"
"""The files' layout, recorded in the commit (an earlier layout means a full rewrite)."""
SHARD_SETTINGS = ("export_dir", "webdataset", "shard_size")
"""Settings that shape every shard's files: changing one rewrites every shard."""
ROW_BYTES = 512
"""Working bytes per manifest row (ids, uri, caption, joins) for the memory check."""
SOFT_CAP_ROW_BYTES = 256
"""Working bytes per row of the global Soft Cap Sampling (its columns and clocks)."""
MAX_FAILURE_EXAMPLES = 50
SOFT_CAP_FILE = "soft_cap_sample.parquet"
"""Unreadable images listed in the commit (all are counted)."""


def export_root(export_dir: str) -> Out:
    """The export folder or URI: ``export_dir``, else the home's (``Paths.export_root``).

    That is ``$CURATION_EXPORT_ROOT`` or the home's setting, else ``$CURATION_HOME/export``
    for a local Delta root and ``<delta root>/_export`` for an object-store one
    (:func:`~curation_assets.lib.settings.default_export_root`). A URI is returned as a
    string, a folder as a ``Path``.
    """
    chosen = export_dir or resolve_paths().export_root
    return chosen if is_remote(chosen) else Path(chosen)


def export_options(store: DeltaStore) -> dict[str, str]:
    """Storage options for the export's files: the store's, else the environment's.

    (A local Delta root carries none; an object-store export root beside it still needs the
    environment's credentials.)
    """
    return dict(store.storage_options) or storage_options_from_env()


def export_location(out: Out) -> str:
    """``out`` as recorded in the commit's settings: an absolute folder or the URI."""
    return str(out) if is_remote(out) else str(Path(out).resolve())


def partitioned_by_shard(store: DeltaStore, name: str) -> bool:
    """Whether table ``name`` exists and is Delta-partitioned by ``shard`` (reads the log)."""
    if not store.exists(name):
        return False
    dt = DeltaTable(store.uri(name), storage_options=store.storage_options or None)
    return list(dt.metadata().partition_columns) == ["shard"]


def rows_per_shard(store: DeltaStore, name: str) -> dict[str, int]:
    """Rows of each non-empty shard of a shard-partitioned table (Delta log statistics)."""
    return {k: v for k, v in store.shard_row_counts(name).items() if v}


def kept_images(store: DeltaStore, shards: Iterable[str] | None = None) -> pl.DataFrame:
    """The filtered images dedup kept (``filtered_images`` rows) of ``shards`` (None: all)."""
    keys = None if shards is None else list(shards)
    kept_ids = store.read(DEDUPLICATED_IMAGES, shards=keys, columns=["image_id", "kept"])
    kept_ids = kept_ids.filter("kept").select("image_id")
    return store.read(FILTERED_IMAGES, shards=keys).join(kept_ids, on="image_id")


def _by_shard(frame: pl.DataFrame) -> dict[str, pl.DataFrame]:
    return {str(k[0]): v for k, v in frame.partition_by("shard", as_dict=True).items()}


def batch_rows(store: DeltaStore, keys: list[str]) -> dict[str, tuple[pl.DataFrame, pl.DataFrame]]:
    """Per shard of ``keys``: its kept images and its :data:`CURATED_DATASET` rows.

    Reads each input once for the whole batch, pruned to the batch's shards.

    Raises:
        ValueError: If a shard's kept images and weights disagree (names the shard).
    """
    images = _by_shard(kept_images(store, keys))
    weights = _by_shard(
        store.read(SAMPLE_WEIGHTS, shards=keys, columns=["image_id", "shard", "weight"])
    )
    out = {}
    for key in keys:
        mine = images.get(key, FILTERED_IMAGES.empty())
        w = weights.get(key, SAMPLE_WEIGHTS.empty()).select("image_id", "weight")
        try:
            out[key] = (mine, curated_rows(mine, w))
        except ValueError as exc:
            msg = f"shard {key!r}: {exc}"
            raise ValueError(msg) from exc
    return out


def shard_batches(keys: Iterable[str], sizes: Mapping[str, int], limit: int) -> list[list[str]]:
    """``keys`` cut in order into batches of at most ``limit`` rows (by ``sizes``).

    Raises:
        ConfigError: If one shard alone has more than ``limit`` rows.
    """
    keys = list(keys)
    for key in keys:
        n = sizes.get(key, 0)
        if n > limit:
            msg = (
                f"shard {key!r} has {n} filtered images but the export's memory budget holds "
                f"{limit} rows at once: raise compute.memory_budget_mb (about "
                f"{n * ROW_BYTES / 2**20:.0f} MiB) or split the shard"
            )
            raise ConfigError(msg)
    return memory.shard_batches(sizes, keys, limit)


@dataclass
class ExportPlan:
    """Which shards the export rewrites and which it carries over from the last commit.

    Attributes:
        full: Every shard is rewritten.
        reason: Why (a sentence for the log and metadata).
        rewrite: Shards to re-read and rewrite (or remove), sorted.
        carried: Commit entries of the shards left as they are.
        drops: Shards that only lost images (:mod:`.drops`), with the rows that leave them:
            republished from their own files, their rows tombstoned.
    """

    full: bool
    reason: str
    rewrite: list[str]
    carried: dict[str, dict[str, Any]] = field(default_factory=dict)
    drops: dict[str, pl.DataFrame] = field(default_factory=dict)


def _all_shards(store: DeltaStore, out: Out) -> set[str]:
    """Every shard any input, the Delta manifest or the export folder knows (logs + listing)."""
    keys: set[str] = set(published_shards(out, export_options(store)))
    for name in (*EXPORT_INPUTS, CURATED_DATASET.name):
        keys |= set(store.shard_files(name))
    return keys


def plan_export(
    store: DeltaStore, out: Out, last: Commit | None, settings: Mapping[str, Any]
) -> ExportPlan:
    """Decide which shards to rewrite, from Delta logs, the last commit and a folder listing.

    Args:
        store: The Delta store.
        out: The export folder.
        last: The stage's last commit (``last_commit``), or None.
        settings: This run's configuration (with :data:`SHARD_SETTINGS`).

    Memory and cost: the Delta logs of four tables and one ``stat`` per exported shard.
    """
    reason = ""
    if last is None:
        reason = "first export"
    elif last.summary.get("layout") != LAYOUT:
        reason = "the last export used the whole-file layout"
    elif any(last.config.get(k) != settings.get(k) for k in SHARD_SETTINGS):
        reason = f"file settings changed ({', '.join(SHARD_SETTINGS)})"
    elif not partitioned_by_shard(store, CURATED_DATASET.name):
        reason = "curated_dataset is not partitioned by shard yet"
    else:
        flat = [t for t in EXPORT_INPUTS if store.exists(t) and not partitioned_by_shard(store, t)]
        if flat:
            reason = f"{', '.join(flat)} not partitioned by shard: changed shards unknown"
    if reason or last is None:
        return ExportPlan(True, reason, sorted(_all_shards(store, out)))
    by_input = {n: store.changed_shards(n, last.inputs.get(n)) for n in EXPORT_INPUTS}
    changed: set[str] = set().union(*by_input.values())
    torn = store.changed_shards(CURATED_DATASET.name, last.outputs.get(CURATED_DATASET.name))
    previous: dict[str, dict[str, Any]] = last.summary.get("shards", {})
    options = export_options(store)
    broken = {k for k, e in previous.items() if shard_stamp(out, k, options) != e.get("stamp")}
    stray = published_shards(out, options) - set(previous)
    candidates = changed - by_input[FILTERED_IMAGES.name] - torn - broken - stray
    drops, unchanged = drop_only(
        store, last, candidates, webdataset=bool(settings.get("webdataset"))
    )
    rewrite = (changed | torn | broken | stray) - set(drops) - unchanged
    parts = [
        f"{len(changed)} changed in inputs",
        f"{len(drops)} of them only lost images (republished from their files)",
        f"{len(unchanged)} of them with their rows unchanged",
        f"{len(torn)} torn",
        f"{len(broken)} with missing or changed files",
        f"{len(stray)} unrecorded folders",
    ]
    return ExportPlan(
        False,
        "incremental: " + ", ".join(parts),
        sorted(rewrite),
        {k: e for k, e in previous.items() if k not in rewrite and k not in drops},
        drops,
    )


@dataclass
class ShardsWritten:
    """What :func:`export_shards` did.

    Attributes:
        entries: Shard → commit entry (``rows``, ``weight_sum``, ``weight_sq_sum``,
            ``webdataset_shards``, ``webdataset_samples``, ``failures``, ``stamp``).
        written: Shards whose files and rows were rewritten.
        removed: Shards whose files and rows were removed (no kept image left).
        failures: Rows the WebDataset export could not read (dicts), of the written shards.
        kept_images: Kept images of the written shards.
        rows_ok: Every written shard lists each kept image once with a finite weight.
        patched: Shards that only lost images, republished from their own files
            (:mod:`.drops`).
    """

    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    kept_images: int = 0
    rows_ok: bool = True
    patched: list[str] = field(default_factory=list)


def export_shards(
    store: DeltaStore,
    out: Out,
    shards: Iterable[str],
    *,
    webdataset: bool,
    shard_size: int,
    budget: MemoryBudget,
) -> ShardsWritten:
    """Rewrite (or remove) the files and Delta rows of ``shards``, a batch of shards at a time.

    Shards are cut into batches whose rows fit ``budget`` (sizes from the Delta log). Per
    batch: read the inputs of its shards (one pruned read per table), publish the folder of
    every shard with kept images, then ONE Delta transaction replaces the batch's rows (and
    empties the shards without kept images), then those shards' folders are removed. So a
    shard's rows are in Delta only while its complete folder is published (see the module
    docstring).

    Raises:
        ConfigError: If a shard's rows alone do not fit the memory budget.
        ValueError: If a shard's kept images and weights disagree.

    Memory: one batch's rows, at most ``budget`` (:data:`ROW_BYTES` a row), plus one image's
    bytes at a time for WebDataset.
    """
    options = export_options(store)
    if not is_remote(out):
        Path(out).mkdir(parents=True, exist_ok=True)
    remove_stale_links(out)
    in_delta = set(store.shard_files(CURATED_DATASET.name))
    sizes = rows_per_shard(store, FILTERED_IMAGES.name)
    batches = shard_batches(shards, sizes, budget.rows(ROW_BYTES))
    done = ShardsWritten()
    reader = SourceReader() if webdataset else None
    try:
        for batch in batches:
            rows_of = batch_rows(store, batch)
            for key, (images, rows) in rows_of.items():
                done.kept_images += images.height
                if rows.is_empty():
                    continue
                files = write_shard_files(
                    out,
                    key,
                    rows,
                    webdataset=webdataset,
                    shard_size=shard_size,
                    reader=reader,
                    options=options,
                )
                done.rows_ok &= one_row_per_kept_image(rows, images)
                done.failures += [{**f, "shard": key} for f in files["failures"]]
                done.entries[key] = shard_entry(rows["weight"].to_numpy(), files)
                done.written.append(key)
            touched = [k for k, (_, r) in rows_of.items() if r.height or k in in_delta]
            if touched:
                frames = [r for _, r in rows_of.values() if r.height]
                store.replace_rows(CURATED_DATASET, "shard", touched, frames)
            for key, (_, rows) in rows_of.items():
                if rows.is_empty() and (remove_shard_files(out, key, options) or key in in_delta):
                    done.removed.append(key)
    finally:
        if reader is not None:
            reader.close()
    if done.written or done.removed:
        logger.info(
            "export: wrote %d shards, removed %d, in %d batches",
            len(done.written),
            len(done.removed),
            len(batches),
        )
    return done


def totals(entries: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Global figures from the per-shard entries (no row is read).

    Returns:
        ``rows``, ``shards``, ``weight_sum``, ``ess`` (Kish: (Σw)² / Σw²), ``ess_ratio``
        (ess / rows), ``webdataset_shards``, ``webdataset_samples``, ``failures``.
    """
    n = sum(int(e["rows"]) for e in entries.values())
    s = sum(float(e["weight_sum"]) for e in entries.values())
    s2 = sum(float(e["weight_sq_sum"]) for e in entries.values())
    ess = s * s / s2 if s2 > 0 else 0.0
    return {
        "rows": n,
        "shards": len(entries),
        "weight_sum": s,
        "ess": ess,
        "ess_ratio": ess / n if n else None,
        "webdataset_shards": sum(int(e["webdataset_shards"]) for e in entries.values()),
        "webdataset_samples": sum(int(e["webdataset_samples"]) for e in entries.values()),
        "failures": sum(int(e["failures"]) for e in entries.values()),
    }


def write_soft_cap_sample(
    store: DeltaStore,
    out: Out,
    *,
    n_rows: int,
    soft_cap_samples: int,
    penalty: float,
    seed: int,
    budget: MemoryBudget,
) -> dict[str, Any]:
    """Draw the global Soft Cap Sampling multiset and write ``out/soft_cap_sample.parquet``.

    The multiset is a property of all weights together, so this reads four columns of every
    row of the Delta manifest (image_id, source_uri, caption, weight): the one part of the
    export whose cost grows with the corpus. Run only when a shard changed or its settings did.

    Returns:
        ``soft_cap_sample`` (the path), ``files`` (its stamp) and ``soft_cap_stats``.

    Raises:
        ConfigError: If ``n_rows`` rows do not fit the memory budget.

    Memory: about :data:`SOFT_CAP_ROW_BYTES` per manifest row, checked against ``budget``.
    """
    limit = budget.rows(SOFT_CAP_ROW_BYTES)
    if n_rows > limit:
        msg = (
            f"soft_cap_samples={soft_cap_samples} samples over all {n_rows} manifest rows, but "
            f"{budget} fits {limit}: raise compute.memory_budget_mb or set soft_cap_samples=0"
        )
        raise ConfigError(msg)
    rows = (
        store.scan(CURATED_DATASET)
        .select("image_id", "source_uri", "caption", "weight")
        .sort("image_id")
        .collect()
    )
    w = rows["weight"].to_numpy()
    counts = soft_cap_sampling(w, soft_cap_samples, penalty=penalty, seed=seed)
    sample = rows.with_columns(count=pl.Series(counts, dtype=pl.Int64)).filter(pl.col("count") > 0)
    options = export_options(store)
    if is_remote(out):
        path: Path | str = remote.write_file(
            f"{str(out).rstrip('/')}/{SOFT_CAP_FILE}", sample.write_parquet, options
        )
    else:
        path = write_file_atomic(Path(out) / SOFT_CAP_FILE, sample.write_parquet)
    stats = {k: v for k, v in sampling_stats(counts, w).items() if k != "count_histogram"}
    files = file_stamps([path], options)
    return {"soft_cap_sample": str(path), "files": files, "soft_cap_stats": stats}


def soft_cap_current(
    last: Commit | None, settings: Mapping[str, Any], options: Mapping[str, str] | None = None
) -> bool:
    """Whether the last commit's Soft Cap Sampling file is still valid for ``settings``."""
    if last is None or "soft_cap" not in last.summary:
        return False
    keys = ("soft_cap_samples", "penalty", "seed")
    if any(last.config.get(k) != settings.get(k) for k in keys):
        return False
    return files_unchanged(last.summary["soft_cap"]["files"], options)


def remove_soft_cap_sample(out: Out, options: Mapping[str, str] | None = None) -> bool:
    """Remove a Soft Cap Sampling file left by an earlier configuration. Whether one existed."""
    if is_remote(out):
        return ost.delete_file(f"{str(out).rstrip('/')}/{SOFT_CAP_FILE}", options or {})
    path = Path(out) / SOFT_CAP_FILE
    if path.exists():
        path.unlink()
        return True
    return False


def clean_legacy(out: Out, options: Mapping[str, str] | None = None) -> list[str]:
    """Remove the earlier layout's whole-corpus files (see :func:`remove_legacy_files`)."""
    removed = remove_legacy_files(out, options or {})
    if removed:
        logger.info("export: removed files of the whole-corpus layout: %s", removed)
    return removed


@dataclass
class ExportOutcome:
    """What one run of the export did and the figures it reports.

    Attributes:
        summary: The commit's summary (``layout``, ``shards``, ``totals``, ``failures``,
            ``plan``, optionally ``soft_cap``).
        up_to_date: Nothing was written: inputs, settings and files are as last committed.
        plan: The plan followed.
        written: What was rewritten (None when up to date).
        legacy_removed: Whole-corpus files of the earlier layout removed by this run.
    """

    summary: dict[str, Any]
    up_to_date: bool
    plan: ExportPlan
    written: ShardsWritten | None = None
    legacy_removed: list[str] = field(default_factory=list)


def run_export(
    store: DeltaStore,
    out: Out,
    settings: Mapping[str, Any],
    *,
    soft_cap_samples: int,
    penalty: float,
    seed: int,
    webdataset: bool,
    shard_size: int,
    budget: MemoryBudget,
) -> ExportOutcome:
    """The export stage: plan, rewrite the shards that changed, Soft Cap file, commit last.

    Holds the ``export`` lock of the store for the whole run (two exports never interleave).
    Nothing is written when the inputs, the settings and the files are as the last commit
    left them.

    Args:
        store: The Delta store.
        out: The export folder, or an object-store URI (``s3://...``: the storage options are
            the store's, else the environment's; see :mod:`.remote`).
        settings: The configuration recorded with the commit (with :data:`SHARD_SETTINGS`,
            ``soft_cap_samples``, ``penalty``, ``seed``).
        soft_cap_samples: Draws of the Soft Cap Sampling multiset; 0 = none.
        penalty: Its repetition penalty.
        seed: Its seed.
        webdataset: Also write WebDataset tars per shard.
        shard_size: Samples per tar.
        budget: The step's memory budget.

    Memory: one shard's rows at a time (:func:`export_shards`); with Soft Cap Sampling, four
    columns of every manifest row (:func:`write_soft_cap_sample`).
    """
    with store.lock(EXPORT_STAGE):
        inputs = input_versions(store, EXPORT_INPUTS)
        last = last_commit(store, EXPORT_STAGE)
        plan = plan_export(store, out, last, settings)
        options = export_options(store)
        soft_ok = soft_cap_samples == 0 or soft_cap_current(last, settings, options)
        done = current_commit(store, EXPORT_STAGE, inputs=inputs, config=settings)
        if done is not None and not plan.rewrite and soft_ok:
            return ExportOutcome(done.summary, True, plan)
        if plan.full and not partitioned_by_shard(store, CURATED_DATASET.name):
            store.replace_table(CURATED_DATASET, CURATED_DATASET.empty())
        written = export_shards(
            store,
            out,
            plan.rewrite,
            webdataset=webdataset,
            shard_size=shard_size,
            budget=budget,
        )
        written.entries.update(
            export_drops(store, out, plan.drops, shard_size=shard_size, options=options)
        )
        written.patched = sorted(plan.drops)
        if plan.full:  # every shard's rows were rewritten: the changes are all superseded
            drop_changes(store, CURATED_DATASET)
        else:
            fold(store, CURATED_DATASET)
        legacy = clean_legacy(out, options)
        entries = {**plan.carried, **written.entries}
        figures = totals(entries)
        carried_failures = [
            f
            for f in (last.summary.get("failures", []) if last is not None else [])
            if f.get("shard") in plan.carried
        ]
        summary: dict[str, Any] = {
            "layout": LAYOUT,
            "plan": plan.reason,
            "shards": dict(sorted(entries.items())),
            "totals": figures,
            "failures": (written.failures + carried_failures)[:MAX_FAILURE_EXAMPLES],
        }
        if soft_cap_samples:
            moved = written.written or written.removed or written.patched
            if soft_ok and not moved and last is not None:
                summary["soft_cap"] = last.summary["soft_cap"]
            else:
                summary["soft_cap"] = write_soft_cap_sample(
                    store,
                    out,
                    n_rows=figures["rows"],
                    soft_cap_samples=soft_cap_samples,
                    penalty=penalty,
                    seed=seed,
                    budget=budget,
                )
        else:
            remove_soft_cap_sample(out, options)
        version = store.version(CURATED_DATASET.name)
        if version is None:  # nothing exported yet: an empty, partitioned manifest
            version = store.replace_table(CURATED_DATASET, CURATED_DATASET.empty())
        outputs = {CURATED_DATASET.name: version}
        record_commit(
            store, EXPORT_STAGE, inputs=inputs, outputs=outputs, config=settings, summary=summary
        )
        return ExportOutcome(summary, False, plan, written, legacy)
