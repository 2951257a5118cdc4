import json
import math
from pathlib import Path

import numpy as np
import pytest

from curation_assets.lib.classify import (
    MIN_POSITIVES,
    CategorySpec,
    CategorySpecError,
    ClassifierInputError,
    EmbeddingMismatchError,
    Probe,
    ZeroShotPrompts,
    ZeroShotScorer,
    fit_category,
    load_category_spec,
    load_probes,
    save_probes,
    threshold_for_recall,
    train_probe,
)

DIM = 16
SHIPPED_SPEC = (
    Path(__file__).resolve().parents[2] / "curation_assets" / "configs" / "categories.yaml"
)


def unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def gaussian_data(n_pos: int, n_neg: int, shift: float, seed: int = 0):
    """Two Gaussian classes, L2-normalized; positives shifted along axis 0."""
    rng = np.random.default_rng(seed)
    pos = rng.normal(size=(n_pos, DIM))
    neg = rng.normal(size=(n_neg, DIM))
    pos[:, 0] += shift
    neg[:, 0] -= shift
    x = unit(np.concatenate([pos, neg]))
    y = np.concatenate([np.ones(n_pos, np.int8), np.zeros(n_neg, np.int8)])
    return x, y


def recall_at(scores, y, t):
    return float(((scores >= t) & (y == 1)).sum() / (y == 1).sum())


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


def test_model_mismatch_error_names_both_models():
    x, y = gaussian_data(30, 30, 2.0)
    probe = train_probe(x, y, category="hat", model_id="timm:effnet@w")
    probe.check_compatible("timm:effnet@w", DIM)
    with pytest.raises(EmbeddingMismatchError) as err:
        probe.check_compatible("open_clip:ViT-B-32@laion", 512)
    msg = str(err.value)
    assert "'hat'" in msg and "timm:effnet@w (dim 16)" in msg
    assert "open_clip:ViT-B-32@laion (dim 512)" in msg and "retrain" in msg


# --------------------------------------------------------------------------- policy


def fake_text_encoder(texts: list[str]) -> np.ndarray:
    """Deterministic: 'hat' prompts -> +e0 direction, others -> -e0, plus a fixed tilt."""
    out = np.zeros((len(texts), DIM), np.float32)
    for i, t in enumerate(texts):
        out[i, 0] = 1.0 if "hat" in t else -1.0
        out[i, 1 + (sum(map(ord, t)) % (DIM - 1))] = 0.2
    return unit(out)


SPEC = CategorySpec(
    name="hat",
    description="a hat",
    target_recall=0.9,
    zero_shot=ZeroShotPrompts(
        positive=("a photo of a hat", "a hat"), negative=("a photo", "clothes")
    ),
)


def test_enough_positives_train_a_probe():
    x, y = gaussian_data(MIN_POSITIVES + 5, 60, 2.0)
    result = fit_category(SPEC, x, y, model_id="m", text_encoder=fake_text_encoder)
    assert result.status == "trained" and isinstance(result.classifier, Probe)
    assert result.filters and "linear probe on 25 positive" in result.reason
    assert result.summary()["oof_recall"] >= 0.9


def test_few_positives_with_text_encoder_go_zero_shot_with_label_threshold():
    x, y = gaussian_data(5, 60, 2.0)
    result = fit_category(SPEC, x, y, model_id="m", text_encoder=fake_text_encoder)
    assert result.status == "zero_shot"
    zs = result.classifier
    assert isinstance(zs, ZeroShotScorer)
    assert zs.threshold_source == "labels" and zs.threshold is not None
    assert "estimated from the zero-shot scores" in result.reason and result.warnings
    scores = zs.score(x)
    assert recall_at(scores, y, zs.threshold) >= 0.9
    assert scores[:5].mean() > scores[5:].mean()  # positives lean to +e0 like the prompts


def test_no_positive_label_means_score_only():
    x, y = gaussian_data(0, 30, 2.0)
    result = fit_category(SPEC, x, y, model_id="m", text_encoder=fake_text_encoder)
    assert result.status == "zero_shot" and result.threshold is None and not result.filters
    assert "score only" in result.reason
    assert any("NOT filtered" in w for w in result.warnings)
    empty = fit_category(
        SPEC,
        np.zeros((0, 0), np.float32),
        np.zeros(0),
        model_id="m",
        text_encoder=fake_text_encoder,
        dim=DIM,
    )
    assert empty.status == "zero_shot" and empty.classifier is not None
    assert empty.classifier.dim == DIM


def test_few_positives_without_encoder_or_prompts_are_skipped():
    x, y = gaussian_data(5, 60, 2.0)
    result = fit_category(SPEC, x, y, model_id="m")
    assert result.status == "skipped" and result.classifier is None
    assert "no text encoder" in result.reason and "5 positive" in result.reason
    no_prompts = CategorySpec(name="hat", description="a hat")
    result = fit_category(no_prompts, x, y, model_id="m", text_encoder=fake_text_encoder)
    assert result.status == "skipped" and "no zero_shot prompts" in result.reason


