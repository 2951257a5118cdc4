"""A trace for people: plain text (the CLI) and markdown (the Dagster UI)."""

from typing import Any

from curation_assets.lib.explain.model import Stage, Trace


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _detail_lines(stage: Stage) -> list[str]:
    """Indented lines under a stage: scores, pairs, clusters, attribute shares."""
    d: dict[str, Any] = stage.details
    lines = []
    for r in d.get("scores", []):
        thr = "no threshold" if r["threshold"] is None else f"threshold {r['threshold']:.3f}"
        label = "" if r["label"] is None else f", label {r['label']} ({r['label_source']})"
        lines.append(
            f"{r['category']}: score {r['score']:.3f}, {thr}, {r['scorer']}, classifier "
            f"{r['classifier_status']}{label}"
        )
    for r in d.get("assignments", []):
        lines.append(
            f"clustering {r['clustering']}: cluster {r['cluster']} (cosine {r['cosine']:.3f}, "
            f"{r['cluster_train_size']} training rows, centroids {r['centroids_version']})"
        )
    for p in d.get("pairs", []):
        lines.append(
            f"pair with {p['other'][:16]}: cosine {p['similarity']:.3f}, found by "
            f"clustering(s) {p['clusterings']}"
        )
    for s in d.get("attribute_shares", []):
        lines.append(
            f"{s['attribute']}={s['value']}: {_pct(s['share_unfiltered'])} unfiltered → "
            f"{_pct(s['share_filtered'])} filtered → {_pct(s['share_weighted'])} weighted"
        )
    if d.get("concepts_not_determined"):
        lines.append(
            "concepts not determined (needs the text encoder): "
            + ", ".join(d["concepts_not_determined"])
        )
    return lines


def _sources(stage: Stage) -> str:
    return ", ".join(
        f"{s.table}@v{s.version}" if s.version is not None else f"{s.table} (absent)"
        for s in stage.sources
    )


def render_text(trace: Trace) -> str:
    """The trace as plain text: a header, one block per stage, the tables read."""
    as_of = "latest version of every table"
    if trace.as_of.get("timestamp") or trace.as_of.get("versions"):
        pins = ", ".join(f"{k}={v}" for k, v in trace.as_of.get("versions", {}).items())
        as_of = ", ".join(x for x in (trace.as_of.get("timestamp"), pins) if x)
    out = [
        f"{trace.target}",
        f"  fate      {trace.fate}",
        f"  image_id  {trace.image_id or '(none: not hashed)'}",
        f"  shard     {trace.shard}",
        f"  source    {trace.source_uri}",
        f"  found     {trace.found_by}",
        f"  as of     {as_of}",
        "",
    ]
    for stage in trace.stages:
        out.append(f"{stage.stage:<9} {stage.outcome:<15} {stage.summary}")
        out += [f"{'':<26}{line}" for line in _detail_lines(stage)]
        if stage.sources:
            out.append(f"{'':<26}[{_sources(stage)}]")
    out.append("")
    out.append("conflicts: " + ("; ".join(trace.conflicts) if trace.conflicts else "none"))
    return "\n".join(out)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(trace: Trace, thumbnail: str | None = None) -> str:
    """The trace as markdown: a header, a table of stages, details; ``thumbnail``: a data URI."""
    head = [f"### {_md(trace.fate)}", ""]
    if thumbnail:
        head += [f"![{(trace.image_id or '')[:8]}]({thumbnail})", ""]
    head += [
        f"- **target**: `{trace.target}`",
        f"- **image_id**: `{trace.image_id}`",
        f"- **shard**: `{trace.shard}`",
        f"- **source**: `{trace.source_uri}`",
        f"- **found**: {_md(trace.found_by)}",
        f"- **as of**: `{trace.as_of}`",
        "",
        "| stage | outcome | what happened | tables (version) |",
        "|---|---|---|---|",
    ]
    rows = []
    for s in trace.stages:
        what = _md(s.summary)
        extra = _detail_lines(s)
        if extra:
            what += " · " + " · ".join(_md(x) for x in extra)  # the UI drops <br>
        rows.append(f"| {s.stage} | **{s.outcome}** | {what} | {_md(_sources(s))} |")
    tail = ["", "**conflicts**: " + (_md("; ".join(trace.conflicts)) or "none")]
    return "\n".join(head + rows + tail)
