from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest

from curation_assets.lib.classify.probe import Probe, train_probe
from curation_assets.lib.classify.spec import CategorySpec
from curation_assets.lib.classify.train import (
    classifier_checks,
    classifiers_table,
    labelled_embeddings,
    pr_curve_markdown,
    read_classifiers,
    text_encoder_for,
    train_classifiers,
)
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import IMAGE_EMBEDDINGS, SAFETY_CLASSIFIERS
from curation_assets_tests.lib.classify.helpers import DIM, SPEC, fake_text_encoder, gaussian_data

T0 = datetime(2025, 1, 1, tzinfo=UTC)
HAT = CategorySpec("hat", "a hat", target_recall=0.9)
GORE = CategorySpec("gore", "gore")  # no labels, no prompts: skipped


def labelled_world(n_pos: int = 30, n_neg: int = 40):
    x, y = gaussian_data(n_pos, n_neg, 2.0)
    ids = [f"id{i:03d}" for i in range(y.size)]
    embeddings = pl.DataFrame(
        {
            "image_id": ids,
            "embedding": pl.Series(x.tolist(), dtype=pl.List(pl.Float32)),
            "model_id": "m",
            "dim": DIM,
        }
    )
    labels = pl.DataFrame(
        {"image_id": ids, "category": "hat", "label": pl.Series(y, dtype=pl.Int8)}
    )
    return x, y, ids, embeddings, labels


def test_every_category_gets_a_result_in_spec_order():
    x, y, ids, embeddings, labels = labelled_world()
    # rows in another order: the probe depends only on the labelled set
    results = train_classifiers(
        [GORE, HAT],
        labels.reverse(),
        embeddings.sample(fraction=1.0, seed=1),
        model_id="m",
        dim=DIM,
    )
    assert [(r.category, r.status) for r in results] == [("gore", "skipped"), ("hat", "trained")]
    probe = results[1].classifier
    assert isinstance(probe, Probe)
    direct = train_probe(x, y, category="hat", model_id="m", image_ids=ids, target_recall=0.9)
    np.testing.assert_array_equal(probe.coef, direct.coef)
    assert probe.threshold == direct.threshold and probe.image_ids == tuple(ids)


def test_parameters_reach_the_probe_and_the_policy():
    _, _, _, embeddings, labels = labelled_world(12, 40)
    kwargs = {"model_id": "m", "dim": DIM, "n_splits": 3, "n_repeats": 2, "seed": 5, "C": 0.5}
    (few,) = train_classifiers([HAT], labels, embeddings, **kwargs)
    assert few.status == "skipped"  # 12 positives < the default 20
    (probe,) = train_classifiers([HAT], labels, embeddings, min_positives=10, **kwargs)
    summary = probe.summary()
    assert probe.status == "trained"
    assert (summary["n_splits"], summary["n_repeats"], summary["seed"], summary["C"]) == (
        3,
        2,
        5,
        0.5,
    )
    (zs,) = train_classifiers([SPEC], labels, embeddings, text_encoder=fake_text_encoder, **kwargs)
    assert zs.status == "zero_shot" and zs.threshold is not None


def test_table_rows_round_trip_to_the_same_classifiers():
    x, _, _, embeddings, labels = labelled_world()
    specs = [HAT, GORE]
    results = train_classifiers(specs, labels, embeddings, model_id="m", dim=DIM)
    table = classifiers_table(specs, results, model_id="m", dim=DIM, trained_at=T0)
    assert table.schema == SAFETY_CLASSIFIERS.schema
    hat, gore = table.rows(named=True)
    assert (hat["category"], hat["status"], hat["target_recall"]) == ("hat", "trained", 0.9)
    assert hat["threshold"] == results[0].threshold and hat["oof_recall"] >= 0.9
    assert (hat["model_id"], hat["dim"], hat["trained_at"]) == ("m", DIM, T0)
    assert gore["status"] == "skipped" and gore["classifier_json"] is None
    assert gore["threshold"] is None and gore["oof_recall"] is None and gore["n_pos"] == 0
    assert gore["target_recall"] == GORE.target_recall
    (loaded,) = read_classifiers(table.reverse())  # the skipped category has no classifier
    assert isinstance(loaded, Probe) and loaded.category == "hat"
    original = results[0].classifier
    assert original is not None
    np.testing.assert_array_equal(loaded.score(x), original.score(x))
    with pytest.raises(ValueError, match="safety_classifiers/hat"):
        read_classifiers(
            table.with_columns(
                classifier_json=pl.when(pl.col("category") == "hat")
                .then(pl.lit("{}"))
                .otherwise(pl.col("classifier_json"))
            )
        )


