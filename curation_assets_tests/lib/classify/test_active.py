import numpy as np
import polars as pl
import pytest

from curation_assets.lib.classify.active import (
    REASON_NEIGHBOR,
    REASON_TOP_SCORE,
    REASON_UNCERTAIN,
    build_label_queue,
    build_label_queues,
    find_hard_positives,
    queue_reasons,
)
from curation_assets.lib.classify.probe import train_probe
from curation_assets.lib.classify.zeroshot import ZeroShotScorer
from curation_assets.lib.tables import LABEL_QUEUE
from curation_assets_tests.lib.classify.helpers import DIM, unit


@pytest.fixture(scope="module")
def world():
    """Positives around +e0, negatives around -e0, and a rare positive mode around +e1.

    Labelled: 40 common positives, 3 rare-mode positives, 60 negatives. Unlabelled: 200
    common images of both kinds and 12 images of the rare mode, which the probe cannot see.
    """
    rng = np.random.default_rng(0)

    def blob(center: int, sign: float, n: int) -> np.ndarray:
        v = rng.normal(scale=0.35, size=(n, DIM))
        v[:, center] += sign * 1.5
        return v

    lab_x = np.concatenate([blob(0, 1, 40), blob(1, 1, 3), blob(0, -1, 60)])
    lab_y = np.concatenate([np.ones(43, np.int8), np.zeros(60, np.int8)])
    unl_x = np.concatenate([blob(0, 1, 100), blob(0, -1, 100), blob(1, 1, 12)])
    x = unit(np.concatenate([lab_x, unl_x]))
    ids = [f"img{i:04d}" for i in range(x.shape[0])]
    labelled = np.zeros(x.shape[0], bool)
    labelled[: lab_x.shape[0]] = True
    probe = train_probe(
        x[labelled],
        lab_y,
        category="hat",
        model_id="m",
        image_ids=[i for i, m in zip(ids, labelled, strict=True) if m],
        target_recall=0.9,
        seed=0,
    )
    rare_unlabelled = set(ids[-12:])
    return x, ids, labelled, probe, rare_unlabelled


def test_queue_targets_neighbours_of_hard_positives(world):
    x, ids, labelled, probe, rare_unlabelled = world
    rare_labelled = {"img0040", "img0041", "img0042"}
    hard = find_hard_positives(probe.oof_frame(), probe.threshold)
    assert rare_labelled <= set(hard["image_id"]) and not hard["fallback"].any()
    assert set(hard["image_id"].head(3)) == rare_labelled  # the hardest: lowest OOF scores
    queue = build_label_queue(x, ids, labelled, probe, k_neighbors=5, n_uncertain=20, max_queue=60)
    assert queue["rank"].to_list() == list(range(1, queue.height + 1))
    neighbours = queue.filter(pl.col("reason").str.starts_with(REASON_NEIGHBOR + ":"))
    of_rare = neighbours.filter(pl.col("reason").str.split(":").list.last().is_in(rare_labelled))
    # what the probe is blind to gets queued, and first
    assert set(of_rare["image_id"]) <= rare_unlabelled and of_rare.height >= 8
    assert queue["reason"][0].split(":")[1] in rare_labelled


def test_queue_invariants(world):
    x, ids, labelled, probe, _ = world
    queue = build_label_queue(x, ids, labelled, probe, k_neighbors=10, n_uncertain=30, max_queue=50)
    assert queue.schema == LABEL_QUEUE.schema
    assert queue.height <= 50
    assert queue["image_id"].n_unique() == queue.height  # no repeats
    labelled_ids = {i for i, m in zip(ids, labelled, strict=True) if m}
    assert not set(queue["image_id"]) & labelled_ids  # only unlabelled images
    assert queue["reason"].null_count() == 0
    reasons = set(queue["reason"].str.split(":").list.first())
    assert reasons == {REASON_NEIGHBOR, REASON_UNCERTAIN}
    # a neighbour's similarity is its cosine to the labelled positive named in the reason
    pos = {i: k for k, i in enumerate(ids)}
    for rec in queue.filter(pl.col("similarity").is_not_null()).iter_rows(named=True):
        hp = rec["reason"].split(":", 1)[1]
        assert hp in labelled_ids
        cos = float(x[pos[rec["image_id"]]] @ x[pos[hp]])
        assert rec["similarity"] == pytest.approx(cos, abs=1e-5)
    # uncertain images: closest to the threshold first, and closer than any unqueued one
    unc = queue.filter(pl.col("reason") == REASON_UNCERTAIN)
    gaps = (unc["score"] - probe.threshold).abs().to_numpy()
    assert (np.diff(gaps) >= -1e-6).all()
    scores = probe.score(x)
    queued = set(queue["image_id"])
    others = [
        abs(scores[k] - probe.threshold)
        for k, i in enumerate(ids)
        if i not in queued and not labelled[k]
    ]
    assert gaps.max() <= min(others) + 1e-6


