"""Classify: one classifier per unwanted category, thresholded for recall (stage 3).

The classifier room, one module per seam:

* :mod:`.spec` — the category spec (YAML) and its validation;
* :mod:`.base` — what every classifier shares: input checks, :func:`threshold_for_recall`,
  row-wise scoring and the :class:`~.base.LinearClassifier` scaffolding;
* :mod:`.probe` — the linear probe, trained with out-of-fold thresholds;
* :mod:`.zeroshot` — prompt-based scores for categories with too few labels;
* :mod:`.policy` — :func:`fit_category`: which of the two the labels allow;
* :mod:`.serialize` — classifiers as JSON (base64 float32, no pickle);
* :mod:`.train` — every category trained from the labels: the ``safety_classifiers`` table;
* :mod:`.scorers` — pretrained image scorers (open_nsfw) that add score columns;
* :mod:`.score` — images scored by every classifier: the ``classifier_scores`` table;
* :mod:`.active` — the active-learning label queue;
* :mod:`.pool` — what the queue and training read: a bounded, seeded candidate pool and the
  labelled images' embeddings from their own shards (never every embedding);
* :mod:`.label_files` — label files (CSV, Label Studio) parsed into rows;
* :mod:`.labels` — the labels table: rows validated and imported all-or-nothing;
* :mod:`.queue_export` — the label queue as a CSV, Label Studio tasks, an HTML sheet.

Scores are probabilities in [0, 1]; an image is flagged when ``score >= threshold``.
"""

from curation_assets.lib.classify.active import (
    build_label_queue,
    build_label_queues,
    find_hard_positives,
    queue_reasons,
)
from curation_assets.lib.classify.base import (
    ClassifierInputError,
    EmbeddingMismatchError,
    canonical_order,
    row_dot,
    threshold_for_recall,
)
from curation_assets.lib.classify.label_files import (
    LabelFileError,
    parse_label_studio,
    parse_labels_csv,
    read_label_file,
)
from curation_assets.lib.classify.labels import (
    LabelImport,
    LabelImportError,
    current_labels,
    import_labels,
    validate_labels,
)
from curation_assets.lib.classify.policy import (
    MIN_NEGATIVES,
    MIN_POSITIVES,
    CategoryResult,
    Classifier,
    fit_category,
)
from curation_assets.lib.classify.probe import Probe, train_probe
from curation_assets.lib.classify.queue_export import (
    ContactSheet,
    export_queue_csv,
    export_queue_html,
    export_queue_label_studio,
    label_studio_config,
)
from curation_assets.lib.classify.score import (
    ScoreOutcome,
    ScoreShardWork,
    mean_scores,
    pretrained_scores,
    score_embeddings,
    score_shard,
    scores_complete,
)
from curation_assets.lib.classify.scorers import (
    PretrainedScorer,
    ScorerUnavailableError,
    available_scorers,
    get_scorer,
)
from curation_assets.lib.classify.serialize import (
    classifier_from_json,
    classifier_to_json,
    load_probes,
    save_probes,
)
from curation_assets.lib.classify.spec import (
    CategorySpec,
    CategorySpecError,
    ZeroShotPrompts,
    load_category_spec,
    parse_category_spec,
)
from curation_assets.lib.classify.train import (
    ClassifierChecks,
    classifier_checks,
    classifiers_table,
    embedding_model,
    labelled_embeddings,
    pr_curve_markdown,
    read_classifiers,
    text_encoder_for,
    train_classifiers,
)
from curation_assets.lib.classify.zeroshot import TextEncoder, ZeroShotScorer, build_zero_shot

__all__ = [
    "ScoreOutcome",
    "ScoreShardWork",
    "MIN_NEGATIVES",
    "MIN_POSITIVES",
    "available_scorers",
    "build_label_queue",
    "build_label_queues",
    "build_zero_shot",
    "canonical_order",
    "CategoryResult",
    "CategorySpec",
    "CategorySpecError",
    "Classifier",
    "classifier_checks",
    "classifier_from_json",
    "classifier_to_json",
    "ClassifierChecks",
    "ClassifierInputError",
    "classifiers_table",
    "ContactSheet",
    "current_labels",
    "EmbeddingMismatchError",
    "export_queue_csv",
    "export_queue_html",
    "export_queue_label_studio",
    "find_hard_positives",
    "fit_category",
    "get_scorer",
    "import_labels",
    "label_studio_config",
    "LabelFileError",
    "LabelImport",
    "LabelImportError",
    "embedding_model",
    "labelled_embeddings",
    "load_category_spec",
    "load_probes",
    "mean_scores",
    "parse_category_spec",
    "parse_label_studio",
    "parse_labels_csv",
    "pr_curve_markdown",
    "pretrained_scores",
    "PretrainedScorer",
    "Probe",
    "queue_reasons",
    "read_classifiers",
    "read_label_file",
    "row_dot",
    "save_probes",
    "score_embeddings",
    "score_shard",
    "ScorerUnavailableError",
    "scores_complete",
    "text_encoder_for",
    "TextEncoder",
    "threshold_for_recall",
    "train_classifiers",
    "train_probe",
    "validate_labels",
    "ZeroShotPrompts",
    "ZeroShotScorer",
]
