"""The weights stage over Delta, shard by shard: plan, fit on a sample, score, sum, commit.

:func:`update_weights` is what the ``weights_and_audit`` asset runs:

1. :func:`~curation_assets.lib.weights.plan.plan_weights` — full, rescore, incremental or
   current, and why.
2. full: :func:`~curation_assets.lib.weights.probe.plan_sample` /
   :func:`~curation_assets.lib.weights.probe.gather_sample` /
   :func:`~curation_assets.lib.weights.probe.fit_sampled_probe` — a probe on a bounded,
   seeded sample, appended to ``weight_probes``.
3. The shards to redo (:func:`~.patch.redo_shards`). In an incremental run, a shard whose
   ``raw_images`` and ``image_embeddings`` are the ones the last commit recorded (only its
   ``deduplicated_images`` / ``image_uniqueness`` changed) is *patched*: its weights are
   recomputed from the raw ratios its committed ``sample_weights`` rows hold, its embeddings
   are never read, and its rows are rewritten only if they changed (:mod:`~.patch`; a newly
   kept image, or zero-shot concepts with an encoder, fall back to scoring it). A shard that
   only lost kept images (an old copy a new shard's image beat) is drop-patched: its committed
   rows, stats and counts less those images' own, reading nothing else of it
   (:mod:`~.drops`). Patching stays in this process (it reads no embedding: a few columns
   per row). Every other shard is scored from its embeddings on the engine (:mod:`~.work`:
   one task per shard on Ray, a budget-sized group of shards per task on the local engine,
   which runs them here one after the other as before engines), each task reading its
   shards itself
   (:func:`~.shards.read_shards`, :func:`~.shards.score_shard`). Each shard is written with
   ``replace_shard`` (one transaction per shard); rows of shards that are gone are deleted.
4. The per-shard stats and audit counts (small tables, rewritten in one commit each), the
   totals from their sums; if the mean weight is off by more than ``mean_tolerance``, every
   shard is rescaled with the closed-form scale (reason says so) — patched from the rows as
   this run left them, so a rescale reads no embedding. The summary counts
   ``shards_scored`` (from embeddings), ``shards_patched`` and of those
   ``shards_drop_patched`` (whose dropped rows are deleted by tombstones, not rewritten:
   ``rows_deleted_in_place``); the reason says how many of each.
5. ``bias_audit`` from the summed counts, then the commit row (``stage_commits``), last.

Weights: ``weight = clip(scale · ratio(x) · m(x), w_min, w_max)`` with ONE probe, ONE scale and
ONE uniqueness term (``m = 1`` unless ``uniqueness_power`` is set: :mod:`~.uniqueness`) for the
whole table, all recorded (``weight_probes``, the commit's summary, every stats row). A shard
scored or patched incrementally therefore gets the weights a full re-score with that probe,
scale and term would give: exactly, but for the last bit of some raw ratios, which the probe's
matrix products round differently when a shard's batch of kept rows changes or between the
probe as fitted and as loaded (a patch keeps each ratio as first computed). The mean over the
kept set is 1 within ``mean_tolerance``. With the term on, a group of shards being scored or
patched also reads those shards' ``image_uniqueness`` rows (two columns), and a full run the
probe sample's shards' rows: never the whole table.

Memory: in the step, the larger of (a) the probe's sample, ``2 · per_class`` rows of d values
(:func:`~.probe.per_class_rows`, half the budget) and (b) one group of shards
(``budget / 2 / row_bytes(d)`` rows scored on the local engine, or ``budget / 2 /
PATCH_ROW_BYTES`` rows patched; a bigger shard alone), plus the per-shard tables (one stats
row and ~50 count rows per shard). Per Ray task: one shard's rows (``row_bytes(d)`` each), a
scoring batch and the probe. Never the whole corpus.
"""

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from curation_assets.lib.commits import input_versions, record_commit
from curation_assets.lib.compaction import drop_changes, fold
from curation_assets.lib.engine import LocalEngine, RayEngine
from curation_assets.lib.memory import MemoryBudget
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import (
    AUDIT_SHARD_COUNTS,
    BIAS_AUDIT,
    SAMPLE_WEIGHTS,
    WEIGHT_PROBES,
    WEIGHT_SHARD_STATS,
)
from curation_assets.lib.weights.audit import TextEncoder
from curation_assets.lib.weights.patch import (
    PATCH_ROW_BYTES,
    PatchSource,
    Redone,
    incremental_source,
    redo_shards,
    rescale_source,
)
from curation_assets.lib.weights.plan import (
    WEIGHTS_STAGE,
    WeightsPlan,
    mean_off,
    plan_weights,
    settings_record,
    weights_inputs,
)
from curation_assets.lib.weights.probe import (
    SampledProbe,
    fit_sampled_probe,
    gather_sample,
    per_class_rows,
    plan_sample,
    store_probe,
)
from curation_assets.lib.weights.shards import (
    embedding_dim,
    row_bytes,
    shard_sizes,
)
from curation_assets.lib.weights.totals import (
    audit_from_counts,
    rescale_factor,
    stats_frame,
    upgrade_stats,
    weight_totals,
)
from curation_assets.lib.weights.uniqueness import (
    UniquenessTerm,
    require_uniqueness,
    sample_term,
    uniqueness_settings,
)
from curation_assets.lib.weights.work import (
    TaskTally,
    freeze_encoder,
    score_on_engine,
    scoring_work,
)

