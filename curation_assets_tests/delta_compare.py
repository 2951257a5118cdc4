"""Every Delta table of a curation home, and whether two homes' tables are equal.

Shared by the fault-injection tests (a killed and re-run home against a clean one) and the
PostgreSQL instance test (a run on PostgreSQL against the same run on sqlite).
"""

from pathlib import Path

import numpy as np
import polars as pl

#: Columns that legitimately differ between a clean run and a killed-and-re-run one.
VOLATILE = {
    "dedup_runs": {"reason", "seconds"},
    "similarity_index": {"file"},  # an absolute path under the home: homes differ by design
}
SKIP_TABLES = {"stage_commits"}  # versions and writer pids differ by construction


def delta_tables(home: Path, root: Path | None = None) -> dict[str, pl.DataFrame]:
    """Every Delta table under ``root`` (default ``home/delta``), volatile columns dropped."""
    root = root or home / "delta"
    out = {}
    for d in sorted(root.iterdir()):
        if d.name.startswith("_") or d.name in SKIP_TABLES or not (d / "_delta_log").is_dir():
            continue
        df = pl.read_delta(str(d))
        drop = [c for c, t in df.schema.items() if isinstance(t, pl.Datetime)]
        drop += [c for c in VOLATILE.get(d.name, ()) if c in df.columns]
        out[d.name] = df.drop(drop)
    return out


def is_float_list(t: pl.DataType) -> bool:
    return isinstance(t, pl.List) and t.inner.is_float()


def exact_columns(df: pl.DataFrame) -> list[str]:
    return [c for c, t in df.schema.items() if not (t.is_float() or is_float_list(t))]


def compare_table(clean: pl.DataFrame, got: pl.DataFrame) -> tuple[int, bool]:
    """(rows of ``clean`` missing from ``got``, tables equal up to 1e-6 on floats)."""
    if set(clean.columns) != set(got.columns):
        return clean.height, False
    got = got.select(clean.columns)
    keys = exact_columns(clean)
    lost = clean.join(got, on=keys, how="anti", nulls_equal=True).height if keys else 0
    if clean.height != got.height or lost:
        return max(lost, clean.height - got.height), False
    a, b = clean.sort(keys, nulls_last=True), got.sort(keys, nulls_last=True)
    for c in clean.columns:
        if c in keys:
            if not a[c].equals(b[c]):
                return 0, False
            continue
        if is_float_list(clean.schema[c]):
            x = [np.asarray(v or [], dtype=float) for v in a[c].to_list()]
            y = [np.asarray(v or [], dtype=float) for v in b[c].to_list()]
            if any(
                u.shape != v.shape or not np.allclose(u, v, atol=1e-6, equal_nan=True)
                for u, v in zip(x, y, strict=True)
            ):
                return 0, False
        elif not np.allclose(
            a[c].to_numpy().astype(float), b[c].to_numpy().astype(float), atol=1e-6, equal_nan=True
        ):
            return 0, False
    return 0, True


def converged(got: dict[str, pl.DataFrame], expected: dict) -> tuple[int, bool, list[str]]:
    """(rows lost, every table equal, the tables that differ)."""
    lost, equal, bad = 0, True, []
    for table, df in expected.items():
        if table not in got:
            lost, equal = lost + df.height, False
            bad.append(table)
            continue
        n, same = compare_table(df, got[table])
        lost += n
        if not same:
            equal = False
            bad.append(table)
    return lost, equal and set(got) == set(expected), bad
