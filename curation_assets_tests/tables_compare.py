"""Every Delta table under a root, read and compared with another run's (tests only).

Shared by the fault-injection tests (a killed-and-re-run home against a clean one) and the
object-store test (an ``s3://`` root against a local one). :func:`read_tables` reads every
table under a local folder or an object-store URI, dropping what legitimately differs between
two runs (timestamps, wall times, :data:`VOLATILE` columns, :data:`SKIP_TABLES`, repeats
in :data:`SET_TABLES`);
:func:`converged` compares two such sets: rows lost and equality up to 1e-6 on floats.
"""

import base64
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from deltalake import DeltaTable

from curation_assets.lib.objectstore import is_remote, join, list_names
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import TABLES

#: Columns that legitimately differ between two runs of the same inputs.
VOLATILE = {
    "dedup_runs": {"reason", "seconds"},
    "similarity_index": {"file"},  # <model>/shard=<key>/<uuid>.faiss: a fresh uuid per build
    "stage_settings": {"writer"},  # host:pid of the recording process
}
SKIP_TABLES = {"stage_commits"}  # versions and writer pids differ by construction
#: Append-only tables whose rows are a set: a run killed after appending and run again appends
#: the same rows twice (readers take one row per key), so they are compared as sets.
SET_TABLES = {"duplicate_vectors"}
#: JSON columns holding float32 arrays (base64, ``*_f32_b64``) and floats: their numbers are
#: compared like float columns (1e-6), the rest of the JSON exactly, but for the timestamps
#: (keys ending in ``_at``, like datetime columns).
JSON_FLOATS = {"safety_classifiers": "classifier_json"}


def _pull_floats(node: Any, out: list[float]) -> Any:
    """``node`` with every float and decoded ``*_f32_b64`` array moved into ``out``.

    Keys ending in ``_at`` (timestamps) are left out.
    """
    if isinstance(node, dict):
        kept = {}
        for key in sorted(node):
            value = node[key]
            if key.endswith("_at"):
                continue
            if key.endswith("_f32_b64") and isinstance(value, str):
                out.extend(np.frombuffer(base64.b64decode(value), dtype="<f4").tolist())
                kept[key] = "f32"
            else:
                kept[key] = _pull_floats(value, out)
        return kept
    if isinstance(node, list):
        return [_pull_floats(v, out) for v in node]
    if isinstance(node, float):
        out.append(node)
        return "float"
    return node


def split_json_floats(df: pl.DataFrame, column: str) -> pl.DataFrame:
    """``column`` (JSON) as its float-free text plus ``<column>_floats`` (every number in it)."""
    texts, numbers = [], []
    for text in df[column].to_list():
        if text is None:
            texts.append(None)
            numbers.append(None)
            continue
        found: list[float] = []
        texts.append(json.dumps(_pull_floats(json.loads(text), found), sort_keys=True))
        numbers.append(found)
    return df.with_columns(
        pl.Series(column, texts, dtype=pl.String),
        pl.Series(f"{column}_floats", numbers, dtype=pl.List(pl.Float64)),
    )


def read_tables(
    root: str | Path,
    storage_options: Mapping[str, str] | None = None,
    *,
    replace: Mapping[str, str] | None = None,
) -> dict[str, pl.DataFrame]:
    """Every Delta table directly under ``root`` (a folder or ``s3://`` URI), comparable.

    Entries starting with ``_`` (locks, index files, the export) and :data:`SKIP_TABLES` are
    left out; datetime columns and :data:`VOLATILE` columns are dropped. ``replace`` maps
    substrings of string columns to what they become (e.g. a home's path to ``HOME``, for two
    runs whose sources sit in different homes).
    """
    options = dict(storage_options or {})
    remote = is_remote(root)
    out = {}
    for name in list_names(root, options):
        if name.startswith("_") or name in SKIP_TABLES:
            continue
        uri = join(root, name)
        if not DeltaTable.is_deltatable(uri, storage_options=options if remote else None):
            continue
        spec = TABLES.get(name)
        if spec is not None and spec.revision_key is not None:  # changed in place: as read
            df = DeltaStore(str(root), options).read(spec)
        else:
            df = pl.read_delta(uri, storage_options=options if remote else None)
        drop = [c for c, t in df.schema.items() if isinstance(t, pl.Datetime)]
        drop += [c for c in VOLATILE.get(name, ()) if c in df.columns]
        df = df.drop(drop)
        if name in SET_TABLES:
            df = df.unique()
        if name in JSON_FLOATS and JSON_FLOATS[name] in df.columns:
            df = split_json_floats(df, JSON_FLOATS[name])
        for old, new in (replace or {}).items():
            df = df.with_columns(pl.col(pl.String).str.replace_all(old, new, literal=True))
        out[name] = df
    return out


def _is_float_list(t: pl.DataType) -> bool:
    return isinstance(t, pl.List) and t.inner.is_float()


def _exact_columns(df: pl.DataFrame) -> list[str]:
    return [c for c, t in df.schema.items() if not (t.is_float() or _is_float_list(t))]


def compare(clean: pl.DataFrame, got: pl.DataFrame) -> tuple[int, bool]:
    """(rows of ``clean`` missing from ``got``, tables equal up to 1e-6 on floats)."""
    if set(clean.columns) != set(got.columns):
        return clean.height, False
    got = got.select(clean.columns)
    keys = _exact_columns(clean)
    lost = clean.join(got, on=keys, how="anti", nulls_equal=True).height if keys else 0
    if clean.height != got.height or lost:
        return max(lost, clean.height - got.height), False
    a, b = clean.sort(keys, nulls_last=True), got.sort(keys, nulls_last=True)
    for c in clean.columns:
        if c in keys:
            if not a[c].equals(b[c]):
                return 0, False
            continue
        if _is_float_list(clean.schema[c]):
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


def converged(
    got: Mapping[str, pl.DataFrame], expected: Mapping[str, pl.DataFrame]
) -> tuple[int, bool, list[str]]:
    """(rows lost, every table equal, the tables that differ or are missing or extra)."""
    lost, equal, bad = 0, True, []
    for table, df in expected.items():
        if table not in got:
            lost, equal = lost + df.height, False
            bad.append(table)
            continue
        n, same = compare(df, got[table])
        lost += n
        if not same:
            equal = False
            bad.append(table)
    extra = sorted(set(got) - set(expected))
    return lost, equal and not extra, bad + extra
