"""Table maintenance in Dagster: ``vacuum_job`` and its weekly schedule (off by default).

The job deletes the Delta files no committed state needs (:mod:`curation_assets.lib.maintenance`):
replaced or orphaned more than ``retention_hours`` ago, never a version a stage's latest commit
records. Its op reports, per table, the files and bytes it deleted as output metadata.
"""

from typing import Any

import dagster as dg
import polars as pl
from pydantic import Field

from curation_assets.defs.resources import DeltaStorage
from curation_assets.lib.maintenance import DEFAULT_RETENTION_HOURS, Vacuumed, summary, vacuum


class VacuumConfig(dg.Config):
    """What ``vacuum_tables`` deletes."""

    retention_hours: int = Field(
        default=DEFAULT_RETENTION_HOURS,
        ge=0,
        description="Keep files replaced (or left by a killed writer) less than this long ago; "
        "longer than the longest run. Default a week, Delta's own.",
    )
    dry_run: bool = Field(default=False, description="Count only; delete nothing.")
    tables: list[str] = Field(
        default_factory=list, description="Only these tables (default: every table)."
    )


def vacuum_metadata(done: list[Vacuumed], config: VacuumConfig) -> dict[str, Any]:
    """Output metadata of a vacuum: totals and a per-table Markdown table."""
    table = summary(done).filter(pl.col("files") > 0)
    files = int(table["files"].sum())
    sizes = [b for b in table["bytes"].to_list() if b is not None]
    lines = ["| table | files | MiB | versions kept for commits |", "|---|---|---|---|"]
    for r in table.iter_rows(named=True):
        mib = "n/a" if r["bytes"] is None else f"{r['bytes'] / 2**20:.1f}"
        lines.append(f"| {r['table']} | {r['files']} | {mib} | {r['kept_versions']} |")
    return {
        "dry_run": config.dry_run,
        "retention_hours": config.retention_hours,
        "tables": len(done),
        "files": files,
        **({"bytes": int(sum(sizes))} if sizes else {}),
        "per_table": dg.MetadataValue.md("\n".join(lines) if files else "nothing to delete"),
    }


@dg.op(
    description="Delete the Delta files no reader needs any more (VACUUM): replaced or orphaned "
    "more than retention_hours ago, never those of a version a stage's latest commit records "
    "(what a crashed stage's next run reads back)."
)
def vacuum_tables(
    context: dg.OpExecutionContext, config: VacuumConfig, delta: DeltaStorage
) -> None:
    """Vacuum every table (or ``config.tables``) and report what went."""
    done = vacuum(
        delta.store(),
        retention_hours=config.retention_hours,
        dry_run=config.dry_run,
        tables=config.tables or None,
    )
    metadata = vacuum_metadata(done, config)
    context.add_output_metadata(metadata)
    verb = "would delete" if config.dry_run else "deleted"
    context.log.info(f"vacuum: {verb} {metadata['files']} files")


@dg.job(
    description="Delete old Delta files (VACUUM) that no committed state needs: disk stays "
    "bounded by the live tables plus a week of replaced files."
)
def vacuum_job() -> None:
    """One op: :func:`vacuum_tables`."""
    vacuum_tables()


vacuum_schedule = dg.ScheduleDefinition(
    name="vacuum_schedule",
    job=vacuum_job,
    cron_schedule="0 3 * * 0",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Sundays 03:00: vacuum_job with its defaults (off until switched on).",
)

defs = dg.Definitions(jobs=[vacuum_job], schedules=[vacuum_schedule])
