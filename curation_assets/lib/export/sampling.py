"""FLYT's Soft Cap Sampling: per-example weights as a sampled multiset (stage 8, optional).

Shechter & Carmon, "Filter Like You Test", 2025: turn per-example weights into a sampled
*multiset* by repeatedly sampling from ``softmax(log w)`` while a repetition penalty lowers the
logit of an example each time it is drawn, so that high-weight examples are repeated but cannot
dominate. :func:`soft_cap_sampling` draws it exactly; :func:`sampling_stats` describes it.
"""

import math
from typing import Any

import numpy as np

DEFAULT_PENALTY = 0.15


def soft_cap_sampling(
    scores: np.ndarray,
    n_samples: int,
    *,
    log_scale: bool = False,
    penalty: float = DEFAULT_PENALTY,
    temperature: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """FLYT's Soft Cap Sampling: draw ``n_samples`` times with a repetition penalty.

    The process sampled is the sequential one: draw one example from
    ``softmax(logits / temperature)``; subtract ``penalty`` from the drawn example's logit;
    repeat ``n_samples`` times. An example drawn ``c`` times has been made ``exp(c · penalty /
    temperature)`` times less likely, so high-weight examples repeat while no example takes
    over the multiset. ``penalty = 0`` is multinomial sampling; a very large penalty draws
    without replacement (in weight-biased order) until every example is drawn once, then again.

    Implementation — exact, not a batched approximation. Drawing one example from a softmax
    is an exponential race: give example ``i`` an exponential clock of rate ``exp(logit_i)``;
    the first to ring wins. By memorylessness the sequential process is the sequence of rings
    of independent per-example processes whose rate drops by ``exp(-penalty / temperature)``
    after each of their own rings; the first ``n_samples`` rings over all examples are the
    sample. Rings are simulated in rounds: each round picks a time horizon (the k-th smallest
    next ring, ``k = ⌈remaining / 2⌉`` capped at N, pulled in when a fluid estimate says a few
    fast examples would ring far more often than needed), takes every ring up to it (an
    example can ring several times in a round) and accepts them all while they fit in the
    remaining count; in the last round only the earliest rings are kept. Horizons depend only
    on the state so far and every drawn clock is used, so the result has exactly the
    sequential process's distribution. Ring times are kept as logarithms (gaps grow like
    ``exp(penalty · count)``). Cost: O(N) per round, about ``n / N + log n`` rounds;
    memory a few (N,) arrays plus the rings of one round (≲ 2 · remaining).

    Args:
        scores: (N,) weights (≥ 0; 0 = never drawn), or log-weights with ``log_scale=True``
            (-inf = never drawn).
        n_samples: Total draws (the size of the multiset).
        log_scale: Whether ``scores`` are logits (log-weights).
        penalty: Repetition penalty subtracted from an example's logit per draw (FLYT's
            default 0.15 is used here), ≥ 0.
        temperature: Logits are divided by it (> 0).
        seed: Seed of the random clocks (same inputs and seed → same counts).

    Returns:
        (N,) int64 counts: how many times each example is in the multiset; they sum to
        ``n_samples``.

    Raises:
        ValueError: On negative / non-finite weights, no drawable example, or bad settings.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        msg = f"scores have shape {s.shape}; expected (N,) weights or log-weights"
        raise ValueError(msg)
    if n_samples < 0:
        msg = f"n_samples={n_samples}: expected a count >= 0"
        raise ValueError(msg)
    if not (penalty >= 0 and math.isfinite(penalty)):
        msg = f"penalty={penalty}: expected a finite repetition penalty >= 0, e.g. 0.15"
        raise ValueError(msg)
    if not (temperature > 0 and math.isfinite(temperature)):
        msg = f"temperature={temperature}: expected a positive, finite temperature, e.g. 1.0"
        raise ValueError(msg)
    if log_scale:
        if np.isnan(s).any() or np.isposinf(s).any():
            msg = "log-weights contain NaN or +inf; expected finite values (or -inf to exclude)"
            raise ValueError(msg)
        logits = s / temperature
    else:
        if not (np.isfinite(s).all() and (s >= 0).all()):
            msg = "weights must be finite and >= 0 (pass log_scale=True for log-weights)"
            raise ValueError(msg)
        with np.errstate(divide="ignore"):
            logits = np.log(s) / temperature
    n_items = s.size
    counts = np.zeros(n_items, dtype=np.int64)
    if n_samples == 0:
        return counts
    live = np.isfinite(logits)
    if not live.any():
        msg = "no example can be drawn: every weight is 0 (or every log-weight -inf)"
        raise ValueError(msg)
    step = penalty / temperature
    rng = np.random.default_rng(seed)
    # Ring times are kept as logarithms: with a penalty the gaps grow like exp(step · count),
    # which would overflow float64 for an example drawn thousands of times.
    log_rate = np.where(live, logits - logits[live].max(), -np.inf)
    with np.errstate(divide="ignore"):
        log_next = np.log(rng.standard_exponential(n_items)) - log_rate
    remaining = int(n_samples)
    n_live = int(live.sum())
    while remaining > 0:
        k = min(n_live, (remaining + 1) // 2)
        horizon = float(np.partition(log_next, k - 1)[k - 1])
        expected = _expected_rings(log_next, log_rate, counts, step, horizon)
        if expected > 2 * remaining or (k == n_live and expected < remaining / 4):
            # The k-th next ring is a poor horizon: a few fast examples would ring far more
            # often than needed before it, or (few examples, many draws) far too few rings
            # would fit. Move it to where about half the remaining rings are expected — a
            # choice based only on the present state, so sampling stays exact.
            horizon = _horizon_for(log_next, log_rate, counts, step, horizon, remaining / 2)
        ring_items: list[np.ndarray] = []
        ring_times: list[np.ndarray] = []
        active = np.flatnonzero(log_next <= horizon)
        rings = 0
        # Take every ring up to the horizon; each pass advances the examples that rang.
        while active.size:
            ring_items.append(active)
            ring_times.append(log_next[active])
            rings += active.size
            c = counts[active] + 1
            counts[active] = c
            log_gap = np.log(rng.standard_exponential(active.size)) - log_rate[active] + step * c
            log_next[active] = np.logaddexp(log_next[active], log_gap)
            active = active[log_next[active] <= horizon]
        if rings <= remaining:
            remaining -= rings
            continue
        # Overshoot: keep only the earliest `remaining` rings of this round.
        items = np.concatenate(ring_items)
        times = np.concatenate(ring_times)
        drop = np.argpartition(times, remaining - 1)[remaining:]
        np.subtract.at(counts, items[drop], 1)
        remaining = 0
    return counts


def _expected_rings(
    log_next: np.ndarray, log_rate: np.ndarray, counts: np.ndarray, step: float, horizon: float
) -> float:
    """Fluid estimate of the number of rings up to time ``exp(horizon)``.

    Each example due before the horizon rings once, then ``N(t)`` more times with
    ``dN/dt = rate · exp(-step · N)``, i.e. ``log1p(step · rate · t) / step`` (``rate · t``
    without a penalty).
    """
    due = np.flatnonzero(log_next <= horizon)
    if due.size == 0:
        return 0.0
    with np.errstate(divide="ignore"):
        log_dt = horizon + np.log1p(-np.exp(log_next[due] - horizon))
    log_u = log_rate[due] - step * (counts[due] + 1) + log_dt
    if step > 0:
        more = np.logaddexp(0.0, math.log(step) + log_u) / step  # log1p(step·u) without overflow
    else:
        with np.errstate(over="ignore"):
            more = np.exp(log_u)
    return float(due.size + more.sum())


def _horizon_for(
    log_next: np.ndarray,
    log_rate: np.ndarray,
    counts: np.ndarray,
    step: float,
    start: float,
    target: float,
) -> float:
    """A log-time horizon with about ``target`` expected rings (at least the first ring)."""

    def rings(h: float) -> float:
        return _expected_rings(log_next, log_rate, counts, step, h)

    lo, hi = float(log_next.min()), start
    if rings(hi) < target:
        lo, span = hi, 1.0
        hi = lo + span
        while rings(hi) < target and span < 1e6:
            lo, span = hi, 2 * span
            hi = lo + span
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        r = rings(mid)
        if 0.5 * target <= r <= 1.5 * target:
            return mid  # close enough: the horizon only sets the size of a round
        if r > target:
            hi = mid
        else:
            lo = mid
    return max(lo, float(log_next.min()))


def sampling_stats(counts: np.ndarray, weights: np.ndarray | None = None) -> dict[str, Any]:
    """Summary of a sampled multiset for metadata.

    Args:
        counts: (N,) draw counts from :func:`soft_cap_sampling`.
        weights: (N,) weights it was drawn from (optional: adds the count–weight correlation).

    Returns:
        ``n_samples, n_items, n_distinct, distinct_share, max_count, mean_count_drawn``,
        ``count_histogram`` (count -> items, up to the largest count) and, with weights,
        ``spearman_count_weight``.
    """
    c = np.asarray(counts, dtype=np.int64)
    n_drawn = int((c > 0).sum())
    hist = np.bincount(c) if c.size else np.zeros(1, np.int64)
    out: dict[str, Any] = {
        "n_samples": int(c.sum()),
        "n_items": int(c.size),
        "n_distinct": n_drawn,
        "distinct_share": n_drawn / c.size if c.size else None,
        "max_count": int(c.max()) if c.size else 0,
        "mean_count_drawn": float(c[c > 0].mean()) if n_drawn else None,
        "count_histogram": {str(i): int(v) for i, v in enumerate(hist) if v},
    }
    if weights is not None and c.size > 1:
        from scipy.stats import rankdata

        rw, rc = rankdata(np.asarray(weights, dtype=np.float64)), rankdata(c)
        rho = float(np.corrcoef(rw, rc)[0, 1]) if rw.std() > 0 and rc.std() > 0 else math.nan
        out["spearman_count_weight"] = rho if math.isfinite(rho) else None
    return out
