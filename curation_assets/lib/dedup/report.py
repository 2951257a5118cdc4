"""What the dedup assets report: figures, checks, the recall chart and group thumbnails.

Plain values only (numbers, strings, lists, dicts, markdown text): the assets wrap them in
Dagster metadata and check results.
"""

import base64
from typing import Any

import polars as pl

from curation_assets.lib.checks import Check
from curation_assets.lib.dedup.run import DedupOutcome
from curation_assets.lib.images import SourceReader, make_thumbnail
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import RAW_IMAGES


def recall_values(outcome: DedupOutcome) -> list[float]:
    """Pair recall of 1, 2, ..., C clusterings (empty when there was no pair to find)."""
    return [float(r) for r in outcome.recall.get("recall", [])]


def dedup_figures(outcome: DedupOutcome) -> dict[str, Any]:
    """The figures of ``deduplicated_images``, in the order the asset shows them.

    Returns:
        mode, mode_reason, tau, policy, images, kept, removed, new_images,
        groups_with_duplicates, largest_group, removed_below_tau_through_chains,
        previously_kept_now_removed, pending_shards, search (``units``, or ``new_rows``: an
        incremental run's one pass over clustering 0's buckets), units_searched, buckets,
        largest_unit_rows, units_engine (local or ray), units_ray_nodes (Ray nodes that searched
        units), rewritten_shards (written whole: new, redone, or all in a full run), patched_shards
        and patched_rows (shards whose changed decisions were appended, and those rows),
        dedup_seconds (and per phase), recall_true_pairs,
        recall_measured_on, ``recall_<c>_clusterings`` and ``recall_<c>_stderr`` for c = 1..C.
    """
    stats, recall = outcome.stats, outcome.recall
    stderr = recall.get("stderr", [])
    figures: dict[str, Any] = {
        "mode": outcome.plan.mode,
        "mode_reason": outcome.plan.reason,
        "tau": outcome.tau,
        "policy": ", ".join(outcome.policy),
        "images": int(stats.get("images", 0)),
        "kept": int(stats.get("kept", 0)),
        "removed": int(stats.get("removed", 0)),
        "new_images": int(stats.get("new_rows", 0)),
        "groups_with_duplicates": int(stats.get("components_with_duplicates", 0)),
        "largest_group": int(stats.get("largest_component", 0)),
        "removed_below_tau_through_chains": int(stats.get("removed_below_tau", 0)),
        "previously_kept_now_removed": int(stats.get("previously_kept_now_removed", 0)),
        "pending_shards": outcome.pending.height,
        "search": str(stats.get("search", "units")),
        "units_searched": int(stats.get("units", 0)),
        "units_total": int(stats.get("units_total", 0)),
        "largest_unit_rows": int(stats.get("largest_unit_rows", 0)),
        "staged_rows": int(stats.get("staged_rows", 0)),
        "units_engine": str(stats.get("engine", "local")),
        "units_ray_nodes": int(stats.get("unit_nodes", 0)),
        "rewritten_shards": int(stats.get("rewritten_shards", 0)),
        "patched_shards": int(stats.get("patched_shards", 0)),
        "patched_rows": int(stats.get("patched_rows", 0)),
        "dedup_seconds": float(stats.get("seconds", 0.0)),
        **{
            f"dedup_seconds_{phase}": float(stats[f"seconds_{phase}"])
            for phase in ("layout", "search", "staging", "merge", "recall")
            if f"seconds_{phase}" in stats
        },
        "recall_true_pairs": int(recall.get("true_pairs", 0)),
        "recall_measured_on": str(recall.get("measured_on", "n/a")),
        "recall_seconds_exhaustive": float(
            (recall.get("sample") or {}).get("seconds_exhaustive", 0.0)
        ),
    }
    for i, r in enumerate(recall_values(outcome)):
        figures[f"recall_{i + 1}_clusterings"] = r
        if i < len(stderr):
            figures[f"recall_{i + 1}_stderr"] = float(stderr[i])
    return figures


def recall_chart(outcome: DedupOutcome) -> tuple[str, list[str], list[float]] | None:
    """Title, labels and values of the pair-recall bar chart (None without a recall curve)."""
    curve = recall_values(outcome)
    if not curve:
        return None
    recall = outcome.recall
    title = f"Pair recall against exhaustive search ({recall.get('measured_on', '')}):\n\n"
    return (
        title,
        [f"{i + 1} clustering(s)" for i in range(len(curve))],
        [round(r, 4) for r in curve],
    )


def found_by_counts(outcome: DedupOutcome) -> dict[str, int]:
    """Pairs found by exactly 1, 2, ... clusterings, keyed ``"<c> clustering(s)"``."""
    counts = outcome.stats.get("found_by_count", [])
    return {f"{i + 1} clustering(s)": int(v) for i, v in enumerate(counts)}


