"""Conventional Dagster metadata built from lib table specs."""

import math
from typing import Any

import dagster as dg
import polars as pl

from curation_assets.defs.lineage import COLUMN_LINEAGE, column_lineage
from curation_assets.lib.checks import Check
from curation_assets.lib.tables import TableSpec


def table_schema(spec: TableSpec) -> dg.TableSchema:
    """The ``dagster/column_schema`` of a table, from the same spec that writes it."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name=c.name, type=str(c.dtype), description=c.description)
            for c in spec.columns
        ]
    )


def table_metadata(spec: TableSpec, uri: str, rows: int, **extra: Any) -> dict[str, Any]:
    """``dagster/row_count``, ``dagster/column_schema``, ``dagster/uri`` plus ``extra``.

    Also ``dagster/column_lineage`` when :data:`~curation_assets.defs.lineage.COLUMN_LINEAGE`
    declares it for the table (tables are named like their assets).
    """
    lineage = column_lineage(spec.name) if spec.name in COLUMN_LINEAGE else {}
    return {
        "dagster/row_count": rows,
        "dagster/column_schema": table_schema(spec),
        "dagster/uri": uri,
        **lineage,
        **extra,
    }


def markdown_preview(df: pl.DataFrame, limit: int = 10) -> dg.MetadataValue:
    """A small markdown table of the first rows, for the asset's metadata panel."""
    head = df.head(limit)
    if head.is_empty():
        return dg.MetadataValue.md("_no rows_")
    cols = head.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in head.iter_rows():
        cells = [_cell(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return dg.MetadataValue.md("\n".join(lines))


def markdown_bars(
    labels: list[str],
    values: list[float] | list[int],
    *,
    header: tuple[str, str] = ("", "value"),
    width: int = 30,
) -> str:
    """A markdown table of horizontal unicode bars (Dagster renders markdown, not plots).

    Args:
        labels: One label per bar.
        values: Non-negative values; the largest gets ``width`` cells. A value that is not
            finite (NaN: undefined, e.g. a recall with no pair to find) is shown as ``n/a``
            with no bar.
        header: Titles of the label and value columns.
        width: Cells of the longest bar.
    """
    top = max([*(v for v in values if math.isfinite(v)), 1e-12])
    lines = [f"| {header[0]} | {header[1]} | |", "|---|---:|---|"]
    for label, v in zip(labels, values, strict=True):
        if not math.isfinite(v):
            lines.append(f"| {label} | n/a | |")
            continue
        shown = f"{v:g}" if isinstance(v, float) else str(v)
        lines.append(f"| {label} | {shown} | `{'█' * max(0, round(width * v / top))}` |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 60 else text[:28] + "…" + text[-28:]


def check_result(check: Check) -> dg.AssetCheckResult:
    """A lib :class:`~curation_assets.lib.checks.Check` as Dagster's asset check result."""
    return dg.AssetCheckResult(
        check_name=check.name,
        asset_key=check.asset,
        passed=check.passed,
        severity=dg.AssetCheckSeverity.WARN if check.warn else dg.AssetCheckSeverity.ERROR,
        metadata=check.metadata,
        description=check.description,
    )