logger = logging.getLogger(__name__)

SCORE_SHARE = 0.5
"""Share of the memory budget one group of shards may hold while it is scored."""
SCORE_BATCH_SHARE = 0.05
"""Share of the budget of one scoring batch (float64 rows)."""
SCORE_BATCH_ROWS = 4096
"""Most rows of one scoring batch: BLAS is as fast per row at this size, and a bigger batch
only makes a big shard's peak grow with it (a 1 % shard at 1M images is 10k rows)."""


@dataclass
class WeightsOutcome:
    """What a run did and the figures it reports.

    Attributes:
        plan: The plan it followed (mode, reason; ``rescaled`` runs say so in the reason).
        totals: :func:`~.totals.weight_totals` of the whole kept set.
        audit: The ``bias_audit`` table.
        summary: The figures recorded with the commit (JSON-compatible).
        written: ``sample_weights`` shard rewrites in this run (a shard scored, then
            rescaled, counts twice; a patched shard whose rows came out unchanged, not at all).
        tasks: Where this run's scoring tasks ran (not part of the committed summary).
    """

    plan: WeightsPlan
    totals: dict[str, Any]
    audit: pl.DataFrame
    summary: dict[str, Any]
    written: int
    tasks: TaskTally = field(default_factory=TaskTally)


