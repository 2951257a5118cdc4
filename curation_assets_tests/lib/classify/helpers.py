"""Helpers of the classify tests: small embedding sets, a fake text tower, label files."""

from pathlib import Path

import numpy as np

from curation_assets.lib.classify import CategorySpec, ZeroShotPrompts

CATS = {"hat", "gore"}

DIM = 16


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def gaussian_data(n_pos: int, n_neg: int, shift: float, seed: int = 0):
    """Two Gaussian classes, L2-normalized; positives shifted along axis 0."""
    rng = np.random.default_rng(seed)
    pos = rng.normal(size=(n_pos, DIM))
    neg = rng.normal(size=(n_neg, DIM))
    pos[:, 0] += shift
    neg[:, 0] -= shift
    x = unit(np.concatenate([pos, neg]))
    y = np.concatenate([np.ones(n_pos, np.int8), np.zeros(n_neg, np.int8)])
    return x, y


def recall_at(scores, y, t):
    return float(((scores >= t) & (y == 1)).sum() / (y == 1).sum())


def fake_text_encoder(texts: list[str]) -> np.ndarray:
    """Deterministic: 'hat' prompts -> +e0 direction, others -> -e0, plus a fixed tilt."""
    out = np.zeros((len(texts), DIM), np.float32)
    for i, t in enumerate(texts):
        out[i, 0] = 1.0 if "hat" in t else -1.0
        out[i, 1 + (sum(map(ord, t)) % (DIM - 1))] = 0.2
    return unit(out)


SPEC = CategorySpec(
    name="hat",
    description="a hat",
    target_recall=0.9,
    zero_shot=ZeroShotPrompts(
        positive=("a photo of a hat", "a hat"), negative=("a photo", "clothes")
    ),
)
