"""The probe on a bounded sample, and the probe kept in Delta for later shards (stage 7).

**Bounded sample.** :func:`plan_sample` picks the training sample from per-shard counts,
without reading an embedding: a seeded order of the shards (a hash of seed and shard name),
read in that order until both classes have at least :data:`OVERSAMPLE` × the rows wanted per
class and at least :data:`MIN_SAMPLE_SHARDS` shards are in (or every shard is); inside those
shards a row is drawn when a seeded hash of its image id falls below its class's rate, so
the sample is the same whatever order the rows are read in. The rows wanted per class come
from the memory budget (:func:`per_class_rows`), capped at
:data:`~curation_assets.lib.weights.fit.DEFAULT_MAX_TRAIN_PER_CLASS`. :func:`gather_sample`
reads the chosen shards one budget-sized group at a time, keeping only the drawn rows;
:func:`fit_sampled_probe` fits :func:`~curation_assets.lib.weights.fit.fit_density_ratio` on
them and sets the corpus prior ``π_kept`` (the sample's own is skewed by the rates).

**Kept for later shards.** :func:`probe_row` stores the fitted probe (centre, PCA
components, fold probes, Platt map, training ids and folds, normaliser) as one row of
:data:`WEIGHT_PROBES`; :func:`load_probe` restores it, so an incremental run scores a new shard
with exactly the committed probe.
"""

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl

from curation_assets.lib.memory import MemoryBudget, shard_batches
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import WEIGHT_PROBES
from curation_assets.lib.weights.fit import (
    DEFAULT_MAX_TRAIN_PER_CLASS,
    DensityRatioModel,
    Method,
    fit_density_ratio,
)
from curation_assets.lib.weights.scale import clip_normalize
from curation_assets.lib.weights.shards import TrainFolds, read_shards

logger = logging.getLogger(__name__)

MIN_SAMPLE_SHARDS = 32
"""The sample reads at least this many shards (all when there are fewer)."""
OVERSAMPLE = 2.0
"""Shards are added until each class has this many times the rows wanted (rows are then drawn
at a rate ≤ 1/OVERSAMPLE inside them, not taken whole)."""
SAMPLE_SHARE = 0.5
"""Share of the memory budget the training sample may use."""
FIT_BYTES_PER_VALUE = 32
"""Bytes per sample value during the fit: float32 kept, float64 gathered, centred, PCA input."""


def per_class_rows(budget: MemoryBudget, dim: int) -> int:
    """Training rows per class that fit :data:`SAMPLE_SHARE` of the budget (≥ 50, ≤ the cap)."""
    per_row = 2 * dim * FIT_BYTES_PER_VALUE  # both classes
    return int(
        min(DEFAULT_MAX_TRAIN_PER_CLASS, budget.rows(per_row, share=SAMPLE_SHARE, minimum=50))
    )


