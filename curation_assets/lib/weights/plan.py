"""Full, rescore, incremental or current: what a weights run has to do, and why (stage 7).

:func:`plan_weights` compares the corpus with the last committed run (``stage_commits``, read
with :func:`~curation_assets.lib.commits.last_commit`):

* **full** — fit a new probe on a bounded sample and score every shard. When: the first run;
  ``mode=full`` asked for; a setting that shapes the probe or the weights changed
  (:data:`PROBE_FIELDS`, or the uniqueness term's ``uniqueness_power`` / ``uniqueness_floor``:
  its ``u_ref`` is set at a fit, :mod:`~.uniqueness`); the embedding model of a shard to score
  is not the probe's; the reference set grew or shrank by more than ``refit_growth`` × its
  size at the probe's fit (the sample must stay representative: with the default 1.0 the probe
  is refitted each time the corpus doubles, so every image is scored at most ~2 times over the
  corpus' life); or the kept share ``π_kept`` moved more than ``refit_prior_shift`` from the fit's.
* **rescore** — score every shard with the committed probe: an audit setting changed
  (:data:`AUDIT_FIELDS`: every shard's counts change).
* **incremental** — score only the shards whose inputs changed since the versions the commit
  recorded (``DeltaStore.changed_shards`` on ``raw_images``, ``image_embeddings`` and
  ``deduplicated_images``, and ``image_uniqueness`` when the weights use it: the Delta log
  only), the shards never scored, and the shards a run
  killed before its commit wrote (``changed_shards`` on ``sample_weights`` since the committed
  version); delete the rows of shards that are gone. Every other shard is never read. Of
  those shards, the ones whose ``raw_images`` and ``image_embeddings`` did not change are
  patched from their stored raw ratios rather than scored (no embedding read:
  :mod:`~curation_assets.lib.weights.patch`); the run's reason says how many.
* **current** — nothing of that: nothing is written.

After scoring, the mean weight over the kept set is known from the per-shard sums; when it is
more than ``mean_tolerance`` from 1 the run rescales (re-weights every shard with the committed
probe and the closed-form scale, :func:`~curation_assets.lib.weights.totals.rescale_factor`,
from the raw ratios its rows hold) and says so in its reason.
"""

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from curation_assets.lib.commits import Commit, last_commit, torn_outputs
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import (
    DEDUPLICATED_IMAGES,
    IMAGE_EMBEDDINGS,
    IMAGE_UNIQUENESS,
    RAW_IMAGES,
    SAMPLE_WEIGHTS,
    WEIGHT_PROBES,
    WEIGHT_SHARD_STATS,
)
from curation_assets.lib.weights.probe import SampledProbe, load_probe
from curation_assets.lib.weights.shards import shard_sizes
from curation_assets.lib.weights.totals import upgrade_stats
from curation_assets.lib.weights.uniqueness import UniquenessTerm, uniqueness_settings

WEIGHTS_STAGE = "weights"
"""The stage's name in ``stage_commits``."""
WEIGHTS_INPUTS = (DEDUPLICATED_IMAGES.name, IMAGE_EMBEDDINGS.name, RAW_IMAGES.name)
"""The tables whose versions the stage's commit records (plus ``image_uniqueness`` when the
weights use it: :func:`weights_inputs`)."""

PROBE_FIELDS = ("correct_for", "method", "C", "pca_dim", "seed", "w_min", "w_max")
"""Settings that shape the probe or the weights: a change refits (mode full)."""
AUDIT_FIELDS = ("keywords", "concepts")
"""Settings that shape only the audit counts: a change re-scores every shard (mode rescore)."""

DEFAULT_MEAN_TOLERANCE = 0.01
DEFAULT_REFIT_GROWTH = 1.0
DEFAULT_REFIT_PRIOR_SHIFT = 0.02


