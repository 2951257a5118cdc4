"""Why is this image where it is? One input traced through every decision, from the tables.

:func:`explain` takes a path (a file of a folder shard, ``<tar>#<member>``, a file a manifest
lists) or an image id and returns a :class:`Trace`: one :class:`Stage` per pipeline stage —
ingest (ingested, quarantined with the reason, or collapsed as an exact duplicate of which
file), embed (model), classify (every scorer's score vs threshold, with the label if one
exists), filter, cluster (its cluster in each of the five clusterings), dedup (its group, the
kept image, the similarity, which clusterings found the pair), weights (its weight and the
shares of its attribute values before and after weighting) and export — each naming the
tables and versions it read. :func:`render_text` (the CLI) and :func:`render_markdown` (the
Dagster UI) show it; :meth:`Trace.to_json` and :func:`trace_from_json` serve tools.

Design choices:

* **The answer comes from the Delta tables, not from recomputation**: nothing is embedded,
  scored or clustered again. The one derivation is which attribute values of the bias audit
  the image has (format, orientation, size, caption keywords), computed from its own
  ``raw_images`` row with the audit's own functions (see :mod:`.late`).
* **Bounded cost: the shard first.** :mod:`.locate` finds the input's shard from the path's
  layout (or, for an id, from one column-pruned lookup), then every per-shard table is read
  in that partition only, and global tables only in the rows about the image (see each
  module's docstring for what a read costs). Every read records its table, version, rows and
  files opened, so the trace shows its cost. Nothing is ever read whole except tables with a
  row per category, attribute value or run.
* **Time travel** (:mod:`.snapshot`): ``AsOf`` reads each table at the last version committed
  at or before a timestamp, or at a pinned version (``curated_dataset=12``). Each table is
  resolved on its own — there is no global version — so a table that did not exist then is
  reported as ``table_absent`` for its stage instead of failing the trace.
* **One record per stage**, JSON-ready, in pipeline order; stages after a removal are
  ``not_reached``; stages whose table lacks the image are ``pending`` (the pipeline has not
  got there yet). Disagreements between tables (an image both kept and rejected) are listed
  as ``conflicts`` rather than hidden.

This package never imports dagster (``defs/explain.py`` is its Dagster view).
"""

from curation_assets.lib.explain.locate import IMAGE_ID, TargetError, layout_shard
from curation_assets.lib.explain.model import STAGE_NAMES, Stage, Trace, trace_from_json
from curation_assets.lib.explain.render import render_markdown, render_text
from curation_assets.lib.explain.snapshot import AsOf, AsOfError, Snapshot, Source, parse_as_of
from curation_assets.lib.explain.trace import explain

__all__ = [
    "IMAGE_ID",
    "STAGE_NAMES",
    "AsOf",
    "AsOfError",
    "Snapshot",
    "Source",
    "Stage",
    "TargetError",
    "Trace",
    "explain",
    "layout_shard",
    "parse_as_of",
    "render_markdown",
    "render_text",
    "trace_from_json",
]
