"""The commit log of multi-table stages (``stage_commits``).

Written and read by :mod:`curation_assets.lib.commits`.
"""

import polars as pl

from curation_assets.lib.tables.spec import UTC_TIMESTAMP, Column, TableSpec

STAGE_COMMITS = TableSpec(
    name="stage_commits",
    description="One row per committed run of a multi-table stage: versions read and written.",
    partition_by=(),
    columns=(
        Column("stage", pl.String, "Stage name (dedup, weights, export)."),
        Column("committed_at", UTC_TIMESTAMP, "When the run committed (UTC)."),
        Column("inputs", pl.String, "JSON: table → Delta version read (null: absent)."),
        Column("outputs", pl.String, "JSON: table → Delta version written."),
        Column("config", pl.String, "JSON: the configuration that shaped the outputs."),
        Column("summary", pl.String, "JSON: the figures reported with the outputs."),
        Column("writer", pl.String, "host:pid of the committing process."),
    ),
)

STAGE_SETTINGS = TableSpec(
    name="stage_settings",
    description="The settings in force of each per-shard stage (filter, classifier scores): "
    "one row per change, so a setting chosen once applies to every later shard.",
    partition_by=(),
    columns=(
        Column("stage", pl.String, "Stage name (filter, score)."),
        Column("recorded_at", UTC_TIMESTAMP, "When these settings were first used (UTC)."),
        Column("settings", pl.String, "JSON: every sticky setting's value."),
        Column("writer", pl.String, "host:pid of the recording process."),
    ),
)
