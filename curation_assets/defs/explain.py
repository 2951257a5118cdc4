"""Explain: "why is this image where it is?" as an asset launched by hand from the UI.

``image_explanation`` is materialized from the Launchpad with the image to explain (a path or
an image id) and optionally ``as_of``; its materialization's metadata is the trace rendered
as markdown (with a thumbnail), plus the trace as JSON. It has no automation condition, so
the automation sensor never requests it, and no dependencies: it reads the tables as they
are (or were), it does not wait for them. The work is :mod:`curation_assets.lib.explain`.
"""

import base64
from pathlib import Path

import dagster as dg
from pydantic import Field

from curation_assets.defs.resources import DeltaStorage, ShardSource
from curation_assets.defs.retries import fail_fast
from curation_assets.lib.explain import TargetError, explain, parse_as_of, render_markdown
from curation_assets.lib.export.run import export_root
from curation_assets.lib.images import make_thumbnail, read_source_bytes

GROUP = "explain"


class ExplainConfig(dg.Config):
    """Which input to explain, and as of when."""

    image: str = Field(
        description="A path (a file of a folder shard, <tar path>#<member>, a file a manifest "
        "lists) or an image id (sha256 hex, or its first 8+ characters)."
    )
    as_of: list[str] = Field(
        default_factory=list,
        description="Read the tables as of an ISO timestamp (UTC when no zone is given) and/or "
        "pin tables to versions, e.g. ['2025-01-31T12:00:00', 'curated_dataset=12']. Empty: "
        "the latest version of every table.",
    )
    export_dir: str = Field(
        default="", description="The export folder; empty = $CURATION_HOME/export."
    )
    thumbnail: bool = Field(default=True, description="Show a thumbnail of the image.")


def _thumbnail(uri: str | None) -> str | None:
    """A data URI of the image at ``uri``, or None when it cannot be read any more."""
    if not uri:
        return None
    try:
        data = make_thumbnail(read_source_bytes(uri))
    except Exception:  # a moved or corrupt source only loses the picture, never the trace
        return None
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


@dg.asset(
    description=(
        "Why is this image where it is? Launch with an image path or id (config `image`, "
        "optionally `as_of`): the materialization shows every decision about it — its shard, "
        "ingested or quarantined (reason), exact duplicate of which file, embedding model, "
        "every classifier's score vs threshold and label, filtered or kept, its five clusters, "
        "its near-duplicate group, its weight and attribute shares, and where it is exported — "
        "read from the Delta tables (time travel with `as_of`), never recomputed. Never runs "
        "by itself."
    ),
    kinds={"deltalake", "polars"},
    group_name=GROUP,
    check_specs=[
        dg.AssetCheckSpec(
            "tables_agree_on_the_image",
            asset="image_explanation",
            description="The tables tell one story about the image (e.g. not both kept and "
            "rejected by the filter, a kept copy for every exact duplicate, assignments made "
            "with the centroids in force); each disagreement is listed.",
        )
    ],
)
@fail_fast
def image_explanation(
    context: dg.AssetExecutionContext,
    config: ExplainConfig,
    delta: DeltaStorage,
    shard_source: ShardSource,
) -> dg.MaterializeResult:
    """Trace ``config.image`` through the tables and show it as markdown metadata.

    Cost: one shard partition per per-shard table plus the image's rows of the global tables
    (an id lookup also reads the ``image_id`` column of the three ingest tables); memory: the
    image's rows. See :mod:`curation_assets.lib.explain`.
    """
    try:
        trace = explain(
            delta.store(),
            config.image,
            source_root=Path(shard_source.root),
            as_of=parse_as_of(config.as_of),
            export_dir=export_root(config.export_dir or delta.export_root),
        )
    except TargetError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    context.log.info(trace.fate)
    thumb = _thumbnail(trace.source_uri) if config.thumbnail else None
    reads = sum(len(s.sources) for s in trace.stages)
    metadata: dict = {
        "explanation": dg.MetadataValue.md(render_markdown(trace, thumb)),
        "fate": dg.MetadataValue.text(trace.fate),
        "image_id": dg.MetadataValue.text(trace.image_id or ""),
        "shard": dg.MetadataValue.text(trace.shard or ""),
        "outcomes": dg.MetadataValue.json({s.stage: s.outcome for s in trace.stages}),
        "table_versions": dg.MetadataValue.json(trace.versions),
        "table_reads": reads,
        "trace": dg.MetadataValue.json(trace.to_json()),
    }
    if trace.source_uri and "#" not in trace.source_uri:
        metadata["source"] = dg.MetadataValue.path(trace.source_uri)
    check = dg.AssetCheckResult(
        check_name="tables_agree_on_the_image",
        passed=not trace.conflicts,
        metadata={"conflicts": dg.MetadataValue.json(trace.conflicts)},
    )
    return dg.MaterializeResult(metadata=metadata, check_results=[check])


defs = dg.Definitions(assets=[image_explanation])
