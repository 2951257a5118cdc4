"""The calibrated near-duplicate threshold per embedding model."""

import pytest

from curation_assets.lib.dedup import DEFAULT_TAU, calibrated_tau


def test_calibrated_tau_per_embedder():
    assert 0.8 <= calibrated_tau("timm:tf_efficientnet_lite0@efficientnet-lite0==0.1.0") < 0.95
    assert calibrated_tau("open_clip:ViT-B-32@laion2b_s34b_b79k") == DEFAULT_TAU == 0.95
    with pytest.raises(ValueError, match="pass tau explicitly"):
        calibrated_tau("open_clip:ViT-L-14@openai")