def dedup_checks(outcome: DedupOutcome, recall_target: float) -> list[Check]:
    """The four checks of the dedup assets, computed from a run's outcome.

    * ``pair_recall_target`` (WARN): the union of clusterings finds at least ``recall_target``
      of the true pairs of the recall sample (passes when there was nothing to measure).
    * ``one_kept_per_group``: each group has exactly one kept image, and every removed image
      points to its group's kept image.
    * ``every_filtered_image_deduplicated`` (WARN): no shard waits for assignments (the
      waiting ones are listed with the reason, the first 50).
    * ``no_pair_below_tau``: every reported pair has cosine ≥ τ.
    """
    members, pairs, tau = outcome.members, outcome.pairs, outcome.tau
    curve = recall_values(outcome)
    true_pairs = int(outcome.recall.get("true_pairs", 0))
    final_recall = curve[-1] if curve else None
    groups = members.group_by("component_id").agg(
        pl.col("kept").sum().alias("kept"),
        pl.len().alias("n"),
        pl.first("component_size").alias("size"),
    )
    kept_ids = members.filter(pl.col("kept"))["image_id"].implode()
    bad_pointer = members.filter(
        ~pl.col("kept")
        & (
            ~pl.col("duplicate_of").is_in(kept_ids)
            | (pl.col("duplicate_of") != pl.col("component_id"))
        )
    ).height
    bad_groups = groups.filter((pl.col("kept") != 1) | (pl.col("n") != pl.col("size"))).height
    below = pairs.filter(pl.col("similarity") < tau).height if pairs.height else 0
    pending = outcome.pending
    pending_by_shard = dict(pending.select("shard", "why").head(50).rows())
    return [
        Check(
            "pair_recall_target",
            "deduplicated_images",
            final_recall is None or true_pairs == 0 or final_recall >= recall_target,
            True,
            {
                "recall": final_recall if final_recall is not None else "n/a",
                "target": recall_target,
                "true_pairs": true_pairs,
                "stderr": (outcome.recall.get("stderr") or ["n/a"])[-1],
                "measured_on": str(outcome.recall.get("measured_on", "n/a")),
            },
        ),
        Check(
            "one_kept_per_group",
            "deduplicated_images",
            bad_groups == 0 and bad_pointer == 0,
            False,
            {"bad_groups": bad_groups, "bad_pointers": bad_pointer},
        ),
        Check(
            "every_filtered_image_deduplicated",
            "deduplicated_images",
            pending.height == 0,
            True,
            {"pending_shards": pending.height, "pending": pending_by_shard},
        ),
        Check(
            "no_pair_below_tau",
            "duplicate_pairs",
            below == 0,
            False,
            {"below_tau": below, "tau": tau},
        ),
    ]


def group_thumbnails(store: DeltaStore, members: pl.DataFrame, *, n_groups: int = 4) -> str:
    """:func:`duplicate_groups_markdown` of ``members``, reading the images from their sources.

    Only the shown images' shards of ``raw_images`` are read.
    """
    chosen = pick_groups(members, n_groups)
    shown = members.filter(pl.col("component_id").is_in(chosen))
    uris = _source_uris(store, shown["shard"], shown["image_id"])
    with SourceReader() as reader:
        return duplicate_groups_markdown(shown, uris, reader.read, n_groups=n_groups)


def _source_uris(store: DeltaStore, shards: pl.Series, ids: pl.Series) -> pl.DataFrame:
    """``image_id, source_uri`` of the shown images: their shards, filtered in the scan."""
    return (
        store.scan(RAW_IMAGES)
        .filter(
            pl.col("shard").is_in(shards.unique().to_list())
            & pl.col("image_id").is_in(ids.unique().to_list())
        )
        .select("image_id", "source_uri")
        .collect()
    )


