"""The first stages of a trace: ingest, embed, classify, filter (one shard partition each).

Each function takes the :class:`Context` (the snapshot, the image and its shard) and returns
one :class:`~curation_assets.lib.explain.model.Stage`. Per-shard tables are read in the
image's shard partition only, with an ``image_id`` row filter; the global tables read here are
small (``safety_classifiers``: one row per category) or filtered by ``image_id`` (``labels``).
"""

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from curation_assets.lib.explain.locate import Found
from curation_assets.lib.explain.model import Stage
from curation_assets.lib.explain.snapshot import Filter, Snapshot, Source
from curation_assets.lib.tables import (
    CLASSIFIER_SCORES,
    FILTER_REJECTIONS,
    FILTERED_IMAGES,
    IMAGE_EMBEDDINGS,
    LABELS,
    QUARANTINE,
    RAW_IMAGES,
    SAFETY_CLASSIFIERS,
    TableSpec,
)


@dataclass
class Context:
    """The image being traced.

    Attributes:
        snap: The tables as of the asked moment.
        image_id: The image's id (None before one is known).
        shard: The shard whose partitions hold the image's rows.
        raw: Its ``raw_images`` row (None when it has none).
        conflicts: Disagreements between tables found so far.
    """

    snap: Snapshot
    image_id: str | None = None
    shard: str | None = None
    raw: dict[str, Any] | None = None
    conflicts: list[str] = field(default_factory=list)

    def rows(
        self, spec: TableSpec, columns: list[str] | None = None, *extra: Filter
    ) -> tuple[pl.DataFrame, Source]:
        """The image's rows of per-shard table ``spec`` (its shard's partition only)."""
        assert self.image_id is not None and self.shard is not None
        return self.snap.read(
            spec,
            shards=[self.shard],
            where=[[("image_id", "=", self.image_id), *extra]],
            columns=columns,
            scope=f"shard={self.shard}, image_id",
        )


def absent(stage: str, sources: list[Source]) -> Stage | None:
    """A ``table_absent`` stage when the first source's table did not exist then, else None."""
    missing = [s.table for s in sources if s.version is None]
    if not missing or sources[0].version is not None:
        return None
    return Stage(
        stage,
        "table_absent",
        f"{', '.join(missing)} did not exist at the as-of moment: the stage had not run yet.",
        {"missing_tables": missing},
        sources,
    )


def _fmt_uri(row: dict[str, Any]) -> str:
    return str(row.get("source_uri"))


def ingest_stage(ctx: Context, found: Found) -> Stage:
    """Ingested, quarantined or collapsed as an exact duplicate (sets the context's image)."""
    sources = list(found.sources)
    if found.raw.is_empty() and found.quarantine.is_empty() and found.duplicates.is_empty():
        raise AssertionError("ingest_stage needs a found target")
    ingest_q = found.quarantine.filter(pl.col("stage") == "ingest")
    kinds = [
        n for n, df in (("raw_images", found.raw), ("quarantine", ingest_q)) if not df.is_empty()
    ]
    if found.kind == "path" and not found.duplicates.is_empty():
        kinds.append("exact_duplicates")
    if len(kinds) > 1:
        ctx.conflicts.append(f"the input is in {' and '.join(kinds)} (ingest writes one of them)")
    if found.kind == "path" and not found.duplicates.is_empty() and found.raw.is_empty():
        dup = found.duplicates.row(0, named=True)
        ctx.image_id, ctx.shard = dup["image_id"], dup["kept_shard"]
        kept, src = ctx.rows(RAW_IMAGES)
        sources.append(src)
        ctx.raw = kept.row(0, named=True) if kept.height else None
        if ctx.raw is None:
            ctx.conflicts.append(
                f"exact_duplicates points at {dup['kept_source_uri']} in {dup['kept_shard']}, "
                "which has no raw_images row"
            )
        same = dup["kept_source_uri"] == dup["source_uri"]
        where = "listed twice in its shard" if same else f"same bytes as {dup['kept_source_uri']}"
        summary = (
            f"Collapsed as an exact duplicate ({where}, shard {dup['kept_shard']}); the rest of "
            f"this trace follows that image, {dup['image_id'][:12]}."
        )
        return Stage("ingest", "exact_duplicate", summary, {**dup}, sources)
    if not found.raw.is_empty():
        ctx.raw = found.raw.row(0, named=True)
        ctx.image_id, ctx.shard = ctx.raw["image_id"], ctx.raw["shard"]
        details = {k: _json(v) for k, v in ctx.raw.items()}
        if not found.duplicates.is_empty():
            details["exact_duplicates"] = found.duplicates["source_uri"].to_list()
        copies = found.duplicates.height
        extra = f"; {copies} byte-identical file(s) collapsed into it" if copies else ""
        summary = (
            f"Ingested from shard {ctx.shard}: {ctx.raw['format']} "
            f"{ctx.raw['width']}×{ctx.raw['height']}, {ctx.raw['n_bytes']} bytes{extra}."
        )
        return Stage("ingest", "ingested", summary, details, sources)
    rows = ingest_q if not ingest_q.is_empty() else found.quarantine
    q = rows.row(0, named=True)
    ctx.image_id, ctx.shard = q["image_id"], q["shard"]
    summary = f"Quarantined at {q['stage']} in shard {q['shard']}: {q['reason']} ({q['detail']})."
    return Stage("ingest", "quarantined", summary, {k: _json(v) for k, v in q.items()}, sources)


def _json(value: Any) -> Any:
    """A JSON-ready value (timestamps as ISO strings)."""
    return value.isoformat() if hasattr(value, "isoformat") else value


