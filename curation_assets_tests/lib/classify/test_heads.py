"""MLP heads over stored embeddings, from safetensors files the tests write."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from safetensors.numpy import save_file

from curation_assets.lib.classify.base import EmbeddingMismatchError
from curation_assets.lib.classify.heads import HeadFormatError, load_head
from curation_assets.lib.classify.scorers import ScorerUnavailableError
from curation_assets.lib.tables import CLASSIFIER_SCORES

MODEL = "open_clip:tiny@random"


def _weights(dims=(8, 5, 1), seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        out[f"layers.{2 * i}.weight"] = rng.normal(size=(b, a)).astype(np.float32)
        out[f"layers.{2 * i}.bias"] = rng.normal(size=(b,)).astype(np.float32)
    return out


def _write(path: Path, tensors=None, **meta: str) -> Path:
    meta = {"embedding_model": MODEL, **meta}
    save_file(tensors if tensors is not None else _weights(), str(path), metadata=meta)
    return path


def _x(n=6, d=8, seed=1) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_scores_equal_a_manual_forward_pass(tmp_path):
    w = _weights()
    head = load_head(_write(tmp_path / "aesthetic.safetensors", w, activation="relu"))
    x = _x()
    h = np.maximum(x @ w["layers.0.weight"].T + w["layers.0.bias"], 0)
    z = (h @ w["layers.2.weight"].T + w["layers.2.bias"])[:, 0]
    np.testing.assert_allclose(head.score(x), 1 / (1 + np.exp(-z)), rtol=1e-5, atol=1e-6)
    assert head.name == "aesthetic" and head.input_dim == 8 and head.output == "sigmoid"
    assert head.model_id.startswith("head:aesthetic@")


def test_range_softmax_and_no_activation(tmp_path):
    w = _weights((8, 4, 1))
    x = _x()
    z = ((x @ w["layers.0.weight"].T + w["layers.0.bias"]) @ w["layers.2.weight"].T)[:, 0]
    z = z + w["layers.2.bias"][0]
    head = load_head(_write(tmp_path / "a.safetensors", w, activation="none", output="range:-2:2"))
    np.testing.assert_allclose(head.score(x), np.clip((z + 2) / 4, 0, 1), rtol=1e-5, atol=1e-6)
    rev = load_head(_write(tmp_path / "b.safetensors", w, activation="none", output="range:2:-2"))
    np.testing.assert_allclose(rev.score(x), 1 - head.score(x), atol=1e-6)
    w3 = _weights((8, 3))
    soft = load_head(_write(tmp_path / "c.safetensors", w3, output="softmax:2", name="nsfw_head"))
    logits = x @ w3["layers.0.weight"].T + w3["layers.0.bias"]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(soft.score(x), p[:, 2], rtol=1e-5)
    assert soft.name == "nsfw_head"


def test_score_shard_gives_classifier_scores_rows(tmp_path):
    head = load_head(_write(tmp_path / "aesthetic.safetensors"))
    x = _x()
    emb = pl.DataFrame(
        {"image_id": [f"i{i}" for i in range(6)], "embedding": x.tolist(), "model_id": MODEL},
        schema_overrides={"embedding": pl.List(pl.Float32)},
    )
    rows = head.score_shard(emb, "s1", threshold=0.7)
    assert rows.columns == CLASSIFIER_SCORES.column_names and rows.height == 6
    assert set(rows["category"]) == {"aesthetic"} and (rows["threshold"] == 0.7).all()
    np.testing.assert_allclose(rows["score"].to_numpy(), head.score(x), rtol=1e-6)


def test_embedding_model_and_dimension_mismatch_are_refused(tmp_path):
    head = load_head(_write(tmp_path / "h.safetensors", input_dim="8"))
    with pytest.raises(EmbeddingMismatchError, match="expects embeddings of size 8 but .* 16"):
        head.check_compatible(MODEL, 16)
    with pytest.raises(EmbeddingMismatchError, match="trained on 'open_clip:tiny@random'"):
        head.check_compatible("timm:tf_efficientnet_lite0@imagenet", 8)
    head.check_compatible(MODEL, 8)


@pytest.mark.parametrize(
    ("tensors", "meta", "match"),
    [
        ({"w": np.zeros((1, 8), np.float32)}, {}, "is not '<prefix>.<i>.weight'"),
        ({"l.0.bias": np.zeros(1, np.float32)}, {}, "bias but no weight"),
        ({"l.0.weight": np.zeros((8,), np.float32)}, {}, "expected \\(out, in\\)"),
        (
            {"l.0.weight": np.zeros((1, 8), np.float32), "l.0.bias": np.zeros(2, np.float32)},
            {},
            "bias has shape",
        ),
        (
            {
                "l.0.weight": np.zeros((4, 8), np.float32),
                "l.1.weight": np.zeros((1, 5), np.float32),
            },
            {},
            "takes 5 inputs but the layer before gives 4",
        ),
        ({"l.0.weight": np.full((1, 8), np.nan, np.float32)}, {}, "non-finite"),
        ({"l.0.weight": np.zeros((1, 8), np.float32)}, {"embedding_model": ""}, "embedding_model"),
        ({"l.0.weight": np.zeros((1, 8), np.float32)}, {"input_dim": "4"}, "input_dim='4'"),
        ({"l.0.weight": np.zeros((1, 8), np.float32)}, {"activation": "swish"}, "activation"),
        ({"l.0.weight": np.zeros((2, 8), np.float32)}, {}, "output 'sigmoid' does not fit"),
        ({"l.0.weight": np.zeros((1, 8), np.float32)}, {"output": "range:1:1"}, "range"),
        ({"l.0.weight": np.zeros((1, 8), np.float32)}, {"name": "Bad Name"}, "snake_case"),
    ],
)
def test_malformed_heads_are_clear_errors(tmp_path, tensors, meta, match):
    with pytest.raises(HeadFormatError, match=match):
        load_head(_write(tmp_path / "h.safetensors", tensors, **meta))


def test_a_missing_or_unreadable_file(tmp_path):
    with pytest.raises(ScorerUnavailableError, match="does not exist"):
        load_head(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(HeadFormatError, match="not a readable safetensors"):
        load_head(bad)


def test_identity_output_outside_unit_interval_is_an_error(tmp_path):
    w = {"l.0.weight": np.ones((1, 8), np.float32), "l.0.bias": np.full(1, 5.0, np.float32)}
    head = load_head(_write(tmp_path / "h.safetensors", w, output="identity"))
    with pytest.raises(ValueError, match="outside \\[0, 1\\].*range:<lo>:<hi>"):
        head.score(_x())
