from datetime import UTC, datetime

import dagster as dg
import numpy as np
import polars as pl
import pytest

from curation_assets.defs.classify import label_queue, safety_classifiers
from curation_assets.lib.tables import (
    CLASSIFIER_SCORES,
    FILTER_REJECTIONS,
    FILTERED_IMAGES,
    LABEL_QUEUE,
    LABELS,
    RAW_IMAGES,
    SAFETY_CLASSIFIERS,
)
from curation_assets.runner import step_errors
from curation_assets_tests.defs.classify_helpers import reddish_shard, score_and_filter
from curation_assets_tests.defs.helpers import check_results

setup = pytest.fixture(reddish_shard, name="setup")


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

    pool = trained.asset_materializations_for_node("label_queue")[0].metadata["pool"].value
    assert isinstance(pool, dict)
    assert pool["pool_rows"] == 80 and pool["covers_corpus"] is True  # 80 images fit the budget
    queue = store.read(LABEL_QUEUE)
    assert queue.height > 0 and queue["image_id"].n_unique() == queue.height
    assert not set(queue["image_id"]) & set(labelled["image_id"])
    assert all(
        r.startswith(("neighbor_of_hard_positive:", "uncertain_near_threshold"))
        for r in queue["reason"]
    )

    small = dg.materialize(
        [label_queue],
        instance=instance,
        resources=res,
        run_config=dg.RunConfig(ops={"label_queue": {"config": {"max_pool": 30, "seed": 1}}}),
        raise_on_error=False,
    )
    assert small.success, step_errors(small)
    pool = small.asset_materializations_for_node("label_queue")[0].metadata["pool"].value
    assert isinstance(pool, dict)
    assert pool["sampled_rows"] == 30 and pool["max_pool_rows"] == 30 and pool["seed"] == 1
    assert pool["labelled_rows"] == 60 and not pool["covers_corpus"]
    assert not set(store.read(LABEL_QUEUE)["image_id"]) & set(labelled["image_id"])

    result = score_and_filter(instance, res)
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
    result = score_and_filter(instance, res)
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
