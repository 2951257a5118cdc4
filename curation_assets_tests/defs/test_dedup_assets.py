"""Dedup assets on the demo corpus (real EfficientNet-Lite0 embeddings)."""

import numpy as np
import polars as pl
import pytest

from curation_assets.lib.cluster import load_centroids
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import (
    DEDUP_RUNS,
    DEDUPLICATED_IMAGES,
    DUPLICATE_PAIRS,
    IMAGE_EMBEDDINGS,
    N_CLUSTERINGS,
    RAW_IMAGES,
    assignments_spec,
)
from curation_assets.lib.vectors import embedding_matrix
from curation_assets.tools.evaluate import evaluate_dedup
from curation_assets_tests.defs.dedup_pipeline import SHARDS, assign, dedup, run
from curation_assets_tests.defs.helpers import check_results

pytestmark = pytest.mark.slow


def _comparable(store: DeltaStore) -> tuple[pl.DataFrame, pl.DataFrame]:
    images = store.read(DEDUPLICATED_IMAGES).sort("image_id")
    pairs = store.read(DUPLICATE_PAIRS).sort("image_id_a", "image_id_b")
    return images, pairs


def test_first_run_is_full_finds_planted_duplicates_and_passes_checks(pipeline):
    store, first = pipeline["store"], pipeline["first"]
    checks = check_results(first)
    assert checks == {
        "pair_recall_target": True,
        "one_kept_per_group": True,
        "every_filtered_image_deduplicated": False,  # shard-003 is not assigned yet: WARN
        "no_pair_below_tau": True,
    }
    meta = first.asset_materializations_for_node("deduplicate")[0].metadata
    assert meta["mode"].value == "full"
    curve = [meta[f"recall_{i}_clusterings"].value for i in range(1, N_CLUSTERINGS + 1)]
    assert curve == sorted(curve) and curve[-1] >= 0.95
    assert "data:image/jpeg;base64," in meta["duplicate_groups"].value
    assert meta["pending_shards"].value == 1

    images = store.read(DEDUPLICATED_IMAGES)
    pairs = store.read(DUPLICATE_PAIRS)
    tau = float(store.read(DEDUP_RUNS)["tau"][-1])
    assert tau == pytest.approx(0.86)
    assert pairs.height > 0 and pairs["similarity"].min() >= tau  # no pair below tau
    assert (pairs["image_id_a"] < pairs["image_id_b"]).all()
    assert images["image_id"].n_unique() == images.height
    gt = pipeline["corpus"].load_items()
    report = evaluate_dedup(gt, store)
    assert report["planted_groups"] >= 10
    assert report["pair_recall"] >= 0.8 and report["removal_precision"] >= 0.8


def test_keep_policy_keeps_the_largest_image_of_each_group(pipeline):
    store = pipeline["store"]
    images = store.read(DEDUPLICATED_IMAGES).join(
        store.read(RAW_IMAGES, columns=["image_id", "width", "height"]), on="image_id"
    )
    sized = images.with_columns(size=pl.len().over("component_id"))
    groups = sized.filter(pl.col("size") > 1).with_columns(px=pl.col("width") * pl.col("height"))
    kept_px = groups.filter("kept").select("component_id", kept_px="px")
    joined = groups.join(kept_px, on="component_id")
    assert joined.height == groups.height
    assert (joined["px"] <= joined["kept_px"]).all()
    removed = images.filter(~pl.col("kept"))
    assert (removed["duplicate_of"] == removed["component_id"]).all()


