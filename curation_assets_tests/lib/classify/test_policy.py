import numpy as np
import pytest

from curation_assets.lib.classify.base import EmbeddingMismatchError
from curation_assets.lib.classify.policy import MIN_POSITIVES, fit_category
from curation_assets.lib.classify.probe import Probe
from curation_assets.lib.classify.spec import CategorySpec
from curation_assets.lib.classify.zeroshot import ZeroShotScorer
from curation_assets_tests.lib.classify.helpers import (
    DIM,
    SPEC,
    fake_text_encoder,
    gaussian_data,
    recall_at,
    unit,
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
