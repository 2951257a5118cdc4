"""The weights stage (7): sample weights that undo the filter's shift, and the bias audit.

* :mod:`.fit` — the weak, calibrated, cross-fitted probe estimating
  ``p_unfiltered(x) / p_filtered(x)`` (:func:`fit_density_ratio`).
* :mod:`.scale` — its ratios as weights within ``[w_min, w_max]`` with mean exactly 1
  (:func:`sample_weights`, :func:`clip_normalize`), their statistics and the checks
  (:func:`weight_checks`) for weights held in memory.
* :mod:`.audit` — attribute shares unfiltered / filtered / weighted (:func:`bias_audit`, the
  ``bias_audit`` table :data:`~curation_assets.lib.tables.BIAS_AUDIT`).
* :mod:`.update` — the stage over Delta, shard by shard: :mod:`.plan` (full / rescore /
  incremental / current and why, the drift rules), :mod:`.probe` (the probe on a bounded,
  seeded sample; kept in ``weight_probes``), :mod:`.shards` (read and score one shard),
  :mod:`.work` (that scoring as engine tasks: the step's process or Ray), :mod:`.patch`
  (re-weight a shard whose embeddings did not change from its stored ratios),
  :mod:`.totals` (per-shard sums → the mean-1 normaliser, ESS, checks and the audit),
  :mod:`.uniqueness` (the opt-in ``image_uniqueness`` multiplier, ``uniqueness_power``).
* :mod:`.run` — the concept encoder, the histogram helper, and the whole-corpus in-memory
  reference path (:func:`~.run.load_weight_inputs`, :func:`~.run.fit_weights`).

The Delta modules are imported by their path (they read and write Delta through
:mod:`curation_assets.lib.storage`; the upstream tables' specs come from
:mod:`curation_assets.lib.tables`, so they import no torch).
"""

from curation_assets.lib.weights.audit import (
    DEFAULT_KEYWORDS,
    TextEncoder,
    audit_attributes,
    audit_markdown,
    bias_audit,
    concept_attributes,
    flag_shifts,
    keyword_attributes,
    metadata_attributes,
)
from curation_assets.lib.weights.fit import (
    DEFAULT_C,
    DEFAULT_METHOD,
    DEFAULT_PCA_DIM,
    METHODS,
    DensityRatioModel,
    Method,
    fit_density_ratio,
)
from curation_assets.lib.weights.scale import (
    DEFAULT_MIN_ESS_RATIO,
    DEFAULT_W_MAX,
    DEFAULT_W_MIN,
    SampleWeights,
    WeightCheck,
    clip_normalize,
    effective_sample_size,
    sample_weights,
    weight_checks,
    weight_stats,
)

__all__ = [
    "DEFAULT_C",
    "DEFAULT_KEYWORDS",
    "DEFAULT_METHOD",
    "DEFAULT_MIN_ESS_RATIO",
    "DEFAULT_PCA_DIM",
    "DEFAULT_W_MAX",
    "DEFAULT_W_MIN",
    "METHODS",
    "DensityRatioModel",
    "Method",
    "SampleWeights",
    "TextEncoder",
    "WeightCheck",
    "audit_attributes",
    "audit_markdown",
    "bias_audit",
    "clip_normalize",
    "concept_attributes",
    "effective_sample_size",
    "fit_density_ratio",
    "flag_shifts",
    "keyword_attributes",
    "metadata_attributes",
    "sample_weights",
    "weight_checks",
    "weight_stats",
]