def test_new_shard_is_assigned_to_existing_centroids_and_dedup_is_incremental(pipeline):
    instance, res, store = pipeline["instance"], pipeline["res"], pipeline["store"]
    before = [load_centroids(store, c) for c in range(N_CLUSTERINGS)]
    assign(instance, res, SHARDS[3])
    after = [load_centroids(store, c) for c in range(N_CLUSTERINGS)]
    assert [b.version for b in before if b] == [a.version for a in after if a]
    assigned = store.read(assignments_spec(2), shards=[SHARDS[3]])
    assert assigned.height > 0 and assigned["centroids_version"].unique().to_list() == [
        after[2].version if after[2] else None
    ]

    inc = dedup(instance, res)
    meta = inc.asset_materializations_for_node("deduplicate")[0].metadata
    assert meta["mode"].value == "incremental"
    assert meta["new_images"].value == assigned.height
    assert check_results(inc)["every_filtered_image_deduplicated"] is True
    incremental = _comparable(store)

    full = dedup(instance, res, mode="full")
    meta_full = full.asset_materializations_for_node("deduplicate")[0].metadata
    assert meta_full["mode"].value == "full"
    recomputed = _comparable(store)
    assert incremental[0].equals(recomputed[0]), "incremental decisions differ from full"
    assert incremental[1].equals(recomputed[1]), "incremental pairs differ from full"
    # the new shard really contributed: some pair touches one of its images
    new_ids = set(assigned["image_id"].to_list())
    p = recomputed[1]
    assert p.filter(
        pl.col("image_id_a").is_in(new_ids) | pl.col("image_id_b").is_in(new_ids)
    ).height


def test_tau_is_retuned_from_stored_pairs_or_recomputed_below_the_floor(pipeline):
    instance, res, store = pipeline["instance"], pipeline["res"], pipeline["store"]
    before = store.read(DEDUP_RUNS).sort("run_at").row(-1, named=True)
    floor = before["tau_min"]
    assert floor == pytest.approx(before["tau"] - 0.05)
    result = dedup(instance, res, tau=0.9)
    meta = result.asset_materializations_for_node("deduplicate")[0].metadata
    assert meta["mode"].value == "retune", meta["mode_reason"].value
    assert "no search" in meta["mode_reason"].value
    assert "← τ" in meta["tau_sweep"].value and meta["tau_min"].value == pytest.approx(floor)
    sweep_row = [r for r in meta["tau_sweep"].value.splitlines() if r.startswith("| 0.900")]
    assert sweep_row and f"| {meta['removed'].value} |" in sweep_row[0]
    # τ sticks: the next run with the default config keeps 0.9 and has nothing to do
    again = dedup(instance, res).asset_materializations_for_node("deduplicate")[0].metadata
    assert again["mode"].value == "current"
    # below the stored floor: a full run that says why
    low = dedup(instance, res, tau=floor - 0.02, tau_min=floor - 0.02)
    meta = low.asset_materializations_for_node("deduplicate")[0].metadata
    assert meta["mode"].value == "full" and "below the stored floor" in meta["mode_reason"].value
    dedup(instance, res, tau=0.9)
    pairs = store.read(DUPLICATE_PAIRS)
    assert pairs.height == 0 or pairs["similarity"].min() >= 0.9
    # similarities are exact dot products of the stored embeddings rounded to float16 (the
    # vectors dedup_members holds): within 1e-5 of those, within 5e-4 of the float32 ones
    emb = store.read(IMAGE_EMBEDDINGS, columns=["image_id", "embedding"]).unique("image_id")
    vec = dict(zip(emb["image_id"], embedding_matrix(emb["embedding"]), strict=True))
    for a, b, s in pairs.select("image_id_a", "image_id_b", "similarity").head(20).iter_rows():
        half_a, half_b = (vec[k].astype(np.float16).astype(np.float32) for k in (a, b))
        assert float(half_a @ half_b) == pytest.approx(s, abs=1e-5)
        assert float(vec[a] @ vec[b]) == pytest.approx(s, abs=5e-4)
    # back to the calibrated τ and its floor for other tests (raising the floor is a retune)
    dedup(instance, res, tau=before["tau"], tau_min=floor)


