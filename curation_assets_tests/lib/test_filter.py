import numpy as np
import polars as pl
import pytest

from curation_assets.lib.classify import CategorySpec
from curation_assets.lib.filter import (
    caption_similarity,
    clip_floor_scores,
    clip_score_floor,
    filter_summary,
    split_by_scores,
)
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import (
    CLASSIFIER_SCORES,
    FILTER_REJECTIONS,
    FILTERED_IMAGES,
    IMAGE_EMBEDDINGS,
    RAW_IMAGES,
)

DIM = 4


def raw_frame(ids: list[str], captions: list[str | None] | None = None) -> pl.DataFrame:
    """raw_images rows of shard ``s`` (the columns the filter keeps, plus one it drops)."""
    return pl.DataFrame(
        {
            "image_id": ids,
            "shard": "s",
            "source_uri": [f"/src/s/{i}.jpg" for i in ids],
            "caption": captions if captions is not None else [None] * len(ids),
            "width": 64,
            "height": 48,
            "format": "JPEG",
        },
        schema_overrides={
            "image_id": pl.String,
            "source_uri": pl.String,
            "caption": pl.String,
            "width": pl.Int32,
            "height": pl.Int32,
        },
    )


def scores_frame(rows: list[tuple[str, str, float, float | None]]) -> pl.DataFrame:
    """classifier_scores rows ``(image_id, category, score, threshold)`` of shard ``s``."""
    return CLASSIFIER_SCORES.conform(
        pl.DataFrame(
            rows,
            schema={
                "image_id": pl.String,
                "category": pl.String,
                "score": pl.Float32,
                "threshold": pl.Float64,
            },
            orient="row",
        ).with_columns(shard=pl.lit("s"), scorer=pl.lit("linear_probe"))
    )


def test_each_category_applies_its_own_threshold_with_one_reason_per_removal():
    raw = raw_frame(["a", "b", "c", "d"])
    scores = scores_frame(
        [
            ("a", "hat", 0.6, 0.5),  # hat: removed (0.6 >= 0.5)
            ("a", "gore", 0.6, 0.9),  # gore: kept at its own, higher threshold
            ("b", "hat", 0.5, 0.5),  # exactly at the threshold: removed
            ("b", "gore", 0.95, 0.9),  # and by gore too: two reasons
            ("c", "hat", 0.49, 0.5),
            ("c", "gore", 0.1, 0.9),
            ("d", "hat", 0.99, None),  # score only (no threshold): never removes
            ("d", "gore", 0.2, 0.9),
        ]
    )
    kept, rejections = split_by_scores(raw, scores)
    assert kept.schema == FILTERED_IMAGES.schema and rejections.schema == FILTER_REJECTIONS.schema
    assert kept["image_id"].to_list() == ["c", "d"]
    assert rejections.select("image_id", "category").rows() == [
        ("a", "hat"),
        ("b", "gore"),
        ("b", "hat"),
    ]
    assert rejections.filter(pl.col("image_id") == "a").row(0, named=True) == {
        "image_id": "a",
        "shard": "s",
        "category": "hat",
        "score": pytest.approx(0.6),
        "threshold": 0.5,
    }
    assert kept.row(0, named=True)["source_uri"] == "/src/s/c.jpg"  # raw columns carried over
    summary = filter_summary(raw, kept, rejections)
    assert (summary.raw, summary.kept, summary.removed) == (4, 2, 2)
    assert summary.removed_share == 0.5 and summary.every_image_kept_or_rejected
    assert summary.by_category == {"hat": 2, "gore": 1}


def test_an_image_without_a_score_for_a_category_is_not_removed_by_it():
    raw = raw_frame(["a", "b", "c"])
    scores = scores_frame([("a", "hat", 0.9, 0.5), ("c", "gore", 0.1, 0.5)])  # b: no rows
    kept, rejections = split_by_scores(raw, scores)
    assert kept["image_id"].to_list() == ["b", "c"]
    assert rejections["image_id"].to_list() == ["a"]


def test_empty_inputs_give_empty_tables_with_the_schemas():
    kept, rejections = split_by_scores(RAW_IMAGES.empty(), CLASSIFIER_SCORES.empty())
    assert kept.is_empty() and kept.schema == FILTERED_IMAGES.schema
    assert rejections.is_empty() and rejections.schema == FILTER_REJECTIONS.schema
    summary = filter_summary(RAW_IMAGES.empty(), kept, rejections)
    assert summary.removed_share == 0.0 and summary.by_category == {}
    assert summary.every_image_kept_or_rejected
    # no classifier yet: every image is kept
    kept, rejections = split_by_scores(raw_frame(["a", "b"]), CLASSIFIER_SCORES.empty())
    assert kept["image_id"].to_list() == ["a", "b"] and rejections.is_empty()