def pick_groups(images: pl.DataFrame, n_groups: int = 4) -> list[str]:
    """Components worth looking at: half the most borderline (lowest similarity), half largest.

    Args:
        images: deduplicated_images rows.
        n_groups: Groups to return at most.

    Returns:
        component_id values, most borderline first.
    """
    groups = (
        images.filter(pl.col("component_size") > 1)
        .group_by("component_id")
        .agg(pl.min("similarity").alias("low"), pl.first("component_size").alias("size"))
    )
    if groups.is_empty() or n_groups < 1:
        return []
    borderline = groups.sort("low", "component_id").head((n_groups + 1) // 2)["component_id"]
    largest = groups.filter(~pl.col("component_id").is_in(borderline.implode()))
    largest = largest.sort(["size", "component_id"], descending=[True, False])
    return [*borderline.to_list(), *largest.head(n_groups - borderline.len())["component_id"]]


def duplicate_groups_markdown(
    images: pl.DataFrame,
    uris: pl.DataFrame,
    read: Any,
    *,
    n_groups: int = 4,
    max_members: int = 5,
    px: int = 80,
) -> str:
    """Thumbnails of a few near-duplicate groups as markdown (inline base64 JPEG).

    Each group is a table: the kept image first, then up to ``max_members`` removed members
    (lowest similarity first), with the similarity to the kept image under each thumbnail.

    Args:
        images: deduplicated_images rows.
        uris: image_id, source_uri (e.g. raw_images).
        read: ``source_uri -> bytes``.
        n_groups: Groups shown (see :func:`pick_groups`).
        max_members: Removed members shown per group.
        px: Longest side of a thumbnail.

    Returns:
        Markdown; ``_no near-duplicate groups_`` when there are none. An unreadable image is
        shown as its error, not skipped.
    """
    chosen = pick_groups(images, n_groups)
    if not chosen:
        return "_no near-duplicate groups_"
    rows = images.filter(pl.col("component_id").is_in(chosen)).join(
        uris.unique("image_id"), on="image_id", how="left"
    )
    out = []
    for comp in chosen:
        g = rows.filter(pl.col("component_id") == comp).sort(
            pl.col("kept").not_(), pl.col("similarity"), "image_id"
        )
        members = g.head(max_members + 1)
        cells, captions = [], []
        for rec in members.iter_rows(named=True):
            try:
                thumb = make_thumbnail(read(rec["source_uri"]), px, quality=70)
                cells.append(
                    f"![{rec['image_id'][:8]}](data:image/jpeg;base64,"
                    f"{base64.b64encode(thumb).decode('ascii')})"
                )
            except Exception as exc:  # a missing file must not hide the other thumbnails
                cells.append(f"unreadable: {type(exc).__name__}")
            captions.append("kept" if rec["kept"] else f"{rec['similarity']:.3f}")
        size = int(g["component_size"][0])
        more = size - members.height
        out.append(
            f"**{size} images** (kept `{comp[:12]}`{f', {more} more not shown' if more else ''})"
        )
        out.append("| " + " | ".join(cells) + " |")
        out.append("|" + "---|" * len(cells))
        out.append("| " + " | ".join(captions) + " |")
        out.append("")
    return "\n".join(out)


def sweep_markdown(sweep: pl.DataFrame, tau: float, floor: float, *, width: int = 24) -> str:
    """The τ sweep as a markdown table: pairs, groups, removed (with a bar), precision/recall.

    The row of the τ in force is marked; rows below the floor cannot exist (never stored).
    """
    if sweep.is_empty():
        return "_no stored pairs_"
    truth = sweep["precision"].is_not_null().any() or sweep["recall"].is_not_null().any()
    top = max(1, int(sweep["removed"].to_numpy().max(initial=0)))
    head = "| τ | pairs | groups | removed | |" + (" precision | recall |" if truth else "")
    lines = [
        f"Stored pairs reach τ_min = {floor:g}: any τ in [{floor:g}, 1] is a retune (seconds, "
        "no search); below it a full run.\n",
        head,
        "|---:|---:|---:|---:|---|" + ("---:|---:|" if truth else ""),
    ]
    for r in sweep.iter_rows(named=True):
        mark = " **← τ**" if abs(r["tau"] - tau) < 1e-9 else ""
        bar = "█" * round(width * r["removed"] / top)
        row = f"| {r['tau']:.3f}{mark} | {r['pairs']} | {r['groups']} | {r['removed']} | `{bar}` |"
        if truth:
            p, rc = r["precision"], r["recall"]
            row += f" {'-' if p is None else f'{p:.3f}'} | {'-' if rc is None else f'{rc:.3f}'} |"
        lines.append(row)
    return "\n".join(lines)


def pair_thumbnails(store: DeltaStore, pairs: pl.DataFrame, tau: float, *, px: int = 80) -> str:
    """Thumbnails of stored pairs (image a, image b, cosine, side of τ) as markdown.

    Only the shown pairs' shards of ``raw_images`` are read.
    """
    if pairs.is_empty():
        return "_no stored pairs near τ_"
    uris = _source_uris(
        store,
        pl.concat([pairs["shard_a"], pairs["shard_b"]]),
        pl.concat([pairs["image_id_a"], pairs["image_id_b"]]),
    )
    where = dict(zip(uris["image_id"].to_list(), uris["source_uri"].to_list(), strict=True))
    lines = ["| a | b | cosine | at τ |", "|---|---|---:|---|"]
    with SourceReader() as reader:
        for r in pairs.iter_rows(named=True):
            cells = []
            for key in ("image_id_a", "image_id_b"):
                try:
                    thumb = make_thumbnail(reader.read(where[r[key]]), px, quality=70)
                    cells.append(
                        f"![{r[key][:8]}](data:image/jpeg;base64,"
                        f"{base64.b64encode(thumb).decode('ascii')})"
                    )
                except Exception as exc:  # one unreadable image must not hide the others
                    cells.append(f"unreadable: {type(exc).__name__}")
            side = "duplicate" if r["similarity"] >= tau else "candidate (kept apart)"
            lines.append(f"| {cells[0]} | {cells[1]} | {r['similarity']:.4f} | {side} |")
    return "\n".join(lines)
