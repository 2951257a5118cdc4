"""Same inputs, any row order → same decisions (issue 11, item 6 "Deterministic results").

Delta reads, ``unique`` and joins hand rows back in no fixed order, and two runs of the demo
disagreed on the probe's threshold (and so on every table after the filter). Each test gives
a stage the same data in two or more row orders and requires identical results: bit for bit
for decisions (thresholds, kept/removed, cluster ids, queue ranks) and per-image values
(scores, weights). Arrays are tiny, so the file runs in a few seconds.
"""

import numpy as np
import polars as pl
import pytest
import torch

from curation_assets.lib.classify import canonical_order, row_dot, train_probe
from curation_assets.lib.classify.active import build_label_queue
from curation_assets.lib.cluster import assign, train_kmeans
from curation_assets.lib.filter import split_by_scores
from curation_assets.lib.weights import (
    DensityRatioModel,
    SampleWeights,
    bias_audit,
    concept_attributes,
    fit_density_ratio,
    sample_weights,
)
from curation_assets.tools.synthetic import clip_like_embeddings

DIM = 16


def unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def labelled_set(n_pos: int = 60, n_neg: int = 90, seed: int = 0):
    """Two overlapping Gaussian classes (so the folds matter), with ids."""
    rng = np.random.default_rng(seed)
    pos = rng.normal(size=(n_pos, DIM))
    neg = rng.normal(size=(n_neg, DIM))
    pos[:, 0] += 0.7
    neg[:, 0] -= 0.7
    x = unit(np.concatenate([pos, neg]))
    y = np.concatenate([np.ones(n_pos, np.int8), np.zeros(n_neg, np.int8)])
    ids = [f"{h:064x}" for h in rng.integers(0, 2**62, size=x.shape[0])]
    return x, y, ids


PERMUTATIONS = [np.random.default_rng(s).permutation(150) for s in (1, 2, 3)]


# ------------------------------------------------------------------------------ classifier


@pytest.mark.parametrize("perm", PERMUTATIONS, ids=["p1", "p2", "p3"])
@pytest.mark.parametrize("with_ids", [True, False], ids=["ids", "no_ids"])
def test_probe_is_identical_for_the_same_labels_in_any_row_order(perm, with_ids):
    x, y, ids = labelled_set()
    a = train_probe(x, y, image_ids=ids if with_ids else None, target_recall=0.95, seed=0)
    b = train_probe(
        x[perm], y[perm], image_ids=[ids[i] for i in perm] if with_ids else None,
        target_recall=0.95, seed=0,
    )  # fmt: skip
    assert b.threshold == a.threshold
    assert (b.oof_recall, b.oof_precision, b.roc_auc) == (a.oof_recall, a.oof_precision, a.roc_auc)
    np.testing.assert_array_equal(b.coef, a.coef)
    assert b.intercept == a.intercept
    # per-sample outputs stay in the caller's order: same score for the same image
    np.testing.assert_array_equal(b.oof_scores, a.oof_scores[perm])
    np.testing.assert_array_equal(b.oof_scores_by_repeat, a.oof_scores_by_repeat[:, perm])
    np.testing.assert_array_equal(b.labels, y[perm])
    assert b.pr_curve == a.pr_curve
    # and the final model flags the same images
    np.testing.assert_array_equal(b.score(x) >= b.threshold, a.score(x) >= a.threshold)


def test_canonical_order_sorts_by_id_then_label_then_vector():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], dtype=np.float32)
    assert canonical_order(x, np.array([0, 1, 0]), ["b", "a", "c"]).tolist() == [1, 0, 2]
    order = canonical_order(x, np.array([1, 0, 0]))  # no ids: label, then the bytes
    assert order.tolist()[-1] == 0
    perm = np.array([2, 0, 1])
    assert x[perm][canonical_order(x[perm], np.array([1, 0, 0])[perm])].tobytes() == (
        x[order].tobytes()
    )


