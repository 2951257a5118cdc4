"""The later stages of a trace: cluster, dedup, weights, export.

Per-shard tables (``cluster_assignments_<c>``, ``deduplicated_images``, ``sample_weights``,
``curated_dataset``) are read in the image's shard partition only. Global tables are read
filtered: ``cluster_centroids_<c>`` by centroid id (without the vectors), ``duplicate_pairs``
by the image's id on either side, ``duplicate_members`` by the image's group (both ∝ pairs,
never ∝ images), and the small ``bias_audit`` (one row per attribute value) and ``dedup_runs``
(one row per run) whole.

The weight's effect on attribute shares: the audit's shares are read from ``bias_audit``; which
attribute values this image has is derived from its ``raw_images`` row with the audit's own
functions (:func:`~curation_assets.lib.weights.audit.metadata_attributes`, caption keywords
as whole words, forms from ``DEFAULT_KEYWORDS`` for its groups, else the group's name).
Zero-shot concepts would need the text encoder, so they are listed as not determined.
"""

import re
from pathlib import Path
from typing import Any

import polars as pl

from curation_assets.lib.explain.early import Context, absent
from curation_assets.lib.explain.model import Stage
from curation_assets.lib.explain.snapshot import Source
from curation_assets.lib.objectstore import join, stat
from curation_assets.lib.tables import (
    BIAS_AUDIT,
    CANDIDATE_PAIRS,
    CURATED_DATASET,
    DEDUP_RUNS,
    DEDUPLICATED_IMAGES,
    DUPLICATE_MEMBERS,
    DUPLICATE_PAIRS,
    IMAGE_UNIQUENESS,
    N_CLUSTERINGS,
    RAW_IMAGES,
    SAMPLE_WEIGHTS,
    WEIGHT_SHARD_STATS,
    assignments_spec,
    centroids_spec,
)
from curation_assets.lib.weights.audit import (
    DEFAULT_KEYWORDS,
    keyword_pattern,
    metadata_attributes,
)


def cluster_stage(ctx: Context) -> Stage:
    """The image's cluster in each of the five clusterings (cosine, centroid version, size)."""
    sources: list[Source] = []
    rows = []
    for c in range(N_CLUSTERINGS):
        a, src = ctx.rows(assignments_spec(c), ["cluster", "cosine", "centroids_version"])
        sources.append(src)
        if not a.height:
            continue
        row = a.row(0, named=True)
        cent, csrc = ctx.snap.read(
            centroids_spec(c),
            columns=["centroid_id", "train_size", "version", "seed"],
            where=[[("centroid_id", "=", row["cluster"])]],
            scope=f"centroid_id={row['cluster']}",
        )
        sources.append(csrc)
        info = cent.row(0, named=True) if cent.height else {}
        if info and info["version"] != row["centroids_version"]:
            ctx.conflicts.append(
                f"clustering {c}: assigned with centroids {row['centroids_version']}, the "
                f"table now holds {info['version']} (the assignment is stale)"
            )
        rows.append(
            {
                "clustering": c,
                "cluster": row["cluster"],
                "cosine": float(row["cosine"]),
                "centroids_version": row["centroids_version"],
                "cluster_train_size": info.get("train_size"),
                "seed": info.get("seed"),
            }
        )
    if (stage := absent("cluster", sources)) is not None:
        return stage
    details = {"assignments": rows}
    if not rows:
        return Stage("cluster", "pending", "Not assigned to clusters yet.", details, sources)
    parts = ", ".join(f"c{r['clustering']}→{r['cluster']} ({r['cosine']:.2f})" for r in rows)
    outcome = "assigned" if len(rows) == N_CLUSTERINGS else "pending"
    missing = "" if len(rows) == N_CLUSTERINGS else f" ({N_CLUSTERINGS - len(rows)} not yet)"
    return Stage("cluster", outcome, f"Clusters (cosine): {parts}{missing}.", details, sources)