@dataclass
class WeightsPlan:
    """What a run does, and why.

    Attributes:
        mode: ``full``, ``rescore``, ``incremental`` or ``current``.
        reason: One sentence.
        shards: Shards to score (sorted).
        removed: Shards scored before that no longer exist (their rows are deleted).
        present: Every shard with inputs now.
        commit: The last commit (None before the first).
        probe: The committed probe (None for full).
        scale: The committed normaliser (None for full).
        kept_stats: The committed per-shard stats of the shards not re-scored.
        torn: Outputs written after the last commit by a run that did not finish.
        uniqueness: The committed uniqueness term (None for full, or when it is off).
    """

    mode: str
    reason: str
    shards: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    commit: Commit | None = None
    probe: SampledProbe | None = None
    scale: float | None = None
    kept_stats: pl.DataFrame | None = None
    torn: list[str] = field(default_factory=list)
    uniqueness: UniquenessTerm | None = None


def settings_record(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The part of the settings a commit records and the next run compares.

    The uniqueness term is recorded only when it is on, so the record of a run with it off is
    the record of a run made before it existed (no full re-score after an upgrade).
    """
    record: dict[str, Any] = {
        "probe": {k: settings[k] for k in PROBE_FIELDS},
        "audit": {k: settings[k] for k in AUDIT_FIELDS},
    }
    uniqueness = uniqueness_settings(settings)
    if uniqueness is not None:
        record["uniqueness"] = uniqueness
    return record


def weights_inputs(settings: Mapping[str, Any]) -> tuple[str, ...]:
    """The tables whose versions a run's commit records and whose changed shards it re-scores."""
    if uniqueness_settings(settings) is None:
        return WEIGHTS_INPUTS
    return (*WEIGHTS_INPUTS, IMAGE_UNIQUENESS.name)


def committed_term(commit: Commit) -> UniquenessTerm | None:
    """The uniqueness term a commit's weights were made with (None: off)."""
    term = commit.summary.get("uniqueness")
    if not term:
        return None
    return UniquenessTerm(float(term["power"]), float(term["floor"]), float(term["reference"]))


def _diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    keys = sorted(
        k for k in set(old) | set(new) if json.dumps(old.get(k)) != json.dumps(new.get(k))
    )
    return ", ".join(f"{k} {old.get(k)!r} → {new.get(k)!r}" for k in keys)


def present_shards(store: DeltaStore) -> list[str]:
    """Shards with both raw images and embeddings now (from the Delta logs)."""
    return sorted(
        set(store.shard_files(IMAGE_EMBEDDINGS.name)) & set(store.shard_files(RAW_IMAGES.name))
    )


def plan_weights(store: DeltaStore, settings: Mapping[str, Any]) -> WeightsPlan:
    """Decide the run's mode (see the module docstring).

    Args:
        store: Delta store.
        settings: The stage settings (every field of :data:`PROBE_FIELDS` and
            :data:`AUDIT_FIELDS`, plus ``mode`` (auto / full), ``refit_growth``,
            ``refit_prior_shift``).

    The committed state is read as of the versions the last commit recorded, so what a run
    killed before its commit wrote is ignored (and overwritten).
    """
    commit = last_commit(store, WEIGHTS_STAGE)
    torn = torn_outputs(store, commit)
    present = present_shards(store)
    note = (
        f" (recovering: {', '.join(torn)} were written after the last commit by a run that "
        "did not finish)"
        if torn
        else ""
    )
    record = settings_record(settings)

    written = set(store.shard_files(SAMPLE_WEIGHTS.name))

    def full(reason: str) -> WeightsPlan:
        gone = sorted(written - set(present))
        return WeightsPlan(
            "full", reason + note, list(present), gone, present, commit=commit, torn=torn
        )

    if settings.get("mode") == "full":
        return full("full recompute asked for (config mode=full)")
    if commit is None or "probe_id" not in commit.summary:
        return full("first run")
    old = commit.config
    if old.get("probe") != record["probe"]:
        return full("probe settings changed: " + _diff(old.get("probe", {}), record["probe"]))
    if old.get("uniqueness") != record.get("uniqueness"):
        return full(_uniqueness_change(old.get("uniqueness"), record.get("uniqueness")))
    stats = upgrade_stats(
        store.read(WEIGHT_SHARD_STATS, version=commit.outputs.get(WEIGHT_SHARD_STATS.name))
    )
    term = committed_term(commit)
    probe = load_probe(store, commit.summary["probe_id"], commit.outputs.get(WEIGHT_PROBES.name))
    scale = float(commit.summary["scale"])
    scored = set(stats["shard"].to_list())
    removed = sorted((scored | written) - set(present))
    if old.get("audit") != record["audit"]:
        reason = "audit settings changed: " + _diff(old.get("audit", {}), record["audit"])
        return WeightsPlan(
            "rescore",
            reason + note,
            list(present),
            removed,
            present,
            commit,
            probe,
            scale,
            stats.clear(),
            torn,
            term,
        )
    changed: set[str] = set()
    embedded: set[str] = set()  # shards whose embeddings changed: their model is checked
    for table in weights_inputs(settings):
        moved = store.changed_shards(table, commit.inputs.get(table))
        changed |= moved
        if table == IMAGE_EMBEDDINGS.name:
            embedded = moved
    changed |= store.changed_shards(SAMPLE_WEIGHTS.name, commit.outputs.get(SAMPLE_WEIGHTS.name))
    todo = sorted((changed | (set(present) - scored)) & set(present))
    if not todo and not removed:
        if torn:
            return WeightsPlan(
                "incremental",
                "rewriting the summary tables" + note,
                [],
                [],
                present,
                commit,
                probe,
                scale,
                stats,
                torn,
                term,
            )
        return WeightsPlan(
            "current",
            f"no shard changed since the last run ({len(scored)} shards): nothing to do",
            [],
            [],
            present,
            commit,
            probe,
            scale,
            stats,
            uniqueness=term,
        )
    keep = stats.filter(~pl.col("shard").is_in(todo + removed))
    sizes = shard_sizes(store, settings["correct_for"], todo)
    n_ref = int(keep["n_reference"].sum()) + int(sizes["n_reference"].sum())
    n_kept = int(keep["n_kept"].sum()) + int(sizes["n_kept"].sum())
    model = probe.model
    if (
        model.n_unfiltered
        and abs(n_ref - model.n_unfiltered) > settings["refit_growth"] * model.n_unfiltered
    ):
        return full(
            f"the reference set changed from {model.n_unfiltered} to {n_ref} images since the "
            f"probe's fit (more than refit_growth={settings['refit_growth']:g} of it)"
        )
    prior = n_kept / n_ref if n_ref else 0.0
    if abs(prior - model.prior_kept) > settings["refit_prior_shift"]:
        return full(
            f"the kept share moved from {model.prior_kept:.4f} to {prior:.4f} since the probe's "
            f"fit (more than refit_prior_shift={settings['refit_prior_shift']:g})"
        )
    # the others' embeddings are the ones the probe scored (a shard that only lost kept
    # images is in todo: reading its model column would read every such shard)
    models = (
        store.scan(IMAGE_EMBEDDINGS)
        .filter(pl.col("shard").is_in(sorted((embedded | (set(present) - scored)) & set(todo))))
        .select("model_id")
        .unique()
        .collect()["model_id"]
        .to_list()
    )
    if model.status == "fitted" and any(m != probe.model_id for m in models):
        return full(
            f"embedding model changed: probe fitted on {probe.model_id}, shards have {models}"
        )
    return WeightsPlan(
        "incremental",
        f"scores {len(todo)} changed or new shards of {len(present)}"
        + (f", drops {len(removed)} gone" if removed else "")
        + note,
        todo,
        removed,
        present,
        commit,
        probe,
        scale,
        keep,
        torn,
        term,
    )


def _uniqueness_change(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> str:
    """The reason of a full run after the uniqueness settings changed (off = power 0)."""
    keys = ("power", "floor") if old and new else ("power",)
    o, n = old or {"power": 0.0}, new or {"power": 0.0}
    changes = [f"uniqueness_{k} {o.get(k)!r} → {n.get(k)!r}" for k in keys if o.get(k) != n.get(k)]
    return "uniqueness settings changed: " + ", ".join(changes)


def mean_off(totals: Mapping[str, Any], tolerance: float) -> bool:
    """Whether the kept set's mean weight is further than ``tolerance`` from 1."""
    mean = totals.get("mean")
    return mean is not None and not (math.isfinite(mean) and abs(mean - 1.0) <= tolerance)