def embed_stage(ctx: Context) -> Stage:
    """Embedded (model and dimension), quarantined at embed, or not yet."""
    emb, src = ctx.rows(IMAGE_EMBEDDINGS, ["image_id", "shard", "model_id", "dim"])
    q, qsrc = ctx.rows(QUARANTINE, None, ("stage", "=", "embed"))
    sources = [src, qsrc]
    if (stage := absent("embed", sources)) is not None:
        return stage
    if emb.height and q.height:
        ctx.conflicts.append("the image is in image_embeddings and quarantined at embed")
    if emb.height:
        row = emb.row(0, named=True)
        summary = f"Embedded with {row['model_id']} ({row['dim']} dimensions)."
        return Stage("embed", "embedded", summary, row, sources)
    if q.height:
        row = {k: _json(v) for k, v in q.row(0, named=True).items()}
        summary = f"Quarantined at embed: {row['reason']} ({row['detail']})."
        return Stage("embed", "quarantined", summary, row, sources)
    return Stage(
        "embed", "pending", "Not embedded yet (its shard's embed step has not run).", {}, sources
    )


def classify_stage(ctx: Context) -> Stage:
    """Every scorer's score against its threshold, with the image's labels if any."""
    scores, src = ctx.rows(CLASSIFIER_SCORES, ["category", "score", "threshold", "scorer"])
    labels, lsrc = ctx.snap.read(
        LABELS, where=[[("image_id", "=", ctx.image_id)]], scope="image_id"
    )
    classifiers, csrc = ctx.snap.read(
        SAFETY_CLASSIFIERS, columns=["category", "status", "reason", "threshold"], scope="all"
    )
    sources = [src, lsrc, csrc]
    if (stage := absent("classify", sources)) is not None:
        return stage
    latest = (
        labels.sort("labeled_at").group_by("category", maintain_order=True).last()
        if labels.height
        else labels
    )
    label_of = {r["category"]: r for r in latest.iter_rows(named=True)}
    status_of = {r["category"]: r for r in classifiers.iter_rows(named=True)}
    rows = []
    for r in scores.sort("category").iter_rows(named=True):
        lab = label_of.get(r["category"])
        over = r["threshold"] is not None and r["score"] >= r["threshold"]
        rows.append(
            {
                **r,
                "score": float(r["score"]),
                "over_threshold": over,
                "label": None if lab is None else int(lab["label"]),
                "label_source": None if lab is None else lab["source"],
                "classifier_status": status_of.get(r["category"], {}).get("status"),
            }
        )
    unscored = [lab for cat, lab in label_of.items() if cat not in {r["category"] for r in rows}]
    details: dict[str, Any] = {
        "scores": rows,
        "labels_without_score": [{k: _json(v) for k, v in lab.items()} for lab in unscored],
    }
    if not rows:
        return _unscored(ctx, classifiers, details, sources)
    parts = [
        f"{r['category']} {r['score']:.3f} "
        + (
            "(no threshold: score only)"
            if r["threshold"] is None
            else f"{'≥' if r['over_threshold'] else '<'} {r['threshold']:.3f}"
        )
        + ("" if r["label"] is None else f", labelled {r['label']}")
        for r in rows
    ]
    return Stage("classify", "scored", "Scores: " + "; ".join(parts) + ".", details, sources)


def _unscored(
    ctx: Context, classifiers: pl.DataFrame, details: dict[str, Any], sources: list[Source]
) -> Stage:
    """No score: pending, unless the filter already decided (no classifier could score it).

    With every category skipped (too few labels, no text tower) and no pretrained scorer,
    ``classifier_scores`` holds no row and the filter keeps every image: that is a final
    state, told as such with each classifier's reason, not "not scored yet".
    """
    kept, _ = ctx.rows(FILTERED_IMAGES, ["image_id"])
    removed, _ = ctx.rows(FILTER_REJECTIONS, ["category"])
    if not (kept.height or removed.height):
        return Stage("classify", "pending", "Not scored yet.", details, sources)
    why = "; ".join(
        f"{r['category']} {r['status']}" + (f" ({r['reason']})" if r["reason"] else "")
        for r in classifiers.sort("category").iter_rows(named=True)
    )
    details["classifiers"] = classifiers.select("category", "status", "reason").to_dicts()
    return Stage(
        "classify",
        "not_scored",
        "No classifier scored it" + (f": {why}" if why else ": none is configured") + ".",
        details,
        sources,
    )


def filter_stage(ctx: Context) -> Stage:
    """Kept by the filter, or removed (category, score, threshold)."""
    kept, src = ctx.rows(FILTERED_IMAGES, ["image_id"])
    removed, rsrc = ctx.rows(FILTER_REJECTIONS, ["category", "score", "threshold"])
    sources = [src, rsrc]
    if (stage := absent("filter", sources)) is not None:
        return stage
    if kept.height and removed.height:
        ctx.conflicts.append("the image is in filtered_images and in filter_rejections")
    if removed.height:
        reasons = [{**r, "score": float(r["score"])} for r in removed.iter_rows(named=True)]
        why = "; ".join(f"{r['category']} {r['score']:.3f} ≥ {r['threshold']:.3f}" for r in reasons)
        return Stage(
            "filter", "removed", f"Removed by the filter: {why}.", {"reasons": reasons}, sources
        )
    if kept.height:
        return Stage("filter", "kept", "Kept: no classifier reached its threshold.", {}, sources)
    return Stage("filter", "pending", "Not filtered yet.", {}, sources)