def test_checks_name_weak_categories_and_missed_recall():
    _, _, _, embeddings, labels = labelled_world()
    cap = CategorySpec("cap", "a cap", zero_shot=SPEC.zero_shot)  # prompts but no label
    results = train_classifiers(
        [HAT, GORE, cap], labels, embeddings, model_id="m", dim=DIM, text_encoder=fake_text_encoder
    )
    assert [r.status for r in results] == ["trained", "skipped", "zero_shot"]
    checks = classifier_checks(results)
    assert checks.not_filtering == ["gore", "cap"] and checks.below_target == []
    trained = results[0]
    assert isinstance(trained.classifier, Probe)
    trained.classifier.oof_recall = trained.classifier.target_recall - 0.01
    assert classifier_checks([trained]).below_target == ["hat"]
    assert classifier_checks([]).not_filtering == []


def test_pr_curve_table_samples_the_stored_curve():
    x, y = gaussian_data(30, 40, 0.8)
    probe = train_probe(x, y)
    lines = pr_curve_markdown(probe).splitlines()
    assert lines[:2] == ["| threshold | precision | recall |", "|---|---|---|"]
    assert 2 < len(lines) <= 2 + 12
    curve = probe.pr_curve
    first = (curve["thresholds"][0], curve["precision"][0], curve["recall"][0])
    assert lines[2] == "| {:.3f} | {:.3f} | {:.3f} |".format(*first)
    last = (curve["thresholds"][-1], curve["precision"][-1], curve["recall"][-1])
    assert lines[-1] == "| {:.3f} | {:.3f} | {:.3f} |".format(*last)
    assert len(pr_curve_markdown(probe, max_rows=3).splitlines()) == 2 + 3


def test_labelled_embeddings_one_row_per_image_sorted(tmp_path):
    store = DeltaStore(str(tmp_path / "delta"))
    vec = [1.0] + [0.0] * (DIM - 1)
    for shard, ids in (("s2", ["b", "a", "c"]), ("s1", ["b"])):
        store.replace_shard(
            IMAGE_EMBEDDINGS,
            shard,
            pl.DataFrame(
                {
                    "image_id": ids,
                    "shard": shard,
                    "embedding": pl.Series([vec] * len(ids), dtype=pl.List(pl.Float32)),
                    "model_id": "m",
                    "dim": pl.Series([DIM] * len(ids), dtype=pl.Int32),
                }
            ),
        )
    got = labelled_embeddings(store, ["c", "b", "zz"])
    assert got.columns == ["image_id", "embedding", "model_id", "dim"]
    assert got["image_id"].to_list() == ["b", "c"]  # b embedded twice: one row


class FakeModel:
    model_id = "fake"

    def __init__(self, tower: bool) -> None:
        self.has_text_tower = tower

    def encode_text(self, texts: list[str]) -> np.ndarray:
        return fake_text_encoder(texts)


def test_the_text_tower_is_loaded_only_for_zero_shot_categories():
    loads = []

    def load(tower: bool = True):
        loads.append(tower)
        return FakeModel(tower)

    assert text_encoder_for([HAT, GORE], load) is None and loads == []
    encoder = text_encoder_for([HAT, SPEC], load)
    assert encoder is not None and encoder(["a hat"]).shape == (1, DIM) and loads == [True]
    assert text_encoder_for([SPEC], lambda: FakeModel(False)) is None