def test_queue_is_deterministic_and_capped(world):
    x, ids, labelled, probe, _ = world
    a = build_label_queue(x, ids, labelled, probe, n_uncertain=5, max_queue=12, seed=3)
    b = build_label_queue(x, ids, labelled, probe, n_uncertain=5, max_queue=12, seed=3)
    assert a.equals(b)
    assert a.height == 12
    assert (a["reason"] == REASON_UNCERTAIN).sum() == 5  # n_uncertain of the cap is kept for them


def test_without_hard_positives_the_lowest_scored_positives_stand_in():
    oof = pl.DataFrame(
        {
            "image_id": [f"p{i}" for i in range(20)] + ["n0"],
            "label": [1] * 20 + [0],
            "oof_score": [0.5 + 0.02 * i for i in range(20)] + [0.1],
            "oof_scores": [[0.5 + 0.02 * i] * 3 for i in range(20)] + [[0.1] * 3],
        },
        schema={
            "image_id": pl.String,
            "label": pl.Int8,
            "oof_score": pl.Float32,
            "oof_scores": pl.List(pl.Float32),
        },
    )
    hard = find_hard_positives(oof, threshold=0.4)
    assert hard["image_id"].to_list() == ["p0", "p1"] and hard["fallback"].all()
    hard = find_hard_positives(oof, threshold=0.55)  # p0, p1, p2 fall below in every repeat
    assert hard["image_id"].to_list() == ["p0", "p1", "p2"] and not hard["fallback"].any()
    hard = find_hard_positives(oof, threshold=0.55, min_count=5)  # topped up with p3, p4
    assert hard["image_id"].to_list() == ["p0", "p1", "p2", "p3", "p4"]
    assert hard["fallback"].to_list() == [False] * 3 + [True] * 2


def test_zero_shot_without_threshold_queues_top_scores():
    rng = np.random.default_rng(1)
    x = unit(rng.normal(size=(50, DIM)))
    e0 = np.eye(DIM, dtype=np.float32)[0]
    scorer = ZeroShotScorer("hat", e0, -e0, ("hat",), ("other",), "m", DIM, temperature=5.0)
    labelled = np.zeros(50, bool)
    labelled[:5] = True
    queue = build_label_queue(x, [str(i) for i in range(50)], labelled, scorer, n_uncertain=10)
    assert queue.height == 10 and set(queue["reason"]) == {REASON_TOP_SCORE}
    assert queue["threshold"].is_null().all()
    best = sorted(range(5, 50), key=lambda i: -x[i, 0])[:10]
    assert queue["image_id"].to_list() == [str(i) for i in best]


def test_misaligned_inputs_are_refused(world):
    x, ids, labelled, probe, _ = world
    with pytest.raises(ValueError, match="same N"):
        build_label_queue(x, ids[:-1], labelled, probe)
    with pytest.raises(ValueError, match="duplicate"):
        build_label_queue(x, ["a"] * len(ids), labelled, probe)


def test_one_queue_per_classifier_each_with_its_own_labels(world):
    x, ids, labelled, probe, _ = world
    e1 = np.eye(DIM, dtype=np.float32)[1]
    gore = ZeroShotScorer("gore", e1, -e1, ("gore",), ("other",), "m", DIM, temperature=5.0)
    hat_labels = [i for i, m in zip(ids, labelled, strict=True) if m]
    labels = pl.DataFrame(
        {"image_id": hat_labels + ids[:2], "category": ["hat"] * len(hat_labels) + ["gore"] * 2}
    )
    queue = build_label_queues(x, ids, labels, [probe, gore])
    assert queue.schema == LABEL_QUEUE.schema
    assert queue.filter(pl.col("category") == "hat").equals(
        build_label_queue(x, ids, labelled, probe)
    )
    gore_labelled = np.zeros(len(ids), bool)
    gore_labelled[:2] = True  # only gore's own labels hide images from gore's queue
    gore_queue = queue.filter(pl.col("category") == "gore")
    assert gore_queue.equals(build_label_queue(x, ids, gore_labelled, gore))
    assert not set(gore_queue["image_id"]) & set(ids[:2])
    assert set(gore_queue["image_id"]) & set(hat_labels)  # hat's labels do not count for gore
    kinds = [r.split(":")[0] for r in queue["reason"]]
    assert queue_reasons(queue) == {k: kinds.count(k) for k in set(kinds)}
    assert set(queue_reasons(queue)) == {REASON_NEIGHBOR, REASON_UNCERTAIN, REASON_TOP_SCORE}
    assert build_label_queues(x, ids, labels, []).equals(LABEL_QUEUE.empty())