def test_row_dot_gives_each_row_the_same_bits_in_any_batch():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 64)).astype(np.float32)
    v = rng.normal(size=64).astype(np.float32)
    whole = row_dot(x, v)
    alone = np.array([row_dot(x[i : i + 1], v)[0] for i in range(x.shape[0])])
    perm = rng.permutation(x.shape[0])
    np.testing.assert_array_equal(alone, whole)
    np.testing.assert_array_equal(row_dot(x[perm], v), whole[perm])
    np.testing.assert_array_equal(row_dot(x, v, batch_size=7), whole)
    np.testing.assert_allclose(whole, x.astype(np.float64) @ v.astype(np.float64), rtol=1e-12)


def test_probe_scores_of_an_image_do_not_depend_on_its_batch():
    x, y, ids = labelled_set()
    probe = train_probe(x, y, image_ids=ids)
    whole = probe.score(x)
    alone = np.concatenate([probe.score(x[i : i + 1]) for i in range(x.shape[0])])
    np.testing.assert_array_equal(alone, whole)


def test_split_by_scores_is_sorted_by_image_id_whatever_the_read_order():
    ids = [f"id{i:03d}" for i in range(40)]
    rng = np.random.default_rng(0)
    raw = pl.DataFrame(
        {
            "image_id": ids,
            "shard": "s",
            "source_uri": [f"/x/{i}" for i in ids],
            "caption": None,
            "width": 10,
            "height": 10,
        },
        schema_overrides={"caption": pl.String, "width": pl.Int32, "height": pl.Int32},
    )
    scores = pl.DataFrame(
        {
            "image_id": ids,
            "shard": "s",
            "category": "c",
            "score": rng.random(40).astype(np.float32),
            "threshold": 0.5,
            "scorer": "linear_probe",
        }
    )
    kept, rejected = split_by_scores(raw, scores)
    for seed in (1, 2):
        perm = np.random.default_rng(seed).permutation(40)
        k2, r2 = split_by_scores(raw[perm], scores[np.random.default_rng(seed + 9).permutation(40)])
        assert k2.equals(kept) and r2.equals(rejected)
    assert kept["image_id"].is_sorted()


# ------------------------------------------------------------------------------ label queue


def test_label_queue_is_identical_for_shuffled_rows_and_breaks_similarity_ties_by_id():
    x, y, ids = labelled_set()
    probe = train_probe(x, y, image_ids=ids, target_recall=0.95)
    rng = np.random.default_rng(5)
    unl = unit(rng.normal(size=(60, DIM)))
    unl = np.concatenate([unl, unl[:20]])  # exact copies: equal similarities to every query
    unl_ids = [f"u{i:03d}" for i in range(unl.shape[0])]
    x_all = np.concatenate([x, unl])
    ids_all = ids + unl_ids
    mask = np.arange(x_all.shape[0]) < x.shape[0]

    def queue(order: np.ndarray) -> pl.DataFrame:
        return build_label_queue(
            x_all[order],
            [ids_all[i] for i in order],
            mask[order],
            probe,
            k_neighbors=8,
            n_uncertain=10,
            min_hard_positives=4,
        )

    base = queue(np.arange(x_all.shape[0]))
    assert base.height > 10
    for seed in (1, 2, 3):
        assert queue(np.random.default_rng(seed).permutation(x_all.shape[0])).equals(base)
    # of two copies with the same similarity, the smaller id ranks first
    neigh = base.filter(pl.col("reason").str.starts_with("neighbor"))
    for hp, grp in neigh.group_by(pl.col("reason")):
        sims = grp["similarity"].to_list()
        got = grp["image_id"].to_list()
        assert got == [i for _, i in sorted(zip([-s for s in sims], got, strict=True))], hp


# ------------------------------------------------------------------------------ weights