def test_text_encoder_of_another_dimension_is_refused():
    x, y = gaussian_data(5, 60, 2.0)
    with pytest.raises(EmbeddingMismatchError, match="text tower"):
        fit_category(SPEC, x, y, model_id="m", text_encoder=lambda t: unit(np.ones((len(t), 8))))


# --------------------------------------------------------------------------- serialization


def test_json_round_trip_of_probe_and_zero_shot(tmp_path):
    x, y = gaussian_data(30, 40, 1.0)
    probe = train_probe(x, y, category="hat", model_id="m", image_ids=[f"id{i}" for i in range(70)])
    zs = fit_category(
        CategorySpec("other", "o", zero_shot=SPEC.zero_shot),
        x[:0],
        y[:0],
        model_id="m",
        text_encoder=fake_text_encoder,
        dim=DIM,
    ).classifier
    assert isinstance(zs, ZeroShotScorer)
    path = save_probes(tmp_path / "classifiers.json", [probe, zs])
    doc = json.loads(path.read_text())
    assert doc["classifiers"][0]["model_id"] == "m" and doc["classifiers"][0]["dim"] == DIM
    loaded = load_probes(path)
    assert [type(c) for c in loaded] == [Probe, ZeroShotScorer]
    p2, z2 = loaded
    assert isinstance(p2, Probe) and isinstance(z2, ZeroShotScorer)
    np.testing.assert_array_equal(p2.coef, probe.coef)
    np.testing.assert_array_equal(p2.score(x), probe.score(x))
    np.testing.assert_array_equal(p2.oof_scores_by_repeat, probe.oof_scores_by_repeat)
    assert p2.threshold == probe.threshold and p2.image_ids == probe.image_ids
    assert p2.pr_curve == probe.pr_curve and p2.summary() == probe.summary()
    np.testing.assert_array_equal(z2.score(x), zs.score(x))
    assert z2.threshold is None and z2.positive_prompts == zs.positive_prompts


def test_load_probes_refuses_other_files(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"format": "curation_assets.classifiers", "version": 99}))
    with pytest.raises(ValueError, match="version 99"):
        load_probes(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a classifiers file"):
        load_probes(bad)


# --------------------------------------------------------------------------- category spec


def test_shipped_category_spec_loads():
    specs = load_category_spec(SHIPPED_SPEC)
    assert specs and all(0 < s.target_recall <= 1 for s in specs)
    assert specs[0].zero_shot is not None and specs[0].zero_shot.positive


def test_category_spec_defaults_and_fields(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(
        "categories:\n"
        "  - name: hat\n    description: a hat\n"
        "  - name: gore_v2\n    description: gore\n    target_recall: 1\n"
        "    min_clip_score: 0.28\n"
        "    zero_shot: {positive: [blood], negative: [a photo]}\n"
    )
    hat, gore = load_category_spec(p)
    assert hat.target_recall == 0.99 and hat.zero_shot is None and hat.min_clip_score is None
    assert gore.target_recall == 1.0 and gore.min_clip_score == 0.28
    assert gore.zero_shot == ZeroShotPrompts(("blood",), ("a photo",))


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (
            "  - name: hat\n    description: d\n    recall: 0.9\n",
            r"category 'hat': unknown keys \['recall'\]",
        ),
        ("  - name: Hat-1\n    description: d\n", "not snake_case"),
        ("  - name: hat\n    description: d\n    target_recall: 0\n", "target_recall is 0"),
        ("  - name: hat\n    description: d\n    target_recall: '0.9'\n", "target_recall"),
        ("  - name: hat\n", "description is None"),
        (
            "  - name: hat\n    description: d\n    zero_shot: {positive: []}\n",
            "zero_shot.positive",
        ),
        (
            "  - name: hat\n    description: d\n"
            "    zero_shot: {positive: [a], negative: [b], x: 1}\n",
            "under zero_shot",
        ),
        ("  - name: hat\n    description: d\n    min_clip_score: 2\n", "min_clip_score is 2"),
        ("  - {name: hat, description: d}\n  - {name: hat, description: e}\n", "more than once"),
    ],
)
def test_category_spec_errors_name_file_category_and_key(tmp_path, body, match):
    p = tmp_path / "cats.yaml"
    p.write_text("categories:\n" + body)
    with pytest.raises(CategorySpecError, match=match) as err:
        load_category_spec(p)
    assert str(p) in str(err.value)


def test_category_spec_file_level_errors(tmp_path):
    with pytest.raises(CategorySpecError, match="does not exist"):
        load_category_spec(tmp_path / "missing.yaml")
    p = tmp_path / "c.yaml"
    p.write_text("cats: []\n")
    with pytest.raises(CategorySpecError, match="'categories:'"):
        load_category_spec(p)
    p.write_text("categories: []\nversion: 1\n")
    with pytest.raises(CategorySpecError, match="unknown top-level keys"):
        load_category_spec(p)
    assert math.isclose(0.99, load_category_spec(SHIPPED_SPEC)[0].target_recall)