def update_weights(
    store: DeltaStore,
    settings: Mapping[str, Any],
    budget: MemoryBudget,
    load_encoder: Callable[[], tuple[TextEncoder | None, str]],
    engine: LocalEngine | RayEngine | None = None,
) -> WeightsOutcome:
    """Bring ``sample_weights``, its per-shard tables and ``bias_audit`` up to date.

    Args:
        store: Delta store.
        settings: ``WeightsConfig`` as a dict (see :mod:`~.plan` for the fields it reads).
        budget: The step's memory budget (probe sample, rows held at once, the scoring
            batch every task uses).
        load_encoder: Returns the concept text encoder and a note (called only if a shard is
            scored).
        engine: Where the shards are scored from their embeddings (:mod:`~.work`): None = the
            local engine (this process, a budget-sized group of shards at a time). Patched
            shards, the sums, the audit and the commit stay in this process.

    Raises:
        ValueError: When there is no kept image, on inputs the probe cannot use, or when
            ``uniqueness_power`` is set and ``image_uniqueness`` has no usable score.

    Memory: see the module docstring (per Ray task: one shard).
    """
    started = time.monotonic()
    engine = engine or LocalEngine()
    tally = TaskTally(engine=engine.name)
    uniqueness = uniqueness_settings(settings)
    if uniqueness is not None:
        require_uniqueness(store, uniqueness["power"])
    inputs = input_versions(store, weights_inputs(settings))
    plan = plan_weights(store, settings)
    logger.info("weights: %s — %s", plan.mode, plan.reason)
    if plan.mode == "current":
        assert plan.commit is not None  # current needs a commit
        stats = upgrade_stats(
            store.read(WEIGHT_SHARD_STATS, version=plan.commit.outputs[WEIGHT_SHARD_STATS.name])
        )
        totals = weight_totals(stats, w_min=settings["w_min"], w_max=settings["w_max"])
        audit = store.read(BIAS_AUDIT, version=plan.commit.outputs[BIAS_AUDIT.name])
        return WeightsOutcome(plan, totals, audit, dict(plan.commit.summary), 0, tally)

    dim = embedding_dim(store)
    if dim is None:
        msg = "no image embeddings: materialize image_embeddings and deduplicated_images first"
        raise ValueError(msg)
    max_rows = budget.rows(row_bytes(dim), share=SCORE_SHARE)
    batch = min(budget.rows(dim * 8, share=SCORE_BATCH_SHARE), SCORE_BATCH_ROWS)
    probe, scale, term = plan.probe, plan.scale, plan.uniqueness
    if plan.mode == "full":
        probe, term = _fit(store, settings, budget, dim, max_rows)
        scale = probe.scale
        store_probe(store, probe, settings_record(settings))
    assert probe is not None and scale is not None
    if (term is None) != (uniqueness is None):  # the plan compares the recorded settings
        msg = "the committed uniqueness term does not match the settings; re-run with mode=full"
        raise ValueError(msg)
    encoder, concepts_note = (None, "none configured")
    if plan.shards:
        encoder, concepts_note = load_encoder()
        if encoder is not None and settings["concepts"]:  # the prompts' vectors, for the tasks
            encoder = freeze_encoder(encoder, settings["concepts"])
    patch_rows = budget.rows(PATCH_ROW_BYTES, share=SCORE_SHARE)

    def redo(shards: list[str], source: PatchSource, scale: float) -> Redone:
        def score(todo: list[str]) -> tuple[list[dict[str, Any]], list[pl.DataFrame]]:
            work = scoring_work(
                store,
                probe,
                scale,
                settings,
                batch_size=batch,
                text_encoder=encoder,
                uniqueness=term,
            )
            return score_on_engine(store, todo, work, engine, group_rows=max_rows, tally=tally)

        return redo_shards(
            store,
            shards,
            source,
            probe=probe,
            scale=scale,
            term=term,
            settings=settings,
            max_rows=patch_rows,
            encoder=encoder,
            score=score,
        )

    done = redo(plan.shards, incremental_source(store, plan), scale)
    stats_rows, counts = done.stats, done.counts
    for shard in plan.removed:
        store.replace_shard(SAMPLE_WEIGHTS, shard, SAMPLE_WEIGHTS.empty())
    if plan.mode == "full" and set(plan.shards) >= set(plan.present):
        drop_changes(store, SAMPLE_WEIGHTS)  # every shard was rewritten: all superseded
    else:
        fold(store, SAMPLE_WEIGHTS)
    new_shards = set(plan.shards) | set(plan.removed)
    old_counts = (
        store.read(AUDIT_SHARD_COUNTS, version=plan.commit.outputs.get(AUDIT_SHARD_COUNTS.name))
        if plan.mode == "incremental" and plan.commit is not None
        else AUDIT_SHARD_COUNTS.empty()
    )
    old_counts = old_counts.filter(~pl.col("shard").is_in(sorted(new_shards)))
    keep = plan.kept_stats if plan.kept_stats is not None else WEIGHT_SHARD_STATS.empty()
    stats = pl.concat([keep, stats_frame(stats_rows)]).sort("shard")
    all_counts = pl.concat([old_counts, *counts]).sort("shard", "attribute", "value", "hit")
    totals = weight_totals(stats, w_min=settings["w_min"], w_max=settings["w_max"])
    reason = plan.reason + (
        f"; {done.patched} patched from their stored raw ratios (embeddings unchanged"
        + (f"; {done.dropped} only lost kept images: those rows alone" if done.dropped else "")
        + f"), {done.scored} scored from their embeddings"
        if done.patched
        else ""
    )
    if mean_off(totals, settings["mean_tolerance"]):
        new_scale = rescale_factor(stats, w_min=settings["w_min"], w_max=settings["w_max"])
        if new_scale is not None:
            reason += (
                f"; rescaled every shard: mean weight {totals['mean']:.6f} was off by more than "
                f"mean_tolerance={settings['mean_tolerance']:g} (scale {scale:.6g} → "
                f"{new_scale:.6g})"
            )
            scale = new_scale
            again = redo(plan.present, rescale_source(stats), scale)
            reason += (
                f" ({again.patched} patched from their stored raw ratios, {again.scored} "
                "scored from their embeddings)"
            )
            done.add(again)
            stats = stats_frame(done.stats).sort("shard")
            all_counts = pl.concat(done.counts).sort("shard", "attribute", "value", "hit")
            totals = weight_totals(stats, w_min=settings["w_min"], w_max=settings["w_max"])
    outputs = {
        WEIGHT_SHARD_STATS.name: store.replace_table(WEIGHT_SHARD_STATS, stats),
        AUDIT_SHARD_COUNTS.name: store.replace_table(AUDIT_SHARD_COUNTS, all_counts),
    }
    audit = audit_from_counts(all_counts)
    outputs[BIAS_AUDIT.name] = store.replace_table(BIAS_AUDIT, audit)
    for table in (SAMPLE_WEIGHTS.name, WEIGHT_PROBES.name):
        version = store.version(table)
        if version is not None:
            outputs[table] = version
    summary = _summary(plan, reason, probe, scale, totals, settings, concepts_note, done)
    summary.update(_uniqueness_summary(term, totals))
    summary["seconds"] = round(time.monotonic() - started, 3)
    record_commit(
        store,
        WEIGHTS_STAGE,
        inputs=inputs,
        outputs=outputs,
        config=settings_record(settings),
        summary=summary,
    )
    plan.reason = reason
    return WeightsOutcome(plan, totals, audit, summary, done.written, tally)


