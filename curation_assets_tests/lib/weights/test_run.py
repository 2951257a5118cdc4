"""The weights stage over Delta: its inputs, fit, concept encoder, summary and writes."""

from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import SAMPLE_WEIGHTS
from curation_assets.lib.weights.audit import audit_attributes, bias_audit
from curation_assets.lib.weights.run import (
    concept_encoder,
    fit_weights,
    load_weight_inputs,
    weight_histogram,
)
from curation_assets_tests.weights_inputs import write_weight_inputs

SETTINGS = {"method": "kept_vs_removed", "C": 1.0, "pca_dim": 4, "seed": 0}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("weights_run")
    store = DeltaStore(str(tmp / "delta"))
    return store, write_weight_inputs(store, tmp / "images")


def _fit(frame, x, kept):
    return fit_weights(frame, x, kept, **SETTINGS, w_min=0.1, w_max=10.0)


def test_the_reference_leaves_out_what_dedup_removed_unless_told(world):
    store, inputs = world
    frame, x, kept = load_weight_inputs(store, "filter")
    removed_by_dedup = set(inputs.filtered) - set(inputs.kept)
    assert set(frame["image_id"]) == set(inputs.ids) - removed_by_dedup
    assert set(frame.filter("kept")["image_id"]) == set(inputs.kept)
    assert frame.equals(frame.sort("shard", "image_id"))
    assert kept.tolist() == frame["kept"].to_list() and x.shape == (frame.height, 8)
    row = {image_id: i for i, image_id in enumerate(inputs.ids)}
    np.testing.assert_array_equal(x, inputs.x[[row[i] for i in frame["image_id"]]])
    everything, _, kept_all = load_weight_inputs(store, "filter_and_dedup")
    assert set(everything["image_id"]) == set(inputs.ids)
    assert int(kept_all.sum()) == len(inputs.kept)


def test_fit_weights_gives_one_weight_per_kept_image(world):
    store, inputs = world
    frame, x, kept = load_weight_inputs(store, "filter")
    fitted = _fit(frame, x, kept)
    assert fitted.model.status == "fitted"
    assert fitted.frame.schema == SAMPLE_WEIGHTS.schema
    assert sorted(fitted.frame["image_id"]) == sorted(inputs.kept)
    assert fitted.frame["weight"].mean() == pytest.approx(1.0, abs=1e-9)
    assert (fitted.n_unfiltered, fitted.n_kept) == (frame.height, len(inputs.kept))
    # the ids are the canonical order: the same images read in another order, the same weights
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=1)
    order = [frame["image_id"].to_list().index(i) for i in shuffled["image_id"]]
    again = _fit(shuffled, x[order], kept[order])
    assert again.frame.sort("image_id").equals(fitted.frame.sort("image_id"))


def test_concept_encoder_loads_only_when_there_are_concepts():
    def never():
        raise AssertionError("loaded without concepts")

    assert concept_encoder({}, never) == (None, "none configured")
    no_text = SimpleNamespace(has_text_tower=False, model_id="timm:m@w")
    assert concept_encoder({"cat": "a cat"}, lambda: no_text) == (  # type: ignore[arg-type]
        None,
        "skipped: timm:m@w has no text tower",
    )
    clip = SimpleNamespace(has_text_tower=True, model_id="clip", encode_text=lambda t: t)
    encoder, note = concept_encoder({"cat": "a", "dog": "b"}, lambda: clip)  # type: ignore[arg-type]
    assert encoder is clip.encode_text and note == "cat, dog"


def test_audit_attributes_join_metadata_keywords_and_concepts(world):
    store, _ = world
    frame, x, _ = load_weight_inputs(store, "filter")
    plain = audit_attributes(frame, x, keywords=["outdoors"])
    assert plain.height == frame.height
    assert {"orientation", "size", "has_caption", "format"} <= set(plain.columns)
    assert {"keyword:woman", "keyword:man", "keyword:outdoors"} <= set(plain.columns)
    assert not any(c.startswith("concept:") for c in plain.columns)
    basis = np.eye(8, dtype=np.float32)

    def encoder(texts: list[str]) -> np.ndarray:
        return basis[[0 if t == "a photo." else 1 for t in texts]]

    with_concepts = audit_attributes(frame, x, concepts={"c": "x"}, text_encoder=encoder)
    expected = (x[:, 1] > x[:, 0]).tolist()
    assert with_concepts["concept:c"].to_list() == expected
    assert (
        audit_attributes(frame, x, concepts={"c": "x"}).columns
        == audit_attributes(frame, x).columns
    )  # no encoder: no concept column


def test_histogram_labels_and_the_audit_of_the_reference_weights(world):
    store, _ = world
    frame, x, kept = load_weight_inputs(store, "filter")
    fitted = _fit(frame, x, kept)
    labels, counts = weight_histogram(fitted.weights.stats)
    assert len(labels) == len(counts) == 20 and sum(counts) == int(kept.sum())
    assert "–" in labels[0]
    audit = bias_audit(audit_attributes(frame, x), fitted.frame.select("image_id", "weight"))
    woman = audit.filter(pl.col("attribute") == "keyword", pl.col("value") == "woman").row(
        0, named=True
    )
    # the filter removed women more often; the weights bring their share back toward unfiltered
    assert woman["shift_filtered_pts"] < 0
    assert abs(woman["shift_weighted_pts"]) < abs(woman["shift_filtered_pts"])
