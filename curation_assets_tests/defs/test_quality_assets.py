"""image_quality at ingest, the filter's opt-in quality checks, and an MLP head in scoring."""

import io
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
from PIL import Image
from safetensors.numpy import save_file

from curation_assets.defs.classify import classifier_scores
from curation_assets.defs.filter import filter_shard
from curation_assets.defs.resources import Categories
from curation_assets.lib.commits import recorded_settings
from curation_assets.lib.quality.report import corpus_stats
from curation_assets.lib.quality.signals import CHECKS
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import (
    CLASSIFIER_SCORES,
    FILTER_REJECTIONS,
    FILTERED_IMAGES,
    IMAGE_EMBEDDINGS,
    IMAGE_QUALITY,
    RAW_IMAGES,
)
from curation_assets.runner import step_errors
from curation_assets_tests.defs.dedup_pipeline import SHARDS
from curation_assets_tests.defs.helpers import check_results, materialize_shard, resources


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def _photo_like(seed: int, size=(240, 180)) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(40, 220, (6, 6, 3), dtype=np.uint8))
    arr = np.asarray(img.resize(size, Image.Resampling.BICUBIC)).copy()
    h, w = arr.shape[:2]
    arr[h // 5 : h // 2, w // 8 : w - w // 8] = (250, 30, 30)
    arr[h // 2 : h - h // 5, w // 4 : w // 2] = (20, 20, 200)
    return Image.fromarray(arr)


PLANTED = {
    **{f"ok{i}.jpg": _photo_like(i) for i in range(4)},
    "dark.jpg": Image.fromarray((np.asarray(_photo_like(9)) // 20).astype(np.uint8)),
    "tiny.jpg": _photo_like(10, (48, 40)),
}


@pytest.fixture
def shard(tmp_path):
    src = tmp_path / "src" / "q1"
    src.mkdir(parents=True)
    for name, img in PLANTED.items():
        (src / name).write_bytes(_jpeg(img))
    res = resources(tmp_path, tmp_path / "src")
    res["categories"] = Categories()
    with dg.instance_for_test() as instance:
        ingested = materialize_shard(instance, res, "q1")
        assert ingested.success, step_errors(ingested)
        yield instance, res, DeltaStore(str(tmp_path / "delta")), ingested


def _by_name(store: DeltaStore, df: pl.DataFrame) -> dict[str, dict]:
    uris = store.read(RAW_IMAGES, columns=["image_id", "source_uri"])
    joined = df.join(uris, on="image_id")
    return {Path(r["source_uri"]).name: r for r in joined.iter_rows(named=True)}


def test_ingest_writes_signals_for_every_image_with_metadata(shard):
    _, _, store, result = shard
    assert check_results(result)["every_image_measured"] is True
    quality = _by_name(store, store.read(IMAGE_QUALITY))
    assert set(quality) == set(PLANTED)
    assert quality["tiny.jpg"]["min_side"] == 40
    assert quality["dark.jpg"]["brightness"] < 25 < quality["ok0.jpg"]["brightness"]
    (mat,) = [
        e.materialization
        for e in result.get_asset_materialization_events()
        if e.materialization.asset_key.to_user_string() == "image_quality"
    ]
    meta = mat.metadata
    assert meta["dagster/row_count"].value == len(PLANTED)
    assert meta["flagged_too_dark"].value == 1 and meta["flagged_tiny"].value == 1
    assert "data:image/jpeg;base64," in meta["worst_examples"].value
    assert "| sharpness |" in meta["quantiles"].value


def _filter(instance, res, config=None):
    return dg.materialize(
        [classifier_scores, filter_shard],
        partition_key="q1",
        instance=instance,
        resources=res,
        run_config={"ops": {"filter_shard": {"config": config}}} if config else None,
        raise_on_error=False,
    )


def test_quality_checks_drop_only_when_enabled_with_a_reason(shard):
    instance, res, store, _ = shard
    assert _filter(instance, res).success
    assert store.read(FILTER_REJECTIONS).is_empty()
    assert store.read(FILTERED_IMAGES).height == len(PLANTED)
    config = {"quality_drop": ["too_dark", "tiny"], "quality_thresholds": {"tiny": 45}}
    result = _filter(instance, res, config)
    assert result.success, step_errors(result)
    assert check_results(result)["every_image_kept_or_rejected"] is True
    rejected = _by_name(store, store.read(FILTER_REJECTIONS))
    assert {k: v["category"] for k, v in rejected.items()} == {
        "dark.jpg": "quality_too_dark",
        "tiny.jpg": "quality_tiny",
    }
    assert rejected["tiny.jpg"]["score"] == 40 and rejected["tiny.jpg"]["threshold"] == 45
    assert rejected["dark.jpg"]["score"] < rejected["dark.jpg"]["threshold"] == 25
    assert store.read(FILTERED_IMAGES).height == len(PLANTED) - 2
    bad = _filter(instance, res, {"quality_drop": ["blury"]})
    assert not bad.success and "unknown quality checks" in " ".join(step_errors(bad))
    # the choice stays in force for a run that leaves it unset (as automation runs a shard)
    again = _filter(instance, res)
    assert again.success, step_errors(again)
    assert store.read(FILTERED_IMAGES).height == len(PLANTED) - 2
    (mat,) = [
        e.materialization
        for e in again.get_asset_materialization_events()
        if e.materialization.asset_key.to_user_string() == "filtered_images"
    ]
    assert mat.metadata["quality_checks_dropping"].value == "brightness < 25, min_side < 45"
    assert mat.metadata["settings_kept_from_last_run"].value == "quality_drop, quality_thresholds"
    assert recorded_settings(store, "filter") == config
    # [] turns them off, and that sticks too
    assert _filter(instance, res, {"quality_drop": []}).success
    assert _filter(instance, res).success
    assert store.read(FILTER_REJECTIONS).is_empty()


def _head(path: Path, model: str, dim: int) -> Path:
    rng = np.random.default_rng(0)
    tensors = {
        "layers.0.weight": rng.normal(size=(4, dim)).astype(np.float32),
        "layers.0.bias": np.zeros(4, np.float32),
        "layers.2.weight": rng.normal(size=(1, 4)).astype(np.float32),
        "layers.2.bias": np.zeros(1, np.float32),
    }
    save_file(tensors, str(path), metadata={"embedding_model": model, "name": "aesthetic"})
    return path


def test_an_embedding_head_scores_the_stored_embeddings_and_filters(shard, tmp_path):
    instance, res, store, _ = shard
    emb = store.read(IMAGE_EMBEDDINGS)
    model, dim = emb["model_id"][0], int(emb["dim"][0])
    head = _head(tmp_path / "aesthetic.safetensors", model, dim)
    config = {"embedding_heads": [str(head)], "pretrained_thresholds": {"aesthetic": 0.5}}
    result = dg.materialize(
        [classifier_scores, filter_shard],
        partition_key="q1",
        instance=instance,
        resources=res,
        run_config={"ops": {"classifier_scores": {"config": config}}},
        raise_on_error=False,
    )
    assert result.success, step_errors(result)
    scores = store.read(CLASSIFIER_SCORES).filter(pl.col("category") == "aesthetic")
    assert scores.height == len(PLANTED) and scores["scorer"][0].startswith("head:aesthetic@")
    removed = set(store.read(FILTER_REJECTIONS)["image_id"])
    assert removed == set(scores.filter(pl.col("score") >= 0.5)["image_id"])
    wrong = _head(tmp_path / "wrong.safetensors", "timm:other@x", dim)
    config = {"embedding_heads": [str(wrong)]}
    failed = dg.materialize(
        [classifier_scores],
        partition_key="q1",
        instance=instance,
        resources=res,
        run_config={"ops": {"classifier_scores": {"config": config}}},
        raise_on_error=False,
    )
    assert not failed.success and "was trained on 'timm:other@x'" in " ".join(step_errors(failed))
    # the failed run changed nothing in force: unset (as automation scores a new shard), the
    # head and its threshold still score and filter
    store.replace_shard(CLASSIFIER_SCORES, "q1", store.read(CLASSIFIER_SCORES).head(0))
    again = dg.materialize(
        [classifier_scores, filter_shard],
        partition_key="q1",
        instance=instance,
        resources=res,
        raise_on_error=False,
    )
    assert again.success, step_errors(again)
    rescored = store.read(CLASSIFIER_SCORES).filter(pl.col("category") == "aesthetic")
    assert (
        rescored.sort("image_id")["score"].to_list() == scores.sort("image_id")["score"].to_list()
    )
    assert set(store.read(FILTER_REJECTIONS)["image_id"]) == removed


def test_demo_corpus_every_ingested_image_has_signals(pipeline):
    store = pipeline["store"]
    raw = store.shard_row_counts(RAW_IMAGES.name)
    assert store.shard_row_counts(IMAGE_QUALITY.name) == raw and set(raw) == set(SHARDS)
    stats, read = corpus_stats(store, k=3)
    assert stats.n == sum(raw.values()) and sorted(read) == sorted(SHARDS)
    # merged per-shard counts equal counts over the whole table
    whole = store.read(IMAGE_QUALITY)
    for name, check in CHECKS.items():
        assert stats.flags[name] == whole.filter(check.flagged()).height, name
    # the demo's procedural images include smooth gradients: some are flagged blurry
    assert stats.flags["blurry"] > 0
    assert stats.worst.filter(pl.col("check") == "low_entropy").height == 3
