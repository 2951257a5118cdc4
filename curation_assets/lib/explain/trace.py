"""``explain``: trace one input through every stage, from the Delta tables as of a moment."""

from pathlib import Path

from curation_assets.lib.explain.early import (
    Context,
    classify_stage,
    embed_stage,
    filter_stage,
    ingest_stage,
)
from curation_assets.lib.explain.late import (
    cluster_stage,
    dedup_stage,
    export_stage,
    weights_stage,
)
from curation_assets.lib.explain.locate import INGEST_TABLES, Found, TargetError, locate
from curation_assets.lib.explain.model import FINAL, STAGE_NAMES, Stage, Trace
from curation_assets.lib.explain.snapshot import AsOf, Snapshot
from curation_assets.lib.storage import DeltaStore


def explain(
    store: DeltaStore,
    target: str,
    *,
    source_root: Path,
    as_of: AsOf | None = None,
    export_dir: Path | str | None = None,
) -> Trace:
    """Why ``target`` (a path or an image id) is where it is, stage by stage.

    Args:
        store: The Delta tables.
        target: A path (a file of a folder shard, ``<tar>#<member>``, a file a manifest lists)
            or an image id (sha256 hex, or a prefix of at least 8 characters).
        source_root: The folder whose entries are shards (to find a path's shard).
        as_of: Which table versions to read (default: the latest of each).
        export_dir: The export folder or URI, to say which file holds an exported image.

    Returns:
        The trace: one stage per stage reached, each with the tables and versions it read.

    Raises:
        TargetError: If no ingest table holds the target (the message says where it looked)
            or an id prefix is ambiguous.
        AsOfError: If a pinned version does not exist.
    """
    as_of = as_of or AsOf()
    snap = Snapshot(store, as_of)
    found = locate(snap, target, source_root)
    if found.empty:
        raise TargetError(_not_found(found, snap, source_root))
    ctx = Context(snap)
    stages = [ingest_stage(ctx, found)]
    steps = (
        lambda: embed_stage(ctx),
        lambda: classify_stage(ctx),
        lambda: filter_stage(ctx),
        lambda: cluster_stage(ctx),
        lambda: dedup_stage(ctx),
        lambda: weights_stage(ctx),
        lambda: export_stage(ctx, export_dir),
    )
    for name, step in zip(STAGE_NAMES[1:], steps, strict=True):
        last = stages[-1]
        if last.outcome == "not_reached":
            stages.append(Stage(name, "not_reached", last.summary))
        elif last.outcome in FINAL or ctx.image_id is None:
            stages.append(Stage(name, "not_reached", f"Not reached: {_ended(last)}"))
        elif last.outcome in ("pending", "table_absent"):
            stages.append(Stage(name, "pending", f"Waits for {last.stage}."))
        else:
            stages.append(step())
    return Trace(
        target=target,
        as_of=as_of.to_json(),
        found_by=found.how,
        image_id=ctx.image_id,
        shard=ctx.shard,
        source_uri=_source_uri(found, ctx),
        fate=_fate(stages),
        stages=stages,
        conflicts=ctx.conflicts,
        versions=snap.resolved,
    )


def _source_uri(found: Found, ctx: Context) -> str | None:
    """The input's location: the file asked about, else the image's ingested copy."""
    if found.kind == "path":
        for df in (found.raw, found.duplicates, found.quarantine):
            if df.height:
                return df["source_uri"][0]
    if ctx.raw is not None:
        return ctx.raw["source_uri"]
    return found.quarantine["source_uri"][0] if found.quarantine.height else None


def _ended(stage: Stage) -> str:
    return f"{stage.stage} {stage.outcome.replace('_', ' ')}."


def _fate(stages: list[Stage]) -> str:
    """One sentence: the last decision made about the input."""
    ingest = stages[0]
    prefix = "Exact duplicate; its image: " if ingest.outcome == "exact_duplicate" else ""
    decided = [s for s in stages if s.outcome not in ("not_reached", "pending", "table_absent")]
    last = decided[-1]
    if last.outcome in FINAL:
        return prefix + last.summary
    if last.stage == "export":
        return prefix + last.summary
    waiting = next((s for s in stages if s.outcome in ("pending", "table_absent")), None)
    where = f"; waiting for {waiting.stage}" if waiting else ""
    return f"{prefix}In progress: {last.stage} {last.outcome.replace('_', ' ')}{where}."


def _not_found(found: Found, snap: Snapshot, source_root: Path) -> str:
    looked = ", ".join(
        f"{s.table}@v{s.version}" if s.version is not None else f"{s.table} (absent then)"
        for s in found.sources
    )
    when = "" if snap.as_of.latest else f" as of {snap.as_of.to_json()}"
    if found.kind == "image_id":
        return f"no input with image id {found.target!r}{when}: looked in {looked} (every shard)"
    shards = found.shards or []
    never = ""
    if found.how.startswith("the path is outside"):
        never = (
            f"; it was never enumerated: it is not under the source root {source_root} and "
            "no manifest shard lists it"
        )
    else:
        ingested = {s for s in shards if any(s in snap.shards(t) for t in INGEST_TABLES)}
        missing = sorted(set(shards) - ingested)
        if missing:
            never = f"; shard(s) {', '.join(missing)} not ingested{when or ' yet'}"
        elif found.how.startswith("shard"):
            never = (
                "; the shard was ingested but this file is not one of its inputs (a caption "
                "sidecar, a hidden file, or a file added after the ingest)"
            )
    return (
        f"{found.target!r} is not in any ingest table{when}: {found.how}; looked for "
        f"{' or '.join(found.uris)} in {looked}{never}"
    )


__all__ = ["TargetError", "explain"]