def test_weights_audit_and_export_of_the_kept_images(pipeline, tmp_path):
    import tarfile

    from curation_assets.defs.export import curated_dataset
    from curation_assets.defs.weights import weights_and_audit
    from curation_assets.lib.tables import CURATED_DATASET, SAMPLE_WEIGHTS

    instance, res, store = pipeline["instance"], pipeline["res"], pipeline["store"]
    export = {
        "export_dir": str(tmp_path),
        "soft_cap_samples": 200,
        "webdataset": True,
        "shard_size": 25,
    }
    result = run(
        [weights_and_audit, curated_dataset],
        instance,
        res,
        config={"curated_dataset": {"config": export}},
    )
    checks = check_results(result)
    for name in ("weights_finite_positive", "weights_mean_one", "weights_within_bounds"):
        assert checks[name] is True
    assert checks["one_row_per_kept_image"] is True and checks["every_image_exported"] is True
    kept = store.read(DEDUPLICATED_IMAGES).filter("kept")
    weights = store.read(SAMPLE_WEIGHTS)
    assert set(weights["image_id"]) == set(kept["image_id"])
    # No classifier filtered anything and removed near duplicates are left out of the
    # reference (correct_for=filter): nothing to undo, every weight is exactly 1.
    meta = result.asset_materializations_for_node("weights_and_audit")
    sw = next(m for m in meta if m.asset_key.to_user_string() == "sample_weights").metadata
    assert sw["probe_status"].value == "uniform" and sw["ess_ratio"].value == pytest.approx(1.0)
    np.testing.assert_allclose(weights["weight"].to_numpy(), 1.0)
    audit = next(m for m in meta if m.asset_key.to_user_string() == "bias_audit").metadata
    assert "| attribute |" in audit["shares"].value

    manifest = pl.read_parquet(
        tmp_path / "shard=*" / "curated_dataset.parquet", hive_partitioning=False
    ).sort("image_id")
    assert manifest.equals(store.read(CURATED_DATASET).sort("image_id"))
    assert set(manifest.columns) >= {"image_id", "source_uri", "caption", "weight"}
    sample = pl.read_parquet(tmp_path / "soft_cap_sample.parquet")
    assert int(sample["count"].sum()) == 200
    members = []
    for tar_path in sorted(tmp_path.glob("shard=*/*.tar")):
        with tarfile.open(tar_path) as tar:
            members += tar.getnames()
    assert len(members) == 3 * manifest.height
    assert {m.split(".")[0] for m in members} == set(manifest["image_id"])


def test_band_verification_promotes_verified_candidates_and_sticks(pipeline):
    from curation_assets.lib.tables import CANDIDATE_PAIRS, VERIFIED_PAIRS

    instance, res, store = pipeline["instance"], pipeline["res"], pipeline["store"]
    before = store.read(DEDUP_RUNS).sort("run_at").row(-1, named=True)
    meta = dedup(instance, res, verify_band=True).asset_materializations_for_node("deduplicate")
    meta = meta[0].metadata
    assert meta["mode"].value == "retune" and "band verification on" in meta["mode_reason"].value
    assert meta["band_verification"].value == "on" and meta["units_searched"].value == 0
    verdicts, band = store.read(VERIFIED_PAIRS), store.read(CANDIDATE_PAIRS)
    assert verdicts.height == band.height > 0 and verdicts["error"].is_null().all()
    assert meta["promoted_pairs"].value == verdicts["verified"].sum()
    assert meta["removed"].value - before["removed"] <= meta["promoted_pairs"].value
    assert meta["removed"].value >= before["removed"]
    # unset in the config (as automation runs it): kept on, nothing to do
    again = dedup(instance, res).asset_materializations_for_node("deduplicate")[0].metadata
    assert again["mode"].value == "current" and again["band_verification"].value == "on"
    off = dedup(instance, res, verify_band=False).asset_materializations_for_node("deduplicate")
    assert off[0].metadata["mode"].value == "retune"
    assert off[0].metadata["removed"].value == before["removed"]


def test_a_keep_policy_chosen_once_sticks(pipeline):
    instance, res, store = pipeline["instance"], pipeline["res"], pipeline["store"]
    smallest = dedup(instance, res, policy=["smallest_id"])
    meta = smallest.asset_materializations_for_node("deduplicate")[0].metadata
    assert meta["mode"].value == "full" and "policy changed" in meta["mode_reason"].value
    assert meta["policy"].value == "smallest_id"
    images = store.read(DEDUPLICATED_IMAGES)
    groups = images.group_by("component_id").agg(pl.col("image_id").min().alias("first"))
    kept = images.filter("kept").join(groups, on="component_id")
    assert (kept["image_id"] == kept["first"]).all()
    # unset (as automation runs it): the chosen policy stays, nothing to do
    again = dedup(instance, res).asset_materializations_for_node("deduplicate")[0].metadata
    assert again["mode"].value == "current" and again["policy"].value == "smallest_id"
    back = dedup(instance, res, policy=["resolution", "earliest", "smallest_id"])
    assert back.asset_materializations_for_node("deduplicate")[0].metadata["mode"].value == "full"
