import numpy as np
import pytest

from curation_assets.lib.classify.base import ClassifierInputError, EmbeddingMismatchError
from curation_assets.lib.classify.probe import train_probe
from curation_assets_tests.lib.classify.helpers import DIM, gaussian_data, recall_at


@pytest.mark.parametrize(
    ("shift", "separable"), [(4.0, True), (0.6, False)], ids=["separable", "overlapping"]
)
@pytest.mark.parametrize("target", [0.9, 0.99])
def test_threshold_keeps_oof_recall_and_is_the_highest_such(shift, separable, target):
    x, y = gaussian_data(120, 200, shift)
    probe = train_probe(x, y, category="c", model_id="m", target_recall=target, seed=1)
    oof = probe.oof_scores
    assert recall_at(oof, y, probe.threshold) >= target
    assert probe.oof_recall == pytest.approx(recall_at(oof, y, probe.threshold))
    higher = np.unique(oof[(y == 1) & (oof > probe.threshold)])
    assert higher.size > 0
    assert recall_at(oof, y, higher.min()) < target  # any higher threshold loses recall
    flagged = oof >= probe.threshold
    assert probe.oof_precision == pytest.approx(((y == 1) & flagged).sum() / flagged.sum())
    assert probe.oof_scores_by_repeat.shape == (3, y.size)
    np.testing.assert_allclose(probe.oof_scores_by_repeat.mean(0), oof, rtol=1e-5, atol=1e-6)
    if separable:
        assert probe.roc_auc > 0.99 and probe.oof_precision > 0.95
    else:
        assert 0.6 < probe.roc_auc < 0.99 and probe.oof_precision < 0.95  # recall costs
    curve = probe.pr_curve
    assert len(curve["precision"]) == len(curve["recall"]) == len(curve["thresholds"]) <= 200


def test_probe_fields_and_scores():
    x, y = gaussian_data(40, 60, 2.0)
    probe = train_probe(
        x, y, category="hat", model_id="timm:m@w", image_ids=[f"i{k}" for k in range(100)]
    )
    assert (probe.category, probe.model_id, probe.dim, probe.n_pos, probe.n_neg) == (
        "hat",
        "timm:m@w",
        DIM,
        40,
        60,
    )
    assert probe.coef.dtype == np.float32 and probe.coef.shape == (DIM,)
    s = probe.score(x)
    assert s.dtype == np.float32 and s.shape == (100,)
    assert ((s >= 0) & (s <= 1)).all()
    frame = probe.oof_frame()
    assert frame.columns == ["image_id", "label", "oof_score", "oof_scores"]
    assert frame["image_id"][0] == "i0" and frame["oof_scores"].list.len().to_list() == [3] * 100


def test_same_seed_same_probe_different_seed_different_oof():
    x, y = gaussian_data(50, 80, 0.8, seed=3)
    a = train_probe(x, y, seed=7)
    b = train_probe(x, y, seed=7)
    c = train_probe(x, y, seed=8)
    assert a.threshold == b.threshold
    np.testing.assert_array_equal(a.coef, b.coef)
    np.testing.assert_array_equal(a.oof_scores, b.oof_scores)
    assert not np.array_equal(a.oof_scores, c.oof_scores)
    np.testing.assert_array_equal(a.coef, c.coef)  # the final refit does not depend on the split


def test_train_probe_rejects_bad_arrays():
    x, y = gaussian_data(30, 30, 2.0)
    with pytest.raises(ClassifierInputError, match="2-D"):
        train_probe(x[0], y[:1])
    with pytest.raises(ClassifierInputError, match="float"):
        train_probe((x * 100).astype(np.int64), y)
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ClassifierInputError, match="NaN"):
        train_probe(bad, y)
    with pytest.raises(ClassifierInputError, match="3 positive and 30 negative"):
        train_probe(np.concatenate([x[:3], x[30:]]), np.concatenate([y[:3], y[30:]]))
    with pytest.raises(ClassifierInputError, match="one label per row"):
        train_probe(x, y[:-1])
    probe = train_probe(x, y)
    with pytest.raises(EmbeddingMismatchError, match="dimension 8"):
        probe.score(x[:, :8])