def _weights_world(n: int = 600, d: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    kept = rng.random(n) < 1.0 / (1.0 + np.exp(-(0.5 + 1.5 * x[:, 0])))
    ids = [f"{h:016x}" for h in rng.integers(0, 2**62, size=n)]
    return x, kept, ids


@pytest.mark.parametrize("method", ["kept_vs_removed", "unfiltered_vs_filtered"])
def test_weights_per_image_are_identical_for_shuffled_rows(method):
    x, kept, ids = _weights_world()

    def per_image(perm: np.ndarray) -> tuple[dict, DensityRatioModel, SampleWeights]:
        pid = [ids[i] for i in perm]
        model = fit_density_ratio(
            x[perm], kept[perm], method=method, pca_dim=4, seed=3, image_ids=pid
        )
        sw = sample_weights(model, x[perm], kept[perm], image_ids=pid, batch_size=50)
        kept_ids = [pid[r] for r in sw.rows]
        rows = zip(kept_ids, sw.weight, sw.raw_ratio, sw.clipped, strict=True)
        return {i: (w, r, c) for i, w, r, c in rows}, model, sw

    base, m0, sw0 = per_image(np.arange(x.shape[0]))
    for seed in (1, 2):
        other, m1, sw1 = per_image(np.random.default_rng(seed).permutation(x.shape[0]))
        assert other.keys() == base.keys()
        for image_id, (w, r, c) in base.items():
            w1, r1, c1 = other[image_id]
            assert abs(w1 - w) <= 1e-6 and c1 == c  # the requirement ...
            assert (w1, r1) == (w, r)  # ... and, on one machine, bit for bit
        assert (m1.auc, m1.platt_a, m1.platt_b) == (m0.auc, m0.platt_a, m0.platt_b)
        assert sw1.stats["ess"] == sw0.stats["ess"] and sw1.scale == sw0.scale


def test_weights_without_ids_keep_the_row_order_behaviour():
    x, kept, _ = _weights_world()
    a = sample_weights(fit_density_ratio(x, kept, pca_dim=4), x, kept)
    ids = [f"{i:06d}" for i in range(x.shape[0])]  # ids in row order: the same canonical order
    model = fit_density_ratio(x, kept, pca_dim=4, image_ids=ids)
    b = sample_weights(model, x, kept, image_ids=ids)
    np.testing.assert_array_equal(a.weight, b.weight)
    with pytest.raises(ValueError, match="repeat"):
        fit_density_ratio(x, kept, image_ids=["same"] * x.shape[0])


# ------------------------------------------------------------------------------ k-means


@pytest.mark.parametrize("sample_size", [None, 300], ids=["all_rows", "subsample"])
def test_kmeans_with_a_canonical_key_is_identical_for_shuffled_rows(sample_size):
    x = clip_like_embeddings(800, 24, seed=1)[0]
    ids = [f"{i * 7919 % 1000:04d}-{i}" for i in range(x.shape[0])]
    kw = {"seed": 2, "niter": 5, "sample_size": sample_size, "gpu": False}
    a = train_kmeans(x, 8, order_key=ids, **kw)
    a_ids, a_sims = assign(x, a.centroids)
    for seed in (1, 2):
        perm = np.random.default_rng(seed).permutation(x.shape[0])
        b = train_kmeans(x[perm], 8, order_key=[ids[i] for i in perm], **kw)
        np.testing.assert_array_equal(b.centroids, a.centroids)
        np.testing.assert_array_equal(b.sizes, a.sizes)
        b_ids, _ = assign(x[perm], b.centroids)
        np.testing.assert_array_equal(b_ids, a_ids[perm])  # same cluster per image
    np.testing.assert_array_equal(train_kmeans(x, 8, order_key=ids, **kw).centroids, a.centroids)


def test_kmeans_order_key_must_be_one_unique_key_per_row():
    x = clip_like_embeddings(50, 8, seed=0)[0]
    with pytest.raises(ValueError, match="repeats"):
        train_kmeans(x, 2, seed=0, order_key=["k"] * 50, gpu=False)
    with pytest.raises(ValueError, match="one key"):
        train_kmeans(x, 2, seed=0, order_key=["k"], gpu=False)


# ------------------------------------------------------------------------------ audit


def test_bias_audit_is_identical_for_shuffled_rows():
    rng = np.random.default_rng(0)
    n = 500
    ids = [f"i{k:04d}" for k in range(n)]
    pick = rng.integers(0, 3, size=(2, n)).tolist()
    attrs = pl.DataFrame(
        {
            "image_id": ids,
            "format": [("JPEG", "PNG", None)[k] for k in pick[0]],
            "keyword:woman": [(True, False, None)[k] for k in pick[1]],
        }
    )
    kept = rng.random(n) < 0.6
    weights = pl.DataFrame(
        {
            "image_id": [i for i, k in zip(ids, kept, strict=True) if k],
            "weight": rng.random(int(kept.sum())) * 3,
        }
    )
    base = bias_audit(attrs, weights)
    for seed in (1, 2):
        g = np.random.default_rng(seed)
        other = bias_audit(attrs[g.permutation(n)], weights[g.permutation(weights.height)])
        assert other.equals(base)


def test_concept_decisions_of_an_image_do_not_depend_on_its_batch():
    rng = np.random.default_rng(0)
    x = unit(rng.normal(size=(120, 32)))
    prompts = {"a photo.": 0, "a cat": 1, "a dog": 2}
    basis = unit(rng.normal(size=(3, 32)))

    def encoder(texts: list[str]) -> np.ndarray:
        return basis[[prompts[t] for t in texts]]

    ids = [str(i) for i in range(x.shape[0])]
    concepts = {"cat": "a cat", "dog": "a dog"}
    whole = concept_attributes(x, ids, concepts, encoder)
    small = concept_attributes(x, ids, concepts, encoder, batch_size=1)
    assert small.equals(whole)


# ------------------------------------------------------------------------------ embeddings


def test_a_lone_image_gets_the_vector_it_gets_in_a_batch():
    from curation_assets.lib.embed import EmbedderSpec, load_embedder

    embedder = load_embedder(EmbedderSpec(device="cpu"))
    rng = np.random.default_rng(0)
    pixels = torch.from_numpy(rng.integers(0, 256, size=(3, 3, 224, 224), dtype=np.uint8))
    batch = embedder.encode_images(pixels)
    alone = embedder.encode_images(pixels[:1])
    assert alone.shape == (1, embedder.dim)
    np.testing.assert_array_equal(alone[0], batch[0])
    np.testing.assert_array_equal(embedder.encode_images(pixels[1:])[0], batch[1])


def test_no_forward_pass_runs_on_a_single_image(monkeypatch):
    from curation_assets.lib.embed import EmbedderSpec, load_embedder

    embedder = load_embedder(EmbedderSpec(device="cpu"))
    seen: list[int] = []
    forward = embedder._forward

    def spy(pixels: torch.Tensor) -> torch.Tensor:
        seen.append(int(pixels.shape[0]))
        return forward(pixels)

    monkeypatch.setattr(embedder, "_forward", spy)
    out = embedder.encode_images(torch.zeros((1, 3, 224, 224), dtype=torch.uint8))
    assert out.shape == (1, embedder.dim) and seen == [2]


def test_random_init_models_are_the_same_in_every_process():
    """``pretrained=None`` (tests only) builds its random weights from a fixed seed."""
    from curation_assets.lib.embed import EmbedderSpec, OpenClipEmbedder
    from curation_assets_tests.conftest import TINY_CLIP_CONFIG

    spec = EmbedderSpec(
        backend="open_clip",
        model_name="tiny",
        pretrained=None,
        model_config=str(TINY_CLIP_CONFIG),
        device="cpu",
    )
    torch.manual_seed(123)  # whatever state the process is in
    a = OpenClipEmbedder(spec)
    after_a = torch.rand(1)
    torch.manual_seed(123)
    torch.rand(5)
    b = OpenClipEmbedder(spec)
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)
    torch.manual_seed(123)
    OpenClipEmbedder(spec)
    assert torch.equal(torch.rand(1), after_a)  # the caller's generator is left alone
