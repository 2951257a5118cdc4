"""`curation explain` on the demo corpus: one input per fate, JSON, time travel, exit codes.

The demo pipeline runs once for this module (`curation run`, ~40 s); every test then only
reads the tables. The demo's ground_truth.json says which inputs were planted as what.
"""

import datetime as dt
import json
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from curation_assets.lib.explain import (
    AsOf,
    TargetError,
    explain,
    parse_as_of,
    render_text,
    trace_from_json,
)
from curation_assets.lib.storage import DeltaStore
from curation_assets.tools.demo import load_ground_truth
from curation_assets_tests.test_cli import curation


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A home where `curation run` ran the demo pipeline; the moment before it started."""
    home = tmp_path_factory.mktemp("explain") / "home"
    before = dt.datetime.now(dt.UTC)
    time.sleep(0.01)
    proc = curation("run", home=home)
    assert proc.returncode == 0, proc.stderr[-3000:]
    store = DeltaStore(str(home / "delta"))
    gt = load_ground_truth(home / "sources" / "ground_truth.json")
    return {"home": home, "before": before, "store": store, "gt": gt}


def _explain(demo, target: str, as_of: AsOf | None = None):
    home = demo["home"]
    return explain(
        demo["store"],
        target,
        source_root=home / "sources",
        as_of=as_of,
        export_dir=home / "export",
    )


def _outcomes(trace) -> dict[str, str]:
    return {s.stage: s.outcome for s in trace.stages}


def test_a_corrupt_file_is_traced_to_its_quarantine_reason(demo):
    corrupt = demo["gt"].filter(pl.col("corrupt") == "truncated").row(0, named=True)
    trace = _explain(demo, corrupt["source_uri"])
    ingest = trace.stage("ingest")
    assert ingest.outcome == "quarantined" and ingest.details["reason"] == "truncated"
    assert trace.shard == corrupt["shard"] and not trace.conflicts
    assert {o for s, o in _outcomes(trace).items() if s != "ingest"} == {"not_reached"}
    assert "truncated" in trace.fate


def test_an_exact_duplicate_names_the_kept_file_and_follows_its_image(demo):
    store, gt = demo["store"], demo["gt"]
    dups = pl.read_delta(store.uri("exact_duplicates"))
    planted = set(gt.filter(pl.col("kind") == "exact_duplicate")["source_uri"])
    row = dups.filter(
        pl.col("source_uri").is_in(planted) & (pl.col("source_uri") != pl.col("kept_source_uri"))
    ).row(0, named=True)
    trace = _explain(demo, row["source_uri"])
    ingest = trace.stage("ingest")
    assert ingest.outcome == "exact_duplicate"
    assert ingest.details["kept_source_uri"] == row["kept_source_uri"]
    assert trace.image_id == row["image_id"] and trace.shard == row["kept_shard"]
    assert trace.source_uri == row["source_uri"]
    assert trace.stage("embed").outcome == "embedded"  # the kept image's trace goes on
    assert trace.fate.startswith("Exact duplicate")


def test_an_image_the_classifier_removed_shows_score_threshold_and_label(demo):
    store = demo["store"]
    rejected = pl.read_delta(store.uri("filter_rejections")).row(0, named=True)
    trace = _explain(demo, rejected["image_id"][:12])  # an id prefix
    assert trace.image_id == rejected["image_id"]
    assert trace.stage("filter").outcome == "removed"
    (score,) = [
        s for s in trace.stage("classify").details["scores"] if s["category"] == "demo_photograph"
    ]
    assert score["over_threshold"] and score["score"] == pytest.approx(rejected["score"])
    assert score["threshold"] == pytest.approx(rejected["threshold"])
    for later in ("cluster", "dedup", "weights", "export"):
        assert trace.stage(later).outcome == "not_reached"
    sources = {s.table for s in trace.stage("filter").sources}
    assert sources == {"filtered_images", "filter_rejections"}


def test_a_planted_near_duplicate_names_its_kept_image_and_the_clusterings(demo):
    store, gt = demo["store"], demo["gt"]
    raw = pl.read_delta(store.uri("raw_images")).select("image_id", "source_uri")
    removed = (
        pl.read_delta(store.uri("deduplicated_images"))
        .filter(~pl.col("kept"))
        .join(raw, on="image_id")
        .join(gt.filter(pl.col("kind") == "near_duplicate"), on="source_uri")
    )
    row = removed.row(0, named=True)
    trace = _explain(demo, row["source_uri"])
    dedup = trace.stage("dedup")
    assert (
        dedup.outcome == "near_duplicate" and dedup.details["duplicate_of"] == row["duplicate_of"]
    )
    assert dedup.details["similarity"] == pytest.approx(row["similarity"])
    assert dedup.details["similarity"] >= dedup.details["tau"]
    assert dedup.details["kept_source_uri"] is not None and dedup.details["pairs"]
    assert all(p["clusterings"] for p in dedup.details["pairs"])
    assert len(trace.stage("cluster").details["assignments"]) == 5
    assert trace.stage("weights").outcome == "not_reached"


def test_an_exported_image_has_its_weight_shares_and_export_file(demo):
    store = demo["store"]
    row = pl.read_delta(store.uri("curated_dataset")).sort("image_id").row(0, named=True)
    trace = _explain(demo, row["source_uri"])
    assert _outcomes(trace)["export"] == "exported" and not trace.conflicts
    assert trace.stage("filter").outcome == "kept"
    assert trace.stage("dedup").outcome in ("unique", "kept")
    weights = trace.stage("weights").details
    assert weights["weight"] == pytest.approx(row["weight"])
    attributes = {s["attribute"] for s in weights["attribute_shares"]}
    assert {"format", "orientation", "size"} <= attributes
    assert Path(trace.stage("export").details["export_file"]).is_file()
    # a per-shard table was read in one shard partition: one file, not the corpus
    reads = [s for st in trace.stages for s in st.sources if s.table == "curated_dataset"]
    assert reads and all(s.files == 1 and s.rows == 1 for s in reads)


def test_json_round_trip_and_exit_codes(demo):
    home = demo["home"]
    target = pl.read_delta(demo["store"].uri("curated_dataset"))["source_uri"][0]
    proc = curation("explain", target, "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    trace = trace_from_json(data)
    assert trace.to_json() == data and trace.stage("export").outcome == "exported"
    text = curation("explain", target, home=home)
    assert text.returncode == 0 and "exported" in text.stdout and "raw_images@v" in text.stdout
    missing = curation("explain", str(home / "sources" / "shard-000" / "nope.jpg"), home=home)
    assert missing.returncode == 3 and "not one of its inputs" in missing.stderr
    outside = curation("explain", "/etc/hostname", home=home)
    assert outside.returncode == 3 and "never enumerated" in outside.stderr
    unknown = curation("explain", "0" * 64, "--json", home=home)
    assert unknown.returncode == 3 and json.loads(unknown.stdout)["error"] == "not_found"
    bad = curation("explain", target, "--as-of", "yesterday", home=home)
    assert bad.returncode == 2 and "ISO timestamp" in bad.stderr


def test_as_of_before_the_run_knows_no_table(demo):
    target = pl.read_delta(demo["store"].uri("curated_dataset"))["source_uri"][0]
    with pytest.raises(TargetError, match="absent then"):
        _explain(demo, target, AsOf(timestamp=demo["before"]))
    stamp = demo["before"].isoformat()
    proc = curation("explain", target, "--as-of", stamp, home=demo["home"])
    assert proc.returncode == 3 and "absent then" in proc.stderr


def test_a_pinned_version_reads_that_version(demo):
    store = demo["store"]
    latest = store.version("raw_images")
    assert latest is not None
    # the first raw_images version without every shard: one shard was ingested later
    shards_now = set(store.shard_files("raw_images"))
    version = next(v for v in range(latest + 1) if set(store.shard_files("raw_images", v)))
    present = set(store.shard_files("raw_images", version))
    later = sorted(shards_now - present)
    assert later, "every shard in the first version: the demo ingests shard by shard"
    raw = pl.read_delta(store.uri("raw_images"))
    then = raw.filter(pl.col("shard") == sorted(present)[0])["source_uri"][0]
    after = raw.filter(pl.col("shard") == later[0])["source_uri"][0]
    as_of = parse_as_of([f"raw_images={version}"])
    trace = _explain(demo, then, as_of)
    assert trace.versions["raw_images"] == version
    assert trace.stage("ingest").sources[0].version == version
    with pytest.raises(TargetError, match=f"raw_images@v{version}"):
        _explain(demo, after, as_of)
    # a pin beyond the table's history is a clear error
    bad = curation("explain", then, "--as-of", f"raw_images={latest + 5}", home=demo["home"])
    assert bad.returncode == 2 and f"0..{latest}" in bad.stderr


def test_the_asset_shows_the_trace_as_markdown(demo):
    from curation_assets.defs.explain import image_explanation
    from curation_assets.defs.resources import DeltaStorage, ShardSource

    home = demo["home"]
    target = pl.read_delta(demo["store"].uri("curated_dataset"))["source_uri"][0]
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [image_explanation],
            instance=instance,
            resources={
                "delta": DeltaStorage(root_uri=str(home / "delta")),
                "shard_source": ShardSource(root=str(home / "sources")),
            },
            run_config=dg.RunConfig(ops={"image_explanation": {"config": {"image": target}}}),
        )
    assert result.success
    (mat,) = result.asset_materializations_for_node("image_explanation")
    md = mat.metadata["explanation"].value
    assert isinstance(md, str) and "| export | **exported** |" in md
    assert "data:image/jpeg;base64," in md
    (check,) = result.get_asset_check_evaluations()
    assert check.passed
    data = mat.metadata["trace"].value
    assert isinstance(data, dict)
    assert render_text(trace_from_json(data)).startswith(target)


def test_a_kept_image_with_a_candidate_below_tau_names_its_near_miss(demo):
    store = demo["store"]
    band = pl.read_delta(store.uri("candidate_pairs"))
    pairs = pl.read_delta(store.uri("duplicate_pairs"))
    on_pairs = set(pairs["image_id_a"]) | set(pairs["image_id_b"])
    loners = sorted((set(band["image_id_a"]) | set(band["image_id_b"])) - on_pairs)
    assert loners, "the demo has candidate pairs in [τ_min, τ) between otherwise unique images"
    trace = _explain(demo, loners[0])
    dedup = trace.stage("dedup")
    assert dedup.outcome == "unique" and "Closest candidate below τ" in dedup.summary
    best = dedup.details["candidates_below_tau"][0]
    row = band.filter(
        ((pl.col("image_id_a") == loners[0]) & (pl.col("image_id_b") == best["other"]))
        | ((pl.col("image_id_b") == loners[0]) & (pl.col("image_id_a") == best["other"]))
    )
    assert row.height == 1 and best["similarity"] == pytest.approx(row["similarity"][0])
    assert best["similarity"] == max(d["similarity"] for d in dedup.details["candidates_below_tau"])
