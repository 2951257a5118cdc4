import hashlib
import io

import numpy as np
import polars as pl
import pytest
from PIL import Image

from curation_assets.lib.classify.base import EmbeddingMismatchError
from curation_assets.lib.classify.probe import train_probe
from curation_assets.lib.classify.score import (
    mean_scores,
    pretrained_scores,
    score_embeddings,
    score_shard,
    scores_complete,
)
from curation_assets.lib.classify.scorers import PretrainedScorer
from curation_assets.lib.classify.zeroshot import build_zero_shot
from curation_assets.lib.shards import Item
from curation_assets.lib.tables import CLASSIFIER_SCORES
from curation_assets_tests.conftest import image_bytes
from curation_assets_tests.lib.classify.helpers import DIM, SPEC, fake_text_encoder, gaussian_data


@pytest.fixture(scope="module")
def classifiers():
    x, y = gaussian_data(30, 40, 2.0)
    probe = train_probe(x, y, category="hat", model_id="m")
    zs = build_zero_shot(SPEC, fake_text_encoder, model_id="m", dim=DIM)
    zs.category = "cap"
    return probe, zs


def embeddings_frame(x: np.ndarray, model_id: str = "m") -> pl.DataFrame:
    return pl.DataFrame(
        {
            "image_id": [f"i{k}" for k in range(x.shape[0])],
            "embedding": pl.Series(x.tolist(), dtype=pl.List(pl.Float32)),
            "model_id": model_id,
        }
    )


def test_one_long_row_per_image_and_classifier(classifiers):
    probe, zs = classifiers
    x, _ = gaussian_data(5, 5, 1.0, seed=2)
    ids = [f"i{k}" for k in range(10)]
    scores = score_embeddings([probe, zs], x, ids, "s1")
    assert scores.schema == CLASSIFIER_SCORES.schema and scores.height == 20
    hat = scores.filter(pl.col("category") == "hat")
    assert hat["image_id"].to_list() == ids and (hat["shard"] == "s1").all()
    np.testing.assert_array_equal(hat["score"].to_numpy(), probe.score(x))
    assert set(hat["scorer"]) == {"linear_probe"} and set(hat["threshold"]) == {probe.threshold}
    cap = scores.filter(pl.col("category") == "cap")
    assert set(cap["scorer"]) == {"zero_shot"} and cap["threshold"].is_null().all()
    assert score_embeddings([], x, ids, "s1").equals(CLASSIFIER_SCORES.empty())
    assert score_embeddings([probe], x[:0], [], "s1").height == 0


def test_shard_scores_refuse_classifiers_of_another_model(classifiers):
    probe, zs = classifiers
    x, _ = gaussian_data(4, 4, 1.0, seed=3)
    scores = score_shard([probe, zs], embeddings_frame(x), "s1")
    assert scores.height == 16
    np.testing.assert_array_equal(
        scores.filter(pl.col("category") == "hat")["score"].to_numpy(), probe.score(x)
    )
    with pytest.raises(EmbeddingMismatchError, match="trained on embeddings of m"):
        score_shard([probe], embeddings_frame(x, "other"), "s1")
    assert score_shard([probe], embeddings_frame(x[:0]), "s1").height == 0


def test_completeness_check_and_mean_scores(classifiers):
    probe, zs = classifiers
    x, _ = gaussian_data(3, 3, 1.0, seed=4)
    scores = score_shard([probe, zs], embeddings_frame(x), "s1")
    assert scores_complete(scores, n_images=6, n_scorers=2)
    assert not scores_complete(scores.head(11), n_images=6, n_scorers=2)  # one missing
    assert not scores_complete(scores, n_images=6, n_scorers=3)  # a scorer did not run
    twice = pl.concat([scores.head(11), scores.head(1)])  # same count, one image scored twice
    assert not scores_complete(twice, n_images=6, n_scorers=2)
    above = scores.with_columns(
        score=pl.when(pl.int_range(pl.len()) == 0).then(1.5).otherwise(pl.col("score"))
    )
    assert not scores_complete(above, n_images=6, n_scorers=2)
    means = mean_scores(scores)
    assert set(means) == {"hat", "cap"}
    expected = round(float(probe.score(x).mean()), 4)
    assert means["hat"] == pytest.approx(expected, abs=1e-4)


class MeanRed(PretrainedScorer):
    name = "red"
    model_id = "test:mean_red"

    def __init__(self) -> None:
        self.batches: list[int] = []

    def score_images(self, images):
        self.batches.append(len(images))
        return np.array([np.asarray(im)[..., 0].mean() / 255 for im in images], np.float32)


def test_pretrained_scores_each_wanted_image_once():
    data = [image_bytes(i) for i in range(5)]
    ids = [hashlib.sha256(d).hexdigest() for d in data]
    items = [Item(f"/x/{i}.jpg", d) for i, d in enumerate(data)]
    items.append(Item("/x/copy.jpg", data[0]))  # same bytes: scored once
    items.append(Item("/x/broken.jpg", b"not an image"))
    scorer = MeanRed()
    wanted = set(ids[:4])
    scores = pretrained_scores(scorer, items, wanted, "s1", threshold=0.5, batch_size=3, workers=1)
    assert scores.schema == CLASSIFIER_SCORES.schema
    assert scores["image_id"].to_list() == ids[:4] and scorer.batches == [3, 1]
    assert set(scores["category"]) == {"red"} and set(scores["scorer"]) == {
        "pretrained:test:mean_red"
    }
    assert set(scores["threshold"]) == {0.5}
    first = np.asarray(Image.open(io.BytesIO(data[0])).convert("RGB"))[..., 0].mean() / 255
    assert scores["score"][0] == pytest.approx(first, rel=1e-6)
    empty = pretrained_scores(scorer, [], set(), "s1")
    assert empty.height == 0 and empty.schema == CLASSIFIER_SCORES.schema
