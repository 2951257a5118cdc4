import numpy as np
import pytest

from curation_assets.lib.classify.base import EmbeddingMismatchError, threshold_for_recall
from curation_assets.lib.classify.probe import train_probe
from curation_assets.lib.classify.zeroshot import build_zero_shot
from curation_assets_tests.lib.classify.helpers import DIM, SPEC, fake_text_encoder, gaussian_data


def test_threshold_for_recall_basic_and_ties():
    scores = np.array([0.9, 0.8, 0.8, 0.2, 0.85, 0.1])
    y = np.array([1, 1, 1, 1, 0, 0])
    t, r, p = threshold_for_recall(scores, y, 0.5)  # k = 2 -> 2nd highest positive = 0.8
    assert (t, r, p) == (0.8, 0.75, 0.75)  # the tie at 0.8 flags both: recall above target
    t, r, p = threshold_for_recall(scores, y, 1.0)  # lowest positive score
    assert (t, r) == (0.2, 1.0) and p == pytest.approx(4 / 5)
    t, r, _ = threshold_for_recall(scores, y, 0.01)  # highest positive score
    assert (t, r) == (0.9, 0.25)


def test_threshold_for_recall_all_positives_tied_and_float_rounding():
    t, r, p = threshold_for_recall(np.full(5, 0.3), np.array([1, 1, 1, 0, 0]), 0.99)
    assert (t, r, p) == (0.3, 1.0, 0.6)
    scores = np.linspace(1.0, 0.1, 10)
    t, r, _ = threshold_for_recall(scores, np.ones(10, int), 0.7)  # 0.7 * 10 is 7.000000000000001
    assert r == 0.7 and t == pytest.approx(scores[6])


@pytest.mark.parametrize(
    ("scores", "y", "target", "match"),
    [
        ([0.1, 0.2], [0, 0], 0.9, "no positive"),
        ([0.1, 0.2], [1, 0], 0.0, "target_recall"),
        ([0.1, 0.2], [1, 0], 1.5, "target_recall"),
        ([np.nan, 0.2], [1, 0], 0.9, "NaN"),
        ([0.1, 0.2, 0.3], [1, 0], 0.9, "one per sample"),
        ([0.1, 0.2], [1, 2], 0.9, "0/1"),
    ],
)
def test_threshold_for_recall_rejects_bad_input(scores, y, target, match):
    with pytest.raises(ValueError, match=match):
        threshold_for_recall(np.array(scores), np.array(y), target)


def test_model_mismatch_error_names_both_models():
    x, y = gaussian_data(30, 30, 2.0)
    probe = train_probe(x, y, category="hat", model_id="timm:effnet@w")
    probe.check_compatible("timm:effnet@w", DIM)
    with pytest.raises(EmbeddingMismatchError) as err:
        probe.check_compatible("open_clip:ViT-B-32@laion", 512)
    msg = str(err.value)
    assert "'hat'" in msg and "timm:effnet@w (dim 16)" in msg
    assert "open_clip:ViT-B-32@laion (dim 512)" in msg and "retrain" in msg


def test_both_classifiers_share_the_summary_head_and_order():
    x, y = gaussian_data(30, 30, 2.0)
    probe = train_probe(x, y, category="hat", model_id="m")
    zs = build_zero_shot(SPEC, fake_text_encoder, model_id="m", dim=DIM)
    assert list(probe.summary()) == [
        "category",
        "kind",
        "threshold",
        "target_recall",
        "oof_recall",
        "oof_precision",
        "roc_auc",
        "n_pos",
        "n_neg",
        "model_id",
        "dim",
        "seed",
        "C",
        "n_splits",
        "n_repeats",
    ]
    assert list(zs.summary()) == [
        "category",
        "kind",
        "threshold",
        "threshold_source",
        "target_recall",
        "label_recall",
        "label_precision",
        "n_pos",
        "n_neg",
        "model_id",
        "dim",
        "temperature",
    ]
    assert (probe.summary()["kind"], zs.summary()["kind"]) == ("linear_probe", "zero_shot")
    assert zs.summary()["threshold"] is None and probe.summary()["threshold"] == probe.threshold
