"""`curation run` with every table, the export and the index files on an S3 emulator (moto).

The demo (``curation run`` without ``--source``: the demo corpus and its seed labels) is run
on a local home and on a home whose Delta root is ``s3://<bucket>/run/delta`` (the export and
the faiss files then default to ``_export`` and ``_similarity`` under it). Checked: the run
completes; every Delta table read back from S3 equals the local run's
(:mod:`curation_assets_tests.tables_compare`, the homes' paths in the source URIs aside); the
export's per-shard manifests are on S3 and hold the local ones' rows; the index has one faiss
file per shard on S3, named relative to the index root; a Delta time-travel read works on S3;
the export lock's lease table is on S3; a second run commits nothing (no table version moves,
no export object changes); ``curation explain`` and ``curation similar`` answer from the S3
root as from the local one; the fake secret access key appears in no CLI output, table,
settings or Dagster instance file. The wall seconds of each run are printed (``-s``).
"""

import json
import os
import subprocess
import sys
import time

import polars as pl
import pytest
from deltalake import DeltaTable

from curation_assets.lib.objectstore import join, list_names
from curation_assets_tests.servers_s3 import SECRET, S3Server, s3_server  # noqa: F401
from curation_assets_tests.tables_compare import converged, read_tables

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _curation(*args: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "curation_assets.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return proc, time.perf_counter() - t0


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, (
        f"rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc.stdout + proc.stderr


def _versions(root: str, options: dict[str, str]) -> dict[str, int]:
    out = {}
    for name in list_names(root, options):
        uri = join(root, name)
        if not name.startswith("_") and DeltaTable.is_deltatable(uri, storage_options=options):
            out[name] = DeltaTable(uri, storage_options=options).version()
    return out


def _etags(server: S3Server, prefix: str) -> dict[str, str]:
    pages = (
        server.client()
        .get_paginator("list_objects_v2")
        .paginate(Bucket=server.bucket, Prefix=prefix)
    )
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, s3_server: S3Server):  # noqa: F811 - the fixture
    """The same corpus run on a local home and on an S3 root (twice), with their outputs."""
    tmp = tmp_path_factory.mktemp("s3run")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CURATION_"))}
    local_home = tmp / "local"
    local, local_s = _curation("run", "--home", str(local_home), env=base_env)
    s3_env = {**base_env, **s3_server.env}
    s3_home = tmp / "s3"
    root = s3_server.uri("run", "delta")
    cmd = ["run", "--home", str(s3_home)]
    first, first_s = _curation(*cmd, "--delta-root", root, env=s3_env)
    out = {"local_home": local_home, "s3_home": s3_home, "root": root, "env": s3_env}
    out["base_env"] = base_env
    out["outputs"] = [_ok(local), _ok(first)]
    out["versions"] = _versions(root, s3_server.options)
    out["etags"] = _etags(s3_server, "run/delta/_export/")
    second, second_s = _curation(*cmd, env=s3_env)
    out["outputs"].append(_ok(second))
    seconds = f"local {local_s:.1f}, s3 {first_s:.1f}, s3 no-op re-run {second_s:.1f}"
    print(f"\nwall seconds: {seconds}")  # noqa: T201 - the measurement, shown with -s
    return out


def _homeless(runs) -> dict[str, str]:
    """Each home's path → ``HOME`` (the demo corpus lives in the home: its paths differ)."""
    return {str(runs["local_home"]): "HOME", str(runs["s3_home"]): "HOME"}


def test_every_table_on_s3_equals_the_local_run(runs, s3_server: S3Server):  # noqa: F811
    local = read_tables(runs["local_home"] / "delta", replace=_homeless(runs))
    remote = read_tables(runs["root"], s3_server.options, replace=_homeless(runs))
    assert len(local) > 30, sorted(local)
    assert not (runs["s3_home"] / "delta").exists(), "a local Delta root was written"
    lost, equal, bad = converged(remote, local)
    diff = {t: _differing_rows(local.get(t), remote.get(t)) for t in bad}
    assert lost == 0 and equal, f"tables differ between the S3 and the local run: {diff}"


def _differing_rows(a: pl.DataFrame | None, b: pl.DataFrame | None) -> str:
    """Which string columns (JSON: which keys) differ (for the failure message)."""
    if a is None or b is None or a.columns != b.columns:
        return "missing, or other columns"
    out = []
    for c in [c for c, t in a.schema.items() if t == pl.String]:
        x, y = sorted(a[c].drop_nulls().to_list()), sorted(b[c].drop_nulls().to_list())
        if x == y:
            continue
        try:
            dx, dy = json.loads(x[0]), json.loads(y[0])
            keys = [k for k in sorted(set(dx) | set(dy)) if dx.get(k) != dy.get(k)]
            out.append(f"{c}: keys {[(k, str(dx.get(k))[:80], str(dy.get(k))[:80]) for k in keys]}")
        except (ValueError, IndexError, AttributeError):
            out.append(f"{c}: {str(x[:1])[:200]} vs {str(y[:1])[:200]}")
    return "; ".join(out) or "only floats differ"


def test_export_files_on_s3_match_the_local_ones(runs, s3_server: S3Server):  # noqa: F811
    local_out = runs["local_home"] / "export"
    local_shards = sorted(p.name for p in local_out.glob("shard=*"))
    keys = s3_server.keys("run/delta/_export/")
    remote_shards = sorted({k.split("/")[3] for k in keys})
    assert local_shards and remote_shards == local_shards, (local_shards, keys)
    assert not (runs["s3_home"] / "export").exists()
    homeless = pl.col("source_uri").str.replace(str(runs["local_home"]), "HOME", literal=True)
    for shard in local_shards:
        want = pl.read_parquet(local_out / shard / "curated_dataset.parquet").sort("image_id")
        uri = f"{runs['root']}/_export/{shard}/curated_dataset.parquet"
        got = pl.read_parquet(uri, storage_options=s3_server.options).sort("image_id")
        got = got.with_columns(
            pl.col("source_uri").str.replace(str(runs["s3_home"]), "HOME", literal=True)
        )
        assert got.equals(want.with_columns(homeless)), shard


def test_index_files_on_s3_are_named_relative_to_the_index_root(runs, s3_server: S3Server):  # noqa: F811
    index = pl.read_delta(f"{runs['root']}/similarity_index", storage_options=s3_server.options)
    local = pl.read_delta(str(runs["local_home"] / "delta" / "similarity_index"))
    assert index.height == local.height > 0
    faiss_keys = [k for k in s3_server.keys("run/delta/_similarity/") if k.endswith(".faiss")]
    assert len(faiss_keys) == index.height, faiss_keys
    for rel in index["file"].to_list():
        assert not rel.startswith(("/", "s3://")), rel
        assert f"run/delta/_similarity/{rel}" in faiss_keys


def test_time_travel_and_leases_on_s3(runs, s3_server: S3Server):  # noqa: F811
    uri = f"{runs['root']}/raw_images"
    latest = DeltaTable(uri, storage_options=s3_server.options)
    assert latest.version() >= 1
    first = pl.read_delta(uri, version=1, storage_options=s3_server.options)
    assert 0 < first.height <= pl.read_delta(uri, storage_options=s3_server.options).height
    leases = s3_server.keys("run/delta/_locks/leases/_delta_log/")
    assert leases, "the export lock took no Delta lease on S3"


def test_dedup_staged_its_units_on_s3_and_left_no_file(runs, s3_server: S3Server):  # noqa: F811
    """Clusterings 1..4's units read buckets staged on S3 (the tables equal the local run's)."""
    dedup_runs = pl.read_delta(f"{runs['root']}/dedup_runs", storage_options=s3_server.options)
    full = dedup_runs.filter(pl.col("mode") == "full")
    assert full.height and int(full["units"].min()) >= 5  # a unit per clustering at least
    left = [k for k in s3_server.keys("run/delta/_scratch/") if not k.endswith("/")]
    assert not left, f"staged buckets left on S3: {left[:5]}"  # (pyarrow keeps folder markers)


def test_second_run_is_a_no_op(runs, s3_server: S3Server):  # noqa: F811
    assert _versions(runs["root"], s3_server.options) == runs["versions"]
    assert _etags(s3_server, "run/delta/_export/") == runs["etags"]


def _ask(runs, home: str, *args: str) -> dict:
    env = runs["env"] if home == "s3_home" else runs["base_env"]
    proc, _ = _curation(*args, "--json", "--home", str(runs[home]), env=env)
    runs["outputs"].append(_ok(proc))
    return json.loads(proc.stdout)


def test_explain_and_similar_answer_from_the_s3_root_as_from_the_local_one(runs):
    ids = pl.read_delta(str(runs["local_home"] / "delta" / "curated_dataset"))["image_id"]
    image_id = ids.sort()[0]
    traces = {h: _ask(runs, h, "explain", image_id) for h in ("local_home", "s3_home")}
    outcomes = {h: [(s["stage"], s["outcome"]) for s in t["stages"]] for h, t in traces.items()}
    assert outcomes["s3_home"] == outcomes["local_home"]
    assert ("export", "exported") in outcomes["s3_home"], outcomes
    export = next(s for s in traces["s3_home"]["stages"] if s["stage"] == "export")
    assert export["details"]["export_file"].startswith(f"{runs['root']}/_export/shard="), export
    found = {
        h: _ask(runs, h, "similar", image_id, "-k", "5", "--html", str(runs[h] / "sheet.html"))
        for h in ("local_home", "s3_home")
    }
    assert found["s3_home"]["results"], found
    neighbours = {h: [r["image_id"] for r in f["results"]] for h, f in found.items()}
    assert neighbours["s3_home"] == neighbours["local_home"]


def test_the_secret_is_never_written(runs, s3_server: S3Server):  # noqa: F811
    for text in runs["outputs"]:
        assert SECRET not in text
    tables = read_tables(runs["root"], s3_server.options)
    commits = pl.read_delta(f"{runs['root']}/stage_commits", storage_options=s3_server.options)
    for name, df in [*tables.items(), ("stage_commits", commits)]:
        assert not _holds(df, SECRET), name


def _holds(df: pl.DataFrame, text: str) -> bool:
    """Whether any text, binary or list-of-text cell of ``df`` contains ``text``."""
    for c, t in df.schema.items():
        col = df[c].explode() if isinstance(t, pl.List) else df[c]
        if col.dtype == pl.String and col.str.contains(text, literal=True).any():
            return True
        if col.dtype == pl.Binary and col.bin.contains(text.encode()).any():
            return True
    return False
    for path in runs["s3_home"].rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