def _fit(
    store: DeltaStore, settings: Mapping[str, Any], budget: MemoryBudget, dim: int, max_rows: int
) -> tuple[SampledProbe, UniquenessTerm | None]:
    """A probe on a bounded sample of the corpus, with the corpus' counts as its prior.

    With the uniqueness term on, its ``u_ref`` comes from the sample's kept images (their
    shards' scores are read) and the probe's scale is the one of ``ratio · m``.
    """
    sizes = shard_sizes(store, settings["correct_for"])
    n_ref, n_kept = int(sizes["n_reference"].sum()), int(sizes["n_kept"].sum())
    if n_kept == 0:
        msg = "no kept image: materialize deduplicated_images first"
        raise ValueError(msg)
    per_class = per_class_rows(budget, dim)
    sample_plan = plan_sample(
        sizes, per_class=per_class, seed=settings["seed"], method=settings["method"]
    )
    sample = gather_sample(
        store,
        sample_plan,
        correct_for=settings["correct_for"],
        seed=settings["seed"],
        sizes=dict(zip(sizes["shard"], sizes["n_reference"], strict=True)),
        max_rows=max_rows,
    )
    uniqueness = uniqueness_settings(settings)
    term, multiplier = (
        sample_term(store, sample.shards, sample.ids, sample.kept, uniqueness)
        if uniqueness is not None
        else (None, None)
    )
    probe = fit_sampled_probe(
        sample,
        n_reference=n_ref,
        n_kept=n_kept,
        method=settings["method"],
        C=settings["C"],
        pca_dim=settings["pca_dim"] or None,
        seed=settings["seed"],
        per_class=per_class,
        w_min=settings["w_min"],
        w_max=settings["w_max"],
        settings=settings_record(settings),
        multiplier=multiplier,
    )
    logger.info(
        "weights probe %s: %s on %d sample rows from %d shards (%d per class wanted)",
        probe.probe_id,
        probe.model.status,
        probe.sample_rows,
        probe.sample_shards,
        per_class,
    )
    return probe, term


def _summary(
    plan: WeightsPlan,
    reason: str,
    probe: SampledProbe,
    scale: float,
    totals: Mapping[str, Any],
    settings: Mapping[str, Any],
    concepts: str,
    done: Redone,
) -> dict[str, Any]:
    """The figures the stage reports and records with its commit (JSON-compatible)."""
    model = probe.model
    summary_probe = {
        k: v
        for k, v in model.summary().items()
        if not isinstance(v, float) or v == v  # drop NaN
    }
    return {
        "mode": plan.mode,
        "reason": reason,
        "probe_id": probe.probe_id,
        "probe_status": model.status,
        "probe_reason": model.reason,
        "probe_auc": float("nan") if model.auc is None else float(model.auc),
        "probe_ece": float("nan") if model.ece is None else float(model.ece),
        "probe": summary_probe,
        "probe_sample_rows": probe.sample_rows,
        "probe_sample_shards": probe.sample_shards,
        "scale": scale,
        "shards": len(plan.present),
        "shards_scored": done.scored,
        "shards_patched": done.patched,
        "shards_drop_patched": done.dropped,
        "rows_deleted_in_place": done.deleted,
        "shards_removed": len(plan.removed),
        "unfiltered_images": int(totals["n_reference"]),
        "kept_images": int(totals["n"]),
        "weight_mean": float("nan") if totals["mean"] is None else float(totals["mean"]),
        "ess": float(totals["ess"] or 0.0),
        "ess_ratio": float(totals["ess_ratio"] or 0.0),
        "clipped_share": float(totals["clipped_share"] or 0.0),
        "weight_min": float(totals["min"] or 0.0),
        "weight_max": float(totals["max"] or 0.0),
        "weight_p50": float(totals["p50"] or 0.0),
        "correct_for": settings["correct_for"],
        "concepts": concepts,
    }


def _uniqueness_summary(term: UniquenessTerm | None, totals: Mapping[str, Any]) -> dict[str, Any]:
    """What the uniqueness term did (JSON-compatible): ``uniqueness_power`` 0.0 when off."""
    if term is None:
        return {"uniqueness_power": 0.0, "uniqueness": None}
    mean = totals.get("uniqueness_multiplier_mean")
    return {
        "uniqueness_power": term.power,
        "uniqueness": term.record(),
        "uniqueness_reference": term.reference,
        "uniqueness_floor": term.floor,
        "uniqueness_missing": int(totals.get("uniqueness_missing") or 0),
        "uniqueness_multiplier_mean": float("nan") if mean is None else float(mean),
    }