def dedup_stage(ctx: Context) -> Stage:
    """Kept (alone or for its group) or removed as a near duplicate of which image."""
    assert ctx.image_id is not None
    dedup, src = ctx.rows(DEDUPLICATED_IMAGES)
    sources = [src]
    if (stage := absent("dedup", sources)) is not None:
        return stage
    if not dedup.height:
        return Stage("dedup", "pending", "Not deduplicated yet.", {}, sources)
    row = dedup.row(0, named=True)
    members, msrc = ctx.snap.read(
        DUPLICATE_MEMBERS,
        columns=["image_id", "shard", "kept", "similarity", "component_size"],
        where=[[("component_id", "=", row["component_id"])]],
        scope="component_id",
    )
    pairs, psrc = ctx.snap.read(
        DUPLICATE_PAIRS,
        where=[[("image_id_a", "=", ctx.image_id)], [("image_id_b", "=", ctx.image_id)]],
        scope="image_id_a or image_id_b",
    )
    band, bsrc = ctx.snap.read(
        CANDIDATE_PAIRS,
        where=[[("image_id_a", "=", ctx.image_id)], [("image_id_b", "=", ctx.image_id)]],
        scope="image_id_a or image_id_b",
    )
    runs, rsrc = ctx.snap.read(DEDUP_RUNS, columns=["run_at", "mode", "tau"], scope="all")
    sources += [msrc, psrc, bsrc, rsrc]
    near_misses = _partners(band, ctx.image_id)
    tau = float(runs.sort("run_at")["tau"][-1]) if runs.height else None
    direct = _partners(pairs, ctx.image_id)
    details: dict[str, Any] = {
        **row,
        "similarity": None if row["similarity"] is None else float(row["similarity"]),
        "tau": tau,
        "group_size": members.height or 1,
        "pairs": direct,
        "candidates_below_tau": near_misses,
    }
    miss = (
        f" Closest candidate below τ: {near_misses[0]['other'][:12]} at cosine "
        f"{near_misses[0]['similarity']:.3f} (a retune to τ ≤ that would join them)."
        if near_misses
        else ""
    )
    if row["kept"]:
        if members.height <= 1:
            summary = "Kept: no other image in any of its clusters is within the threshold."
            return Stage("dedup", "unique", summary + miss, details, sources)
        summary = (
            f"Kept for its near-duplicate group of {members.height} (the keep policy chose it); "
            f"{len(direct)} direct pair(s)."
        )
        return Stage("dedup", "kept", summary, details, sources)
    kept_id = row["duplicate_of"]
    kept_shard = next(
        (m["shard"] for m in members.iter_rows(named=True) if m["image_id"] == kept_id), None
    )
    kept_uri = None
    if kept_shard is not None:
        kept, ksrc = ctx.snap.read(
            RAW_IMAGES,
            shards=[kept_shard],
            where=[[("image_id", "=", kept_id)]],
            columns=["source_uri"],
            scope=f"shard={kept_shard}, image_id",
        )
        sources.append(ksrc)
        kept_uri = kept["source_uri"][0] if kept.height else None
    else:
        ctx.conflicts.append(f"duplicate_of {kept_id} is not a member of the image's group")
    pair = next((p for p in direct if p["other"] == kept_id), None)
    found = (
        f", pair found by clustering(s) {pair['clusterings']}"
        if pair
        else " (linked through other members of the group, not a direct pair)"
    )
    details.update(kept_shard=kept_shard, kept_source_uri=kept_uri)
    summary = (
        f"Removed as a near duplicate of {kept_id[:12]} ({kept_uri or 'source unknown'}), "
        f"cosine {row['similarity']:.3f}"
        + (f" ≥ τ {tau:.2f}" if tau is not None else "")
        + f"{found}; group of {details['group_size']}."
    )
    return Stage("dedup", "near_duplicate", summary, details, sources)


def _partners(pairs: pl.DataFrame, image_id: str) -> list[dict[str, Any]]:
    """The other image of each pair on ``image_id``, most similar first."""
    return [
        {
            "other": r["image_id_b"] if r["image_id_a"] == image_id else r["image_id_a"],
            "similarity": float(r["similarity"]),
            "clusterings": r["clusterings"],
        }
        for r in pairs.sort("similarity", descending=True).iter_rows(named=True)
    ]


def _attributes(raw: dict[str, Any], audit: pl.DataFrame) -> list[tuple[str, str]]:
    """(attribute, value) pairs of the image that the audit reports."""
    frame = pl.DataFrame([{k: raw.get(k) for k in ("image_id", "width", "height", "format")}])
    frame = frame.with_columns(pl.lit(raw.get("caption"), dtype=pl.String).alias("caption"))
    meta = metadata_attributes(frame).row(0, named=True)
    have = [(k, str(v)) for k, v in meta.items() if k != "image_id" and v is not None]
    caption = raw.get("caption") or ""
    for name in audit.filter(pl.col("attribute") == "keyword")["value"].unique().sort():
        forms = DEFAULT_KEYWORDS.get(name, (name,))
        if caption.strip() and re.search(keyword_pattern(forms), caption):
            have.append(("keyword", name))
    return have