def unit_hash(seed: int, keys: Sequence[str]) -> np.ndarray:
    """(n,) float64 in [0, 1): a seeded hash of each key (stable across runs and machines)."""
    out = np.empty(len(keys))
    for i, k in enumerate(keys):
        digest = hashlib.blake2b(f"{seed}:{k}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "big") / 2.0**64
    return out


@dataclass(frozen=True)
class SamplePlan:
    """Which shards the probe's sample reads and at which rates rows are drawn.

    Attributes:
        shards: The shards read (seeded order).
        rate_kept: Probability that a kept row of those shards is drawn.
        rate_removed: Probability that a removed row is drawn.
        per_class: Rows wanted per class.
    """

    shards: list[str]
    rate_kept: float
    rate_removed: float
    per_class: int


def plan_sample(sizes: pl.DataFrame, *, per_class: int, seed: int, method: Method) -> SamplePlan:
    """Choose the sample's shards and rates from per-shard counts (see the module docstring).

    Args:
        sizes: ``shard, n_reference, n_kept`` (:func:`~.shards.shard_sizes`).
        per_class: Rows wanted per class.
        seed: Seed of the shard order (and, in :func:`gather_sample`, of the row draw).
        method: ``kept_vs_removed`` (classes kept / removed) or ``unfiltered_vs_filtered``
            (all reference rows / kept rows: one common rate keeps the reference sample
            uniform).
    """
    names = sizes["shard"].to_list()
    order = np.argsort(unit_hash(seed, names), kind="stable")
    kept_n = sizes["n_kept"].to_numpy()
    removed_n = sizes["n_reference"].to_numpy() - kept_n
    chosen: list[str] = []
    k = r = 0
    goal = OVERSAMPLE * per_class
    for i in order:
        chosen.append(names[i])
        k += int(kept_n[i])
        r += int(removed_n[i])
        if len(chosen) >= MIN_SAMPLE_SHARDS and k >= goal and r >= goal:
            break
    if method == "kept_vs_removed":
        rate_k = min(1.0, per_class / k) if k else 1.0
        rate_r = min(1.0, per_class / r) if r else 1.0
    else:  # one rate: the reference sample stays uniform, the kept rows are its subset
        rate_k = rate_r = min(1.0, per_class / k) if k else 1.0
    return SamplePlan(chosen, rate_k, rate_r, per_class)


@dataclass(frozen=True)
class ProbeSample:
    """The drawn rows: ids, embeddings, kept flags, and the embedding model.

    Attributes:
        ids: (m,) image ids, ascending.
        x: (m, d) float32 embeddings.
        kept: (m,) bool.
        model_id: The embedding model (one for the whole sample).
        shards: Shards read.
    """

    ids: list[str]
    x: np.ndarray
    kept: np.ndarray
    model_id: str
    shards: list[str]


def gather_sample(
    store: DeltaStore,
    plan: SamplePlan,
    *,
    correct_for: str,
    seed: int,
    sizes: dict[str, int],
    max_rows: int,
) -> ProbeSample:
    """Read the planned shards (``max_rows`` rows at a time) and keep the drawn rows.

    Raises:
        ValueError: If the sampled shards mix embedding models.

    Memory: ``max_rows`` read rows plus the drawn sample (``2 · per_class`` rows of d float32).
    """
    ids: list[str] = []
    xs: list[np.ndarray] = []
    kept: list[np.ndarray] = []
    models: set[str] = set()
    for group in shard_batches(sizes, plan.shards, max_rows):
        for shard, (frame, x, model_id) in read_shards(store, group, correct_for).items():
            if frame.is_empty():
                continue
            models.add(model_id)
            k = frame["kept"].to_numpy().astype(bool)
            u = unit_hash(seed, frame["image_id"].to_list())
            take = np.where(k, u < plan.rate_kept, u < plan.rate_removed)
            ids.extend(frame.filter(pl.Series(take))["image_id"].to_list())
            xs.append(np.ascontiguousarray(x[take]))
            kept.append(k[take])
            logger.debug("probe sample: %d rows from shard %s", int(take.sum()), shard)
    if len(models) > 1:
        msg = (
            f"the probe's sample mixes embedding models {sorted(models)}; re-embed the older "
            "shards with one model before weighting"
        )
        raise ValueError(msg)
    if not ids:
        return ProbeSample([], np.zeros((0, 1), np.float32), np.zeros(0, bool), "", plan.shards)
    x_all = np.concatenate(xs)
    k_all = np.concatenate(kept)
    order = np.argsort(np.asarray(ids), kind="stable")
    return ProbeSample(
        [ids[i] for i in order], x_all[order], k_all[order], models.pop(), plan.shards
    )


@dataclass(frozen=True)
class SampledProbe:
    """A probe fitted on a bounded sample, with what later shards need to be scored by it.

    Attributes:
        model: The probe (``prior_kept``, ``n_unfiltered``, ``n_kept`` are the corpus').
        probe_id: Its id in :data:`WEIGHT_PROBES`.
        model_id: The embedding model it was fitted on.
        train_folds: Fold of each of its training rows, by image_id.
        scale: The normaliser estimated on the sample's kept rows.
        sample_rows: Rows of the sample.
        sample_shards: Shards read for it.
    """

    model: DensityRatioModel
    probe_id: str
    model_id: str
    train_folds: TrainFolds
    scale: float
    sample_rows: int
    sample_shards: int


def fit_sampled_probe(
    sample: ProbeSample,
    *,
    n_reference: int,
    n_kept: int,
    method: Method,
    C: float,
    pca_dim: int | None,
    seed: int,
    per_class: int,
    w_min: float,
    w_max: float,
    settings: dict[str, Any] | None = None,
    multiplier: np.ndarray | None = None,
) -> SampledProbe:
    """Fit the probe on the sample; estimate the normaliser on the sample's kept rows.

    With ``multiplier`` ((n,) float64, aligned with the sample's rows: the uniqueness term of
    :mod:`~.uniqueness`), the normaliser is the one of ``ratio · multiplier``.

    The kept rows of the sample are a uniform draw of the corpus' kept rows (one rate inside
    the sampled shards), so the scale that gives them mean 1 is the corpus' up to sampling
    error (``std(w) / √m``); the stage measures the corpus mean from its per-shard sums and
    rescales when it is off by more than its tolerance.

    The probe's id is a hash of everything that determines it (``settings``, the corpus counts,
    the embedding model and the sample's ids), so a run killed after storing it and re-run
    finds the same probe instead of storing a second one.

    Raises:
        ValueError: On settings the fit rejects.
    """
    model = fit_density_ratio(
        sample.x,
        sample.kept,
        method=method,
        C=C,
        pca_dim=pca_dim,
        seed=seed,
        image_ids=sample.ids,
        max_train_per_class=max(per_class, 50),
    )
    folds = TrainFolds.of([sample.ids[r] for r in model.train_rows], model.train_fold)
    # out-of-fold ratios of the sample's kept rows (the sample's own prior is skewed by the
    # rates; the corpus prior is set below and used for every ratio from here on)
    model.prior_kept = n_kept / n_reference if n_reference else 0.0
    model.n_unfiltered, model.n_kept = n_reference, n_kept
    rows = np.flatnonzero(sample.kept)
    scale = 1.0
    if rows.size:
        log_r = model.log_ratio(np.asarray(sample.x[rows], np.float64), model.fold_of(rows))
        ratio = np.exp(log_r)
        if multiplier is not None:
            ratio = ratio * np.asarray(multiplier, np.float64)[rows]
        _, _, scale = clip_normalize(ratio, w_min, w_max)
    digest = hashlib.blake2b(digest_size=16)
    what = [settings or {}, n_reference, n_kept, per_class, sample.model_id, sample.shards]
    digest.update(json.dumps(what, sort_keys=True, default=str).encode())
    for image_id in sample.ids:
        digest.update(image_id.encode() + b"\0")
    return SampledProbe(
        model,
        digest.hexdigest(),
        sample.model_id,
        folds,
        scale,
        len(sample.ids),
        len(sample.shards),
    )


def store_probe(store: DeltaStore, probe: SampledProbe, settings: dict[str, Any]) -> None:
    """Store the probe in :data:`WEIGHT_PROBES`: one row per ``probe_id``, whoever writes it.

    Skipped when the row is there (a run killed before its commit stored it). Otherwise the
    row is written as a replacement of its ``probe_id`` (``overwrite ... WHERE``), not an
    append: two instances fitting the same probe at once both pass the check, and Delta's
    conflict check then makes the later writer retry and replace the earlier row, where two
    appends would both land (the same probe twice, seen with two instances on one root).
    """
    there = (
        store.scan(WEIGHT_PROBES)
        .filter(pl.col("probe_id") == probe.probe_id)
        .select("probe_id")
        .head(1)
        .collect()
    )
    if there.is_empty():
        store.replace_rows(WEIGHT_PROBES, "probe_id", [probe.probe_id], probe_row(probe, settings))


def probe_row(probe: SampledProbe, settings: dict[str, Any]) -> pl.DataFrame:
    """The probe as one :data:`WEIGHT_PROBES` row."""
    m = probe.model
    summary = {k: v for k, v in m.summary().items()}
    return WEIGHT_PROBES.conform(
        pl.DataFrame(
            {
                "probe_id": [probe.probe_id],
                "fitted_at": [datetime.now(UTC)],
                "settings": [json.dumps(settings, sort_keys=True)],
                "model_id": [probe.model_id],
                "method": [m.method],
                "status": [m.status],
                "reason": [m.reason],
                "n_reference": [m.n_unfiltered],
                "n_kept": [m.n_kept],
                "prior_kept": [m.prior_kept],
                "scale": [probe.scale],
                "sample_shards": [probe.sample_shards],
                "sample_rows": [probe.sample_rows],
                "dim": [m.dim],
                "n_folds": [m.n_folds],
                "feature_scale": [m.feature_scale],
                "platt_a": [m.platt_a],
                "platt_b": [m.platt_b],
                "mean": [m.mean.tolist()],
                "components": [[] if m.components is None else m.components.ravel().tolist()],
                "coef": [m.coef.ravel().tolist()],
                "intercept": [m.intercept.tolist()],
                "train_ids": [probe.train_folds.frame["image_id"]],
                "train_folds": [probe.train_folds.frame["fold"]],
                "summary": [json.dumps(summary, sort_keys=True, default=str)],
            },
            schema=WEIGHT_PROBES.schema,
        )
    )


def load_probe(store: DeltaStore, probe_id: str, version: int | None = None) -> SampledProbe:
    """The probe ``probe_id`` of :data:`WEIGHT_PROBES` (as of ``version``).

    Raises:
        ValueError: If it is not there (a committed probe is always there: a broken root).
    """
    rows = (
        store.scan(WEIGHT_PROBES, version=version).filter(pl.col("probe_id") == probe_id).collect()
    )
    if rows.is_empty():
        msg = (
            f"probe {probe_id!r} is not in weight_probes (version {version}); the weights "
            "stage's tables were changed by hand: re-run it with config mode=full"
        )
        raise ValueError(msg)
    # the training ids stay Arrow columns (a Python list of them was most of the probe's bytes)
    train = rows.select(pl.col("train_ids").explode(), pl.col("train_folds").explode())
    train = train.drop_nulls()  # a probe with no training row stores two empty lists
    r = rows.drop("train_ids", "train_folds").row(0, named=True)
    summary = json.loads(r["summary"])
    d, n_folds = int(r["dim"]), int(r["n_folds"])
    comps = np.asarray(r["components"], dtype=np.float64)
    components = comps.reshape(-1, d) if comps.size else None
    k = components.shape[0] if components is not None else d
    coef = np.asarray(r["coef"], dtype=np.float64).reshape(-1, k) if r["coef"] else np.zeros((0, d))
    model = DensityRatioModel(
        method=r["method"],
        status=r["status"],
        reason=r["reason"],
        n_unfiltered=int(r["n_reference"]),
        n_kept=int(r["n_kept"]),
        prior_kept=float(r["prior_kept"]),
        mean=np.asarray(r["mean"], dtype=np.float64),
        components=components,
        feature_scale=float(r["feature_scale"]),
        coef=coef,
        intercept=np.asarray(r["intercept"], dtype=np.float64),
        platt_a=float(r["platt_a"]),
        platt_b=float(r["platt_b"]),
        train_rows=np.zeros(0, np.int64),
        train_fold=np.zeros(0, np.int64),
        n_train_per_class=int(summary.get("n_train_per_class") or 0),
        C=float(summary["C"]),
        pca_dim=summary.get("pca_dim"),
        explained_variance=summary.get("explained_variance"),
        n_folds=n_folds,
        seed=int(summary["seed"]),
        auc=summary.get("auc"),
        brier=summary.get("brier"),
        ece=summary.get("ece"),
    )
    return SampledProbe(
        model,
        probe_id,
        r["model_id"],
        TrainFolds.of(train["train_ids"], train["train_folds"]),
        float(r["scale"]),
        int(r["sample_rows"]),
        int(r["sample_shards"]),
    )