def test_the_clip_score_floor_removes_captioned_images_below_it():
    raw = raw_frame(["a", "b", "c", "d"], ["cap a", "cap b", "cap c", None])
    clip = pl.DataFrame(
        {"image_id": ["a", "b", "c"], "clip_score": [0.1, 0.25, 0.5]},
        schema={"image_id": pl.String, "clip_score": pl.Float32},
    )
    scores = scores_frame([("c", "hat", 0.9, 0.5)])
    kept, rejections = split_by_scores(raw, scores, clip_scores=clip, clip_floor=0.25)
    assert kept["image_id"].to_list() == ["b", "d"]  # at the floor is kept; uncaptioned too
    floor = rejections.filter(pl.col("category") == "clip_score_floor")
    assert floor.select("image_id", "shard", "threshold").rows() == [("a", "s", 0.25)]
    assert floor["score"][0] == pytest.approx(0.1)
    assert rejections.filter(pl.col("category") == "hat")["image_id"].to_list() == ["c"]
    # cosines without a floor remove nothing
    kept, rejections = split_by_scores(raw, CLASSIFIER_SCORES.empty(), clip_scores=clip)
    assert kept.height == 4 and rejections.is_empty()


def test_the_floor_is_the_strictest_one_the_spec_sets():
    assert clip_score_floor([CategorySpec("a", "a"), CategorySpec("b", "b")]) is None
    specs = [
        CategorySpec("a", "a", min_clip_score=0.2),
        CategorySpec("b", "b"),
        CategorySpec("c", "c", min_clip_score=0.28),
    ]
    assert clip_score_floor(specs) == 0.28


def test_summary_flags_an_image_both_kept_and_rejected_or_lost():
    raw = raw_frame(["a", "b", "c"])
    kept, rejections = split_by_scores(raw, scores_frame([("a", "hat", 0.9, 0.5)]))
    assert filter_summary(raw, kept, rejections).every_image_kept_or_rejected
    both = pl.concat([kept, FILTERED_IMAGES.conform(raw.head(1))])
    assert not filter_summary(raw, both, rejections).every_image_kept_or_rejected
    assert not filter_summary(raw, kept.head(1), rejections).every_image_kept_or_rejected


def test_caption_similarity_scores_captioned_images_in_batches():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    calls = []

    def encode(texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        return np.stack([x[int(t[-1])] for t in texts])  # caption "k" encodes as image k

    sims = caption_similarity(
        [f"i{k}" for k in range(5)], x, ["c0", None, "c2", "", "c4"], encode, batch_size=2
    )
    assert sims["image_id"].to_list() == ["i0", "i2", "i4"]
    np.testing.assert_allclose(sims["clip_score"].to_numpy(), 1.0, rtol=1e-6)
    assert calls == [["c0", "c2"], ["c4"]]


class FakeModel:
    def __init__(self, tower: bool) -> None:
        self.has_text_tower = tower
        self.model_id = "fake:model"

    def encode_text(self, texts: list[str]) -> np.ndarray:
        e0 = np.zeros((len(texts), DIM), np.float32)
        e0[:, 0] = 1.0
        return e0


def test_clip_floor_scores_load_the_model_only_when_needed(tmp_path):
    store = DeltaStore(str(tmp_path / "delta"))
    vectors = np.eye(DIM, dtype=np.float32)[[0, 1, 0]]  # c, a, b: a is orthogonal to e0
    store.replace_shard(
        IMAGE_EMBEDDINGS,
        "s",
        pl.DataFrame(
            {
                "image_id": ["c", "a", "b"],
                "shard": "s",
                "embedding": pl.Series(vectors.tolist(), dtype=pl.List(pl.Float32)),
                "model_id": "fake:model",
                "dim": pl.Series([DIM] * 3, dtype=pl.Int32),
            }
        ),
    )
    raw = raw_frame(["a", "b", "c"], ["cap", "cap", None])

    def never():
        raise AssertionError("the model must not be loaded")

    none = clip_floor_scores(store, "s", raw, None, never)
    assert none.scores is None and not none.unavailable
    assert none.note == "no min_clip_score in the category spec"
    uncaptioned = clip_floor_scores(store, "s", raw_frame(["a"]), 0.3, never)
    assert uncaptioned.scores is None and not uncaptioned.unavailable
    no_tower = clip_floor_scores(store, "s", raw, 0.3, lambda: FakeModel(False))
    assert no_tower.scores is None and no_tower.unavailable
    assert no_tower.note == "not applied: fake:model has no text tower"
    applied = clip_floor_scores(store, "s", raw, 0.3, lambda: FakeModel(True))
    assert applied.note == "applied: image-caption cosine >= 0.3" and not applied.unavailable
    assert applied.scores is not None
    assert applied.scores.rows() == [("a", 0.0), ("b", 1.0)]  # captioned only, by image_id
    kept, rejections = split_by_scores(
        raw,
        CLASSIFIER_SCORES.empty(),
        clip_scores=applied.scores,
        clip_floor=0.3,
    )
    assert kept["image_id"].to_list() == ["b", "c"] and rejections["image_id"].to_list() == ["a"]
