import json

import numpy as np
import pytest

from curation_assets.lib.classify.policy import fit_category
from curation_assets.lib.classify.probe import Probe, train_probe
from curation_assets.lib.classify.serialize import load_probes, save_probes
from curation_assets.lib.classify.spec import CategorySpec
from curation_assets.lib.classify.zeroshot import ZeroShotScorer
from curation_assets_tests.lib.classify.helpers import (
    DIM,
    SPEC,
    fake_text_encoder,
    gaussian_data,
)


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