def weights_stage(ctx: Context) -> Stage:
    """The image's weight, and the shares of its attribute values before and after weighting."""
    w, src = ctx.rows(SAMPLE_WEIGHTS, ["weight", "raw_ratio", "p_unfiltered", "p_kept", "clipped"])
    audit, asrc = ctx.snap.read(BIAS_AUDIT, scope="all")
    sources = [src, asrc]
    if (stage := absent("weights", sources)) is not None:
        return stage
    if not w.height:
        return Stage("weights", "pending", "No sample weight yet.", {}, sources)
    row = w.row(0, named=True)
    shares = []
    if ctx.raw is not None and audit.height:
        index = {(r["attribute"], r["value"]): r for r in audit.iter_rows(named=True)}
        for key in _attributes(ctx.raw, audit):
            r = index.get(key)
            if r is not None:
                shares.append(
                    {
                        "attribute": key[0],
                        "value": key[1],
                        "share_unfiltered": r["share_unfiltered"],
                        "share_filtered": r["share_filtered"],
                        "share_weighted": r["share_weighted"],
                    }
                )
    concepts = audit.filter(pl.col("attribute") == "concept")["value"].unique().to_list()
    details = {**row, "attribute_shares": shares, "concepts_not_determined": sorted(concepts)}
    uniqueness, usources = _uniqueness(ctx, row)
    sources += usources
    if uniqueness is not None:
        details["uniqueness"] = uniqueness
    direction = "up-weighted" if row["weight"] > 1 else "down-weighted"
    summary = (
        f"Weight {row['weight']:.3f} ({direction}; P(kept | x) ≈ {row['p_kept']:.2f}"
        + (", clipped" if row["clipped"] else "")
        + (f"; {_uniqueness_text(uniqueness)}" if uniqueness is not None else "")
        + f"): it counts as {row['weight']:.2f} images towards "
        + (", ".join(f"{s['attribute']}={s['value']}" for s in shares) or "its attributes")
        + "."
    )
    return Stage("weights", "weighted", summary, details, sources)


UNIQUENESS_COLUMNS = ["scale", "uniqueness_power", "uniqueness_floor", "uniqueness_reference"]


def _uniqueness(ctx: Context, row: dict[str, Any]) -> tuple[dict[str, Any] | None, list[Source]]:
    """The uniqueness multiplier in the image's weight, when its shard was weighted with one.

    The term (α, floor, u_ref) and scale come from the shard's ``weight_shard_stats`` row; the
    score from the image's ``image_uniqueness`` row. An unclipped weight shows the multiplier
    it was made with exactly (``weight / (scale · raw_ratio)``, whatever the score is now); a
    clipped one the multiplier of the current score (1 without one).
    """
    if "uniqueness_power" not in ctx.snap.columns(WEIGHT_SHARD_STATS):
        return None, []
    stats, src = ctx.snap.read(
        WEIGHT_SHARD_STATS,
        where=[[("shard", "=", ctx.shard)]],
        columns=UNIQUENESS_COLUMNS,
        scope=f"shard={ctx.shard}",
    )
    if not stats.height or stats["uniqueness_power"][0] is None:
        return None, [src]
    term = stats.row(0, named=True)
    found, usrc = ctx.rows(IMAGE_UNIQUENESS, ["uniqueness"])
    score = float(found["uniqueness"][0]) if found.height else None
    if not row["clipped"] and term["scale"] and row["raw_ratio"]:
        multiplier = row["weight"] / (term["scale"] * row["raw_ratio"])
    elif score is None:
        multiplier = 1.0
    else:
        floored = max(score, term["uniqueness_floor"])
        multiplier = (floored / term["uniqueness_reference"]) ** term["uniqueness_power"]
    return {
        "score": score,
        "power": term["uniqueness_power"],
        "floor": term["uniqueness_floor"],
        "reference": term["uniqueness_reference"],
        "multiplier": multiplier,
    }, [src, usrc]


def _uniqueness_text(u: dict[str, Any]) -> str:
    score = "no score" if u["score"] is None else f"{u['score']:.3f}"
    return (
        f"uniqueness {score} vs median {u['reference']:.3f} → ×{u['multiplier']:.2f} "
        f"(uniqueness_power {u['power']:g})"
    )


def export_stage(ctx: Context, export_dir: Path | str | None) -> Stage:
    """In ``curated_dataset`` (its shard's manifest rows) and the export folder, or not.

    ``export_dir`` may be an object-store URI (read with the store's storage options).
    """
    row, src = ctx.rows(CURATED_DATASET, ["image_id", "weight", "source_uri"])
    sources = [src]
    if (stage := absent("export", sources)) is not None:
        return stage
    if not row.height:
        return Stage("export", "pending", "Not in the training manifest yet.", {}, sources)
    details: dict[str, Any] = dict(row.row(0, named=True))
    where = f"curated_dataset (shard {ctx.shard})"
    if export_dir is not None:
        folder = join(export_dir, f"shard={ctx.shard}", "curated_dataset.parquet")
        found = stat(folder, ctx.snap.store.storage_options) is not None
        details["export_file"] = folder if found else None
        if found:
            where += f" and {folder}"
    summary = f"Exported with weight {details['weight']:.3f} in {where}."
    return Stage("export", "exported", summary, details, sources)
