import numpy as np
import pytest

from curation_assets.lib.classify.base import ClassifierInputError, EmbeddingMismatchError
from curation_assets.lib.classify.spec import CategorySpec, ZeroShotPrompts
from curation_assets.lib.classify.zeroshot import ZERO_SHOT_TEMPERATURE, build_zero_shot
from curation_assets_tests.lib.classify.helpers import DIM, SPEC, fake_text_encoder, unit


def test_score_is_the_softmax_of_the_two_prompt_cosines():
    scorer = build_zero_shot(SPEC, fake_text_encoder, model_id="m", dim=DIM)
    assert scorer.threshold is None and scorer.temperature == ZERO_SHOT_TEMPERATURE
    np.testing.assert_allclose(np.linalg.norm(scorer.positive), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(scorer.negative), 1.0, rtol=1e-6)
    x = unit(np.random.default_rng(0).normal(size=(30, DIM)))
    logits = ZERO_SHOT_TEMPERATURE * np.stack([x @ scorer.positive, x @ scorer.negative], axis=1)
    softmax = np.exp(logits[:, 0]) / np.exp(logits).sum(axis=1)
    s = scorer.score(x)
    assert s.dtype == np.float32 and s.shape == (30,)
    np.testing.assert_allclose(s, softmax, rtol=1e-4, atol=1e-6)
    assert s[np.argmax(x[:, 0])] > s[np.argmin(x[:, 0])]  # 'hat' prompts point along +e0


def test_prompt_problems_are_configuration_errors():
    with pytest.raises(ClassifierInputError, match="no zero_shot prompts"):
        build_zero_shot(CategorySpec("hat", "a hat"), fake_text_encoder, model_id="m")
    with pytest.raises(ClassifierInputError, match=r"expected \(n_prompts, dim\)"):
        build_zero_shot(SPEC, lambda t: np.ones((1, DIM), np.float32), model_id="m")
    opposite = CategorySpec("hat", "a hat", zero_shot=ZeroShotPrompts(("up", "down"), ("x",)))

    def cancelling(texts: list[str]) -> np.ndarray:
        e0 = np.eye(DIM, dtype=np.float32)[0]
        return np.stack([e0 if t == "up" else -e0 for t in texts])

    with pytest.raises(ClassifierInputError, match="average to zero"):
        build_zero_shot(opposite, cancelling, model_id="m")
    with pytest.raises(EmbeddingMismatchError, match="dimension 16 but the image embeddings"):
        build_zero_shot(SPEC, fake_text_encoder, model_id="m", dim=8)


def test_zero_shot_scorer_refuses_embeddings_of_another_model():
    scorer = build_zero_shot(SPEC, fake_text_encoder, model_id="open_clip:a@b", dim=DIM)
    scorer.check_compatible("open_clip:a@b", DIM)
    with pytest.raises(EmbeddingMismatchError, match=r"open_clip:a@b \(dim 16\)"):
        scorer.check_compatible("timm:c@d", DIM)
    with pytest.raises(EmbeddingMismatchError, match="scored zero-shot for 'hat'"):
        scorer.score(np.ones((2, 8), np.float32))
