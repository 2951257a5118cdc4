"""Synthetic data whose density ratio is known exactly, for the weights tests.

The unfiltered set is a two-component Gaussian mixture in 16-d; the "filter" keeps a point
with probability ``P(kept | x) = sigmoid(1.2 + x·β)``, so the true ratio is
``p_u(x) / p_f(x) = π_k / P(kept | x)``. Component 1 (40 % of the unfiltered images) is
filtered much harder, like the images of women in DALL·E 2's data.
"""

import numpy as np
import pytest


def synthetic(n: int = 20_000, d: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    comp = rng.random(n) < 0.4
    mu = np.zeros(d)
    mu[0] = 1.5
    x = rng.normal(size=(n, d)) + np.where(comp[:, None], mu, -mu)
    beta = np.zeros(d)
    beta[0], beta[1] = -1.0, 0.8
    p_kept = 1.0 / (1.0 + np.exp(-(1.2 + x @ beta)))
    kept = rng.random(n) < p_kept
    return x.astype(np.float32), kept, p_kept, comp


@pytest.fixture(scope="module")
def data():
    return synthetic()
